//! Worker faults against a real nats-server, each printing its figures (docs/reliability.md,
//! "Worker faults", explains them): a trainer process killed (-9) 30 % into a job; a job
//! lasting 10x AckWait kept by progress acks, and redelivered without them (the negative
//! control); no prefetch with three trainers and twelve jobs; a stale trainer (SIGSTOP past
//! AckWait) fenced by its delivery attempt.
//!
//! AckWait is a few seconds here, set the way the controller's `--job-ack-wait-secs` sets it
//! (`runtime::provision_with`). Jobs are the tiny synthetic task made long by epochs, sized
//! from an epoch time measured once. The tests take turns: they time things on a shared CPU.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use protocol::{Progress, Reward, TrainJob, Trained, subjects};
use test_support::NatsServer;

use crate::train::{job, preprocessed};

/// One fault test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Seconds per epoch of a [`long_job`] on one trainer alone, measured once.
static EPOCH_SECS: tokio::sync::OnceCell<f64> = tokio::sync::OnceCell::const_new();

/// The preprocessed synthetic task in a file store.
struct Data {
    _dir: tempfile::TempDir,
    store_url: String,
    dataset_id: String,
}

async fn data() -> Data {
    let dir = tempfile::tempdir().unwrap();
    let store_url = dir.path().join("store").display().to_string();
    let ds = preprocessed(dir.path(), &store_url).await;
    Data {
        _dir: dir,
        store_url,
        dataset_id: ds.dataset_id,
    }
}

/// A job of `epochs` epochs of 4 patches.
fn long_job(study: &str, index: u32, data: &Data, epochs: u32) -> TrainJob {
    let mut j = job(study, index, &data.dataset_id, &[("learning_rate", 1e-3)]);
    j.training.epochs = epochs;
    j
}

/// Epochs for a job of about `secs` on one trainer alone.
async fn epochs_for(data: &Data, secs: f64) -> u32 {
    let epoch = *EPOCH_SECS
        .get_or_init(|| async {
            // One trainer alone, a job of 8 epochs.
            let bus = Bus::start(Duration::from_secs(30)).await;
            let watch = Watch::start(&bus.client, "calibrate").await;
            let t = TrainerTask::start(&bus, data, "trainer-cal", true).await;
            bus.publish(&long_job("calibrate", 1, data, 8)).await;
            let trained = watch
                .trained("calibrate-0001", Duration::from_secs(120))
                .await;
            t.stop().await;
            let epoch = trained.train_seconds / 8.0;
            eprintln!("calibration: {epoch:.3} s per epoch (4 patches of 16^3, channels [4, 8])");
            epoch
        })
        .await;
    ((secs / epoch).ceil() as u32).clamp(3, 20_000)
}

/// A broker with the topology provisioned as the controller provisions it with
/// `--job-ack-wait-secs`.
struct Bus {
    nats: NatsServer,
    client: async_nats::Client,
    js: jetstream::Context,
}

impl Bus {
    async fn start(ack_wait: Duration) -> Self {
        let nats = NatsServer::start();
        let client = nats.client().await;
        let js = jetstream::new(client.clone());
        runtime::provision_with(&js, None, Some(ack_wait))
            .await
            .unwrap();
        // A worker's own provisioning keeps the controller's AckWait.
        runtime::provision(&js, None).await.unwrap();
        let bus = Self { nats, client, js };
        for durable in runtime::JOB_CONSUMERS {
            let c = runtime::consumer(&bus.js, durable).await.unwrap();
            assert_eq!(runtime::consumer_ack_wait(&c).await, ack_wait, "{durable}");
        }
        bus
    }

    async fn trainers(&self) -> PullConsumer {
        runtime::consumer(&self.js, subjects::durable::TRAINERS)
            .await
            .unwrap()
    }

    async fn trainers_info(&self) -> jetstream::consumer::Info {
        self.trainers().await.get_info().await.unwrap()
    }

    async fn publish(&self, j: &TrainJob) {
        runtime::publish(
            &self.js,
            subjects::jobs(&j.study),
            Some(&j.job_id),
            protocol::encode(j).unwrap(),
        )
        .await
        .unwrap();
    }

    /// Waits until the trainers' consumer has made `n` deliveries; when it made the n-th
    /// (to within the 20 ms poll).
    async fn delivered(&self, n: u64, timeout: Duration) -> Instant {
        let consumer = self.trainers().await;
        let deadline = Instant::now() + timeout;
        loop {
            let info = consumer.get_info().await.unwrap();
            if info.delivered.consumer_sequence >= n {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "delivery {n} did not happen within {timeout:?}: {info:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every reward of `study` in the REWARDS stream (not a subscription: what a replay sees).
    async fn rewards_in_stream(&self, study: &str) -> Vec<Reward> {
        let mut stream = self.js.get_stream(subjects::stream::REWARDS).await.unwrap();
        let last = stream.info().await.unwrap().state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            if let Ok(m) = stream.get_raw_message(seq).await
                && m.subject.as_str() == subjects::rewards(study)
            {
                out.push(protocol::decode(&m.payload).unwrap());
            }
        }
        out
    }

    /// Waits for the reward of `job_id`, then gives a duplicate 1 s to show up; returns every
    /// reward of the job in the stream.
    async fn rewards_of(&self, study: &str, job_id: &str, timeout: Duration) -> Vec<Reward> {
        let deadline = Instant::now() + timeout;
        loop {
            let of_job = |all: Vec<Reward>| -> Vec<Reward> {
                all.into_iter().filter(|r| r.job_id == job_id).collect()
            };
            if !of_job(self.rewards_in_stream(study).await).is_empty() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                return of_job(self.rewards_in_stream(study).await);
            }
            assert!(Instant::now() < deadline, "no reward for {job_id}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A service run as a task of this process until stopped.
struct ServiceTask {
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl ServiceTask {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(15), self.handle)
            .await
            .expect("service stops within 15 s")
            .unwrap()
            .unwrap();
    }
}

struct TrainerTask;

impl TrainerTask {
    /// A trainer named `name`; `progress_acks: false` is the negative control's trainer.
    async fn start(bus: &Bus, data: &Data, name: &str, progress_acks: bool) -> ServiceTask {
        let mut app = trainer::App::connect(&trainer::Settings {
            nats: bus.nats.url(),
            store: data.store_url.clone(),
            device: "cpu".into(),
            augment_workers: None,
            cache: Default::default(),
        })
        .await
        .unwrap();
        app.worker = name.to_string();
        app.options.progress_acks = progress_acks;
        let (stop, rx) = tokio::sync::oneshot::channel();
        let handle = tokio::spawn(trainer::run(app, async move {
            let _ = rx.await;
        }));
        ServiceTask { stop, handle }
    }
}

async fn evaluator_task(bus: &Bus, data: &Data) -> ServiceTask {
    let app = evaluator::App::connect(&evaluator::Settings {
        nats: bus.nats.url(),
        store: data.store_url.clone(),
        device: "cpu".into(),
        cache: Default::default(),
    })
    .await
    .unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel();
    let handle = tokio::spawn(evaluator::run(app, async move {
        let _ = rx.await;
    }));
    ServiceTask { stop, handle }
}

/// What every fault test starts from: its turn (the tests time things on a shared CPU),
/// tracing, the preprocessed data, a broker provisioned with `ack_wait`, a watch on its
/// study and, when asked for, an evaluator in this process.
/// `Fault::builder(study, ack_wait).job_secs(s).evaluator().start()`.
struct Fault {
    study: &'static str,
    ack_wait: Duration,
    /// Epochs of a job lasting about the builder's `job_secs` on one trainer alone.
    epochs: u32,
    evaluator: Option<ServiceTask>,
    watch: Watch,
    bus: Bus,
    data: Data,
    // Last: dropped after the broker and the data, so the next test starts on a quiet CPU.
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

struct FaultBuilder {
    study: &'static str,
    ack_wait: Duration,
    job_secs: f64,
    evaluator: bool,
}

impl FaultBuilder {
    /// How long a job of [`Fault::epochs`] should last (calibrated once per test binary).
    fn job_secs(self, job_secs: f64) -> Self {
        Self { job_secs, ..self }
    }

    /// Also run an evaluator, so that trained jobs get rewards.
    fn evaluator(self) -> Self {
        Self {
            evaluator: true,
            ..self
        }
    }

    async fn start(self) -> Fault {
        let turn = SERIAL.lock().await;
        test_support::init_test_tracing();
        let data = data().await;
        let epochs = epochs_for(&data, self.job_secs).await;
        let bus = Bus::start(self.ack_wait).await;
        let watch = Watch::start(&bus.client, self.study).await;
        let evaluator = if self.evaluator {
            Some(evaluator_task(&bus, &data).await)
        } else {
            None
        };
        Fault {
            study: self.study,
            ack_wait: self.ack_wait,
            epochs,
            evaluator,
            watch,
            bus,
            data,
            _turn: turn,
        }
    }
}

impl Fault {
    fn builder(study: &'static str, ack_wait: Duration) -> FaultBuilder {
        FaultBuilder {
            study,
            ack_wait,
            job_secs: 3.0,
            evaluator: false,
        }
    }

    /// Job `index` of the study, of `epochs` epochs.
    fn job(&self, index: u32, epochs: u32) -> TrainJob {
        long_job(self.study, index, &self.data, epochs)
    }

    async fn trainer_task(&self, name: &str, progress_acks: bool) -> ServiceTask {
        TrainerTask::start(&self.bus, &self.data, name, progress_acks).await
    }

    fn trainer_process(&self, name: &str) -> TrainerProcess {
        TrainerProcess::start(&self.bus, &self.data, name)
    }

    /// A fresh broker (same AckWait) and a watch on `study`, for a second part of a test.
    async fn restart_bus(&mut self, study: &'static str) {
        self.bus = Bus::start(self.ack_wait).await;
        self.watch = Watch::start(&self.bus.client, study).await;
        self.study = study;
    }

    /// Stops the evaluator (if any) and checks it exited cleanly.
    async fn stop(self) {
        if let Some(e) = self.evaluator {
            e.stop().await;
        }
    }
}

#[derive(Debug, Clone)]
enum Event {
    Progress(Progress),
    /// Every `Trained` published, duplicates included (a core subscription, not the stream).
    Trained(Trained),
}

impl Event {
    fn job_worker(&self) -> (&str, &str) {
        match self {
            Event::Progress(p) => (&p.job_id, &p.worker),
            Event::Trained(t) => (&t.job_id, &t.worker),
        }
    }
}

type Events = Arc<Mutex<Vec<(Instant, Event)>>>;

/// Progress reports and `Trained` publishes of one study, timestamped on arrival.
struct Watch {
    events: Events,
    _task: tokio::task::JoinHandle<()>,
}

impl Watch {
    async fn start(client: &async_nats::Client, study: &str) -> Self {
        let mut progress = client
            .subscribe(subjects::progress_all(study))
            .await
            .unwrap();
        let mut trained = client.subscribe(subjects::trained(study)).await.unwrap();
        client.flush().await.unwrap();
        let events = Events::default();
        let sink = events.clone();
        let task = tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    Some(m) = progress.next() => Event::Progress(protocol::decode(&m.payload).unwrap()),
                    Some(m) = trained.next() => Event::Trained(protocol::decode(&m.payload).unwrap()),
                    else => return,
                };
                sink.lock().unwrap().push((Instant::now(), event));
            }
        });
        Self {
            events,
            _task: task,
        }
    }

    fn snapshot(&self) -> Vec<(Instant, Event)> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until `found` picks something from the events.
    async fn until<T>(
        &self,
        what: &str,
        timeout: Duration,
        found: impl Fn(&[(Instant, Event)]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(t) = found(&self.snapshot()) {
                return t;
            }
            assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The first progress report matching `f`, with its arrival time.
    async fn progress(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&Progress) -> bool,
    ) -> (Instant, Progress) {
        self.until(what, timeout, |evs| {
            evs.iter().find_map(|(t, e)| match e {
                Event::Progress(p) if f(p) => Some((*t, p.clone())),
                _ => None,
            })
        })
        .await
    }

    async fn trained(&self, job_id: &str, timeout: Duration) -> Trained {
        self.until(&format!("Trained for {job_id}"), timeout, |evs| {
            evs.iter().find_map(|(_, e)| match e {
                Event::Trained(t) if t.job_id == job_id => Some(t.clone()),
                _ => None,
            })
        })
        .await
    }

    fn trained_of(&self, job_id: &str) -> Vec<Trained> {
        self.snapshot()
            .into_iter()
            .filter_map(|(_, e)| match e {
                Event::Trained(t) if t.job_id == job_id => Some(t),
                _ => None,
            })
            .collect()
    }
}

/// A `segtune-trainer` process, its stderr lines timestamped; SIGKILLed on drop.
struct TrainerProcess {
    child: Child,
    log: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl TrainerProcess {
    fn start(bus: &Bus, data: &Data, name: &str) -> Self {
        let mut child = Command::new(crate::support::build_binaries().join("segtune-trainer"))
            .env("SEGTUNE_NATS", bus.nats.url())
            .env("SEGTUNE_STORE", &data.store_url)
            .env("SEGTUNE_WORKER", name)
            .env("SEGTUNE_DEVICE", "cpu")
            .env("SEGTUNE_LOG", "info,async_nats=warn")
            .env("NO_COLOR", "1")
            .env_remove("SEGTUNE_NATS_USER")
            .env_remove("SEGTUNE_NATS_PASSWORD")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start segtune-trainer");
        let log: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let sink = log.clone();
        let stderr = child.stderr.take().unwrap();
        let echo = std::env::var_os("TEST_LOG").is_some();
        let name = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("[{name}] {line}");
                }
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        Self { child, log }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, signal);
        }
    }

    /// When the process first logged a line containing `needle`.
    fn logged(&self, needle: &str) -> Option<Instant> {
        let log = self.log.lock().unwrap();
        log.iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(t, _)| *t)
    }

    async fn wait_logged(&self, needle: &str, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(t) = self.logged(needle) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "the trainer did not log {needle:?} within {timeout:?}; its log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_text(&self) -> String {
        let log = self.log.lock().unwrap();
        log.iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the process to exit; its status and how long that took.
    async fn wait_exit(&mut self, timeout: Duration) -> (std::process::ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, start.elapsed());
            }
            assert!(
                start.elapsed() < timeout,
                "the trainer did not exit within {timeout:?}; its log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        let status = self.child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
    }
}

impl Drop for TrainerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGCONT);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

const TRAINER_READY: &str = "trainer ready";

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A trainer process killed with SIGKILL 30 % into a job. Nothing tells the broker
/// (no nak, the connection just drops), so the job comes back when its AckWait runs out
/// after the last progress ack: between 2/3 AckWait and AckWait after the kill. Another
/// replica trains it (attempt 2) and exactly one reward exists for the job id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_30_percent_redelivers_after_ack_wait_to_another_trainer_one_reward() {
    let ack_wait = Duration::from_secs(2);
    let f = Fault::builder("kill9", ack_wait)
        .job_secs(4.0 * secs(ack_wait))
        .evaluator()
        .start()
        .await;
    let (bus, watch, study, epochs) = (&f.bus, &f.watch, f.study, f.epochs);
    let mut a = f.trainer_process("trainer-a");
    a.wait_logged(TRAINER_READY, Duration::from_secs(120)).await;
    let j = f.job(1, epochs);
    bus.publish(&j).await;
    watch
        .progress("A trains the job", Duration::from_secs(60), |p| {
            p.worker == "trainer-a"
        })
        .await;
    // An idle replica, pulling before the kill.
    let mut b = f.trainer_process("trainer-b");
    b.wait_logged(TRAINER_READY, Duration::from_secs(60)).await;
    let at = (epochs * 3).div_ceil(10);
    watch
        .progress("A 30 % into the job", Duration::from_secs(120), |p| {
            p.worker == "trainer-a" && p.epoch >= at
        })
        .await;
    a.kill9();
    let killed = Instant::now();

    let redelivered = bus
        .delivered(2, ack_wait * 3 + Duration::from_secs(10))
        .await
        .duration_since(killed);
    let (_, p) = watch
        .progress("B trains the job", Duration::from_secs(60), |p| {
            p.worker == "trainer-b"
        })
        .await;
    assert_eq!((p.job_id.as_str(), p.attempt), (j.job_id.as_str(), 2));
    let rewards = bus
        .rewards_of(study, &j.job_id, Duration::from_secs(180))
        .await;
    eprintln!(
        "kill -9 at epoch {at}/{epochs}: redelivered {:.2} s after the kill (AckWait {:.1} s), \
         rewards for the job: {}",
        secs(redelivered),
        secs(ack_wait),
        rewards.len()
    );
    // Not at the disconnect: when the last progress ack's AckWait runs out.
    assert!(
        redelivered >= ack_wait / 2 && redelivered <= ack_wait + Duration::from_millis(1500),
        "redelivered {redelivered:?} after the kill, AckWait {ack_wait:?}"
    );
    assert_eq!(rewards.len(), 1, "{rewards:?}");
    assert_eq!(
        (rewards[0].trainer.as_str(), rewards[0].attempt),
        ("trainer-b", 2)
    );
    assert_eq!(watch.trained_of(&j.job_id).len(), 1);
    let info = bus.trainers_info().await;
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0), "{info:?}");
    assert!(b.running());
    f.stop().await;
}

/// SIGTERM to a trainer process mid-job (what `docker stop` and Kubernetes send):
/// it naks the job and exits 0 within 2 s, and an idle replica starts the job within 5 s. The
/// AckWait is long (30 s), so only the nak can hand the job over that fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_job_naks_exits_0_within_2_s_and_another_replica_starts_it_within_5_s() {
    let f = Fault::builder("sigterm-process", Duration::from_secs(30))
        .job_secs(60.0)
        .start()
        .await;
    let (bus, watch) = (&f.bus, &f.watch);
    let mut a = f.trainer_process("trainer-a");
    a.wait_logged(TRAINER_READY, Duration::from_secs(120)).await;
    let j = f.job(1, f.epochs);
    bus.publish(&j).await;
    watch
        .progress("A trains the job", Duration::from_secs(60), |p| {
            p.worker == "trainer-a" && p.epoch >= 1
        })
        .await;
    let b = f.trainer_process("trainer-b");
    b.wait_logged(TRAINER_READY, Duration::from_secs(60)).await;

    a.signal(libc::SIGTERM);
    let signalled = Instant::now();
    let (status, exited) = a.wait_exit(Duration::from_secs(10)).await;
    let redelivered = bus
        .delivered(2, Duration::from_secs(10))
        .await
        .duration_since(signalled);
    let (started, p) = watch
        .progress("B trains the job", Duration::from_secs(10), |p| {
            p.worker == "trainer-b"
        })
        .await;
    let b_started = b
        .logged("training")
        .map(|t| t.duration_since(signalled))
        .unwrap_or_else(|| started.duration_since(signalled));
    eprintln!(
        "SIGTERM mid-job: A exited {status} after {:.2} s; job redelivered {:.2} s after the signal; B's first progress report {:.2} s after it (one epoch is {:.2} s)",
        secs(exited),
        secs(redelivered),
        secs(started.duration_since(signalled)),
        *EPOCH_SECS.get().unwrap(),
    );
    assert_eq!(status.code(), Some(0), "A's exit status: {status}");
    assert!(
        exited <= Duration::from_secs(2),
        "A took {exited:?} to exit"
    );
    assert!(
        redelivered <= Duration::from_secs(2),
        "the job came back {redelivered:?} after SIGTERM: not naked"
    );
    assert!(
        b_started <= Duration::from_secs(5),
        "B started the job {b_started:?} after SIGTERM"
    );
    assert_eq!((p.job_id.as_str(), p.attempt), (j.job_id.as_str(), 2));
    assert!(
        a.log_text().contains("naked"),
        "A's log does not mention the nak:\n{}",
        a.log_text()
    );
    drop(b);
}

/// End to end, the store stops accepting the trainer's writes while it trains (its
/// job folder is replaced by a plain file: ENOTDIR, since chmod does not stop root). Storing
/// the checkpoint is retried, then fails as transient: the job is naked, not acked and not
/// dead-lettered, nothing is published and no checkpoint or temp file exists. Once the
/// folder is back, the job's next delivery trains and stores it and the evaluator scores it:
/// one `Trained`, one reward, from a complete checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_refusing_the_checkpoint_naks_the_job_and_it_completes_once_the_store_is_back() {
    // Long AckWait: only the trainer's nak can bring the job back before the test ends.
    let f = Fault::builder("storefail", Duration::from_secs(60))
        .job_secs(3.0)
        .evaluator()
        .start()
        .await;
    let (bus, watch, study, data) = (&f.bus, &f.watch, f.study, &f.data);
    let trainer = f.trainer_task("trainer-a", true).await;
    let j = f.job(1, f.epochs);
    bus.publish(&j).await;
    watch
        .progress("the trainer is training", Duration::from_secs(60), |p| {
            p.epoch >= 1
        })
        .await;

    // The job's folder in the store (its delivery record is in it) becomes a plain file.
    let store = Path::new(&data.store_url);
    let job_dir = store
        .join("studies")
        .join(study)
        .join("jobs")
        .join(&j.job_id);
    let aside = store.join("job-folder-aside");
    std::fs::rename(&job_dir, &aside).unwrap();
    std::fs::write(&job_dir, b"not a folder").unwrap();
    let broken = Instant::now();
    watch
        .progress("the last epoch", Duration::from_secs(120), |p| {
            p.epoch == p.epochs
        })
        .await;
    // The checkpoint put's retries (1.5 s of backoff), then the nak (redelivery delayed 5 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let info = bus.trainers_info().await;
    assert_eq!(info.delivered.consumer_sequence, 1, "{info:?}");
    assert!(
        watch.trained_of(&j.job_id).is_empty(),
        "published a Trained"
    );
    assert!(
        bus.rewards_in_stream(study).await.is_empty(),
        "a reward without a checkpoint"
    );
    // (The calibration study may share this store: only this study's files count.)
    let leftovers = files_under(&store.join("studies").join(study))
        .into_iter()
        .filter(|f| f.contains("safetensors") || f.contains('#'))
        .collect::<Vec<_>>();
    assert!(leftovers.is_empty(), "partial writes left: {leftovers:?}");

    // The store is back; the job's next delivery completes it.
    std::fs::remove_file(&job_dir).unwrap();
    std::fs::rename(&aside, &job_dir).unwrap();
    let redelivered = bus
        .delivered(2, Duration::from_secs(30))
        .await
        .duration_since(broken);
    let trained = watch.trained(&j.job_id, Duration::from_secs(120)).await;
    let rewards = bus
        .rewards_of(study, &j.job_id, Duration::from_secs(120))
        .await;
    eprintln!(
        "store refused writes: the job came back {:.1} s after the folder broke (nak after the \
         last epoch and the put's retries), trained at attempt {}, {} reward(s)",
        secs(redelivered),
        trained.attempt,
        rewards.len()
    );
    assert_eq!(trained.attempt, 2);
    assert_eq!(watch.trained_of(&j.job_id).len(), 1);
    assert_eq!(rewards.len(), 1, "{rewards:?}");
    assert_eq!(rewards[0].checkpoint_key, trained.checkpoint_key);
    let dead = test_support::stream_payloads(
        &bus.js,
        subjects::stream::DEADLETTER,
        &subjects::deadletter(study),
    )
    .await;
    assert!(
        dead.is_empty(),
        "a transient store failure was dead-lettered"
    );
    trainer.stop().await;
    f.stop().await;
}

/// Every file below `dir`, as paths relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out
}

/// A job lasting over 10x AckWait keeps its one delivery with progress acks
/// (attempt 1, nothing redelivered); the negative control, the same trainer with progress
/// acks off, loses its job to an idle replica after one AckWait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_lasting_10x_ack_wait_keeps_one_delivery_and_without_progress_acks_is_redelivered() {
    let ack_wait = Duration::from_millis(1500);

    // Negative control: no progress acks.
    let mut f = Fault::builder("noprogress", ack_wait)
        .job_secs(6.0 * secs(ack_wait))
        .start()
        .await;
    let a = f.trainer_task("trainer-a", false).await;
    let j = f.job(1, f.epochs);
    f.bus.publish(&j).await;
    let first = f.bus.delivered(1, Duration::from_secs(30)).await;
    let b = f.trainer_task("trainer-b", true).await;
    let second = f
        .bus
        .delivered(2, ack_wait * 2 + Duration::from_secs(10))
        .await;
    let (_, p) = f
        .watch
        .progress(
            "B trains the redelivered job",
            Duration::from_secs(60),
            |p| p.worker == "trainer-b",
        )
        .await;
    assert_eq!(p.attempt, 2);
    let without = second.duration_since(first);
    a.stop().await;
    b.stop().await;

    // Progress acks on: a job of over 10x AckWait. The shared CPU's speed drifts by 2x over
    // minutes, so the job is sized from an epoch time measured just before it (96 epochs;
    // the first ones are slower, while the augmentation workers start: it errs short, by
    // up to 2x when it measured 24), aiming at 30x.
    f.restart_bus("progress").await;
    let (bus, watch) = (&f.bus, &f.watch);
    let t = f.trainer_task("trainer-p", true).await;
    bus.publish(&f.job(1, 96)).await;
    let epoch = watch
        .trained("progress-0001", Duration::from_secs(120))
        .await
        .train_seconds
        / 96.0;
    let epochs = ((30.0 * secs(ack_wait) / epoch).ceil() as u32).clamp(3, 30_000);
    // An idle replica that would take the job if it were ever redelivered.
    let idle = f.trainer_task("trainer-idle", true).await;
    let j = f.job(2, epochs);
    // Both have a pull in flight; whichever gets the job keeps it.
    let pulling = segtune::study::bus::await_pullers(
        &bus.js,
        subjects::durable::TRAINERS,
        2,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert!(pulling, "two trainers pulling");
    bus.publish(&j).await;
    let delivered = bus.delivered(2, Duration::from_secs(30)).await;
    let trained = watch
        .trained(&j.job_id, Duration::from_secs(15 * 4) + ack_wait * 60)
        .await;
    let held = delivered.elapsed();
    let info = bus.trainers_info().await;
    t.stop().await;
    idle.stop().await;
    eprintln!(
        "AckWait {:.1} s: without progress acks redelivered after {:.2} s; with them a job of \
         {epochs} epochs held its delivery {:.1} s = {:.1}x AckWait (training {:.1} s), \
         attempt {}, deliveries {}, redelivered {}",
        secs(ack_wait),
        secs(without),
        secs(held),
        held.as_secs_f64() / secs(ack_wait),
        trained.train_seconds,
        trained.attempt,
        info.delivered.consumer_sequence,
        info.num_redelivered,
    );
    assert!(
        without >= ack_wait - Duration::from_millis(250)
            && without <= ack_wait + Duration::from_millis(1500),
        "without progress acks redelivered after {without:?}, AckWait {ack_wait:?}"
    );
    assert!(
        held >= ack_wait * 10,
        "the job took only {held:?}, not 10x AckWait: it proves nothing (the CPU got faster \
         than the calibration said?)"
    );
    assert_eq!(trained.attempt, 1);
    assert_eq!(watch.trained_of(&j.job_id).len(), 1);
    assert_eq!(
        (info.delivered.consumer_sequence, info.num_redelivered),
        (2, 0),
        "{info:?}"
    );
}

/// No prefetch. Three trainers, twelve jobs of over AckWait each, the consumer's
/// state sampled every 100 ms: it never has more jobs out than trainers without a pull
/// waiting (each idle trainer has exactly one pull for one message out; a busy one none),
/// no trainer ever works on two jobs at once, and nothing is redelivered (a prefetched job
/// would sit in a busy trainer's buffer without progress acks until its AckWait ran out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_trainers_twelve_jobs_never_hold_more_jobs_than_busy_trainers() {
    let ack_wait = Duration::from_millis(1500);
    let f = Fault::builder("prefetch", ack_wait)
        .job_secs(1.5 * secs(ack_wait))
        .start()
        .await;
    let (bus, watch, epochs) = (&f.bus, &f.watch, f.epochs);
    let mut trainers = Vec::new();
    for i in 0..3 {
        trainers.push(f.trainer_task(&format!("trainer-{i}"), true).await);
    }
    let consumer = bus.trainers().await;
    let pulling = segtune::study::bus::await_pullers(
        &bus.js,
        subjects::durable::TRAINERS,
        3,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert!(pulling, "three pulls waiting");

    let started = Instant::now();
    for i in 1..=12 {
        bus.publish(&f.job(i, epochs)).await;
    }
    // (num_ack_pending, num_waiting) every 100 ms until the twelfth `Trained`.
    let mut samples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let info = consumer.get_info().await.unwrap();
        samples.push((info.num_ack_pending, info.num_waiting));
        let trained = watch
            .snapshot()
            .iter()
            .filter(|(_, e)| matches!(e, Event::Trained(_)))
            .count();
        if trained >= 12 {
            break;
        }
        assert!(Instant::now() < deadline, "twelve jobs within 600 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = started.elapsed();
    let info = consumer.get_info().await.unwrap();
    for t in trainers {
        t.stop().await;
    }

    let events = watch.snapshot();
    let mut per_worker: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, e) in &events {
        let (job_id, worker) = e.job_worker();
        let seq = per_worker.entry(worker.to_string()).or_default();
        if seq.last().map(String::as_str) != Some(job_id) {
            seq.push(job_id.to_string());
        }
    }
    let max_pending = samples.iter().map(|s| s.0).max().unwrap_or(0);
    let over = samples.iter().filter(|(p, w)| p + w > 3).count();
    let busy_3 = samples.iter().filter(|(p, _)| *p == 3).count();
    eprintln!(
        "no prefetch: 3 trainers, 12 jobs of {epochs} epochs in {:.1} s (AckWait {:.1} s); \
         {} samples: max jobs pending ack {max_pending}, samples with pending + waiting > 3: \
         {over}, with all three busy: {busy_3}; jobs per trainer {:?}; redelivered {}",
        secs(wall),
        secs(ack_wait),
        samples.len(),
        per_worker
            .iter()
            .map(|(w, jobs)| (w.as_str(), jobs.len()))
            .collect::<Vec<_>>(),
        info.num_redelivered,
    );
    assert!(samples.len() >= 20, "too few samples to mean anything");
    assert_eq!(
        over, 0,
        "jobs pending ack beyond the busy trainers: {samples:?}"
    );
    assert!(max_pending <= 3);
    // One job at a time per trainer: a worker's reports never go back to an earlier job.
    for (worker, jobs) in &per_worker {
        let mut seen = std::collections::BTreeSet::new();
        for j in jobs {
            assert!(seen.insert(j), "{worker} interleaved jobs: {jobs:?}");
        }
    }
    let trained: Vec<&Trained> = events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Trained(t) => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(trained.len(), 12);
    assert!(trained.iter().all(|t| t.attempt == 1), "{trained:?}");
    assert_eq!(
        (info.delivered.consumer_sequence, info.num_redelivered),
        (12, 0),
        "{info:?}"
    );
    assert!(per_worker.len() >= 2, "the jobs spread: {per_worker:?}");
}

/// A stale trainer. Trainer A is stopped (SIGSTOP) 30 % into a job until the job has
/// moved to trainer B (past AckWait), then continued (SIGCONT). Each delivery records its
/// attempt in the store when it starts; A sees attempt 2 at its first lease check after
/// resuming, abandons the job without storing, publishing or acking anything, and pulls
/// again (it takes the next job). Only B's result exists: one `Trained` (attempt 2), one
/// reward, B's checkpoint only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_past_ack_wait_the_stale_trainer_abandons_and_one_result_is_accepted() {
    let ack_wait = Duration::from_secs(2);
    let f = Fault::builder("stale", ack_wait)
        .job_secs(4.0 * secs(ack_wait))
        .evaluator()
        .start()
        .await;
    let (bus, watch, study, data, epochs) = (&f.bus, &f.watch, f.study, &f.data, f.epochs);
    let mut a = f.trainer_process("trainer-a");
    a.wait_logged(TRAINER_READY, Duration::from_secs(120)).await;
    let j = f.job(1, epochs);
    bus.publish(&j).await;
    watch
        .progress("A trains the job", Duration::from_secs(60), |p| {
            p.worker == "trainer-a"
        })
        .await;
    let mut b = f.trainer_process("trainer-b");
    b.wait_logged(TRAINER_READY, Duration::from_secs(60)).await;
    let at = (epochs * 3).div_ceil(10);
    watch
        .progress("A 30 % into the job", Duration::from_secs(120), |p| {
            p.worker == "trainer-a" && p.epoch >= at
        })
        .await;
    a.signal(libc::SIGSTOP);
    let stopped = Instant::now();

    // B gets the job after AckWait and starts it (its delivery is recorded before training).
    let (moved, p) = watch
        .progress(
            "B trains the job",
            ack_wait * 3 + Duration::from_secs(60),
            |p| p.worker == "trainer-b",
        )
        .await;
    assert_eq!((p.job_id.as_str(), p.attempt), (j.job_id.as_str(), 2));
    let moved = moved.duration_since(stopped);
    a.signal(libc::SIGCONT);
    let resumed = Instant::now();
    let abandoned = a
        .wait_logged("job superseded", ack_wait + Duration::from_secs(10))
        .await
        .duration_since(resumed);

    // A is back to pulling: with B busy, the next job is A's.
    let next = job(study, 2, &data.dataset_id, &[]);
    bus.publish(&next).await;
    let t2 = watch.trained(&next.job_id, Duration::from_secs(120)).await;
    assert_eq!((t2.worker.as_str(), t2.attempt), ("trainer-a", 1));

    let rewards = bus
        .rewards_of(study, &j.job_id, Duration::from_secs(240))
        .await;
    let trained = watch.trained_of(&j.job_id);
    // A's reports on the job after it abandoned it (allowing for the ones in flight).
    let cutoff = resumed + abandoned + Duration::from_millis(500);
    let late = watch
        .snapshot()
        .iter()
        .filter(|(t, e)| {
            *t > cutoff
                && matches!(e, Event::Progress(p) if p.worker == "trainer-a" && p.job_id == j.job_id)
        })
        .count();
    eprintln!(
        "stale trainer: A stopped at epoch {at}/{epochs}, job on B {:.2} s later (AckWait \
         {:.1} s); A abandoned it {:.2} s after SIGCONT; Trained for the job: {} ({:?}); rewards \
         for it: {}",
        secs(moved),
        secs(ack_wait),
        secs(abandoned),
        trained.len(),
        trained
            .iter()
            .map(|t| (t.worker.as_str(), t.attempt))
            .collect::<Vec<_>>(),
        rewards.len()
    );
    assert!(moved >= ack_wait / 2, "the job moved after {moved:?}");
    assert!(
        abandoned <= ack_wait + Duration::from_secs(1),
        "A abandoned the job {abandoned:?} after resuming"
    );
    assert_eq!(late, 0, "A kept reporting progress on the abandoned job");
    assert_eq!(trained.len(), 1, "{trained:?}");
    assert_eq!(
        (trained[0].worker.as_str(), trained[0].attempt),
        ("trainer-b", 2)
    );
    assert_eq!(rewards.len(), 1, "{rewards:?}");
    assert_eq!(
        (rewards[0].trainer.as_str(), rewards[0].attempt),
        ("trainer-b", 2)
    );
    // Only B's weights were stored, under its attempt's key; the reward names them.
    let store = storage::open(&data.store_url).unwrap();
    let first = storage::keys::checkpoint(study, &j.job_id).unwrap();
    assert!(!storage::exists(&store, &first).await.unwrap());
    assert!(
        storage::exists(&store, &rewards[0].checkpoint_key)
            .await
            .unwrap()
    );
    assert_ne!(rewards[0].checkpoint_key, first);
    assert!(a.running() && b.running());
    f.stop().await;
}

/// Every service started 15 s before the broker (compose may start them in any
/// order). None exits: connecting and provisioning retry until the broker answers. Each is
/// pulling from its consumer (a pull request waiting on it) within 10 s of the broker
/// accepting connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_started_15_s_before_the_broker_wait_for_it_and_consume_within_10_s() {
    let _serial = SERIAL.lock().await;
    test_support::init_test_tracing();
    let mut nats = NatsServer::not_started();
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store").display().to_string();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut services: Vec<(&str, tokio::task::JoinHandle<anyhow::Result<()>>)> = Vec::new();
    let settings = controller::Settings {
        nats: url.clone(),
        store: store.clone(),
        ack_wait_secs: 30.0,
        job_ack_wait_secs: 60.0,
        stream_replicas: 1,
    };
    let s = stop(stop_rx.clone());
    services.push((
        "controller",
        tokio::spawn(async move {
            let app = controller::App::connect(&settings).await?;
            controller::run(app, s).await
        }),
    ));
    let settings = preprocessor::Settings {
        nats: url.clone(),
        store: store.clone(),
        parallel_cases: 2,
        max_voxels: 4_000_000,
    };
    let s = stop(stop_rx.clone());
    services.push((
        "preprocessor",
        tokio::spawn(async move {
            let app = preprocessor::App::connect(&settings).await?;
            preprocessor::run(app, s).await
        }),
    ));
    let settings = trainer::Settings {
        nats: url.clone(),
        store: store.clone(),
        device: "cpu".into(),
        augment_workers: None,
        cache: Default::default(),
    };
    let s = stop(stop_rx.clone());
    services.push((
        "trainer",
        tokio::spawn(async move {
            let app = trainer::App::connect(&settings).await?;
            trainer::run(app, s).await
        }),
    ));
    let settings = evaluator::Settings {
        nats: url.clone(),
        store: store.clone(),
        device: "cpu".into(),
        cache: Default::default(),
    };
    let s = stop(stop_rx.clone());
    services.push((
        "evaluator",
        tokio::spawn(async move {
            let app = evaluator::App::connect(&settings).await?;
            evaluator::run(app, s).await
        }),
    ));

    tokio::time::sleep(Duration::from_secs(15)).await;
    for (name, task) in &services {
        assert!(!task.is_finished(), "{name} gave up before the broker came");
    }
    nats.restart();
    let ready = Instant::now();
    let client = nats.client().await;
    let js = jetstream::new(client);
    let mut consuming = Vec::new();
    for durable in [
        subjects::durable::CONTROLLER_SUBMISSIONS,
        subjects::durable::PREPROCESSORS,
        subjects::durable::TRAINERS,
        subjects::durable::EVALUATORS,
    ] {
        let deadline = ready + Duration::from_secs(30);
        let at = loop {
            if let Ok(c) = runtime::consumer(&js, durable).await
                && let Ok(info) = c.get_info().await
                && info.num_waiting >= 1
            {
                break ready.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "nothing pulls from {durable} 30 s after the broker came up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        consuming.push((durable, at));
    }
    eprintln!(
        "broker up 15 s after the services: pulling after {}",
        consuming
            .iter()
            .map(|(d, t)| format!("{d} {:.2} s", secs(*t)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (durable, at) in &consuming {
        assert!(
            *at <= Duration::from_secs(10),
            "{durable} pulled only {at:?} after the broker came up"
        );
    }
    stop_tx.send(true).unwrap();
    for (name, task) in services {
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .unwrap_or_else(|_| panic!("{name} stops"))
            .unwrap()
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    }
}
