//! `segtune study confirm` over the bus: a real broker, the real controller and preprocessor
//! run a small random study, and an analytic trainer (a Dice computed from the strategy and
//! the seed instead of training, as a trainer replica followed by the evaluator would publish
//! it) takes the study's jobs and then the confirmation's. The confirmation must train every
//! arm with the same fresh seeds and the study's budget under `<study>-confirm`, pair the
//! arms' Dice seed by seed, find the augmentation effect the analytic trainer has built in,
//! publish the result on `segtune.confirmations.<study>`, and leave the study's own rewards
//! alone.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use protocol::{
    ArmKind, Confirmation, Reward, SCHEMA_VERSION, Strategy, TrainJob, strategy, subjects,
};
use segtune::study::confirm;
use test_support::NatsServer;

use crate::support;

/// A number in [0, 1) from `x` (SplitMix64's finalizer).
fn u(x: u64) -> f64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as f64 / 2f64.powi(64)
}

/// The analytic trainer's Dice: augmentation helps (0.3 × the mean probability), a learning
/// rate near 3e-3 helps (up to 0.1), plus seed noise shared by every strategy of a seed
/// (up to 0.02) and a little that is not (up to 0.004).
fn analytic_dice(s: &Strategy, seed: u64) -> f64 {
    let probs: Vec<f64> = s
        .values
        .iter()
        .filter(|(k, _)| k.starts_with(strategy::PROBABILITY_PREFIX))
        .map(|(_, v)| *v)
        .collect();
    let mean_p = probs.iter().sum::<f64>() / probs.len().max(1) as f64;
    let lr = s
        .values
        .get(strategy::LEARNING_RATE)
        .copied()
        .unwrap_or(strategy::ROUTINE_LEARNING_RATE);
    let lr_term = 0.1 * (1.0 - ((lr.log10() + 2.5).abs() / 1.5)).clamp(0.0, 1.0);
    0.4 + 0.3 * mean_p + lr_term + 0.02 * u(seed) + 0.004 * u(seed ^ mean_p.to_bits())
}

/// Pulls jobs from the `trainers` consumer one at a time and publishes their analytic
/// rewards under the job id, as the evaluator does; records every job.
fn spawn_analytic_trainer(
    js: &async_nats::jetstream::Context,
) -> (Arc<Mutex<Vec<TrainJob>>>, tokio::task::JoinHandle<()>) {
    let js = js.clone();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let jobs = seen.clone();
    let task = tokio::spawn(async move {
        let consumer = runtime::consumer(&js, subjects::durable::TRAINERS)
            .await
            .unwrap();
        loop {
            let Some(msg) = runtime::pull_one(&consumer, Duration::from_millis(200))
                .await
                .unwrap()
            else {
                continue;
            };
            let job: TrainJob = protocol::decode(&msg.payload).unwrap();
            let mean = analytic_dice(&job.strategy, job.seed);
            let reward = Reward {
                schema: SCHEMA_VERSION,
                study: job.study.clone(),
                job_id: job.job_id.clone(),
                index: job.index,
                strategy: job.strategy.clone(),
                per_case: Vec::new(),
                per_class: vec![mean],
                mean,
                checkpoint_key: storage::keys::checkpoint(&job.study, &job.job_id).unwrap(),
                trainer: "analytic".into(),
                attempt: 1,
                train_seconds: 0.0,
                final_loss: 0.0,
                eval_seconds: 0.0,
                pruned: false,
                epoch_reached: job.training.epochs,
            };
            runtime::publish(
                &js,
                subjects::rewards(&job.study),
                Some(&job.job_id),
                protocol::encode(&reward).unwrap(),
            )
            .await
            .unwrap();
            jobs.lock().unwrap().push(job);
            msg.double_ack().await.unwrap();
        }
    });
    (seen, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_pairs_fresh_seeds_and_measures_the_augmentation_against_its_ablation() {
    test_support::init_test_tracing();
    let nats = NatsServer::start();
    let store_dir = tempfile::tempdir().unwrap();
    let store = store_dir.path().join("store").display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let task = support::synth_task(&dir.path().join("task"), 3);
    let spec = support::random_study(dir.path(), &task, "conf", 4, 1);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (pre_tx, pre_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = controller::App::connect(&controller::Settings {
        nats: nats.url(),
        store: store.clone(),
        ack_wait_secs: 30.0,
        job_ack_wait_secs: 60.0,
        stream_replicas: 1,
    })
    .await
    .unwrap();
    let controller = tokio::spawn(controller::run(controller, async move {
        let _ = stop_rx.await;
    }));
    let pre = preprocessor::App::connect(&preprocessor::Settings {
        nats: nats.url(),
        store: store.clone(),
        parallel_cases: 2,
        max_voxels: 4_000_000,
    })
    .await
    .unwrap();
    let pre = tokio::spawn(preprocessor::run(pre, async move {
        let _ = pre_rx.await;
    }));
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let (jobs, trainer) = spawn_analytic_trainer(&js);

    let mut events = support::study_events(&js, &spec.study).await;
    support::submit(&js, &spec).await;
    let rewards = support::study_outcome(&mut events, Duration::from_secs(120), "study")
        .await
        .unwrap();
    assert_eq!(rewards, 4);

    let c = confirm::confirm(
        &client,
        &js,
        &confirm::Request {
            study: spec.study.clone(),
            seeds: 3,
            top: 2,
            seed: 0,
            timeout: Some(Duration::from_secs(120)),
        },
    )
    .await
    .unwrap();

    // The arms: the two best strategies of the study, each with its ablation, the routine.
    let names: Vec<&str> = c.arms.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        ["top1", "top1-noaug", "top2", "top2-noaug", "routine"]
    );
    let study_jobs: Vec<TrainJob> = jobs
        .lock()
        .unwrap()
        .iter()
        .filter(|j| j.study == spec.study)
        .cloned()
        .collect();
    let mut ranked: Vec<(f64, &TrainJob)> = study_jobs
        .iter()
        .map(|j| (analytic_dice(&j.strategy, j.seed), j))
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    assert_eq!(
        c.arms[0].source_job.as_deref(),
        Some(ranked[0].1.job_id.as_str())
    );
    assert_eq!(
        c.arms[2].source_job.as_deref(),
        Some(ranked[1].1.job_id.as_str())
    );
    assert_eq!(c.arms[0].strategy, ranked[0].1.strategy);
    assert_eq!(c.arms[4].strategy, strategy::routine_strategy());
    assert_eq!(c.arms[1].kind, ArmKind::Ablation);

    // Every arm trained with the same fresh seeds and the study's budget, under
    // `<study>-confirm`; the Dice per seed are what the trainer published.
    let confirm_jobs: Vec<TrainJob> = jobs
        .lock()
        .unwrap()
        .iter()
        .filter(|j| j.study == confirm::confirm_study_id(&spec.study))
        .cloned()
        .collect();
    assert_eq!(confirm_jobs.len(), 15);
    assert_eq!(c.seeds, confirm::fresh_seeds(spec.seed, 0, 3));
    for arm in &c.arms {
        for (s, (job_id, dice)) in arm.job_ids.iter().zip(&arm.dice).enumerate() {
            let job = confirm_jobs
                .iter()
                .find(|j| &j.job_id == job_id)
                .unwrap_or_else(|| panic!("{job_id} never trained"));
            assert_eq!(job.seed, c.seeds[s], "{job_id}");
            assert_eq!(job.training, spec.training, "{job_id}");
            assert_eq!(job.strategy, arm.strategy, "{job_id}");
            assert!(
                !study_jobs.iter().any(|j| j.seed == job.seed),
                "seed reused"
            );
            assert_eq!(*dice, Some(analytic_dice(&arm.strategy, c.seeds[s])));
        }
    }

    // Paired differences: the winner's augmentation helps by 0.3 × its mean probability,
    // beyond the seeds' noise.
    let vs_ablation = &c.comparisons[0];
    assert_eq!(
        (vs_ablation.arm.as_str(), vs_ablation.baseline.as_str()),
        ("top1", "top1-noaug")
    );
    for (s, d) in vs_ablation.diffs.iter().enumerate() {
        let want = c.arms[0].dice[s].unwrap() - c.arms[1].dice[s].unwrap();
        assert_eq!(*d, want);
    }
    assert!(vs_ablation.ci95[0] > 0.0, "{vs_ablation:?}");
    assert_eq!(c.comparisons[1].baseline, "routine");
    let text = confirm::render(&c);
    assert!(
        text.contains("top1: its augmentation beats no augmentation by"),
        "{text}"
    );

    // Published and kept; the study's own rewards are only the search's.
    let stored: Vec<Confirmation> = segtune::study::bus::replay(
        &js,
        subjects::stream::CONFIRMATIONS,
        &subjects::confirmations(&spec.study),
    )
    .await
    .unwrap();
    assert_eq!(stored, vec![c.clone()]);
    let own: Vec<Reward> = segtune::study::bus::replay(
        &js,
        subjects::stream::REWARDS,
        &subjects::rewards(&spec.study),
    )
    .await
    .unwrap();
    assert_eq!(own.len(), 4);

    // examples/subscribe_rewards.py prints the study's rewards and the confirmation: its five
    // arms and its four paired differences.
    let url = nats.url();
    let study = spec.study.clone();
    let py = tokio::task::spawn_blocking(move || {
        test_support::python_subscriber_lines(&url, &study, 4 + 5 + 4)
    })
    .await
    .unwrap();
    if let Some((lines, stderr)) = py {
        let count = |prefix: &str| lines.iter().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(count("#"), 4, "{lines:?}; stderr: {stderr}");
        let prefix = format!("confirm {} ", c.run_id);
        assert_eq!(count(&prefix), 9, "{lines:?}; stderr: {stderr}");
        let top1 = c.arms[0].dice.iter().map(|d| format!("{:.4}", d.unwrap()));
        let want = format!(
            "{prefix}top1 mean={:.4} dice={}",
            c.arms[0].mean,
            top1.collect::<Vec<_>>().join(" ")
        );
        assert!(lines.contains(&want), "no {want:?} in {lines:?}");
        let p = &c.comparisons[0];
        let want = format!(
            "{prefix}top1-top1-noaug diff={:+.4} ci95=[{:+.4}, {:+.4}] seeds=3",
            p.mean, p.ci95[0], p.ci95[1]
        );
        assert!(lines.contains(&want), "no {want:?} in {lines:?}");
    }

    trainer.abort();
    let _ = stop_tx.send(());
    let _ = pre_tx.send(());
    controller.await.unwrap().unwrap();
    pre.await.unwrap().unwrap();
}
