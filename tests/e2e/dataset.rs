//! Studies on a raw MSD folder: the controller asks the real preprocessor service and waits
//! for its answer; a folder that cannot be preprocessed fails the study. The test answers
//! every job with a reward itself (no training), so preprocessing is the only real work.

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream;
use futures::StreamExt;
use protocol::{
    DatasetRef, DatasetSource, PreprocessParams, Reward, SCHEMA_VERSION, StudyEvent,
    StudyEventKind, StudySpec, TrainJob, subjects,
};
use storage::DynStore;
use test_support::NatsServer;

/// Upper bound for anything a test waits on; a healthy run takes a fraction of it.
const PATIENCE: Duration = Duration::from_secs(60);

/// A broker, an in-memory store and the services the test started on them, each on its own
/// connection.
struct Env {
    nats: NatsServer,
    js: jetstream::Context,
    store: DynStore,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Env {
    async fn start() -> Self {
        test_support::init_test_tracing();
        let nats = NatsServer::start();
        let js = jetstream::new(nats.client().await);
        runtime::provision_with_retry(&js, None).await.unwrap();
        Self {
            nats,
            js,
            store: storage::open("memory://").unwrap(),
            stops: Vec::new(),
            tasks: Vec::new(),
        }
    }

    fn stop_signal(&mut self) -> impl std::future::Future<Output = ()> + use<> {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        self.stops.push(tx);
        async move {
            let _ = rx.await;
        }
    }

    async fn spawn_controller(&mut self) {
        let app = controller::App::new(
            jetstream::new(self.nats.client().await),
            self.store.clone(),
            controller::Options {
                ack_wait: Duration::from_secs(1),
                poll: Duration::from_millis(200),
            },
        );
        let stop = self.stop_signal();
        self.tasks.push(tokio::spawn(controller::run(app, stop)));
    }

    async fn spawn_preprocessor(&mut self) {
        let app = preprocessor::App {
            js: jetstream::new(self.nats.client().await),
            store: self.store.clone(),
            options: dataprep::Options::default(),
            worker: "test-preprocessor".into(),
        };
        let stop = self.stop_signal();
        self.tasks.push(tokio::spawn(preprocessor::run(app, stop)));
    }

    /// Shuts the services down and asserts each stops cleanly.
    async fn stop(self) {
        for tx in self.stops {
            let _ = tx.send(());
        }
        for t in self.tasks {
            tokio::time::timeout(PATIENCE, t)
                .await
                .expect("services stop on shutdown")
                .unwrap()
                .unwrap();
        }
    }
}

/// Plays trainer and evaluator: pulls jobs one at a time from the `trainers` consumer and
/// publishes a reward for each (under the job id, as the evaluator does).
struct Rewarder {
    jobs: Arc<Mutex<Vec<TrainJob>>>,
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<()>,
}

impl Rewarder {
    fn spawn(js: &jetstream::Context) -> Self {
        let js = js.clone();
        let jobs = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopped) = (jobs.clone(), stop.clone());
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
                let reward = Reward {
                    schema: SCHEMA_VERSION,
                    study: job.study.clone(),
                    job_id: job.job_id.clone(),
                    index: job.index,
                    strategy: job.strategy.clone(),
                    per_case: Vec::new(),
                    per_class: vec![0.5],
                    mean: 0.5,
                    checkpoint_key: storage::keys::checkpoint(&job.study, &job.job_id).unwrap(),
                    trainer: "test-rewarder".into(),
                    attempt: 1,
                    train_seconds: 0.5,
                    final_loss: 0.25,
                    eval_seconds: 0.1,
                    pruned: false,
                    epoch_reached: 0,
                };
                runtime::publish(
                    &js,
                    subjects::rewards(&job.study),
                    Some(&job.job_id),
                    protocol::encode(&reward).unwrap(),
                )
                .await
                .unwrap();
                seen.lock().unwrap().push(job);
                msg.double_ack().await.unwrap();
            }
        });
        Self { jobs, stop, handle }
    }

    /// Stops after the job in hand; returns every job it pulled.
    async fn stop(self) -> Vec<TrainJob> {
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(PATIENCE, self.handle)
            .await
            .expect("the rewarder stops")
            .unwrap();
        self.jobs.lock().unwrap().clone()
    }
}

/// A random-search study of 3 jobs, 2 at a time, on the MSD folder `dir`.
fn source_spec(study: &str, dir: &Path) -> StudySpec {
    study::testing::StudySpecBuilder::new(study)
        .dataset(DatasetRef::Source {
            source: DatasetSource::Local {
                path: dir.to_string_lossy().into_owned(),
            },
            params: PreprocessParams::default(),
        })
        .searcher("random")
        .max_jobs(3)
        .parallel(2)
        .build()
}

/// The study's events from the start until `Done` or `Failed`.
async fn final_events(js: &jetstream::Context, study: &str) -> Vec<StudyEvent> {
    let mut messages = crate::support::study_events(js, study).await;
    let mut seen = Vec::new();
    loop {
        let Ok(Some(msg)) = tokio::time::timeout(PATIENCE, messages.next()).await else {
            panic!("study {study}: no end within {PATIENCE:?}; events so far: {seen:#?}");
        };
        let event: StudyEvent = protocol::decode(&msg.unwrap().payload).unwrap();
        let end = matches!(
            event.event,
            StudyEventKind::Done { .. } | StudyEventKind::Failed { .. }
        );
        seen.push(event);
        if end {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_study_waits_for_preprocessing_then_runs() {
    let mut env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let task = crate::support::synth_task(&dir.path().join("synth-ct"), 1);
    env.spawn_controller().await;
    // The controller asks before any preprocessor is up; the request waits in its queue.
    crate::support::submit(&env.js, &source_spec("raw", &task)).await;
    let rewarder = Rewarder::spawn(&env.js);
    env.spawn_preprocessor().await;

    let events = final_events(&env.js, "raw").await;
    let StudyEventKind::Started { dataset_id, .. } = &events[0].event else {
        panic!("{events:#?}");
    };
    assert!(
        storage::exists(&env.store, &storage::keys::manifest(dataset_id).unwrap())
            .await
            .unwrap(),
        "the dataset the study runs on is in the store"
    );
    assert!(
        matches!(
            events.last().unwrap().event,
            StudyEventKind::Done { rewards: 3, .. }
        ),
        "{events:#?}"
    );
    let jobs = rewarder.stop().await;
    assert_eq!(jobs.len(), 3);
    assert!(jobs.iter().all(|j| &j.dataset_id == dataset_id));
    let state = controller::read_state(&env.store, "raw")
        .await
        .unwrap()
        .expect("the study's state is saved");
    assert_eq!(state.dataset_id.as_ref(), Some(dataset_id));
    assert!(state.dataset_request.unwrap().starts_with("raw-"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_cannot_be_preprocessed_fails_the_study() {
    let mut env = Env::start().await;
    let empty = tempfile::tempdir().unwrap();
    env.spawn_controller().await;
    env.spawn_preprocessor().await;
    crate::support::submit(&env.js, &source_spec("nodata", empty.path())).await;
    let events = final_events(&env.js, "nodata").await;
    assert_eq!(events.len(), 1, "no Started, no jobs: {events:#?}");
    let StudyEventKind::Failed { reason } = &events[0].event else {
        panic!("{events:#?}");
    };
    assert!(reason.contains("preprocessing"), "{reason}");
    env.stop().await;
}
