//! Beyond one host: a 3-node NATS JetStream cluster with every stream kept on 3 nodes
//! (`SEGTUNE_STREAM_REPLICAS=3`), each service connected to a different node. The node that
//! leads the job stream is `kill -9`ed while the study runs: the services reconnect to the
//! other nodes without being restarted, and the study finishes with one reward per job.

use std::time::{Duration, Instant};

use futures::StreamExt;
use protocol::subjects::{self, stream};
use test_support::NatsCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_survives_losing_the_job_streams_leader_in_a_3_node_cluster() {
    test_support::init_test_tracing();
    let mut cluster = NatsCluster::start(3);
    cluster.wait_for_jetstream(Duration::from_secs(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store").display().to_string();

    // Each service connects to a different node first.
    let first_node = [0, 1, 1, 2, 2];
    let services =
        crate::support::Services::start(|i| cluster.url_from(first_node[i]), &store, 60.0, 3).await;

    // Every stream is replicated on all three nodes.
    let client = runtime::connect(&cluster.url_from(0), "test")
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client.clone());
    for name in [
        stream::JOBS,
        stream::TRAINED,
        stream::REWARDS,
        stream::EVENTS,
    ] {
        let info = js
            .get_stream(name)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        assert_eq!(info.config.num_replicas, 3, "{name}");
    }

    let task = crate::support::synth_task(&dir.path().join("task"), 5);
    let spec = crate::support::random_study(dir.path(), &task, "cluster", 4, 2);
    let mut rewards = client
        .subscribe(subjects::rewards(&spec.study))
        .await
        .unwrap();
    crate::support::submit(&js, &spec).await;

    // Once the first reward is in, kill the node leading the job stream.
    let first = tokio::time::timeout(Duration::from_secs(120), rewards.next())
        .await
        .expect("a first reward within 120 s")
        .unwrap();
    let first: protocol::Reward = protocol::decode(&first.payload).unwrap();
    let leader = js
        .get_stream(stream::JOBS)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .expect("the job stream has a leader");
    let victim = leader
        .strip_prefix('n')
        .and_then(|i| i.parse::<usize>().ok())
        .expect("node names are n1..n3")
        - 1;
    let killed_at = Instant::now();
    cluster.nodes[victim].kill();
    eprintln!("killed {leader} (leader of JOBS) after the first reward");

    // Follow the study from a node that is still up.
    let watcher = runtime::connect(&cluster.url_from(victim + 1), "test-watch")
        .await
        .unwrap();
    let wjs = async_nats::jetstream::new(watcher);
    // JetStream API requests time out while the remaining nodes elect new leaders.
    let events = retry(|| async {
        wjs.get_stream(stream::EVENTS)
            .await?
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                filter_subject: subjects::study_events(&spec.study),
                ..Default::default()
            })
            .await
            .map_err(Into::into)
    })
    .await;
    let mut events = events.messages().await.unwrap();
    let outcome = crate::support::study_outcome(
        &mut events,
        Duration::from_secs(240),
        "the study ends after the node's loss",
    )
    .await;
    eprintln!(
        "study done {:.1} s after the leader was killed",
        killed_at.elapsed().as_secs_f64()
    );
    assert_eq!(outcome, Ok(4));

    // The reward stream holds exactly one reward per job, the first one included.
    let stored = retry(|| async {
        wjs.get_stream(stream::REWARDS)
            .await?
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                filter_subject: subjects::rewards(&spec.study),
                ..Default::default()
            })
            .await
            .map_err(Into::into)
    })
    .await;
    let mut stored = stored.messages().await.unwrap();
    let mut job_ids = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(3), stored.next()).await {
        let r: protocol::Reward = protocol::decode(&m.unwrap().payload).unwrap();
        job_ids.push(r.job_id);
    }
    job_ids.sort();
    let mut distinct = job_ids.clone();
    distinct.dedup();
    assert_eq!(job_ids.len(), 4, "rewards on the stream: {job_ids:?}");
    assert_eq!(distinct.len(), 4, "duplicate rewards: {job_ids:?}");
    assert!(job_ids.contains(&first.job_id));

    services.stop_all().await;
}

/// Retries a JetStream request for up to 30 s.
async fn retry<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, async_nats::Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying after: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("JetStream request failed for 30 s: {e}"),
        }
    }
}
