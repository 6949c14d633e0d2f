//! A `TrainJob` published on the bus comes back as a `Reward` from a real trainer and a
//! real evaluator; a bad job is dead-lettered with its reason and the services go on.

use std::{collections::BTreeMap, time::Duration};

use futures::StreamExt;
use protocol::{JobFailed, Reward, Strategy, TrainJob, TrainingConfig, subjects};
use test_support::NatsServer;

fn job(study: &str, index: u32, dataset_id: &str, values: &[(&str, f64)]) -> TrainJob {
    TrainJob {
        schema: protocol::SCHEMA_VERSION,
        study: study.into(),
        job_id: format!("{study}-{index:04}"),
        index,
        dataset_id: dataset_id.into(),
        strategy: Strategy {
            values: values.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            unit: BTreeMap::new(),
        },
        training: TrainingConfig {
            channels: vec![4, 8],
            epochs: 2,
            patches_per_epoch: 4,
            batch_size: 2,
            patch: [16, 16, 16],
            overlap: 0.25,
            init_checkpoint: None,
            dice_ce: false,
        },
        seed: index as u64,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_job_becomes_a_reward_and_bad_jobs_are_dead_lettered() {
    test_support::init_test_tracing();
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let store_url = dir.path().join("store").display().to_string();
    let task = crate::support::synth_task(&dir.path().join("task"), 2);
    let store = storage::open(&store_url).unwrap();
    let ds = dataprep::preprocess(
        &store,
        &protocol::DatasetSource::Local {
            path: task.display().to_string(),
        },
        &Default::default(),
        &Default::default(),
    )
    .await
    .unwrap();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let trainer = trainer::App::connect(&trainer::Settings {
        nats: nats.url(),
        store: store_url.clone(),
        device: "cpu".into(),
    })
    .await
    .unwrap();
    let evaluator = evaluator::App::connect(&evaluator::Settings {
        nats: nats.url(),
        store: store_url.clone(),
        device: "cpu".into(),
    })
    .await
    .unwrap();
    let t = tokio::spawn(trainer::run(trainer, stop(stop_rx.clone())));
    let e = tokio::spawn(evaluator::run(evaluator, stop(stop_rx.clone())));

    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let mut rewards = client.subscribe(subjects::rewards("e2e")).await.unwrap();
    let mut dead = client.subscribe(subjects::deadletter("e2e")).await.unwrap();
    client.flush().await.unwrap();
    let publish = |j: TrainJob| {
        let js = js.clone();
        async move {
            runtime::publish(
                &js,
                subjects::jobs(&j.study),
                Some(&j.job_id),
                protocol::encode(&j).unwrap(),
            )
            .await
            .unwrap();
        }
    };

    // A bad strategy first: dead-lettered, not retried forever.
    publish(job("e2e", 1, &ds.dataset_id, &[("p_noise", 1.5)])).await;
    let msg = tokio::time::timeout(Duration::from_secs(20), dead.next())
        .await
        .expect("dead letter within 20 s")
        .unwrap();
    let f: JobFailed = protocol::decode(&msg.payload).unwrap();
    assert_eq!(f.job_id, "e2e-0001");
    assert!(f.reason.contains("p_noise"), "{}", f.reason);
    assert_eq!(f.original_subject, "segtune.jobs.e2e");

    // A missing dataset: also dead-lettered with a clear reason.
    publish(job("e2e", 2, "no-such-dataset", &[])).await;
    let msg = tokio::time::timeout(Duration::from_secs(20), dead.next())
        .await
        .expect("dead letter within 20 s")
        .unwrap();
    let f: JobFailed = protocol::decode(&msg.payload).unwrap();
    assert!(f.reason.contains("no-such-dataset"), "{}", f.reason);

    // A good job after them still trains and is scored.
    publish(job(
        "e2e",
        3,
        &ds.dataset_id,
        &[("p_flip", 0.5), ("p_noise", 0.2), ("learning_rate", 1e-3)],
    ))
    .await;
    let msg = tokio::time::timeout(Duration::from_secs(120), rewards.next())
        .await
        .expect("reward within 120 s")
        .unwrap();
    let r: Reward = protocol::decode(&msg.payload).unwrap();
    assert_eq!(r.job_id, "e2e-0003");
    assert_eq!(r.index, 3);
    assert_eq!(r.strategy.values["learning_rate"], 1e-3);
    let val = ds.manifest.validation_cases().count();
    assert_eq!(r.per_case.len(), val);
    assert_eq!(r.per_class.len(), 2, "organ and lesion");
    assert!(
        r.mean.is_finite() && (0.0..=1.0).contains(&r.mean),
        "{}",
        r.mean
    );
    assert_eq!(
        msg.headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.to_string()),
        Some("e2e-0003".to_string()),
        "rewards are deduplicated by job id"
    );
    assert!(
        storage::exists(&store, &storage::keys::checkpoint("e2e", "e2e-0003"))
            .await
            .unwrap()
    );

    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), t)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), e)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
