//! The controller service: the paper's Algorithm 1 over NATS.
//!
//! It takes `StudySpec`s from the `controller` durable consumer on `segtune.submissions`,
//! makes sure the study's dataset is preprocessed, and then drives each study in its own task:
//! `parallel` jobs out, and for every reward (counted once per job id) the searcher learns and
//! one more job goes out, until `max_jobs` rewards are in. Dead-lettered jobs are abandoned and
//! replaced until the failure budget is spent. Every change of a study is saved to the object
//! store before it is published or acknowledged (see [`state`]), so a controller killed at any
//! point and started again resumes every open study without issuing a job twice or counting a
//! reward twice.
//!
//! The searchers themselves (PPO-RNN, hill climbing, random, fixed) are the `search` crate;
//! this crate is the adapter between them and the bus.

pub mod max_deliveries;
pub mod state;
pub mod study;

use std::{collections::HashMap, future::Future, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind};
use protocol::{SCHEMA_VERSION, StudyEvent, StudyEventKind, subjects};
use storage::DynStore;
use tokio::{sync::watch, task::JoinSet};

pub use self::study::{Delivery, Feed, Step, Study, read_state};
pub use state::{Phase, StudyState};

/// Configuration (flags or `SEGTUNE_*` env vars).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "segtune-controller",
    about = "Runs segtune studies: the RL search of training strategies over NATS"
)]
pub struct Settings {
    /// NATS server URL.
    #[arg(long, env = "SEGTUNE_NATS", default_value = runtime::DEFAULT_NATS)]
    pub nats: String,
    /// Object store URL (file path, file:///, s3://bucket/prefix, memory://). Study states
    /// live here; it must be the store the other services use.
    #[arg(long, env = "SEGTUNE_STORE", default_value = storage::DEFAULT_STORE)]
    pub store: String,
    /// AckWait of the per-study reward and dead-letter consumers, in seconds: how soon a
    /// reward the controller received but did not acknowledge (it died) comes back.
    #[arg(long, env = "SEGTUNE_CONTROLLER_ACK_WAIT", default_value_t = 30.0)]
    pub ack_wait_secs: f64,
    /// AckWait of the trainers' and evaluators' consumers, in seconds: how long the job of a
    /// worker that died (kill -9, lost host) waits before another replica gets it. Live workers
    /// keep their job however long it runs with in-progress acks every third of it, so keep
    /// it short (30-120 s). Set on the consumers whenever the controller starts.
    #[arg(long, env = "SEGTUNE_JOB_ACK_WAIT", default_value_t = 60.0)]
    pub job_ack_wait_secs: f64,
    /// JetStream replicas of every stream: 1 on one nats-server; 3 (or 5) in a NATS cluster,
    /// so that the jobs, rewards and study events survive the loss of a node. Existing
    /// streams are scaled to it.
    #[arg(long, env = "SEGTUNE_STREAM_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: u8,
}

impl runtime::Validate for Settings {
    fn validate(&self) -> anyhow::Result<()> {
        runtime::ensure_set("--nats", "SEGTUNE_NATS", &self.nats)?;
        runtime::ensure_set("--store", "SEGTUNE_STORE", &self.store)?;
        anyhow::ensure!(
            self.ack_wait_secs.is_finite() && self.ack_wait_secs >= 0.1,
            "--ack-wait-secs (SEGTUNE_CONTROLLER_ACK_WAIT) must be at least 0.1, got {}",
            self.ack_wait_secs
        );
        anyhow::ensure!(
            self.job_ack_wait_secs.is_finite()
                && (1.0..=86_400.0).contains(&self.job_ack_wait_secs),
            "--job-ack-wait-secs (SEGTUNE_JOB_ACK_WAIT) must be between 1 and 86400, got {}",
            self.job_ack_wait_secs
        );
        Ok(())
    }
}

/// Timing knobs; tests shorten them.
#[derive(Debug, Clone)]
pub struct Options {
    /// AckWait of the per-study consumers.
    pub ack_wait: Duration,
    /// How long one pull for a submission waits.
    pub poll: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(30),
            poll: Duration::from_secs(5),
        }
    }
}

/// What every study task shares: the bus, the store, the knobs.
#[derive(Clone)]
pub struct App {
    pub js: jetstream::Context,
    pub store: DynStore,
    pub options: Options,
}

impl App {
    /// Opens the store, connects (retrying until the broker is up) and provisions JetStream.
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        runtime::Validate::validate(settings)?;
        let store = storage::open(&settings.store)?;
        let client = runtime::connect(&settings.nats, "segtune-controller").await?;
        let js = jetstream::new(client);
        runtime::provision_with_ack_wait_retry(
            &js,
            Some(usize::from(settings.stream_replicas)),
            Some(Duration::from_secs_f64(settings.job_ack_wait_secs)),
        )
        .await?;
        Ok(Self::new(
            js,
            store,
            Options {
                ack_wait: Duration::from_secs_f64(settings.ack_wait_secs),
                ..Options::default()
            },
        ))
    }

    pub fn new(js: jetstream::Context, store: DynStore, options: Options) -> Self {
        Self { js, store, options }
    }
}

/// Resumes every open study, then serves submissions until `shutdown` resolves; then stops
/// the study tasks (each at a message boundary) and returns. Dropping the future instead (a
/// kill) is safe too: nothing is acknowledged before it is saved.
pub async fn run(app: App, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let consumer = runtime::consumer(&app.js, subjects::durable::CONTROLLER_SUBMISSIONS).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = StudyTasks {
        set: JoinSet::new(),
        running: HashMap::new(),
        stop: stop_rx,
    };
    // Owned here like the study tasks: dropping `run` (a kill) aborts it.
    let mut background = JoinSet::new();
    background.spawn(max_deliveries::run(app.js.clone(), tasks.stop.clone()));
    for study in resume_all(&app).await? {
        tracing::info!(
            study = study.id(),
            phase = ?study.state.phase,
            rewards = study.state.rewards.len(),
            policy = &study.policy_hash()[..16],
            "resuming study"
        );
        tasks.spawn(study);
    }
    tokio::pin!(shutdown);
    tracing::info!("controller ready");
    loop {
        tasks.reap();
        let next = tokio::select! {
            r = handle_next_submission(&app, &consumer, app.options.poll) => r,
            _ = &mut shutdown => break,
        };
        match next {
            Ok(Submission::Accepted(study)) => {
                // An extended study's last task may still be ending (it deletes the study's
                // consumers): let it finish before the new one attaches.
                tasks.wait_until_stopped(study.id()).await;
                tasks.spawn(*study)
            }
            // Saved by an earlier attempt whose ack was lost: drive it if nobody does.
            Ok(Submission::Duplicate { study }) if !tasks.is_running(&study) => {
                match Study::load(&app, &study).await {
                    Ok(Some(s)) if !s.is_finished() => tasks.spawn(s),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(%study, error = format!("{e:#}"), "cannot load study"),
                }
            }
            Ok(Submission::Idle) => {}
            Ok(other) => tracing::debug!(?other, "submission"),
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "submission step failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = &mut shutdown => break,
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    let drain = async {
        while let Some(done) = tasks.set.join_next_with_id().await {
            tasks.finished(done);
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        tracing::warn!("study tasks did not stop in time; aborting them");
    }
    if tokio::time::timeout(Duration::from_secs(5), background.join_all())
        .await
        .is_err()
    {
        tracing::warn!("the max-deliveries reader did not stop in time; aborting it");
    }
    // Acks and naks are queued, not sent: flush them before the connection goes away (a nak
    // lost here would leave the job to wait out its AckWait instead of moving on at once).
    if let Err(e) = app.js.client().flush().await {
        tracing::warn!(error = %e, "flushing acks on shutdown failed");
    }
    tracing::info!("controller stopped");
    Ok(())
}

/// The study tasks of one `run`. Owned by it: dropping `run` (abort) aborts them all.
struct StudyTasks {
    set: JoinSet<anyhow::Result<Option<Phase>>>,
    /// Study id of each task.
    running: HashMap<tokio::task::Id, String>,
    stop: watch::Receiver<bool>,
}

impl StudyTasks {
    fn spawn(&mut self, study: Study) {
        let stop = self.stop.clone();
        let id = study.id().to_string();
        let handle = self.set.spawn(study.drive(stop));
        self.running.insert(handle.id(), id);
    }

    fn is_running(&self, study: &str) -> bool {
        self.running.values().any(|s| s == study)
    }

    /// Joins tasks until none drives `study` (one that has reached its end stops on its own).
    async fn wait_until_stopped(&mut self, study: &str) {
        while self.is_running(study) {
            match tokio::time::timeout(Duration::from_secs(30), self.set.join_next_with_id()).await
            {
                Ok(Some(done)) => self.finished(done),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(%study, "the study's previous task did not stop; going on");
                    break;
                }
            }
        }
    }

    /// Forgets the tasks that ended.
    fn reap(&mut self) {
        while let Some(done) = self.set.try_join_next_with_id() {
            self.finished(done);
        }
    }

    fn finished(
        &mut self,
        done: Result<(tokio::task::Id, anyhow::Result<Option<Phase>>), tokio::task::JoinError>,
    ) {
        let id = match &done {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        let study = self.running.remove(&id).unwrap_or_default();
        match done {
            Ok((_, Ok(Some(phase)))) => tracing::info!(%study, ?phase, "study finished"),
            Ok((_, Ok(None))) => tracing::info!(%study, "study task stopped"),
            Ok((_, Err(e))) => {
                tracing::error!(%study, error = format!("{e:#}"), "study task ended")
            }
            Err(e) => tracing::error!(%study, error = %e, "study task panicked"),
        }
    }
}

/// Every study in the store whose state is not finished, ready to [`Study::drive`].
pub async fn resume_all(app: &App) -> anyhow::Result<Vec<Study>> {
    let keys = storage::list(&app.store, "studies")
        .await
        .context("listing studies in the store")?;
    let mut open = Vec::new();
    for key in keys {
        let Some(study) = key
            .strip_prefix("studies/")
            .and_then(|k| k.strip_suffix("/controller/state.msgpack"))
        else {
            continue;
        };
        match Study::load(app, study).await {
            Ok(Some(s)) if !s.state.phase.is_finished() => open.push(s),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(%study, error = format!("{e:#}"), "cannot resume study; skipping it")
            }
        }
    }
    Ok(open)
}

/// The new `max_jobs` when `new` is `existing` with only `max_jobs` changed (an extension).
fn extension(existing: &protocol::StudySpec, new: &protocol::StudySpec) -> Option<u32> {
    let same_otherwise = protocol::StudySpec {
        max_jobs: new.max_jobs,
        ..existing.clone()
    } == *new;
    (same_otherwise && new.max_jobs != existing.max_jobs).then_some(new.max_jobs)
}

/// What one submission step did.
#[derive(Debug)]
pub enum Submission {
    Idle,
    /// A new study, saved; drive it.
    Accepted(Box<Study>),
    /// The same spec again (a redelivery or a resubmission): the study already exists.
    Duplicate {
        study: String,
    },
    /// Not accepted; a `Failed` event says why when the study id is usable.
    Rejected {
        study: String,
        reason: String,
    },
    /// A `RetrainRequest`: its jobs were published (`Ok`), or dead-lettered with the reason.
    Retrain {
        source_study: String,
        jobs: usize,
        result: Result<(), String>,
    },
}

/// Pulls one submission (waiting up to `wait`) and accepts or rejects it. The submission is
/// acknowledged only after the new study's state is saved.
pub async fn handle_next_submission(
    app: &App,
    consumer: &jetstream::consumer::PullConsumer,
    wait: Duration,
) -> anyhow::Result<Submission> {
    let Some(msg) = runtime::pull_one(consumer, wait).await? else {
        return Ok(Submission::Idle);
    };
    let term = |msg: &jetstream::Message| {
        let msg = msg.clone();
        async move {
            msg.ack_with(AckKind::Term)
                .await
                .map_err(|e| anyhow::anyhow!("term failed: {e}"))
        }
    };
    // Retraining jobs of an existing study (`study finalize` / `study confirm`) share the
    // subject with study specs: the two maps have no required field in common.
    if let Ok(req) = protocol::decode::<protocol::RetrainRequest>(&msg.payload) {
        return retrain(app, &msg, req).await;
    }
    let spec: protocol::StudySpec = match protocol::decode(&msg.payload) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "undecodable submission; rejecting it");
            term(&msg).await?;
            return Ok(Submission::Rejected {
                study: String::new(),
                reason: e.to_string(),
            });
        }
    };
    let study = spec.study.clone();
    // A new study that cannot run: say why on its event subject, then drop the submission.
    let reject = |reason: String| async {
        tracing::warn!(%study, %reason, "rejecting submission");
        if subjects::check_token("study", &study).is_ok() {
            let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
            let event = StudyEvent {
                schema: SCHEMA_VERSION,
                study: study.clone(),
                time_unix: study::now_unix(),
                event: StudyEventKind::Failed {
                    reason: reason.clone(),
                },
            };
            runtime::publish(
                &app.js,
                subjects::study_events(&study),
                Some(&format!("{study}-rejected-{seq}")),
                protocol::encode(&event)?,
            )
            .await?;
        }
        term(&msg).await?;
        Ok(Submission::Rejected {
            study: study.clone(),
            reason,
        })
    };
    if let Err(errors) = ::study::validate_spec(&spec) {
        return reject(study::invalid_spec(&errors)).await;
    }
    if let Some(existing) = read_state(&app.store, &study).await? {
        if existing.spec == spec {
            msg.double_ack()
                .await
                .map_err(|e| anyhow::anyhow!("ack failed: {e}"))?;
            return Ok(Submission::Duplicate { study });
        }
        // The existing study is not touched: no `Failed` event for it, only the log.
        let refuse = |reason: String| async {
            tracing::warn!(%study, %reason, "rejecting submission");
            term(&msg).await?;
            Ok(Submission::Rejected {
                study: study.clone(),
                reason,
            })
        };
        let Some(max_jobs) = extension(&existing.spec, &spec) else {
            return refuse(format!(
                "a different study named {study} already exists (phase {:?}); choose another id",
                existing.phase
            ))
            .await;
        };
        if existing.phase != Phase::Done || max_jobs <= existing.spec.max_jobs {
            return refuse(format!(
                "cannot extend study {study} to {max_jobs} jobs: it is {:?} with max_jobs {} \
                 (only a done study extends, to more jobs)",
                existing.phase, existing.spec.max_jobs
            ))
            .await;
        }
        let mut extended = Study::load(app, &study)
            .await?
            .context("the study state disappeared")?;
        extended.extend(max_jobs).await?;
        if let Err(e) = msg.double_ack().await {
            // Saved already: a redelivery is a duplicate of the extended study.
            tracing::warn!(%study, error = %e, "extension ack failed");
        }
        tracing::info!(%study, max_jobs, "study extended");
        return Ok(Submission::Accepted(Box::new(extended)));
    }
    let created = match spec.warm_start.clone() {
        None => Study::create(app, spec).await?,
        Some(from) => match study::warm_start_from(app, &spec, &from).await? {
            Ok((space, searcher)) => Study::create_with(app, spec, space, searcher).await?,
            Err(reason) => return reject(reason).await,
        },
    };
    if let Err(e) = msg.double_ack().await {
        // Saved already: a redelivery will be a duplicate of a running study.
        tracing::warn!(%study, error = %e, "submission ack failed");
    }
    tracing::info!(%study, "study accepted");
    Ok(Submission::Accepted(Box::new(created)))
}

/// Publishes the jobs of a `RetrainRequest` once [`::study::retrain::check_retrain`] accepts
/// them for their study, else dead-letters each job (its requester listens there) with the
/// reason; then acks the submission (published jobs keep their ids as `Nats-Msg-Id`, so a
/// redelivered request publishes nothing twice).
async fn retrain(
    app: &App,
    msg: &jetstream::Message,
    req: protocol::RetrainRequest,
) -> anyhow::Result<Submission> {
    let source = req.source_study.clone();
    let verdict = async {
        subjects::check_token("source_study", &source).map_err(|e| e.to_string())?;
        let state = read_state(&app.store, &source)
            .await
            .map_err(|e| format!("study {source}: {e:#}"))?
            .ok_or_else(|| format!("no study {source} on this controller"))?;
        // A study on a stored dataset names it from the start; one on a raw folder once
        // it is preprocessed.
        let dataset = match (&state.dataset_id, &state.spec.dataset) {
            (Some(id), _) | (None, protocol::DatasetRef::Id { id }) => id.clone(),
            (None, _) => return Err(format!("study {source} has no dataset yet")),
        };
        let bundle = storage::keys::final_bundle(&source).map_err(|e| e.to_string())?;
        ::study::retrain::check_retrain(&req, &dataset, &bundle)
    }
    .await;
    match &verdict {
        Ok(()) => {
            for job in &req.jobs {
                runtime::publish(
                    &app.js,
                    subjects::jobs(&job.study),
                    Some(&job.job_id),
                    protocol::encode(job)?,
                )
                .await?;
            }
            tracing::info!(study = %source, jobs = req.jobs.len(), "retraining jobs published");
        }
        Err(reason) => {
            tracing::warn!(study = %source, %reason, "retraining request refused");
            for job in &req.jobs {
                let study = runtime::dead_letter_study(&job.study);
                let failed = protocol::JobFailed {
                    schema: SCHEMA_VERSION,
                    study: study.clone(),
                    job_id: job.job_id.clone(),
                    reason: format!("retraining refused by the controller: {reason}"),
                    original_subject: msg.subject.to_string(),
                    deliveries: runtime::delivery_attempt(msg),
                    worker: "controller".into(),
                };
                runtime::publish_dead_letter(
                    &app.js,
                    subjects::deadletter(&study),
                    &failed,
                    runtime::message_origin(msg),
                )
                .await?;
            }
        }
    }
    msg.double_ack()
        .await
        .map_err(|e| anyhow::anyhow!("ack failed: {e}"))?;
    Ok(Submission::Retrain {
        source_study: source,
        jobs: req.jobs.len(),
        result: verdict,
    })
}

#[cfg(test)]
mod tests {
    use runtime::Validate as _;

    #[test]
    fn a_job_ack_wait_under_a_second_is_a_config_error() {
        let settings = super::Settings {
            nats: runtime::DEFAULT_NATS.into(),
            store: "memory:///".into(),
            ack_wait_secs: 30.0,
            job_ack_wait_secs: 0.5,
            stream_replicas: 1,
        };
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("--job-ack-wait-secs"), "{err}");
    }
}
