//! Pruning: trainers that report learning curves, a pruner in the controller that stops the
//! weak jobs at the rungs worked out by hand, a restart that keeps its decisions, and the
//! races of a stop with a job's end.
//!
//! The fake trainer below plays the real one's part of the protocol: it reports a
//! `ValidationReport` at each epoch of the job's plan, reads the job's stop subject from the
//! start, and on a stop publishes the pruned `Reward` (the stop's Dice and epoch) instead of
//! finishing. So that the decisions depend only on the order of the reports (and not on how
//! fast a stop travels), it waits after each report until the controller has acknowledged it.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use protocol::{
    PruningSpec, Reward, SCHEMA_VERSION, StopJob, StudyEventKind, TrainJob, ValidationReport,
    subjects,
};
use storage::DynStore;
use tokio::task::JoinHandle;

use crate::common::*;

/// How a fake job ends.
#[derive(Debug, Clone, PartialEq)]
enum End {
    Completed(f64),
    Pruned { epoch: u32, dice: f64 },
}

/// A trainer whose job of quality `q` (by job index) has validation Dice `q * epoch / epochs`
/// after each epoch and `q` at the end.
struct CurveTrainer {
    ends: Arc<Mutex<BTreeMap<u32, End>>>,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl CurveTrainer {
    /// `honour_stops = false`: a trainer that never reads stops (its jobs always finish).
    fn spawn(
        js: &jetstream::Context,
        store: &DynStore,
        quality: impl Fn(u32) -> f64 + Send + Sync + 'static,
        honour_stops: bool,
    ) -> Self {
        let (js, store) = (js.clone(), store.clone());
        let ends = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ends2, stopped) = (ends.clone(), stop.clone());
        let handle = tokio::spawn(async move {
            let consumer = runtime::consumer(&js, subjects::durable::TRAINERS)
                .await
                .unwrap();
            while !stopped.load(Ordering::SeqCst) {
                let Some(msg) = runtime::pull_one(&consumer, Duration::from_millis(100))
                    .await
                    .unwrap()
                else {
                    continue;
                };
                let job: TrainJob = protocol::decode(&msg.payload).unwrap();
                let q = quality(job.index);
                let end = run_curve(&js, &store, &job, q, honour_stops).await;
                let reward = match &end {
                    End::Completed(mean) => Reward {
                        mean: *mean,
                        per_class: vec![*mean],
                        ..reward(&job)
                    },
                    End::Pruned { epoch, dice } => Reward {
                        mean: *dice,
                        per_class: Vec::new(),
                        pruned: true,
                        epoch_reached: *epoch,
                        ..reward(&job)
                    },
                };
                publish(&js, subjects::rewards(&job.study), &job.job_id, &reward).await;
                msg.double_ack().await.unwrap();
                ends2.lock().unwrap().insert(job.index, end);
            }
        });
        Self { ends, stop, handle }
    }

    async fn stop(self) -> BTreeMap<u32, End> {
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(PATIENCE, self.handle)
            .await
            .expect("trainer stops")
            .unwrap();
        self.ends.lock().unwrap().clone()
    }
}

/// One job's epochs: a report at each planned epoch, then (if the controller stopped the
/// job) its pruned end, else its complete one.
async fn run_curve(
    js: &jetstream::Context,
    store: &DynStore,
    job: &TrainJob,
    q: f64,
    honour_stops: bool,
) -> End {
    let plan = job
        .validation
        .clone()
        .expect("a job of a pruned study has a plan");
    let epochs = job.training.epochs;
    let stops = js.get_stream(subjects::stream::STOPS).await.unwrap();
    let mut stop_feed = stops
        .create_consumer(pull::OrderedConfig {
            filter_subject: subjects::stop(&job.study, &job.job_id),
            ..Default::default()
        })
        .await
        .unwrap()
        .messages()
        .await
        .unwrap();
    for epoch in 1..=epochs {
        if !plan.epochs.contains(&epoch) {
            continue;
        }
        let dice = q * epoch as f64 / epochs as f64;
        let report = ValidationReport {
            schema: SCHEMA_VERSION,
            study: job.study.clone(),
            job_id: job.job_id.clone(),
            index: job.index,
            worker: "curve-trainer".into(),
            attempt: 1,
            epoch,
            epochs,
            step: epoch as u64 * 8,
            dice,
            per_class: vec![dice],
            train_seconds: epoch as f64,
            validation_seconds: 0.01,
        };
        let ack = runtime::publish(
            js,
            subjects::validation(&job.study, &job.job_id),
            Some(&subjects::validation_msg_id(&job.job_id, epoch)),
            protocol::encode(&report).unwrap(),
        )
        .await
        .unwrap();
        let stopped = decided(js, store, job, ack.sequence).await;
        if stopped && honour_stops {
            let msg = tokio::time::timeout(PATIENCE, stop_feed.next())
                .await
                .expect("the stop arrives")
                .unwrap()
                .unwrap();
            let stop: StopJob = protocol::decode(&msg.payload).unwrap();
            assert_eq!(
                (stop.job_id.as_str(), stop.epoch),
                (job.job_id.as_str(), epoch)
            );
            return End::Pruned {
                epoch: stop.epoch,
                dice: stop.dice,
            };
        }
    }
    End::Completed(q)
}

/// Waits until the controller has acknowledged the report stored at `sequence`; whether it
/// stopped the job then (its saved ledger, written before the ack).
async fn decided(js: &jetstream::Context, store: &DynStore, job: &TrainJob, sequence: u64) -> bool {
    let stream = js.get_stream(subjects::stream::VALIDATION).await.unwrap();
    let durable = subjects::durable::validation(&job.study);
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(info) = stream.consumer_info(&durable).await
            && info.ack_floor.stream_sequence >= sequence
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the controller never took the report"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let state = controller::read_state(store, &job.study)
        .await
        .unwrap()
        .unwrap();
    state.jobs[&job.job_id].stop.is_some()
}

fn asha() -> PruningSpec {
    PruningSpec {
        kind: "asha".into(),
        eta: Some(3),
        min_epochs: Some(1),
        ..Default::default()
    }
}

/// One job at a time, so the reports reach the pruner in issue order.
fn pruned_spec(
    study: &str,
    pruning: PruningSpec,
    max_jobs: u32,
    epochs: u32,
) -> protocol::StudySpec {
    let mut spec = spec(study, "random", max_jobs, 1);
    spec.training.epochs = epochs;
    spec.pruning = Some(pruning);
    spec
}

/// Job qualities of the ASHA examples (by job index, from 1).
const ASHA_Q: [f64; 9] = [0.5, 0.4, 0.6, 0.55, 0.3, 0.58, 0.9, 0.2, 0.7];

/// Worked by hand (eta 3, rungs at epochs 1 and 3 of 9; a job goes on when among the top
/// max(1, n / 3) of the n values at its rung): pruned at epoch 1: jobs 2, 4, 5, 8; at epoch
/// 3: jobs 6 (0.58 < 0.6 of [0.5, 0.6, 0.58]) and 9 (0.7 < 0.9 of five); jobs 1, 3, 7 train
/// to the end.
fn asha_expected() -> BTreeMap<u32, End> {
    let q = |i: u32| ASHA_Q[i as usize - 1];
    (1..=9)
        .map(|i| {
            let end = match i {
                2 | 4 | 5 | 8 => End::Pruned {
                    epoch: 1,
                    dice: q(i) / 9.0,
                },
                6 | 9 => End::Pruned {
                    epoch: 3,
                    dice: q(i) * 3.0 / 9.0,
                },
                _ => End::Completed(q(i)),
            };
            (i, end)
        })
        .collect()
}

async fn check_ledger(env: &Env, study: &str, expected: &BTreeMap<u32, End>) {
    let state = env.state(study).await;
    assert!(
        matches!(state.phase, controller::Phase::Done),
        "{:?}",
        state.phase
    );
    // Issued = rewarded + failed, one reward per job, pruned ones marked.
    assert_eq!(state.jobs.len(), expected.len());
    assert_eq!(state.rewards.len() + state.failures.len(), state.jobs.len());
    for r in &state.rewards {
        let want_pruned = matches!(expected[&r.index], End::Pruned { .. });
        assert_eq!(r.pruned, want_pruned, "job {}", r.job_id);
        let stop = state.jobs[&r.job_id].stop.as_ref();
        assert_eq!(stop.is_some(), want_pruned, "job {}", r.job_id);
    }
    // The best is a completed job.
    let best = state.best.unwrap();
    let (i, _) = expected
        .iter()
        .filter_map(|(i, e)| match e {
            End::Completed(q) => Some((*i, *q)),
            _ => None,
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    assert_eq!(best.job_id, study::job_id(study, i));
}

fn close(a: &BTreeMap<u32, End>, b: &BTreeMap<u32, End>) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((i, x), (j, y))| {
            i == j
                && match (x, y) {
                    (End::Completed(p), End::Completed(q)) => (p - q).abs() < 1e-12,
                    (End::Pruned { epoch: e, dice: d }, End::Pruned { epoch: f, dice: g }) => {
                        e == f && (d - g).abs() < 1e-12
                    }
                    _ => false,
                }
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asha_stops_the_weak_jobs_at_the_expected_rungs() {
    let env = Env::start().await;
    env.put_dataset(DATASET).await;
    let trainer = CurveTrainer::spawn(&env.js, &env.store, |i| ASHA_Q[i as usize - 1], true);
    let controller = env.spawn_controller().await;
    env.submit(&pruned_spec("asha", asha(), 9, 9)).await;
    let events = final_events(&env.js, "asha").await;
    let ends = trainer.stop().await;
    let expected = asha_expected();
    assert!(close(&ends, &expected), "{ends:#?}\nexpected {expected:#?}");
    let pruned: Vec<(String, u32)> = events
        .iter()
        .filter_map(|e| match &e.event {
            StudyEventKind::Pruned { job_id, epoch, .. } => Some((job_id.clone(), *epoch)),
            _ => None,
        })
        .collect();
    let want: Vec<(String, u32)> = [(2, 1), (4, 1), (5, 1), (6, 3), (8, 1), (9, 3)]
        .iter()
        .map(|(i, e)| (study::job_id("asha", *i), *e))
        .collect();
    assert_eq!(pruned, want);
    check_ledger(&env, "asha", &expected).await;
    // Every job's plan validates at the rungs.
    assert_eq!(
        env.state("asha").await.spec.pruning.unwrap().kind,
        "asha".to_string()
    );
    controller.stop().await;
}

/// Optuna's median rule with `min_jobs = 2`, `warmup_steps = 2`, reports after epochs 1, 2,
/// 3 of 4 and Dice `q * epoch / 4`. Worked by hand: jobs 1 and 2 run while fewer than two
/// jobs completed; job 3 (0.6) is above the median of [0.5, 0.4]; job 4 (0.45) is below the
/// median 0.5 of [0.5, 0.4, 0.6] but inside the warm-up at epoch 1, so it is stopped at epoch
/// 2; job 5 (0.7) runs; job 6 (0.3) is stopped at epoch 2 (median 0.55 of four).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_median_rule_waits_for_warm_up_and_completed_jobs() {
    const Q: [f64; 6] = [0.5, 0.4, 0.6, 0.45, 0.7, 0.3];
    let env = Env::start().await;
    env.put_dataset(DATASET).await;
    let trainer = CurveTrainer::spawn(&env.js, &env.store, |i| Q[i as usize - 1], true);
    let controller = env.spawn_controller().await;
    let median = PruningSpec {
        kind: "median".into(),
        report_every_epochs: Some(1),
        warmup_steps: Some(2),
        min_jobs: Some(2),
        ..Default::default()
    };
    env.submit(&pruned_spec("median", median, 6, 4)).await;
    final_events(&env.js, "median").await;
    let ends = trainer.stop().await;
    let expected: BTreeMap<u32, End> = (1..=6)
        .map(|i| {
            let q = Q[i as usize - 1];
            let end = match i {
                4 | 6 => End::Pruned {
                    epoch: 2,
                    dice: q * 2.0 / 4.0,
                },
                _ => End::Completed(q),
            };
            (i, end)
        })
        .collect();
    assert!(close(&ends, &expected), "{ends:#?}\nexpected {expected:#?}");
    check_ledger(&env, "median", &expected).await;
    controller.stop().await;
}

/// The controller killed three times during an ASHA study (each time right after a stop was
/// decided) resumes with the pruner's state from the store: the same jobs are stopped at the
/// same rungs as without the kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_keeps_the_pruners_decisions() {
    let env = Env::start().await;
    env.put_dataset(DATASET).await;
    let trainer = CurveTrainer::spawn(&env.js, &env.store, |i| ASHA_Q[i as usize - 1], true);
    let mut controller = env.spawn_controller().await;
    env.submit(&pruned_spec("phoenix-asha", asha(), 9, 9)).await;
    for index in [2, 5, 8] {
        let stopped = study::job_id("phoenix-asha", index);
        events_until(
            &env.js,
            "phoenix-asha",
            |e| matches!(&e.event, StudyEventKind::Pruned { job_id, .. } if *job_id == stopped),
        )
        .await;
        controller.kill().await;
        let state = env.state("phoenix-asha").await;
        let resumed = controller::resume_all(&env.app().await).await.unwrap();
        let study = resumed.iter().find(|s| s.id() == "phoenix-asha").unwrap();
        assert_eq!(
            study.pruner().save(),
            state.pruner.to_vec(),
            "pruner state lost"
        );
        assert_eq!(study.pruner().kind(), "asha");
        controller = env.spawn_controller().await;
    }
    final_events(&env.js, "phoenix-asha").await;
    let ends = trainer.stop().await;
    let expected = asha_expected();
    assert!(close(&ends, &expected), "{ends:#?}\nexpected {expected:#?}");
    check_ledger(&env, "phoenix-asha", &expected).await;
    controller.stop().await;
}

/// A trainer that never reads its stops (the job finished before the stop reached it): the
/// stop is decided and announced, but each job's complete reward is what counts, once, and
/// the ledger stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_for_a_job_that_finished_changes_nothing() {
    let env = Env::start().await;
    env.put_dataset(DATASET).await;
    let trainer = CurveTrainer::spawn(&env.js, &env.store, |i| ASHA_Q[i as usize - 1], false);
    let controller = env.spawn_controller().await;
    env.submit(&pruned_spec("late-stop", asha(), 4, 9)).await;
    let events = final_events(&env.js, "late-stop").await;
    let ends = trainer.stop().await;
    assert!(
        ends.values().all(|e| matches!(e, End::Completed(_))),
        "{ends:?}"
    );
    let k = kinds(&events);
    assert_eq!(
        k.get("pruned"),
        Some(&2),
        "jobs 2 and 4 were stopped: {k:?}"
    );
    assert_eq!(k.get("reward"), Some(&4));
    let state = env.state("late-stop").await;
    assert_eq!(state.rewards.len(), 4);
    for r in &state.rewards {
        assert!(!r.pruned);
        assert_eq!(
            r.mean,
            ASHA_Q[r.index as usize - 1],
            "the complete reward counts"
        );
    }
    // A pruned reward arriving now for a stopped job that was already rewarded is ignored.
    let job_id = study::job_id("late-stop", 2);
    let stopped = state.jobs[&job_id].stop.clone().unwrap();
    let late = Reward {
        study: "late-stop".into(),
        job_id: job_id.clone(),
        index: 2,
        mean: stopped.dice,
        pruned: true,
        epoch_reached: stopped.epoch,
        per_class: Vec::new(),
        ..reward(&fake_job("late-stop", 2))
    };
    publish(&env.js, subjects::rewards("late-stop"), "late-dup", &late).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = env.state("late-stop").await;
    assert_eq!(after.rewards, state.rewards);
    controller.stop().await;
}

/// A stopped job whose trainers all die on it is dead-lettered: it counts as a failure (not a
/// reward), is replaced, and the ledger stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_job_that_is_dead_lettered_counts_once_as_a_failure() {
    let env = Env::start().await;
    env.put_dataset(DATASET).await;
    let controller = env.spawn_controller().await;
    env.submit(&pruned_spec("dead-stop", asha(), 3, 9)).await;
    // Play the trainer by hand: job 1 reports and completes, job 2 reports low and is
    // stopped, then its dead letter (a trainer that never answered) arrives.
    let consumer = runtime::consumer(&env.js, subjects::durable::TRAINERS)
        .await
        .unwrap();
    let mut answered = 0;
    while answered < 4 {
        let Some(msg) = runtime::pull_one(&consumer, PATIENCE).await.unwrap() else {
            panic!("no job");
        };
        let job: TrainJob = protocol::decode(&msg.payload).unwrap();
        let q = if job.index == 2 {
            0.1
        } else {
            0.5 + job.index as f64 / 10.0
        };
        let report = ValidationReport {
            schema: SCHEMA_VERSION,
            study: job.study.clone(),
            job_id: job.job_id.clone(),
            index: job.index,
            worker: "hand".into(),
            attempt: 1,
            epoch: 1,
            epochs: 9,
            step: 8,
            dice: q / 9.0,
            per_class: vec![],
            train_seconds: 1.0,
            validation_seconds: 0.0,
        };
        let ack = runtime::publish(
            &env.js,
            subjects::validation(&job.study, &job.job_id),
            Some(&subjects::validation_msg_id(&job.job_id, 1)),
            protocol::encode(&report).unwrap(),
        )
        .await
        .unwrap();
        let stopped = decided(&env.js, &env.store, &job, ack.sequence).await;
        if stopped {
            assert_eq!(job.index, 2);
            let failed = protocol::JobFailed {
                schema: SCHEMA_VERSION,
                study: job.study.clone(),
                job_id: job.job_id.clone(),
                reason: "test: every trainer died on it".into(),
                original_subject: subjects::jobs(&job.study),
                deliveries: 3,
                worker: String::new(),
            };
            publish(&env.js, subjects::deadletter(&job.study), "dl-2", &failed).await;
            msg.ack_with(async_nats::jetstream::AckKind::Term)
                .await
                .unwrap();
        } else {
            publish(
                &env.js,
                subjects::rewards(&job.study),
                &job.job_id,
                &Reward {
                    mean: q,
                    ..reward(&job)
                },
            )
            .await;
            msg.double_ack().await.unwrap();
        }
        answered += 1;
    }
    final_events(&env.js, "dead-stop").await;
    let state = env.state("dead-stop").await;
    assert_eq!(state.jobs.len(), 4, "job 2 was replaced once");
    assert_eq!(state.rewards.len(), 3);
    assert_eq!(state.failures.len(), 1);
    assert_eq!(state.failures[0].job_id, study::job_id("dead-stop", 2));
    assert!(state.rewards.iter().all(|r| !r.pruned));
    controller.stop().await;
}

fn fake_job(study: &str, index: u32) -> TrainJob {
    TrainJob {
        schema: SCHEMA_VERSION,
        study: study.into(),
        job_id: study::job_id(study, index),
        index,
        dataset_id: DATASET.into(),
        strategy: Default::default(),
        training: Default::default(),
        seed: 0,
        final_model: None,
        validation: None,
    }
}
