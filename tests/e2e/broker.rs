//! The single broker dies: `kill -9` of nats-server with jobs in flight, restarted on the
//! same store dir, and later a graceful restart (SIGTERM). Every service reconnects without
//! being restarted, and the study's ledger holds: each issued job ends in exactly one of
//! {reward, dead letter}, no job is published twice, no reward is counted twice.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use futures::StreamExt;
use protocol::{
    StudyEventKind,
    subjects::{self, stream},
};
use test_support::NatsServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_survives_a_broker_kill_9_and_a_graceful_restart() {
    test_support::init_test_tracing();
    let mut nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store").display().to_string();

    let url = nats.url();
    let services = crate::support::Services::start(|_| url.clone(), &store, 10.0, 1).await;

    let client = runtime::connect(&nats.url(), "test").await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let task = crate::support::synth_task(&dir.path().join("task"), 7);
    let max_jobs = 6;
    let spec = crate::support::random_study(dir.path(), &task, "broker", max_jobs, 3);
    let study = spec.study.clone();
    // A core subscription: the client subscribes again after each reconnect.
    let mut rewards = client.subscribe(subjects::rewards(&study)).await.unwrap();
    let mut progress = client
        .subscribe(subjects::progress_all(&study))
        .await
        .unwrap();
    crate::support::submit(&js, &spec).await;

    // After the first reward, wait until a trainer reports progress on a job (one is in
    // flight), then kill -9 the broker and start it again on the same store dir.
    tokio::time::timeout(Duration::from_secs(180), rewards.next())
        .await
        .expect("a first reward within 180 s")
        .unwrap();
    let in_flight: protocol::Progress = loop {
        let m = tokio::time::timeout(Duration::from_secs(60), progress.next())
            .await
            .expect("a job in flight")
            .unwrap();
        let p: protocol::Progress = protocol::decode(&m.payload).unwrap();
        if p.epoch < p.epochs {
            break p;
        }
    };
    nats.kill();
    let killed_at = Instant::now();
    eprintln!(
        "broker killed (-9) while {} was at epoch {}/{}",
        in_flight.job_id, in_flight.epoch, in_flight.epochs
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.restart();
    let next = tokio::time::timeout(Duration::from_secs(120), rewards.next())
        .await
        .expect("a reward after the kill -9 restart")
        .unwrap();
    let r: protocol::Reward = protocol::decode(&next.payload).unwrap();
    eprintln!(
        "first reward after the kill: {} ({:.1} s after the kill, 2 s of it broker down)",
        r.job_id,
        killed_at.elapsed().as_secs_f64()
    );

    // Then a graceful restart (SIGTERM: JetStream closes its store cleanly).
    nats.terminate();
    let stopped_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    nats.restart();
    assert!(
        services.all_running(),
        "a service exited while the broker was down"
    );

    let mut events = crate::support::study_events(&js, &study).await;
    let outcome = crate::support::study_outcome(
        &mut events,
        Duration::from_secs(300),
        "the study ends after the broker restarts",
    )
    .await;
    eprintln!(
        "study done {:.1} s after the graceful restart",
        stopped_at.elapsed().as_secs_f64()
    );
    assert_eq!(outcome, Ok(max_jobs));

    // The ledger, from the controller's saved state and from the streams.
    let store = storage::open(&store).unwrap();
    let state = controller::read_state(&store, &study)
        .await
        .unwrap()
        .unwrap();
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, job) in &state.jobs {
        let k = match &job.status {
            controller::state::JobStatus::Rewarded { .. } => "rewarded",
            controller::state::JobStatus::Failed { .. } => "dead-lettered",
            other => panic!("{id} ended {other:?}"),
        };
        *outcomes.entry(k).or_default() += 1;
    }
    eprintln!("ledger: {} issued, {outcomes:?}", state.jobs.len());
    assert_eq!(state.rewards.len(), max_jobs as usize);
    assert_eq!(
        state.jobs.len(),
        state.rewards.len() + state.failures.len(),
        "every issued job ends in exactly one of reward / dead letter"
    );
    let issued =
        test_support::stream_payloads(&js, stream::EVENTS, &subjects::study_events(&study))
            .await
            .into_iter()
            .filter_map(
                |m| match protocol::decode::<protocol::StudyEvent>(&m).unwrap().event {
                    StudyEventKind::Issued { job_id, .. } => Some(job_id),
                    _ => None,
                },
            )
            .collect::<Vec<_>>();
    assert_distinct("issued events", &issued);
    assert_eq!(issued.len(), state.jobs.len());
    // Nothing is left waiting in the work queues (acked messages leave them). An ack the
    // kill -9 lost leaves its message to be redelivered after the AckWait (10 s here), and
    // the worker that gets it finds the job done and acks it: allow for that, no more.
    for name in [stream::JOBS, stream::TRAINED] {
        let mut s = js.get_stream(name).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut left = s.info().await.unwrap().state.messages;
        while left > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            left = s.info().await.unwrap().state.messages;
        }
        assert_eq!(left, 0, "{name} not empty 30 s after the study ended");
    }
    let rewarded = test_support::stream_payloads(&js, stream::REWARDS, &subjects::rewards(&study))
        .await
        .iter()
        .map(|m| protocol::decode::<protocol::Reward>(m).unwrap().job_id)
        .collect::<Vec<_>>();
    assert_distinct("rewards", &rewarded);
    assert_eq!(rewarded.len(), max_jobs as usize);

    services.stop_all().await;
}

fn assert_distinct(what: &str, ids: &[String]) {
    let mut sorted = ids.to_vec();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "duplicate {what}: {ids:?}");
}
