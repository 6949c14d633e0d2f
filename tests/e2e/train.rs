//! A `TrainJob` published on the bus comes back as a `Reward` from a real trainer and a
//! real evaluator; a bad job is dead-lettered with its reason and the services go on.

use std::{collections::BTreeMap, time::Duration};

use futures::StreamExt;
use protocol::{JobFailed, Progress, Reward, Strategy, TrainJob, TrainingConfig, subjects};
use test_support::NatsServer;

pub(crate) fn job(study: &str, index: u32, dataset_id: &str, values: &[(&str, f64)]) -> TrainJob {
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
            lr_schedule: Default::default(),
            tta: false,
        },
        seed: index as u64,
        final_model: None,
        validation: None,
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
    let mut trainer = trainer::App::connect(&trainer::Settings {
        nats: nats.url(),
        store: store_url.clone(),
        device: "cpu".into(),
        augment_workers: None,
        cache: Default::default(),
    })
    .await
    .unwrap();
    // As `SEGTUNE_WORKER` names it; the reward must carry it.
    trainer.worker = "trainer-e2e".into();
    let evaluator = evaluator::App::connect(&evaluator::Settings {
        nats: nats.url(),
        store: store_url.clone(),
        device: "cpu".into(),
        cache: Default::default(),
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

    // A dimension no augmentation or knob has: refused by name, not ignored.
    publish(job("e2e", 4, &ds.dataset_id, &[("p_elastic", 0.5)])).await;
    let f = next_dead(&mut dead).await;
    assert_eq!(f.job_id, "e2e-0004");
    assert!(f.reason.contains("p_elastic"), "{}", f.reason);

    // Undecodable messages, two on each work subject: each is dead-lettered once, under its
    // own id (they have no job id to be named by, and must not be taken for duplicates of
    // each other), and neither service stops serving.
    for subject in [subjects::jobs("e2e"), subjects::trained("e2e")] {
        for garbage in [&b"\xc1 not msgpack"[..], &b"\x93\x01\x02\x03"[..]] {
            js.publish(subject.clone(), garbage.to_vec().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }
    let mut undecodable = Vec::new();
    for _ in 0..4 {
        let msg = tokio::time::timeout(Duration::from_secs(20), dead.next())
            .await
            .expect("a dead letter per undecodable message within 20 s")
            .unwrap();
        let id = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.to_string())
            .expect("dead letters carry a message id");
        let f: JobFailed = protocol::decode(&msg.payload).unwrap();
        assert_eq!(f.job_id, "", "{f:?}");
        assert_eq!(f.deliveries, 1, "{f:?}");
        assert!(!f.reason.is_empty());
        undecodable.push((f.original_subject, id));
    }
    undecodable.sort();
    let ids: std::collections::BTreeSet<_> = undecodable.iter().map(|(_, id)| id).collect();
    assert_eq!(
        ids.len(),
        4,
        "one dead letter each, distinct ids: {undecodable:?}"
    );
    let on = |s: &str| undecodable.iter().filter(|(o, _)| o == s).count();
    assert_eq!(on("segtune.jobs.e2e"), 2, "{undecodable:?}");
    assert_eq!(on("segtune.trained.e2e"), 2, "{undecodable:?}");
    let kept = test_support::stream_payloads(
        &js,
        subjects::stream::DEADLETTER,
        &subjects::deadletter("e2e"),
    )
    .await;
    assert_eq!(
        kept.len(),
        7,
        "every dead letter is in the DEADLETTER stream"
    );

    // A good job after them still trains and is scored; its Trained event carries the job id
    // as Nats-Msg-Id, so a retried publish is not seen twice downstream.
    let mut trained = client.subscribe(subjects::trained("e2e")).await.unwrap();
    client.flush().await.unwrap();
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
    let trained_msg = tokio::time::timeout(Duration::from_secs(5), trained.next())
        .await
        .expect("the Trained event came before the reward")
        .unwrap();
    assert_eq!(
        trained_msg
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.to_string()),
        Some("e2e-0003".to_string())
    );
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
    // Who trained it and how long training and evaluation took.
    assert_eq!(r.trainer, "trainer-e2e");
    assert_eq!(r.attempt, 1);
    assert!(r.train_seconds > 0.0 && r.train_seconds < 120.0, "{r:?}");
    assert!(r.eval_seconds > 0.0 && r.eval_seconds < 120.0, "{r:?}");
    assert!(r.final_loss.is_finite() && r.final_loss > 0.0, "{r:?}");
    assert_eq!(
        msg.headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.to_string()),
        Some("e2e-0003".to_string()),
        "rewards are deduplicated by job id"
    );
    assert!(
        storage::exists(
            &store,
            &storage::keys::checkpoint("e2e", "e2e-0003").unwrap()
        )
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

/// Runs a trainer (named `worker`) as a task until `stop` fires.
async fn spawn_trainer(
    nats: &NatsServer,
    store_url: &str,
    worker: &str,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let mut app = trainer::App::connect(&trainer::Settings {
        nats: nats.url(),
        store: store_url.to_string(),
        device: "cpu".into(),
        augment_workers: None,
        cache: Default::default(),
    })
    .await
    .unwrap();
    app.worker = worker.to_string();
    tokio::spawn(trainer::run(app, async move {
        let _ = stop.await;
    }))
}

pub(crate) async fn preprocessed(dir: &std::path::Path, store_url: &str) -> dataprep::Outcome {
    let task = crate::support::synth_task(&dir.join("task"), 2);
    dataprep::preprocess(
        &storage::open(store_url).unwrap(),
        &protocol::DatasetSource::Local {
            path: task.display().to_string(),
        },
        &Default::default(),
        &Default::default(),
    )
    .await
    .unwrap()
}

/// SIGTERM (the shutdown future) mid-job: the trainer naks the job and stops within 2 s, and
/// another replica starts the same job within 5 s (delivery attempt 2). Progress reports carry
/// the epoch, the loss, the throughput, the worker and the attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_trainer_hands_its_job_to_another_replica_at_once() {
    test_support::init_test_tracing();
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let store_url = dir.path().join("store").display().to_string();
    let ds = preprocessed(dir.path(), &store_url).await;
    let client = nats.client().await;
    let mut progress = client
        .subscribe(subjects::progress_all("sigterm"))
        .await
        .unwrap();
    client.flush().await.unwrap();

    let (stop_a, rx_a) = tokio::sync::oneshot::channel();
    let a = spawn_trainer(&nats, &store_url, "trainer-a", rx_a).await;
    let js = async_nats::jetstream::new(client.clone());
    let mut long = job("sigterm", 1, &ds.dataset_id, &[("learning_rate", 1e-3)]);
    long.training.epochs = 500;
    runtime::publish(
        &js,
        subjects::jobs("sigterm"),
        Some(&long.job_id),
        protocol::encode(&long).unwrap(),
    )
    .await
    .unwrap();

    // Trainer A is working on it.
    let p: Progress = tokio::time::timeout(Duration::from_secs(60), progress.next())
        .await
        .expect("progress within 60 s")
        .map(|m| protocol::decode(&m.payload).unwrap())
        .unwrap();
    assert_eq!(
        (p.job_id.as_str(), p.worker.as_str(), p.attempt, p.epochs),
        ("sigterm-0001", "trainer-a", 1, 500)
    );
    assert!(p.epoch >= 1 && p.loss.is_finite() && p.loss > 0.0, "{p:?}");
    assert!(p.patches_per_sec > 0.0, "{p:?}");
    // Filled in by the trainer (the first batch of a job is always waited for), not the
    // decoder's default.
    assert!(
        p.data_wait_fraction > 0.0 && p.data_wait_fraction <= 1.0,
        "{p:?}"
    );

    // Replica B is idle; A is told to stop.
    let (stop_b, rx_b) = tokio::sync::oneshot::channel();
    let b = spawn_trainer(&nats, &store_url, "trainer-b", rx_b).await;
    let stopped = std::time::Instant::now();
    stop_a.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(2), a)
        .await
        .expect("trainer A stops within 2 s")
        .unwrap()
        .unwrap();
    let handed_over = loop {
        let m = tokio::time::timeout(Duration::from_secs(5), progress.next())
            .await
            .expect("B reports progress on the job within 5 s of A's stop")
            .unwrap();
        let p: Progress = protocol::decode(&m.payload).unwrap();
        if p.worker == "trainer-b" {
            break p;
        }
    };
    // Training starts at once; the first report comes after one epoch.
    eprintln!(
        "job handed over: first progress from B {:.2} s after A was stopped",
        stopped.elapsed().as_secs_f64()
    );
    assert_eq!(
        (handed_over.job_id.as_str(), handed_over.attempt),
        ("sigterm-0001", 2)
    );
    // B stops too (its job is naked again; nothing else waits for it).
    stop_b.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), b)
        .await
        .expect("trainer B stops within 5 s")
        .unwrap()
        .unwrap();
}

/// A checkpoint that is missing, of the wrong shape or not safetensors fails the job with a
/// clear reason on a dead letter (trainer: fine-tuning from it; evaluator: scoring it), and the
/// services go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_checkpoints_are_dead_lettered_with_the_reason() {
    test_support::init_test_tracing();
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let store_url = dir.path().join("store").display().to_string();
    let store = storage::open(&store_url).unwrap();
    let ds = preprocessed(dir.path(), &store_url).await;
    // A real checkpoint of a narrower network than the jobs use ([2, 4] vs [4, 8]).
    let varmap = segmodel::candle_nn::VarMap::new();
    let cfg = segmodel::UNetConfig {
        in_channels: 1,
        num_classes: 3,
        channels: vec![2, 4],
        ..Default::default()
    };
    segmodel::unet3d(
        &cfg,
        segmodel::seeded_var_builder(
            &varmap,
            0,
            segmodel::candle_core::DType::F32,
            &segmodel::candle_core::Device::Cpu,
        ),
    )
    .unwrap();
    let narrow = segmodel::save_checkpoint(&varmap).unwrap();
    storage::put(&store, "checkpoints/other/narrow.safetensors", narrow)
        .await
        .unwrap();
    storage::put(
        &store,
        "checkpoints/other/garbage.safetensors",
        b"not a checkpoint".to_vec(),
    )
    .await
    .unwrap();

    let (stop_t, rx_t) = tokio::sync::oneshot::channel();
    let t = spawn_trainer(&nats, &store_url, "trainer-a", rx_t).await;
    let evaluator = evaluator::App::connect(&evaluator::Settings {
        nats: nats.url(),
        store: store_url.clone(),
        device: "cpu".into(),
        cache: Default::default(),
    })
    .await
    .unwrap();
    let (stop_e, rx_e) = tokio::sync::oneshot::channel::<()>();
    let e = tokio::spawn(evaluator::run(evaluator, async move {
        let _ = rx_e.await;
    }));
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let mut dead = client
        .subscribe(subjects::deadletter("ckpt"))
        .await
        .unwrap();
    let mut rewards = client.subscribe(subjects::rewards("ckpt")).await.unwrap();
    client.flush().await.unwrap();
    // Trainer: fine-tune from a missing, a narrower and a garbage checkpoint.
    for (i, key, expect) in [
        (
            1,
            "checkpoints/other/missing.safetensors",
            "missing.safetensors",
        ),
        (2, "checkpoints/other/narrow.safetensors", "shape"),
        (3, "checkpoints/other/garbage.safetensors", "safetensors"),
    ] {
        let mut j = job("ckpt", i, &ds.dataset_id, &[]);
        j.training.init_checkpoint = Some(key.to_string());
        runtime::publish(
            &js,
            subjects::jobs("ckpt"),
            Some(&j.job_id),
            protocol::encode(&j).unwrap(),
        )
        .await
        .unwrap();
        let f = next_dead(&mut dead).await;
        assert_eq!(f.job_id, j.job_id);
        assert_eq!(f.original_subject, "segtune.jobs.ckpt");
        assert!(
            f.reason.contains("init checkpoint") && f.reason.contains(expect),
            "job {i}: {}",
            f.reason
        );
    }

    // Evaluator: a trained model whose checkpoint is missing, too narrow, or garbage.
    let good = job("ckpt", 9, &ds.dataset_id, &[]);
    for (i, key, expect) in [
        (
            4,
            "checkpoints/other/missing.safetensors",
            "missing.safetensors",
        ),
        (5, "checkpoints/other/narrow.safetensors", "shape"),
        (6, "checkpoints/other/garbage.safetensors", "safetensors"),
    ] {
        let trained = protocol::Trained {
            schema: protocol::SCHEMA_VERSION,
            study: "ckpt".into(),
            job_id: format!("ckpt-{i:04}"),
            index: i,
            dataset_id: ds.dataset_id.clone(),
            strategy: good.strategy.clone(),
            training: good.training.clone(),
            checkpoint_key: key.into(),
            final_loss: 0.5,
            train_seconds: 1.0,
            worker: "test".into(),
            attempt: 1,
        };
        runtime::publish(
            &js,
            subjects::trained("ckpt"),
            Some(&trained.job_id),
            protocol::encode(&trained).unwrap(),
        )
        .await
        .unwrap();
        let f = next_dead(&mut dead).await;
        assert_eq!(f.job_id, trained.job_id);
        assert_eq!(f.original_subject, "segtune.trained.ckpt");
        assert!(
            f.reason.contains("checkpoint") && f.reason.contains(expect),
            "trained {i}: {}",
            f.reason
        );
    }

    // Both services still serve: a good job becomes a reward.
    runtime::publish(
        &js,
        subjects::jobs("ckpt"),
        Some(&good.job_id),
        protocol::encode(&good).unwrap(),
    )
    .await
    .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(120), rewards.next())
        .await
        .expect("reward within 120 s")
        .unwrap();
    let r: Reward = protocol::decode(&m.payload).unwrap();
    assert_eq!(r.job_id, good.job_id);
    assert_eq!((r.trainer.as_str(), r.attempt), ("trainer-a", 1));

    stop_t.send(()).unwrap();
    stop_e.send(()).unwrap();
    t.await.unwrap().unwrap();
    e.await.unwrap().unwrap();
}

async fn next_dead(dead: &mut async_nats::Subscriber) -> JobFailed {
    let m = tokio::time::timeout(Duration::from_secs(30), dead.next())
        .await
        .expect("dead letter within 30 s")
        .unwrap();
    protocol::decode::<JobFailed>(&m.payload).unwrap()
}

/// A trainer and an evaluator on one host, sharing one case cache folder, with a memory
/// budget the dataset exceeds: the job trains from mapped cases and is scored from them, and
/// the cases are fetched from the store once for both services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_over_the_memory_budget_is_trained_and_scored_from_the_host_case_cache() {
    test_support::init_test_tracing();
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let store_url = dir.path().join("store").display().to_string();
    let ds = preprocessed(dir.path(), &store_url).await;
    let cache_dir = dir.path().join("cache");
    let cache = runtime::CacheSettings {
        cache_dir: cache_dir.display().to_string(),
        cache_max_bytes: 1 << 30,
        // Smaller than any dataset: always mapped.
        cache_memory_budget: 1,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let trainer = trainer::App::connect(&trainer::Settings {
        nats: nats.url(),
        store: store_url.clone(),
        device: "cpu".into(),
        augment_workers: None,
        cache: cache.clone(),
    })
    .await
    .unwrap();
    let evaluator = evaluator::App::connect(&evaluator::Settings {
        nats: nats.url(),
        store: store_url.clone(),
        device: "cpu".into(),
        cache,
    })
    .await
    .unwrap();
    let stats = |c: &engine::DatasetCache| c.options().cache.clone().expect("a case cache");
    let (trainer_cache, evaluator_cache) = (stats(&trainer.cache), stats(&evaluator.cache));
    let t = tokio::spawn(trainer::run(trainer, stop(stop_rx.clone())));
    let e = tokio::spawn(evaluator::run(evaluator, stop(stop_rx.clone())));

    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let mut rewards = client.subscribe(subjects::rewards("cached")).await.unwrap();
    client.flush().await.unwrap();
    let j = job("cached", 1, &ds.dataset_id, &[("p_flip", 0.5)]);
    runtime::publish(
        &js,
        subjects::jobs(&j.study),
        Some(&j.job_id),
        protocol::encode(&j).unwrap(),
    )
    .await
    .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(120), rewards.next())
        .await
        .expect("reward within 120 s")
        .unwrap();
    let r: Reward = protocol::decode(&msg.payload).unwrap();
    assert_eq!(r.job_id, "cached-0001");
    assert_eq!(r.per_case.len(), ds.manifest.validation_cases().count());
    assert!(
        r.mean.is_finite() && (0.0..=1.0).contains(&r.mean),
        "{}",
        r.mean
    );
    // Every case is in the host's cache folder, fetched by the trainer; the evaluator mapped
    // the same files without reading the store.
    let cases = ds.manifest.cases.len();
    let files = std::fs::read_dir(cache_dir.join(&ds.dataset_id))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "case")
        })
        .count();
    assert_eq!(files, cases);
    let gets =
        |c: &engine::cache::CaseCache| c.stats().gets.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(gets(&trainer_cache), 2 * cases as u64);
    assert_eq!(gets(&evaluator_cache), 0);
    stop_tx.send(true).unwrap();
    t.await.unwrap().unwrap();
    e.await.unwrap().unwrap();
}
