//! The trainer service: one job at a time from the durable consumer `trainers` (shared by
//! every replica; it pulls only when idle, so `--scale trainer=N` spreads jobs), trains a
//! U-Net with the job's strategy, stores the checkpoint, publishes `Trained`, then acks.
//!
//! - In-progress acks every AckWait/3 (the consumer's AckWait, set by the controller's
//!   `--job-ack-wait-secs`) keep a long job from being redelivered while alive; a trainer that
//!   dies leaves its job to another replica after AckWait.
//! - Fencing: each delivery records its attempt in the store when it starts. A trainer that
//!   finds a later attempt recorded (it was paused or cut off past AckWait and the job moved
//!   on) abandons the job without acking, storing or publishing anything, and pulls again;
//!   it checks at every progress tick and once more before storing the checkpoint.
//! - Permanent failures (undecodable job, invalid strategy, missing dataset or checkpoint,
//!   divergence) are dead-lettered with the reason and terminated; transient ones (store
//!   unavailable) are naked with a delay and retried.
//! - SIGTERM: the job in progress is naked at once so another replica starts it.
//! - A job with a `ValidationPlan` (a study with `[pruning]`) is scored after the plan's
//!   epochs with the evaluator's code ([`engine::train_validated`]); each score goes out as a
//!   `ValidationReport` on `segtune.progress.<study>.<job>.validation` (stream VALIDATION,
//!   `Nats-Msg-Id` `<job>-v<epoch>`). While it trains such a job the trainer reads the job's
//!   stop subject from the start (stream STOPS, so a stop sent before this delivery began is
//!   seen at once); on a stop it ends at the next step boundary, stores the checkpoint and
//!   publishes the job's pruned `Reward` itself (`Nats-Msg-Id` = job id, like the
//!   evaluator's), then acks. No `Trained` goes out, so the evaluator never sees the job.

use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::DeliverPolicy};
use engine::{DatasetCache, IntermediateDice, JobError, JobSpec};
use futures::StreamExt as _;
use protocol::{
    Progress, Reward, SCHEMA_VERSION, StopJob, TrainJob, Trained, ValidationReport, subjects,
};
use runtime::worker::{Handler, Verdict};
use storage::DynStore;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "segtune-trainer", about = "Trains one model per strategy job")]
pub struct Settings {
    /// NATS server URL.
    #[arg(long, env = "SEGTUNE_NATS", default_value = runtime::DEFAULT_NATS)]
    pub nats: String,
    /// Object store URL (path, file:///, s3://bucket/prefix, memory://).
    #[arg(long, env = "SEGTUNE_STORE", default_value = storage::DEFAULT_STORE)]
    pub store: String,
    /// Compute device: cpu, or cuda / cuda:N in a build with the `cuda` feature.
    #[arg(long, env = "SEGTUNE_DEVICE", default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub cache: runtime::CacheSettings,
    /// Threads that sample and augment training patches while the device trains (default:
    /// the cores available to this process). Too few and the device waits for data: see
    /// `data_wait_fraction` in the progress messages.
    #[arg(long, env = "SEGTUNE_AUGMENT_WORKERS")]
    pub augment_workers: Option<usize>,
}

pub struct App {
    pub js: jetstream::Context,
    pub client: async_nats::Client,
    pub store: DynStore,
    pub device: segmodel::candle_core::Device,
    pub cache: DatasetCache,
    pub worker: String,
    /// `None`: the cores available ([`engine::default_augment_workers`]).
    pub augment_workers: Option<std::num::NonZeroUsize>,
    pub options: Options,
}

/// Knobs that are not settings: for tests only.
#[derive(Debug, Clone)]
pub struct Options {
    /// In-progress acks while training. Always on in the service; tests turn them off to show
    /// that a job outliving AckWait is then redelivered (the negative control).
    pub progress_acks: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            progress_acks: true,
        }
    }
}

impl runtime::Validate for Settings {
    fn validate(&self) -> anyhow::Result<()> {
        runtime::ensure_set("--nats", "SEGTUNE_NATS", &self.nats)?;
        runtime::ensure_set("--store", "SEGTUNE_STORE", &self.store)?;
        engine::check_device(&self.device).map_err(|e| anyhow::anyhow!("--device: {e}"))?;
        engine::augment_workers(self.augment_workers).map_err(anyhow::Error::msg)?;
        self.cache.validate()?;
        Ok(())
    }
}

impl App {
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        let device = engine::device(&settings.device)?;
        let augment_workers =
            engine::augment_workers(settings.augment_workers).map_err(anyhow::Error::msg)?;
        let store = storage::open(&settings.store)?;
        let data = engine::DataOptions::with_cache(
            &settings.cache.cache_dir,
            settings.cache.cache_max_bytes,
            settings.cache.cache_memory_budget,
        );
        let js = runtime::worker::connect(&settings.nats, Self::ROLE).await?;
        Ok(Self {
            client: js.client(),
            js,
            store,
            device,
            cache: DatasetCache::new(data),
            worker: runtime::worker_name(Self::ROLE),
            augment_workers,
            options: Options::default(),
        })
    }
}

/// A trained job, as [`runtime::worker::handle_next`] reports it.
#[derive(Debug, PartialEq)]
pub struct TrainedJob {
    pub job_id: String,
    /// `Some(epoch)`: the job was stopped by its study's pruner after its report at `epoch`,
    /// and its pruned reward is published.
    pub pruned_at: Option<u32>,
}

/// What one delivery of a job produced, not yet published.
#[derive(Debug)]
pub enum TrainResult {
    /// Trained to the end: `Trained` for the evaluator.
    Trained(Box<Trained>),
    /// Stopped by the pruner: its reward, published by the trainer.
    Pruned(Box<Reward>),
}

pub type Outcome = runtime::worker::Outcome<TrainedJob>;

/// Serves the `trainers` consumer until `shutdown` resolves.
pub async fn run(app: App, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let augment_workers = app
        .augment_workers
        .unwrap_or_else(engine::default_augment_workers)
        .get();
    tracing::info!(device = ?app.device, augment_workers, "compute device");
    runtime::worker::serve(&app, shutdown).await
}

impl Handler for App {
    type Job = TrainJob;
    /// `None`: a later delivery turned up before the checkpoint was stored.
    type Worked = Result<Option<TrainResult>, JobError>;
    type Done = TrainedJob;
    const ROLE: &'static str = "trainer";
    const DURABLE: &'static str = subjects::durable::TRAINERS;

    fn js(&self) -> &jetstream::Context {
        &self.js
    }
    fn worker(&self) -> &str {
        &self.worker
    }
    fn key(job: &TrainJob) -> (&str, &str) {
        (&job.study, &job.job_id)
    }

    async fn lease(&self, consumer: &jetstream::consumer::PullConsumer) -> runtime::Lease {
        runtime::Lease {
            ack_wait: runtime::consumer_ack_wait(consumer).await,
            progress_acks: self.options.progress_acks,
        }
    }

    async fn still_live(&self, job: &TrainJob, attempt: u64) -> anyhow::Result<bool> {
        is_live_delivery(self, job, attempt).await
    }

    async fn work(&self, job: &TrainJob, attempt: u64, cancel: Arc<AtomicBool>) -> Self::Worked {
        tracing::info!(job = %job.job_id, attempt, "training");
        run_job(self, job, attempt, cancel).await
    }

    async fn finish(
        &self,
        job: &TrainJob,
        attempt: u64,
        worked: Self::Worked,
    ) -> anyhow::Result<Verdict<TrainedJob>> {
        let trained = match worked {
            Ok(Some(TrainResult::Trained(trained))) => *trained,
            Ok(Some(TrainResult::Pruned(reward))) => {
                let ack = runtime::publish(
                    &self.js,
                    subjects::rewards(&job.study),
                    Some(&job.job_id),
                    protocol::encode(&*reward)?,
                )
                .await
                .context("publishing the pruned Reward")?;
                if ack.duplicate {
                    tracing::warn!(job = %job.job_id, attempt, "the job's reward was already published; this one is dropped");
                }
                tracing::info!(job = %job.job_id, epoch = reward.epoch_reached, dice = reward.mean, seconds = reward.train_seconds, "pruned");
                return Ok(Verdict::Done(TrainedJob {
                    job_id: job.job_id.clone(),
                    pruned_at: Some(reward.epoch_reached),
                }));
            }
            Ok(None) => return Ok(Verdict::Superseded),
            Err(JobError::Permanent(reason)) => return Ok(Verdict::Permanent(reason)),
            Err(JobError::Transient(reason)) => return Ok(Verdict::Transient(reason)),
            Err(JobError::Cancelled) => return Ok(Verdict::Interrupted),
        };
        let payload = protocol::encode(&trained)?;
        let ack = runtime::publish(
            &self.js,
            subjects::trained(&job.study),
            Some(&job.job_id),
            payload,
        )
        .await
        .context("publishing Trained")?;
        if ack.duplicate {
            // Another attempt committed first (it was live when it checked): its result,
            // with its own checkpoint, is the one downstream sees.
            tracing::warn!(job = %job.job_id, attempt, "another attempt's result was accepted first; this one is dropped");
        }
        tracing::info!(job = %job.job_id, loss = trained.final_loss, seconds = trained.train_seconds, "trained");
        Ok(Verdict::Done(TrainedJob {
            job_id: job.job_id.clone(),
            pruned_at: None,
        }))
    }
}

/// Whether no later delivery of `job` than `attempt` has recorded itself.
async fn is_live_delivery(app: &App, job: &TrainJob, attempt: u64) -> anyhow::Result<bool> {
    let prefix = storage::keys::deliveries(&job.study, &job.job_id)?;
    let latest = storage::list(&app.store, &prefix)
        .await?
        .iter()
        .filter_map(|k| k.rsplit('/').next()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    Ok(latest <= attempt)
}

/// Trains the job and stores its checkpoint; `None` if a later delivery of the job turned up
/// before the checkpoint was stored (this delivery is stale and commits nothing).
async fn run_job(
    app: &App,
    job: &TrainJob,
    attempt: u64,
    cancel: Arc<AtomicBool>,
) -> Result<Option<TrainResult>, JobError> {
    protocol::subjects::check_token("study", &job.study)
        .and_then(|_| protocol::subjects::check_token("job_id", &job.job_id))
        .map_err(|e| JobError::Permanent(e.to_string()))?;
    let delivery = storage::keys::delivery(&job.study, &job.job_id, attempt)
        .map_err(|e| JobError::Permanent(e.to_string()))?;
    storage::put(&app.store, &delivery, app.worker.clone())
        .await
        .map_err(|e| JobError::Transient(format!("recording the delivery: {e}")))?;
    let spec = JobSpec::from_strategy(&job.strategy)?;
    let data = app.cache.get(&app.store, &job.dataset_id).await?;
    let init = match &job.training.init_checkpoint {
        Some(key) => Some(storage::get(&app.store, key).await.map_err(|e| {
            if e.is_transient() {
                JobError::Transient(e.to_string())
            } else {
                JobError::Permanent(format!("init checkpoint: {e}"))
            }
        })?),
        None => None,
    };
    // The job's stop, read from the start of its subject while the job trains.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_order: Arc<Mutex<Option<StopJob>>> = Arc::default();
    let _watch = match &job.validation {
        Some(_) => Some(watch_stop(app, job, stop.clone(), stop_order.clone()).await?),
        None => None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let device = app.device.clone();
    let training = job.training.clone();
    let plan = job.validation.clone();
    let seed = job.seed;
    let augment_workers = app.augment_workers;
    let all_cases = job.final_model.as_ref().is_some_and(|f| f.all_cases);
    // A final model's bundle goes to its study's bundle prefix and nowhere else.
    if let Some(f) = &job.final_model {
        let expected = storage::keys::final_bundle(&f.source_study)
            .map_err(|e| JobError::Permanent(e.to_string()))?;
        if f.bundle_prefix != expected {
            return Err(JobError::Permanent(format!(
                "final_model.bundle_prefix = {:?}, expected {expected:?} for study {:?}",
                f.bundle_prefix, f.source_study
            )));
        }
    }
    let final_job = job.final_model.is_some().then(|| job.clone());
    let handle = tokio::task::spawn_blocking(move || {
        let input = engine::TrainInput {
            data: &data,
            job: &spec,
            training: &training,
            seed,
            init_checkpoint: init.as_deref(),
            augment_workers,
            all_cases,
        };
        let reports = tx.clone();
        let mut on_report = move |d: IntermediateDice| {
            let _ = reports.send(Tick::Validated(d));
        };
        let validation = plan.as_ref().map(|plan| engine::Validation {
            plan,
            stop: &stop,
            on_report: &mut on_report,
        });
        let out = engine::train_validated(&input, &device, &cancel, validation, |r| {
            let _ = tx.send(Tick::Epoch(r));
        })?;
        let bundle = final_job.and_then(|j| {
            let f = j.final_model.as_ref()?;
            let bundle = engine::bundle::Bundle::new(
                &data,
                out.checkpoint.clone(),
                &engine::bundle::BundleSource {
                    study: Some(&f.source_study),
                    job_id: Some(&j.job_id),
                    strategy: &j.strategy,
                    training: &j.training,
                    seed: j.seed,
                    all_cases: f.all_cases,
                    validation_dice: None,
                },
            );
            Some((f.bundle_prefix.clone(), bundle))
        });
        Ok::<_, JobError>((out, bundle))
    });
    // Progress is best effort (core NATS): watchers may come and go. Validation reports are
    // published to their stream and awaited (the controller's pruner decides on them).
    let progress_subject = subjects::progress(&job.study, &job.job_id);
    while let Some(tick) = rx.recv().await {
        let r = match tick {
            Tick::Epoch(r) => r,
            Tick::Validated(d) => {
                publish_report(app, job, attempt, d).await;
                continue;
            }
        };
        let p = Progress {
            schema: SCHEMA_VERSION,
            study: job.study.clone(),
            job_id: job.job_id.clone(),
            worker: app.worker.clone(),
            epoch: r.epoch,
            epochs: r.epochs,
            loss: r.loss,
            patches_per_sec: r.patches_per_sec,
            attempt,
            data_wait_fraction: r.data_wait_fraction,
        };
        if let Ok(bytes) = protocol::encode(&p) {
            let _ = app
                .client
                .publish(progress_subject.clone(), bytes.into())
                .await;
        }
    }
    let (out, bundle) = handle
        .await
        .map_err(|e| JobError::Transient(format!("training task: {e}")))??;
    // The fence: a stale delivery stops here, before it writes or publishes anything.
    match is_live_delivery(app, job, attempt).await {
        Ok(true) => {}
        Ok(false) => return Ok(None),
        Err(e) => return Err(JobError::Transient(format!("checking the delivery: {e:#}"))),
    }
    let key = storage::keys::checkpoint_of_attempt(&job.study, &job.job_id, attempt)
        .map_err(|e| JobError::Permanent(e.to_string()))?;
    storage::put(&app.store, &key, out.checkpoint)
        .await
        .map_err(|e| JobError::Transient(format!("storing the checkpoint: {e}")))?;
    if let Some((prefix, bundle)) = bundle {
        bundle
            .write_store(&app.store, &prefix)
            .await
            .map_err(|e| JobError::Transient(format!("storing the model bundle: {e}")))?;
        tracing::info!(job = %job.job_id, %prefix, "final model bundle stored");
    }
    let order = stop_order.lock().expect("stop lock").clone();
    if let (Some(_), Some(order)) = (out.stopped_after, order) {
        // The reward is the Dice the pruner judged (the controller's, carried by the stop),
        // the same whichever delivery of the job stops.
        return Ok(Some(TrainResult::Pruned(Box::new(Reward {
            schema: SCHEMA_VERSION,
            study: job.study.clone(),
            job_id: job.job_id.clone(),
            index: job.index,
            strategy: job.strategy.clone(),
            per_case: Vec::new(),
            per_class: Vec::new(),
            mean: order.dice,
            checkpoint_key: key,
            trainer: app.worker.clone(),
            attempt,
            train_seconds: out.seconds,
            final_loss: out.final_loss,
            eval_seconds: 0.0,
            pruned: true,
            epoch_reached: order.epoch,
        }))));
    }
    Ok(Some(TrainResult::Trained(Box::new(Trained {
        schema: SCHEMA_VERSION,
        study: job.study.clone(),
        job_id: job.job_id.clone(),
        index: job.index,
        dataset_id: job.dataset_id.clone(),
        strategy: job.strategy.clone(),
        training: job.training.clone(),
        checkpoint_key: key,
        final_loss: out.final_loss,
        train_seconds: out.seconds,
        worker: app.worker.clone(),
        attempt,
    }))))
}

/// What the training thread sends to the job's task.
enum Tick {
    Epoch(engine::EpochReport),
    Validated(IntermediateDice),
}

/// Publishes one intermediate validation (awaited; a failure is logged: the pruner then
/// simply has no report for that epoch).
async fn publish_report(app: &App, job: &TrainJob, attempt: u64, d: IntermediateDice) {
    let report = ValidationReport {
        schema: SCHEMA_VERSION,
        study: job.study.clone(),
        job_id: job.job_id.clone(),
        index: job.index,
        worker: app.worker.clone(),
        attempt,
        epoch: d.epoch,
        epochs: d.epochs,
        step: d.step,
        dice: d.dice,
        per_class: d.per_class,
        train_seconds: d.train_seconds,
        validation_seconds: d.validation_seconds,
    };
    tracing::info!(job = %job.job_id, epoch = d.epoch, dice = d.dice, seconds = d.validation_seconds, "intermediate validation");
    let published = match protocol::encode(&report) {
        Ok(bytes) => runtime::publish(
            &app.js,
            subjects::validation(&job.study, &job.job_id),
            Some(&subjects::validation_msg_id(&job.job_id, d.epoch)),
            bytes,
        )
        .await
        .map(drop),
        Err(e) => Err(e.into()),
    };
    if let Err(e) = published {
        tracing::warn!(job = %job.job_id, epoch = d.epoch, error = format!("{e:#}"), "validation report not published");
    }
}

/// Aborts the stop watch when the job's work ends.
struct StopWatch(tokio::task::JoinHandle<()>);

impl Drop for StopWatch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the job's stop subject from its first message (an ordered consumer on STOPS): the
/// first `StopJob` is kept in `order` and sets `stop`. Ready once the consumer exists, so a
/// stop published after this returns is not missed, nor one published before.
async fn watch_stop(
    app: &App,
    job: &TrainJob,
    stop: Arc<AtomicBool>,
    order: Arc<Mutex<Option<StopJob>>>,
) -> Result<StopWatch, JobError> {
    let transient = |e: String| JobError::Transient(format!("watching the job's stop: {e}"));
    let stream = app
        .js
        .get_stream(subjects::stream::STOPS)
        .await
        .map_err(|e| transient(e.to_string()))?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: subjects::stop(&job.study, &job.job_id),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| transient(e.to_string()))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| transient(e.to_string()))?;
    let job_id = job.job_id.clone();
    Ok(StopWatch(tokio::spawn(async move {
        while let Some(next) = messages.next().await {
            let Ok(msg) = next else { continue };
            match protocol::decode::<StopJob>(&msg.payload) {
                Ok(s) if s.job_id == job_id => {
                    tracing::info!(job = %job_id, epoch = s.epoch, reason = %s.reason, "stop received");
                    *order.lock().expect("stop lock") = Some(s);
                    stop.store(true, Ordering::Relaxed);
                    return;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(job = %job_id, error = %e, "undecodable stop ignored"),
            }
        }
    })))
}

#[cfg(test)]
mod tests {
    use runtime::Validate as _;

    fn settings() -> super::Settings {
        super::Settings {
            nats: "nats://127.0.0.1:4222".into(),
            store: "memory:///".into(),
            device: "cpu".into(),
            augment_workers: None,
            cache: Default::default(),
        }
    }

    #[test]
    fn augment_workers_are_validated_and_the_error_names_the_setting() {
        assert!(settings().validate().is_ok());
        let ok = super::Settings {
            augment_workers: Some(4),
            ..settings()
        };
        assert!(ok.validate().is_ok());
        let zero = super::Settings {
            augment_workers: Some(0),
            ..settings()
        };
        let err = zero.validate().unwrap_err().to_string();
        assert!(
            err.contains("--augment-workers") && err.contains("SEGTUNE_AUGMENT_WORKERS"),
            "{err}"
        );
    }

    #[test]
    fn the_augment_workers_flag_and_variable_parse() {
        use clap::Parser as _;
        let s =
            super::Settings::try_parse_from(["segtune-trainer", "--augment-workers", "3"]).unwrap();
        assert_eq!(s.augment_workers, Some(3));
        let e = super::Settings::try_parse_from(["segtune-trainer", "--augment-workers", "x"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--augment-workers"), "{e}");
    }

    #[test]
    fn the_case_cache_flags_parse_with_sizes_and_bad_ones_name_the_flag() {
        use clap::Parser as _;
        let s = super::Settings::try_parse_from([
            "segtune-trainer",
            "--cache-dir",
            "/cache",
            "--cache-max-bytes",
            "100G",
            "--cache-memory-budget",
            "512M",
        ])
        .unwrap();
        assert_eq!(s.cache.cache_dir, "/cache");
        assert_eq!(s.cache.cache_max_bytes, 100 << 30);
        assert_eq!(s.cache.cache_memory_budget, 512 << 20);
        let d = super::Settings::try_parse_from(["segtune-trainer"]).unwrap();
        assert_eq!(d.cache, runtime::CacheSettings::default());
        let e = super::Settings::try_parse_from(["segtune-trainer", "--cache-max-bytes", "lots"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--cache-max-bytes") && e.contains("lots"), "{e}");
        let empty = super::Settings {
            cache: runtime::CacheSettings {
                cache_dir: " ".into(),
                ..Default::default()
            },
            ..settings()
        };
        let e = empty.validate().unwrap_err().to_string();
        assert!(
            e.contains("--cache-dir") && e.contains("SEGTUNE_CACHE_DIR"),
            "{e}"
        );
    }

    #[test]
    fn an_empty_nats_url_is_a_config_error() {
        let settings = super::Settings {
            nats: " ".into(),
            ..settings()
        };
        let err = settings.validate().unwrap_err().to_string();
        assert!(
            err.contains("--nats") && err.contains("SEGTUNE_NATS"),
            "{err}"
        );
    }
}
