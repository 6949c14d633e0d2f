//! One study: its state machine (Algorithm 1) and the bus around it.
//!
//! Every step follows the same order: change the state in memory, save it, acknowledge the
//! message that caused it, publish what it decided (the outbox), save again. A crash before the
//! first save loses nothing (the message comes back and the step is redone, identically: the
//! searcher is restored from the same bytes); a crash after it republishes the outbox with the
//! same message ids, which JetStream drops if it already has them.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{
    self, AckKind,
    consumer::{DeliverPolicy, pull},
};
use futures::StreamExt;
use protocol::{
    DatasetEvent, DatasetRef, JobFailed, PreprocessRequest, Reward, SCHEMA_VERSION, StopJob,
    StudyEvent, StudyEventKind, StudySpec, TrainJob, ValidationPlan, ValidationReport, subjects,
};
use search::{
    SearchSpace, Searcher, WarmStart,
    prune::{self, Decision, Ending, Pruner},
};
use tokio::sync::watch;

use ::study::{job_id, job_seed, validate_spec};

use crate::{
    App,
    state::{
        Best, FailureEntry, JobEntry, JobStatus, Outgoing, Phase, RewardEntry, STATE_SCHEMA,
        StopEntry, StudyState,
    },
};

/// A study being driven by this controller.
pub struct Study {
    app: App,
    pub state: StudyState,
    space: SearchSpace,
    searcher: Box<dyn Searcher>,
    /// The study's `[pruning]` rule (`none` without one).
    pruner: Box<dyn Pruner>,
    /// Loaded from the store rather than created now: the dataset answer may be in history.
    resumed: bool,
    feeds: Option<Feeds>,
}

impl std::fmt::Debug for Study {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Study")
            .field("study", &self.state.spec.study)
            .field("phase", &self.state.phase)
            .field("rewards", &self.state.rewards.len())
            .field("jobs", &self.state.jobs.len())
            .finish()
    }
}

struct Feeds {
    rewards: pull::Stream,
    deadletter: pull::Stream,
    /// A study with `[pruning]`: its jobs' intermediate validation reports.
    validation: Option<pull::Stream>,
}

/// Which per-study consumer a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    Reward,
    DeadLetter,
    Validation,
}

/// A message from one of the study's consumers, not yet acknowledged.
pub struct Delivery {
    pub feed: Feed,
    pub message: jetstream::Message,
}

impl Delivery {
    /// JetStream delivery count (1 = first delivery).
    pub fn delivered(&self) -> i64 {
        self.message.info().map(|i| i.delivered).unwrap_or(1)
    }

    pub async fn ack(&self) -> anyhow::Result<()> {
        self.message
            .double_ack()
            .await
            .map_err(|e| anyhow::anyhow!("ack failed: {e}"))
    }

    pub async fn term(&self) -> anyhow::Result<()> {
        self.message
            .ack_with(AckKind::Term)
            .await
            .map_err(|e| anyhow::anyhow!("term failed: {e}"))
    }
}

/// What one study step did.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing arrived in time.
    Idle,
    /// A reward was counted (and a new job issued if one was still needed).
    Counted { job_id: String, rewards: u32 },
    /// A job failed for good; it was abandoned and replaced.
    Replaced { job_id: String, failures: u32 },
    /// An intermediate report was recorded and the job goes on.
    Reported { job_id: String, epoch: u32 },
    /// An intermediate report made the pruner stop the job (a stop is published).
    Pruned { job_id: String, epoch: u32 },
    /// A message that changes nothing: a duplicate or late reward, an unknown job id.
    Ignored { job_id: String, why: String },
    /// An undecodable message; it was terminated.
    Rejected { reason: String },
    /// The study reached its end with this step.
    Finished(Phase),
}

/// BLAKE3 (hex) of a saved searcher state (`StudyState::searcher`).
pub fn snapshot_hash(searcher: &[u8]) -> String {
    blake3::hash(searcher).to_hex().to_string()
}

pub fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The study's saved state, if it has one.
pub async fn read_state(
    store: &storage::DynStore,
    study: &str,
) -> anyhow::Result<Option<StudyState>> {
    let key = storage::keys::controller_state(study)?;
    match storage::get(store, &key).await {
        Ok(bytes) => Ok(Some(
            StudyState::decode(&bytes).with_context(|| format!("reading {key}"))?,
        )),
        Err(storage::StorageError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl Study {
    /// A new study from a submitted spec: validated, its searcher built, its state saved
    /// (phase `Preparing`). Nothing is published yet.
    pub async fn create(app: &App, spec: StudySpec) -> anyhow::Result<Self> {
        let space =
            validate_spec(&spec).map_err(|errors| anyhow::anyhow!(invalid_spec(&errors)))?;
        let searcher = search::build(&spec.searcher, &space, &spec.searcher_settings, spec.seed)?;
        Self::create_with(app, spec, space, searcher).await
    }

    /// The pruner of a saved state: restored from its bytes, or built from the spec when the
    /// state has none (saved before pruning existed).
    fn pruner_of(state: &StudyState) -> anyhow::Result<Box<dyn Pruner>> {
        if state.pruner.is_empty() {
            Ok(prune::build(state.spec.pruning.as_ref())?)
        } else {
            prune::restore(&state.pruner).context("saved pruner")
        }
    }

    /// [`Study::create`] with a searcher made already (seeded by [`warm_start_from`]).
    pub async fn create_with(
        app: &App,
        spec: StudySpec,
        space: SearchSpace,
        searcher: Box<dyn Searcher>,
    ) -> anyhow::Result<Self> {
        let now = now_unix();
        let pruner = prune::build(spec.pruning.as_ref())?;
        let dataset_request = match spec.dataset {
            DatasetRef::Source { .. } => Some(format!("{}-{:x}", spec.study, (now * 1e6) as u64)),
            DatasetRef::Id { .. } => None,
        };
        let state = StudyState {
            schema: STATE_SCHEMA,
            spec,
            phase: Phase::Preparing,
            dataset_request,
            dataset_id: None,
            searcher: searcher.save().into(),
            pruner: pruner.save().into(),
            jobs: Default::default(),
            rewards: Vec::new(),
            failures: Vec::new(),
            best: None,
            next_index: 1,
            next_event: 0,
            outbox: Vec::new(),
            created_unix: now,
            updated_unix: now,
        };
        let mut study = Self {
            app: app.clone(),
            state,
            space,
            searcher,
            pruner,
            resumed: false,
            feeds: None,
        };
        study.commit().await?;
        Ok(study)
    }

    /// Continues a done study to `max_jobs` rewards (`segtune study extend`): the same
    /// searcher, ledger and seed go on where they stopped; an `Extended` event, then the new
    /// jobs. Saved, not yet published: [`Study::flush`] after the submission is acknowledged.
    pub async fn extend(&mut self, max_jobs: u32) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.state.phase == Phase::Done,
            "study {} is {:?}, not done",
            self.id(),
            self.state.phase
        );
        let previous_max_jobs = self.state.spec.max_jobs;
        anyhow::ensure!(
            max_jobs > previous_max_jobs,
            "study {} already has max_jobs {previous_max_jobs}",
            self.id()
        );
        self.state.spec.max_jobs = max_jobs;
        self.state.phase = Phase::Running;
        self.event(StudyEventKind::Extended {
            max_jobs,
            previous_max_jobs,
        });
        self.refill()?;
        self.commit().await
    }

    /// The study as last saved, or `None` when the store has no state for it.
    pub async fn load(app: &App, study: &str) -> anyhow::Result<Option<Self>> {
        let Some(state) = read_state(&app.store, study).await? else {
            return Ok(None);
        };
        let space = SearchSpace::new(state.spec.space.clone())
            .with_context(|| format!("study {study}: saved space"))?;
        let searcher = search::restore(&state.spec.searcher, &state.searcher)
            .with_context(|| format!("study {study}: saved searcher"))?;
        let pruner = Self::pruner_of(&state).with_context(|| format!("study {study}"))?;
        Ok(Some(Self {
            app: app.clone(),
            state,
            space,
            searcher,
            pruner,
            resumed: true,
            feeds: None,
        }))
    }

    pub fn id(&self) -> &str {
        &self.state.spec.study
    }

    pub fn searcher(&self) -> &dyn Searcher {
        self.searcher.as_ref()
    }

    pub fn pruner(&self) -> &dyn Pruner {
        self.pruner.as_ref()
    }

    /// BLAKE3 of the searcher's whole state as it is now (policy weights, optimizer, baseline,
    /// random generator, tickets): equal to [`snapshot_hash`] of the saved state's `searcher`
    /// right after a resume, which is what a restart must not lose.
    pub fn policy_hash(&self) -> String {
        snapshot_hash(&self.searcher.save())
    }

    pub fn is_finished(&self) -> bool {
        self.state.phase.is_finished()
    }

    /// Runs the study to its end (`Some(phase)`) or until `stop` turns true (`None`). Errors
    /// (broker or store trouble) are retried from the last saved state, with backoff.
    pub async fn drive(mut self, mut stop: watch::Receiver<bool>) -> anyhow::Result<Option<Phase>> {
        let study = self.id().to_string();
        let mut delay = Duration::from_millis(500);
        loop {
            match self.drive_once(&mut stop).await {
                Ok(r) => return Ok(r),
                Err(e) => {
                    tracing::warn!(%study, error = format!("{e:#}"), "study step failed; resuming from the saved state");
                }
            }
            self.feeds = None;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.wait_for(|s| *s) => return Ok(None),
                }
                delay = (delay * 2).min(Duration::from_secs(30));
                match Study::load(&self.app, &study).await {
                    Ok(Some(s)) => {
                        self = s;
                        break;
                    }
                    Ok(None) => anyhow::bail!("the state of study {study} disappeared"),
                    Err(e) => {
                        tracing::warn!(%study, error = format!("{e:#}"), "cannot reload study state")
                    }
                }
            }
        }
    }

    async fn drive_once(
        &mut self,
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<Option<Phase>> {
        self.flush().await?;
        if self.state.phase == Phase::Preparing && !self.prepare(stop).await? {
            return Ok(None);
        }
        if self.is_finished() {
            self.cleanup().await;
            return Ok(Some(self.state.phase.clone()));
        }
        self.attach().await?;
        loop {
            let delivery = tokio::select! {
                d = self.next_delivery(Duration::from_secs(60)) => d?,
                _ = stop.wait_for(|s| *s) => return Ok(None),
            };
            let Some(delivery) = delivery else { continue };
            if let Step::Finished(phase) = self.handle(delivery).await? {
                return Ok(Some(phase));
            }
        }
    }

    /// Makes sure the dataset is in the store, then starts the study (`Started`, the first
    /// `parallel` jobs). For a raw source, sends a `PreprocessRequest` and waits for the
    /// matching answer on `segtune.datasets.*`. Returns false when `stop` came first.
    pub async fn prepare(&mut self, stop: &mut watch::Receiver<bool>) -> anyhow::Result<bool> {
        if self.state.phase != Phase::Preparing {
            return Ok(true);
        }
        let answer = match self.state.spec.dataset.clone() {
            DatasetRef::Id { id } => match storage::keys::manifest(&id) {
                Err(e) => Err(e.to_string()),
                Ok(key) if storage::exists(&self.app.store, &key).await? => Ok(id),
                Ok(key) => Err(format!(
                    "dataset {id} is not in the store (no {key}); preprocess it first \
                         (segtune data preprocess) or give the study a dataset path"
                )),
            },
            DatasetRef::Source { source, params } => {
                let request = PreprocessRequest {
                    schema: SCHEMA_VERSION,
                    request_id: self
                        .state
                        .dataset_request
                        .clone()
                        .context("a source study without a request id")?,
                    source,
                    params,
                };
                match self.await_dataset(request, stop).await? {
                    Some(answer) => answer,
                    None => return Ok(false),
                }
            }
        };
        match answer {
            Ok(dataset_id) => self.start(dataset_id).await?,
            Err(reason) => {
                self.finish_failed(reason);
                self.commit().await?;
                self.flush().await?;
                self.cleanup().await;
            }
        }
        Ok(true)
    }

    async fn await_dataset(
        &mut self,
        request: PreprocessRequest,
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<Option<Result<String, String>>> {
        let stream = self
            .app
            .js
            .get_stream(subjects::stream::DATASETS)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open stream DATASETS: {e}"))?;
        // Subscribed before the request goes out, so the answer cannot slip past. A resumed
        // study reads the history too: the answer may have come while it was down.
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subjects::dataset("*"),
                deliver_policy: if self.resumed {
                    DeliverPolicy::All
                } else {
                    DeliverPolicy::New
                },
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("cannot watch segtune.datasets.*: {e}"))?;
        let mut answers = consumer
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("cannot watch segtune.datasets.*: {e}"))?;
        runtime::publish(
            &self.app.js,
            subjects::PREPROCESS_REQUESTS.to_string(),
            Some(&request.request_id),
            protocol::encode(&request)?,
        )
        .await?;
        tracing::info!(study = self.id(), request = %request.request_id, source = %request.source, "waiting for the dataset");
        loop {
            let next = tokio::select! {
                m = answers.next() => m,
                _ = stop.wait_for(|s| *s) => return Ok(None),
            };
            let msg = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => anyhow::bail!("watching segtune.datasets.*: {e}"),
                None => anyhow::bail!("the segtune.datasets.* watch ended"),
            };
            let Ok(event) = protocol::decode::<DatasetEvent>(&msg.payload) else {
                continue;
            };
            match event {
                DatasetEvent::Ready(r) if r.request_id == request.request_id => {
                    return Ok(Some(Ok(r.dataset_id)));
                }
                DatasetEvent::Failed(f) if f.request_id == request.request_id => {
                    let mut reason = format!("preprocessing {} failed:", request.source);
                    for e in f.errors.iter().take(3) {
                        reason.push_str(&format!(" [{} {}] {};", e.case, e.file, e.reason));
                    }
                    if f.errors.len() > 3 {
                        reason.push_str(&format!(" and {} more", f.errors.len() - 3));
                    }
                    return Ok(Some(Err(reason)));
                }
                _ => {}
            }
        }
    }

    /// The dataset is there: `Started`, then the paper's n initial strategies.
    async fn start(&mut self, dataset_id: String) -> anyhow::Result<()> {
        self.state.dataset_id = Some(dataset_id.clone());
        self.state.phase = Phase::Running;
        self.event(StudyEventKind::Started {
            spec: Box::new(self.state.spec.clone()),
            dataset_id,
        });
        self.refill()?;
        self.commit().await?;
        self.flush().await?;
        tracing::info!(
            study = self.id(),
            jobs = self.state.jobs.len(),
            "study started"
        );
        Ok(())
    }

    /// Creates (idempotently) the study's durable consumers on REWARDS and DEADLETTER (and
    /// VALIDATION for a study with pruning) and starts reading them.
    pub async fn attach(&mut self) -> anyhow::Result<()> {
        if self.feeds.is_some() {
            return Ok(());
        }
        let study = self.id().to_string();
        let rewards = Self::feed(
            &self.app,
            subjects::stream::REWARDS,
            subjects::durable::rewards(&study),
            subjects::rewards(&study),
        )
        .await?;
        let deadletter = Self::feed(
            &self.app,
            subjects::stream::DEADLETTER,
            subjects::durable::deadletter(&study),
            subjects::deadletter(&study),
        )
        .await?;
        let validation = match self.state.spec.pruning {
            Some(_) => Some(
                Self::feed(
                    &self.app,
                    subjects::stream::VALIDATION,
                    subjects::durable::validation(&study),
                    subjects::validation_all(&study),
                )
                .await?,
            ),
            None => None,
        };
        self.feeds = Some(Feeds {
            rewards,
            deadletter,
            validation,
        });
        Ok(())
    }

    async fn feed(
        app: &App,
        stream: &str,
        durable: String,
        filter: String,
    ) -> anyhow::Result<pull::Stream> {
        let s = app
            .js
            .get_stream(stream)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open stream {stream}: {e}"))?;
        let consumer = s
            .create_consumer(pull::Config {
                durable_name: Some(durable.clone()),
                filter_subject: filter,
                deliver_policy: DeliverPolicy::All,
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: app.options.ack_wait,
                // A reward must never be dropped for being retried: the store may be down.
                max_deliver: -1,
                max_ack_pending: 256,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("cannot create consumer {durable}: {e}"))?;
        consumer
            .stream()
            .max_messages_per_batch(16)
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("cannot read consumer {durable}: {e}"))
    }

    /// The next reward or dead letter, waiting up to `wait`. [`Study::attach`] first.
    pub async fn next_delivery(&mut self, wait: Duration) -> anyhow::Result<Option<Delivery>> {
        let feeds = self
            .feeds
            .as_mut()
            .context("the study is not attached to its consumers")?;
        let next = tokio::time::timeout(wait, async {
            // Dead letters and rewards before reports: a job's end is news the pruner needs
            // before it judges the next report against completed jobs.
            tokio::select! {
                biased;
                m = feeds.deadletter.next() => (Feed::DeadLetter, m),
                m = feeds.rewards.next() => (Feed::Reward, m),
                Some(m) = async {
                    match feeds.validation.as_mut() {
                        Some(v) => v.next().await,
                        None => std::future::pending().await,
                    }
                } => (Feed::Validation, Some(m)),
            }
        })
        .await;
        match next {
            Err(_) => Ok(None),
            Ok((feed, Some(Ok(message)))) => Ok(Some(Delivery { feed, message })),
            Ok((feed, Some(Err(e)))) => Err(anyhow::anyhow!("reading {feed:?} feed: {e}")),
            Ok((feed, None)) => Err(anyhow::anyhow!("the {feed:?} feed ended")),
        }
    }

    /// One step: the next delivery (waiting up to `wait`), handled.
    pub async fn handle_next(&mut self, wait: Duration) -> anyhow::Result<Step> {
        match self.next_delivery(wait).await? {
            Some(d) => self.handle(d).await,
            None => Ok(Step::Idle),
        }
    }

    /// Applies a delivery, saves, acknowledges it, publishes what it decided; at the end of
    /// the study also removes the study's consumers.
    pub async fn handle(&mut self, delivery: Delivery) -> anyhow::Result<Step> {
        if delivery.delivered() > 1 {
            tracing::debug!(study = self.id(), feed = ?delivery.feed, delivered = delivery.delivered(), "redelivery");
        }
        let step = self.process(&delivery).await?;
        match step {
            Step::Rejected { .. } => delivery.term().await?,
            _ => delivery.ack().await?,
        }
        self.flush().await?;
        if self.is_finished() {
            self.cleanup().await;
        }
        Ok(step)
    }

    /// Applies a delivery and saves the state; does not acknowledge or publish.
    pub async fn process(&mut self, delivery: &Delivery) -> anyhow::Result<Step> {
        let payload = &delivery.message.payload;
        match delivery.feed {
            Feed::Reward => match protocol::decode::<Reward>(payload) {
                Ok(r) => self.apply_reward(&r).await,
                Err(e) => {
                    tracing::error!(study = self.id(), error = %e, "undecodable reward");
                    Ok(Step::Rejected {
                        reason: e.to_string(),
                    })
                }
            },
            Feed::DeadLetter => match protocol::decode::<JobFailed>(payload) {
                Ok(f) => self.apply_failure(&f).await,
                Err(e) => {
                    tracing::error!(study = self.id(), error = %e, "undecodable dead letter");
                    Ok(Step::Rejected {
                        reason: e.to_string(),
                    })
                }
            },
            Feed::Validation => match protocol::decode::<ValidationReport>(payload) {
                Ok(r) => self.apply_report(&r).await,
                Err(e) => {
                    tracing::error!(study = self.id(), error = %e, "undecodable validation report");
                    Ok(Step::Rejected {
                        reason: e.to_string(),
                    })
                }
            },
        }
    }

    /// An intermediate validation report: the pruner records it and may stop the job (its
    /// `StopJob` goes out from the outbox, with a `pruned` event). A report for a job that is
    /// not running any more, or already stopped, changes nothing. Saves the state.
    pub async fn apply_report(&mut self, r: &ValidationReport) -> anyhow::Result<Step> {
        if let Some(ignored) = self.settled_or_unknown(&r.study, &r.job_id) {
            tracing::debug!(study = self.id(), ?ignored, "report ignored");
            return Ok(ignored);
        }
        if self.state.jobs[&r.job_id].stop.is_some() {
            return Ok(Step::Ignored {
                job_id: r.job_id.clone(),
                why: "the job was already stopped".into(),
            });
        }
        let dice = if r.dice.is_finite() { r.dice } else { f64::NAN };
        let decision = self.pruner.report(&r.job_id, r.epoch, dice);
        let step = match decision {
            Decision::Continue => Step::Reported {
                job_id: r.job_id.clone(),
                epoch: r.epoch,
            },
            Decision::Prune { reason } => {
                tracing::info!(study = self.id(), job = %r.job_id, epoch = r.epoch, dice = r.dice, %reason, "pruning job");
                let job = self.state.jobs.get_mut(&r.job_id).expect("checked above");
                job.stop = Some(StopEntry {
                    epoch: r.epoch,
                    dice: r.dice,
                    reason: reason.clone(),
                });
                let index = job.index;
                self.state.outbox.push(Outgoing::Stop {
                    job_id: r.job_id.clone(),
                });
                self.event(StudyEventKind::Pruned {
                    job_id: r.job_id.clone(),
                    index,
                    epoch: r.epoch,
                    dice: r.dice,
                    reason,
                });
                Step::Pruned {
                    job_id: r.job_id.clone(),
                    epoch: r.epoch,
                }
            }
        };
        self.commit().await?;
        Ok(step)
    }

    fn settled_or_unknown(&self, study: &str, job_id: &str) -> Option<Step> {
        let ignored = |why: &str| {
            Some(Step::Ignored {
                job_id: job_id.to_string(),
                why: why.to_string(),
            })
        };
        if self.state.phase != Phase::Running {
            return ignored("the study is not running");
        }
        if study != self.id() {
            return ignored("addressed to another study");
        }
        match self.state.jobs.get(job_id).map(|j| &j.status) {
            None => ignored("no such job in this study"),
            Some(JobStatus::Rewarded { .. }) => ignored("reward already counted"),
            Some(JobStatus::Failed { .. }) => ignored("the job already failed"),
            Some(JobStatus::Issued) => None,
        }
    }

    /// Counts a reward once per job id: the searcher learns, the incumbent may change, and one
    /// more job goes out while fewer than `max_jobs` are live. Saves the state.
    pub async fn apply_reward(&mut self, r: &Reward) -> anyhow::Result<Step> {
        if let Some(ignored) = self.settled_or_unknown(&r.study, &r.job_id) {
            tracing::debug!(study = self.id(), ?ignored, "reward ignored");
            return Ok(ignored);
        }
        let job = self.state.jobs[&r.job_id].clone();
        if !r.mean.is_finite() {
            let reason = format!("the reward {} is not a number", r.mean);
            return self.fail_job(&r.job_id, reason, String::new()).await;
        }
        // A pruned job's reward is its last intermediate Dice: every searcher observes it
        // like any other (the controller README says why that is sound for each).
        if let Err(e) = self.searcher.observe(&job.proposal, r.mean) {
            let reason = format!("the searcher refused the reward: {e}");
            return self.fail_job(&r.job_id, reason, String::new()).await;
        }
        // A complete reward for a job the pruner had stopped (it finished first) counts as
        // complete: the stop changed nothing.
        let ending = if r.pruned {
            Ending::Pruned
        } else {
            Ending::Completed
        };
        self.pruner.finish(&r.job_id, ending);
        if let Some(j) = self.state.jobs.get_mut(&r.job_id) {
            j.status = JobStatus::Rewarded { mean: r.mean };
        }
        self.state.rewards.push(RewardEntry {
            job_id: r.job_id.clone(),
            index: job.index,
            mean: r.mean,
            pruned: r.pruned,
        });
        let rewards = self.state.rewards.len() as u32;
        self.event(StudyEventKind::Reward {
            job_id: r.job_id.clone(),
            index: job.index,
            mean: r.mean,
            rewards_so_far: rewards,
        });
        // Only a complete job can be the study's best: a pruned one's checkpoint is half
        // trained and its Dice an intermediate one.
        if !r.pruned && self.state.best.as_ref().is_none_or(|b| r.mean > b.mean) {
            self.state.best = Some(Best {
                job_id: r.job_id.clone(),
                mean: r.mean,
                strategy: job.strategy.clone(),
            });
            self.event(StudyEventKind::NewBest {
                job_id: r.job_id.clone(),
                mean: r.mean,
                strategy: job.strategy.clone(),
            });
        }
        tracing::info!(study = self.id(), job = %r.job_id, mean = r.mean, pruned = r.pruned, rewards, "reward");
        if rewards >= self.state.spec.max_jobs {
            self.finish_done();
        } else {
            self.refill()?;
        }
        self.commit().await?;
        Ok(match &self.state.phase {
            Phase::Running => Step::Counted {
                job_id: r.job_id.clone(),
                rewards,
            },
            other => Step::Finished(other.clone()),
        })
    }

    /// A dead-lettered job: abandoned, counted against `max_failures`, replaced.
    pub async fn apply_failure(&mut self, f: &JobFailed) -> anyhow::Result<Step> {
        if let Some(ignored) = self.settled_or_unknown(&f.study, &f.job_id) {
            tracing::debug!(study = self.id(), ?ignored, "dead letter ignored");
            return Ok(ignored);
        }
        self.fail_job(&f.job_id, f.reason.clone(), f.worker.clone())
            .await
    }

    async fn fail_job(
        &mut self,
        job_id: &str,
        reason: String,
        worker: String,
    ) -> anyhow::Result<Step> {
        let proposal = self.state.jobs[job_id].proposal.clone();
        if let Err(e) = self.searcher.abandon(&proposal) {
            tracing::warn!(study = self.id(), job = job_id, error = %e, "searcher refused to abandon");
        }
        self.pruner.finish(job_id, Ending::Failed);
        if let Some(j) = self.state.jobs.get_mut(job_id) {
            j.status = JobStatus::Failed {
                reason: reason.clone(),
            };
        }
        self.state.failures.push(FailureEntry {
            job_id: job_id.to_string(),
            reason: reason.clone(),
            worker,
        });
        let failures = self.state.failures.len() as u32;
        tracing::warn!(study = self.id(), job = job_id, %reason, failures, "job failed");
        self.event(StudyEventKind::JobFailed {
            job_id: job_id.to_string(),
            reason: reason.clone(),
        });
        if failures > self.state.spec.max_failures {
            self.finish_failed(format!(
                "{failures} jobs failed, more than max_failures = {}; last: {job_id}: {reason}",
                self.state.spec.max_failures
            ));
        } else {
            self.refill()?;
        }
        self.commit().await?;
        Ok(match &self.state.phase {
            Phase::Running => Step::Replaced {
                job_id: job_id.to_string(),
                failures,
            },
            other => Step::Finished(other.clone()),
        })
    }

    /// Issues jobs until `parallel` are out or `max_jobs` live jobs exist. A hill climber at
    /// its local optimum gets no more jobs (the paper's baselines stop there); once nothing is
    /// out any more the study is done.
    fn refill(&mut self) -> anyhow::Result<()> {
        let spec = &self.state.spec;
        let (max_jobs, parallel) = (spec.max_jobs as usize, spec.parallel as usize);
        // `fixed` is converged by definition; its repeats measure seed noise, so it runs on.
        let stopped = self.searcher.converged() && self.searcher.kind() != "fixed";
        while !stopped && self.state.live_jobs() < max_jobs && self.state.outstanding() < parallel {
            self.issue()?;
        }
        if self.state.outstanding() == 0 {
            if self.state.best.is_some() {
                tracing::info!(study = self.id(), "the searcher converged");
                self.finish_done();
            } else {
                self.finish_failed("the searcher stopped before any job had a reward".into());
            }
        }
        Ok(())
    }

    /// Proposes one strategy and records its job; published from the outbox after saving.
    fn issue(&mut self) -> anyhow::Result<()> {
        let proposal = self.searcher.propose();
        let strategy = self.space.strategy(&proposal.unit)?;
        let index = self.state.next_index;
        self.state.next_index += 1;
        let id = job_id(self.id(), index);
        self.state.jobs.insert(
            id.clone(),
            JobEntry {
                index,
                seed: job_seed(self.state.spec.seed, index),
                proposal,
                strategy: strategy.clone(),
                status: JobStatus::Issued,
                stop: None,
            },
        );
        self.state.outbox.push(Outgoing::Job { job_id: id.clone() });
        self.event(StudyEventKind::Issued {
            job_id: id,
            index,
            strategy,
        });
        Ok(())
    }

    fn finish_done(&mut self) {
        let Some(best) = self.state.best.clone() else {
            let why = if self.state.rewards.is_empty() {
                "no job had a reward"
            } else {
                "no job trained to the end: every rewarded job was pruned"
            };
            return self.finish_failed(why.into());
        };
        self.state.phase = Phase::Done;
        tracing::info!(study = self.id(), best = %best.job_id, mean = best.mean, "study done");
        self.event(StudyEventKind::Done {
            best_job_id: best.job_id,
            best_mean: best.mean,
            best_strategy: best.strategy,
            rewards: self.state.rewards.len() as u32,
        });
    }

    fn finish_failed(&mut self, reason: String) {
        tracing::warn!(study = self.id(), %reason, "study failed");
        self.state.phase = Phase::Failed {
            reason: reason.clone(),
        };
        self.event(StudyEventKind::Failed { reason });
    }

    fn event(&mut self, event: StudyEventKind) {
        let seq = self.state.next_event;
        self.state.next_event += 1;
        self.state.outbox.push(Outgoing::Event {
            seq,
            event: StudyEvent {
                schema: SCHEMA_VERSION,
                study: self.id().to_string(),
                time_unix: now_unix(),
                event,
            },
        });
    }

    /// Saves the state (with the searcher's current bytes).
    pub async fn commit(&mut self) -> anyhow::Result<()> {
        self.state.searcher = self.searcher.save().into();
        self.state.pruner = self.pruner.save().into();
        self.state.updated_unix = now_unix();
        let key = storage::keys::controller_state(self.id())?;
        storage::put(&self.app.store, &key, self.state.encode()?)
            .await
            .with_context(|| format!("saving {key}"))?;
        Ok(())
    }

    /// Publishes the outbox (jobs with `Nats-Msg-Id` = job id, events with
    /// `<study>-event-<seq>`), then saves it empty.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if self.state.outbox.is_empty() {
            return Ok(());
        }
        let study = self.id().to_string();
        for out in &self.state.outbox {
            match out {
                Outgoing::Job { job_id } => {
                    let job = self.train_job(job_id)?;
                    runtime::publish(
                        &self.app.js,
                        subjects::jobs(&study),
                        Some(job_id),
                        protocol::encode(&job)?,
                    )
                    .await?;
                }
                Outgoing::Event { seq, event } => {
                    runtime::publish(
                        &self.app.js,
                        subjects::study_events(&study),
                        Some(&format!("{study}-event-{seq}")),
                        protocol::encode(event)?,
                    )
                    .await?;
                }
                Outgoing::Stop { job_id } => {
                    let stop = self.stop_job(job_id)?;
                    runtime::publish(
                        &self.app.js,
                        subjects::stop(&study, job_id),
                        Some(&subjects::stop_msg_id(job_id)),
                        protocol::encode(&stop)?,
                    )
                    .await?;
                }
            }
        }
        self.state.outbox.clear();
        self.commit().await
    }

    /// The `TrainJob` message of an issued job, rebuilt from the ledger.
    pub fn train_job(&self, job_id: &str) -> anyhow::Result<TrainJob> {
        let job = self
            .state
            .jobs
            .get(job_id)
            .with_context(|| format!("job {job_id} is not in the ledger"))?;
        Ok(TrainJob {
            schema: SCHEMA_VERSION,
            study: self.id().to_string(),
            job_id: job_id.to_string(),
            index: job.index,
            dataset_id: self
                .state
                .dataset_id
                .clone()
                .context("a job before the dataset is known")?,
            strategy: job.strategy.clone(),
            training: self.state.spec.training.clone(),
            seed: job.seed,
            final_model: None,
            validation: self.validation_plan(),
        })
    }

    /// When the study's trainers validate before the end (`None`: no `[pruning]`, or no
    /// validation point before the last epoch).
    pub fn validation_plan(&self) -> Option<ValidationPlan> {
        let spec = &self.state.spec;
        let pruning = spec.pruning.as_ref()?;
        let epochs = prune::report_epochs(pruning, spec.training.epochs);
        (!epochs.is_empty()).then(|| ValidationPlan {
            epochs,
            overlap: pruning.overlap.unwrap_or(spec.training.overlap),
        })
    }

    /// The `StopJob` of a stopped job, rebuilt from the ledger.
    pub fn stop_job(&self, job_id: &str) -> anyhow::Result<StopJob> {
        let stop = self
            .state
            .jobs
            .get(job_id)
            .and_then(|j| j.stop.as_ref())
            .with_context(|| format!("job {job_id} has no stop in the ledger"))?;
        Ok(StopJob {
            schema: SCHEMA_VERSION,
            study: self.id().to_string(),
            job_id: job_id.to_string(),
            epoch: stop.epoch,
            dice: stop.dice,
            reason: stop.reason.clone(),
        })
    }

    /// After the end: deletes the study's consumers and, for a failed study, the jobs still
    /// waiting for a trainer. Best effort (logged).
    pub async fn cleanup(&mut self) {
        self.feeds = None;
        let study = self.id().to_string();
        for (stream, durable) in [
            (
                subjects::stream::REWARDS,
                subjects::durable::rewards(&study),
            ),
            (
                subjects::stream::DEADLETTER,
                subjects::durable::deadletter(&study),
            ),
            (
                subjects::stream::VALIDATION,
                subjects::durable::validation(&study),
            ),
        ] {
            if let Ok(s) = self.app.js.get_stream(stream).await
                && let Err(e) = s.delete_consumer(&durable).await
            {
                tracing::debug!(%study, %durable, error = %e, "consumer not deleted");
            }
        }
        if matches!(self.state.phase, Phase::Failed { .. })
            && let Ok(s) = self.app.js.get_stream(subjects::stream::JOBS).await
            && let Err(e) = s.purge().filter(subjects::jobs(&study)).await
        {
            tracing::warn!(%study, error = %e, "cannot purge the study's waiting jobs");
        }
    }
}

/// The reason a submission is rejected for: every problem of the spec, named by its key.
pub fn invalid_spec(errors: &[::study::FieldError]) -> String {
    let all: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    format!("invalid study spec: {}", all.join("; "))
}

/// The space and searcher of a (validated) study naming `warm_start = from`, the searcher
/// seeded with `from`'s rewarded strategies (unit coordinates, in the order they were
/// counted) and its saved state. `Err` says why it cannot be (no such study in the store,
/// another space, a searcher that refuses), as the submission's rejection reason.
pub async fn warm_start_from(
    app: &App,
    spec: &StudySpec,
    from: &str,
) -> anyhow::Result<Result<(SearchSpace, Box<dyn Searcher>), String>> {
    let refuse = |why: String| Ok(Err(format!("search.warm_start: {why}")));
    let Some(source) = read_state(&app.store, from).await? else {
        return refuse(format!("no study named {from} in the store"));
    };
    if let Some(why) = space_difference(&source.spec.space, &spec.space) {
        return refuse(format!("study {from} searched another space: {why}"));
    }
    let observations = source
        .rewards
        .iter()
        .filter_map(|r| {
            let job = source.jobs.get(&r.job_id)?;
            Some((job.proposal.unit.clone(), r.mean))
        })
        .collect();
    let state = match search::SearcherState::decode(&source.searcher) {
        Ok(s) => Some(s),
        Err(e) => return refuse(format!("study {from}'s searcher cannot be read: {e}")),
    };
    let warm = WarmStart {
        observations,
        state,
    };
    // The searcher's own refusals (ppo-rnn from another kind, ...) are the submission's.
    let space = SearchSpace::new(spec.space.clone())?;
    let mut searcher = search::build(&spec.searcher, &space, &spec.searcher_settings, spec.seed)?;
    if let Err(e) = searcher.warm_start(&warm) {
        return refuse(format!("from study {from}: {e}"));
    }
    Ok(Ok((space, searcher)))
}

/// The first way two spaces differ (names and order, ranges, scales), if they do.
fn space_difference(from: &[protocol::Dimension], to: &[protocol::Dimension]) -> Option<String> {
    let names = |s: &[protocol::Dimension]| s.iter().map(|d| d.name.clone()).collect::<Vec<_>>();
    if names(from) != names(to) {
        return Some(format!(
            "its dimensions are [{}], this study's [{}]",
            names(from).join(", "),
            names(to).join(", ")
        ));
    }
    from.iter().zip(to).find(|(a, b)| a != b).map(|(a, b)| {
        format!(
            "dimension {} is {}..{} {:?} there, {}..{} {:?} here",
            a.name, a.min, a.max, a.scale, b.min, b.max, b.scale
        )
    })
}
