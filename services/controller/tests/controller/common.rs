//! The harness: a real nats-server per test, an in-memory store shared by everyone in the
//! test, the controller's own `run()` in a task, and a trainer+evaluator peer that pulls real
//! `TrainJob`s from the `trainers` consumer and publishes real `Reward`s (from a cheap analytic
//! function of the strategy instead of training).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, AckKind, consumer::pull};
use controller::{App, Options};
use futures::StreamExt;
use protocol::{
    JobFailed, Reward, SCHEMA_VERSION, StudyEvent, StudyEventKind, StudySpec, TrainJob, subjects,
};
use storage::DynStore;
use test_support::NatsServer;
use tokio::task::JoinHandle;

pub const DATASET: &str = "synth-test-0001";
/// Upper bound for anything a test waits on; a healthy run takes a fraction of it.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub struct Env {
    pub nats: NatsServer,
    pub js: jetstream::Context,
    pub store: DynStore,
}

impl Env {
    pub async fn start() -> Self {
        test_support::init_test_tracing();
        let nats = NatsServer::start();
        let js = jetstream::new(nats.client().await);
        runtime::provision_with_retry(&js, None).await.unwrap();
        let store = storage::open("memory://").unwrap();
        Self { nats, js, store }
    }

    /// A controller `App` on its own NATS connection (so aborting its task drops the
    /// connection, as a killed process would), with short timings.
    pub async fn app(&self) -> App {
        let js = jetstream::new(self.nats.client().await);
        App::new(
            js,
            self.store.clone(),
            Options {
                ack_wait: Duration::from_secs(1),
                poll: Duration::from_millis(200),
            },
        )
    }

    /// `controller::run` in a task; `stop()` shuts it down, `kill()` aborts it.
    pub async fn spawn_controller(&self) -> Controller {
        let app = self.app().await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            controller::run(app, async {
                let _ = rx.await;
            })
            .await
            .unwrap()
        });
        Controller {
            handle,
            shutdown: Some(tx),
        }
    }

    /// Marks `id` as a preprocessed dataset (the controller only checks the manifest exists).
    pub async fn put_dataset(&self, id: &str) {
        storage::put(
            &self.store,
            &storage::keys::manifest(id).unwrap(),
            b"test".to_vec(),
        )
        .await
        .unwrap();
    }

    pub async fn submit(&self, spec: &StudySpec) {
        runtime::publish(
            &self.js,
            subjects::SUBMISSIONS.to_string(),
            None,
            protocol::encode(spec).unwrap(),
        )
        .await
        .unwrap();
    }

    pub async fn state(&self, study: &str) -> controller::StudyState {
        controller::read_state(&self.store, study)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no state for {study}"))
    }
}

pub struct Controller {
    handle: JoinHandle<()>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Controller {
    pub async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        tokio::time::timeout(PATIENCE, &mut self.handle)
            .await
            .expect("controller stops")
            .unwrap();
    }

    /// Like SIGKILL: the task (and every study task it owns) is dropped wherever it is.
    pub async fn kill(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }
}

/// A small study on the pre-made dataset: 3 augmentation probabilities and a learning rate.
pub fn spec(study: &str, searcher: &str, max_jobs: u32, parallel: u32) -> StudySpec {
    study::testing::StudySpecBuilder::new(study)
        .dataset_id(DATASET)
        .space_of(&["p_noise", "p_flip", "p_shift", "learning_rate"])
        .searcher(searcher)
        .max_jobs(max_jobs)
        .parallel(parallel)
        .max_failures(3)
        .seed(7)
        .build()
}

/// The analytic "validation Dice" of a strategy: 1 − mean (u − 0.3)², in (0.5, 1].
pub fn dice_of(job: &TrainJob) -> f64 {
    let u = &job.strategy.unit;
    1.0 - u.values().map(|x| (x - 0.3).powi(2)).sum::<f64>() / u.len().max(1) as f64
}

/// What the fake trainer does with a job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    Reward,
    /// The reward published three times: same msg id (JetStream drops it) and a new one twice.
    RewardThrice,
    /// Dead-lettered (`JobFailed` on `segtune.deadletter.<study>`), then terminated.
    Fail,
    /// Dropped without an ack, nak or dead letter, as a trainer killed on the job would.
    Crash,
}

pub struct Trainer {
    pub jobs: Arc<Mutex<Vec<TrainJob>>>,
    /// When each pull of `jobs` happened (seconds since the Unix epoch), in the same order.
    pub pulled_at: Arc<Mutex<Vec<f64>>>,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl Trainer {
    /// Pulls jobs one at a time from the shared `trainers` consumer, like a trainer replica
    /// followed by an evaluator; `delay` is its "training time".
    pub fn spawn(
        js: &jetstream::Context,
        delay: Duration,
        decide: impl Fn(&TrainJob) -> Action + Send + Sync + 'static,
    ) -> Self {
        let js = js.clone();
        let jobs = Arc::new(Mutex::new(Vec::new()));
        let pulled_at = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, seen_at, stopped) = (jobs.clone(), pulled_at.clone(), stop.clone());
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
                seen.lock().unwrap().push(job.clone());
                seen_at.lock().unwrap().push(controller::study::now_unix());
                tokio::time::sleep(delay).await;
                match decide(&job) {
                    Action::Crash => {
                        drop(msg);
                        continue;
                    }
                    Action::Fail => {
                        let failed = JobFailed {
                            schema: SCHEMA_VERSION,
                            study: job.study.clone(),
                            job_id: job.job_id.clone(),
                            reason: "test: poison job".into(),
                            original_subject: subjects::jobs(&job.study),
                            deliveries: 1,
                            worker: "fake-trainer".into(),
                        };
                        publish(
                            &js,
                            subjects::deadletter(&job.study),
                            &format!("dlq-{}", job.job_id),
                            &failed,
                        )
                        .await;
                        msg.ack_with(AckKind::Term).await.unwrap();
                        continue;
                    }
                    action => {
                        let reward = reward(&job);
                        let subject = subjects::rewards(&job.study);
                        publish(&js, subject.clone(), &job.job_id, &reward).await;
                        if action == Action::RewardThrice {
                            publish(&js, subject.clone(), &job.job_id, &reward).await;
                            let again = format!("{}-again", job.job_id);
                            publish(&js, subject.clone(), &again, &reward).await;
                            let third = format!("{}-third", job.job_id);
                            publish(&js, subject, &third, &reward).await;
                        }
                    }
                }
                msg.double_ack().await.unwrap();
            }
        });
        Self {
            jobs,
            pulled_at,
            stop,
            handle,
        }
    }

    /// Stops after the job in hand; returns every job it pulled.
    pub async fn stop(self) -> Vec<TrainJob> {
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(PATIENCE, self.handle)
            .await
            .expect("trainer stops")
            .unwrap();
        self.jobs.lock().unwrap().clone()
    }
}

pub fn reward(job: &TrainJob) -> Reward {
    let mean = dice_of(job);
    Reward {
        schema: SCHEMA_VERSION,
        study: job.study.clone(),
        job_id: job.job_id.clone(),
        index: job.index,
        strategy: job.strategy.clone(),
        per_case: Vec::new(),
        per_class: vec![mean],
        mean,
        checkpoint_key: storage::keys::checkpoint(&job.study, &job.job_id).unwrap(),
        trainer: "fake-trainer".into(),
        attempt: 1,
        train_seconds: 0.5,
        final_loss: 0.25,
        eval_seconds: 0.1,
        pruned: false,
        epoch_reached: job.training.epochs,
    }
}

pub async fn publish<T: serde::Serialize>(
    js: &jetstream::Context,
    subject: String,
    msg_id: &str,
    value: &T,
) {
    runtime::publish(js, subject, Some(msg_id), protocol::encode(value).unwrap())
        .await
        .unwrap();
}

/// Reads the study's events from the start until `until` says stop (or panics after
/// [`PATIENCE`], printing what it saw).
pub async fn events_until(
    js: &jetstream::Context,
    study: &str,
    until: impl Fn(&StudyEvent) -> bool,
) -> Vec<StudyEvent> {
    let stream = js.get_stream(subjects::stream::EVENTS).await.unwrap();
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subjects::study_events(study),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = tokio::time::timeout(left, messages.next()).await;
        let Ok(Some(msg)) = next else {
            panic!(
                "study {study}: gave up waiting; events so far: {:#?}",
                seen.iter().map(brief).collect::<Vec<_>>()
            );
        };
        let event: StudyEvent = protocol::decode(&msg.unwrap().payload).unwrap();
        let stop = until(&event);
        seen.push(event);
        if stop {
            return seen;
        }
    }
}

/// Events until `Done` or `Failed`.
pub async fn final_events(js: &jetstream::Context, study: &str) -> Vec<StudyEvent> {
    events_until(js, study, |e| {
        matches!(
            e.event,
            StudyEventKind::Done { .. } | StudyEventKind::Failed { .. }
        )
    })
    .await
}

/// Events until the `n`th counted reward.
pub async fn events_until_rewards(js: &jetstream::Context, study: &str, n: u32) -> Vec<StudyEvent> {
    events_until(
        js,
        study,
        |e| matches!(e.event, StudyEventKind::Reward { rewards_so_far, .. } if rewards_so_far >= n),
    )
    .await
}

/// A one-line summary of an event, for failure messages.
pub fn brief(e: &StudyEvent) -> String {
    match &e.event {
        StudyEventKind::Started { dataset_id, .. } => format!("started {dataset_id}"),
        StudyEventKind::Issued { job_id, .. } => format!("issued {job_id}"),
        StudyEventKind::Reward {
            job_id,
            rewards_so_far,
            ..
        } => format!("reward {job_id} ({rewards_so_far})"),
        StudyEventKind::NewBest { job_id, mean, .. } => format!("best {job_id} {mean:.4}"),
        StudyEventKind::JobFailed { job_id, .. } => format!("job failed {job_id}"),
        StudyEventKind::Done {
            best_job_id,
            rewards,
            ..
        } => format!("done {best_job_id} after {rewards}"),
        StudyEventKind::Failed { reason } => format!("failed: {reason}"),
        StudyEventKind::Extended {
            max_jobs,
            previous_max_jobs,
        } => format!("extended {previous_max_jobs} -> {max_jobs}"),
        StudyEventKind::Pruned { job_id, epoch, .. } => format!("pruned {job_id} at {epoch}"),
    }
}

/// Counts the events of each kind.
pub fn kinds(events: &[StudyEvent]) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for e in events {
        let k = match e.event {
            StudyEventKind::Started { .. } => "started",
            StudyEventKind::Issued { .. } => "issued",
            StudyEventKind::Reward { .. } => "reward",
            StudyEventKind::NewBest { .. } => "new_best",
            StudyEventKind::JobFailed { .. } => "job_failed",
            StudyEventKind::Done { .. } => "done",
            StudyEventKind::Failed { .. } => "failed",
            StudyEventKind::Extended { .. } => "extended",
            StudyEventKind::Pruned { .. } => "pruned",
        };
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

/// True when the durable consumer `name` exists on `stream`.
pub async fn consumer_exists(js: &jetstream::Context, stream: &str, name: &str) -> bool {
    let s = js.get_stream(stream).await.unwrap();
    s.consumer_info(name).await.is_ok()
}

/// Polls `f` until it is true or [`PATIENCE`] runs out.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
