//! What the follower knows about the study: the [`View`], folded from its events, rewards
//! and progress messages.

use std::{
    collections::{BTreeMap, HashMap},
    time::{SystemTime, UNIX_EPOCH},
};

use protocol::{Progress, Reward, Scale, Strategy, StudyEvent, StudyEventKind, StudySpec};

use super::{Outcome, Output, render::duration};

pub(super) enum Finish {
    Done(Outcome),
    Failed(String),
}

#[derive(Debug, Clone)]
pub(super) enum Stage {
    Queued,
    Training {
        epoch: u32,
        epochs: u32,
        loss: f64,
        patches_per_sec: f64,
        worker: String,
    },
    Evaluating,
    Done,
    Failed(String),
}

#[derive(Debug, Clone)]
pub(super) struct JobView {
    pub(super) strategy: Strategy,
    pub(super) stage: Stage,
    pub(super) dice: Option<f64>,
    pub(super) per_class: Vec<f64>,
    /// The trainer replica that trained it (from its reward; empty until then, or when the
    /// evaluator did not say).
    pub(super) trainer: String,
    /// Its reward message has been read (per-class Dice, trainer).
    pub(super) rewarded: bool,
    /// The pruner stopped it after its intermediate report at this epoch (from the `pruned`
    /// event; cleared when a complete reward arrives instead).
    pub(super) pruned_at: Option<u32>,
    /// Trainer-seconds of its training (from its reward; 0 until then).
    pub(super) train_seconds: f64,
}

/// Everything known about the study, and how it was last drawn.
pub(super) struct View {
    pub(super) study: String,
    pub(super) output: Output,
    pub(super) spec: Option<StudySpec>,
    pub(super) dataset_id: Option<String>,
    /// Unix time of the first event (the origin of plain-line timestamps).
    pub(super) t0: Option<f64>,
    pub(super) started_unix: Option<f64>,
    pub(super) done_unix: Option<f64>,
    pub(super) events: u64,
    pub(super) jobs: BTreeMap<u32, JobView>,
    pub(super) index_of: HashMap<String, u32>,
    /// Rewards read before their job's `issued` event (the two streams replay independently).
    pub(super) early_rewards: HashMap<String, Reward>,
    pub(super) rewards: u32,
    pub(super) best: Option<(u32, f64)>,
    /// Lines of the last live frame (erased before the next).
    pub(super) drawn: usize,
    /// Where frames, plain lines and the summary go: stdout, or a buffer in tests.
    pub(super) out: Box<dyn std::io::Write + Send>,
}

impl View {
    pub(super) fn new(study: &str, output: Output) -> Self {
        Self::with_output(study, output, Box::new(std::io::stdout()))
    }

    pub(super) fn with_output(
        study: &str,
        output: Output,
        out: Box<dyn std::io::Write + Send>,
    ) -> Self {
        Self {
            study: study.to_string(),
            output,
            spec: None,
            dataset_id: None,
            t0: None,
            started_unix: None,
            done_unix: None,
            events: 0,
            jobs: BTreeMap::new(),
            index_of: HashMap::new(),
            early_rewards: HashMap::new(),
            rewards: 0,
            best: None,
            drawn: 0,
            out,
        }
    }

    pub(super) fn event(&mut self, ev: StudyEvent) -> Option<Finish> {
        self.events += 1;
        let at = ev.time_unix;
        self.t0.get_or_insert(at);
        match ev.event {
            StudyEventKind::Started { spec, dataset_id } => {
                self.started_unix = Some(at);
                let text = format!(
                    "study {} started: {}, {} jobs, {} in parallel, dataset {dataset_id}",
                    self.study, spec.searcher, spec.max_jobs, spec.parallel
                );
                self.spec = Some(*spec);
                self.dataset_id = Some(dataset_id);
                self.line(at, &text);
            }
            StudyEventKind::Issued {
                job_id,
                index,
                strategy,
            } => {
                let text = format!("job {index} issued: {}", self.compact(&strategy));
                self.index_of.insert(job_id.clone(), index);
                self.jobs.insert(
                    index,
                    JobView {
                        strategy,
                        stage: Stage::Queued,
                        dice: None,
                        per_class: Vec::new(),
                        trainer: String::new(),
                        rewarded: false,
                        pruned_at: None,
                        train_seconds: 0.0,
                    },
                );
                if let Some(r) = self.early_rewards.remove(&job_id) {
                    self.reward(r);
                }
                self.line(at, &text);
            }
            StudyEventKind::Reward {
                job_id,
                index,
                mean,
                rewards_so_far,
            } => {
                self.rewards = rewards_so_far;
                let index = self.index_of.get(&job_id).copied().unwrap_or(index);
                if let Some(j) = self.jobs.get_mut(&index) {
                    j.stage = Stage::Done;
                    j.dice = Some(mean);
                }
                let text = format!(
                    "job {index} ({job_id}) Dice {mean:.4} ({}{})",
                    self.done_text(),
                    self.eta(at)
                        .map(|s| format!(", ETA {}", duration(s)))
                        .unwrap_or_default()
                );
                self.line(at, &text);
            }
            StudyEventKind::NewBest { job_id, mean, .. } => {
                if let Some(&i) = self.index_of.get(&job_id) {
                    self.best = Some((i, mean));
                    self.line(at, &format!("new best: job {i} Dice {mean:.4}"));
                }
            }
            StudyEventKind::JobFailed { job_id, reason } => {
                if let Some(&i) = self.index_of.get(&job_id) {
                    if let Some(j) = self.jobs.get_mut(&i) {
                        j.stage = Stage::Failed(reason.clone());
                    }
                    self.line(at, &format!("job {i} failed: {reason}"));
                }
            }
            StudyEventKind::Done {
                best_job_id,
                best_mean,
                best_strategy,
                rewards,
            } => {
                self.done_unix = Some(at);
                self.rewards = rewards;
                let seconds = at - self.started_unix.unwrap_or(at);
                self.line(at, &format!("study {} done: {rewards} rewards", self.study));
                return Some(Finish::Done(Outcome {
                    study: self.study.clone(),
                    best_job_id,
                    best_mean,
                    best_strategy,
                    rewards,
                    seconds,
                }));
            }
            StudyEventKind::Failed { reason } => {
                self.line(at, &format!("study {} failed: {reason}", self.study));
                return Some(Finish::Failed(reason));
            }
            StudyEventKind::Extended {
                max_jobs,
                previous_max_jobs,
            } => {
                if let Some(spec) = self.spec.as_mut() {
                    spec.max_jobs = max_jobs;
                }
                self.done_unix = None;
                let text = format!(
                    "study {} extended: {previous_max_jobs} -> {max_jobs} jobs",
                    self.study
                );
                self.line(at, &text);
            }
            StudyEventKind::Pruned {
                job_id,
                index,
                epoch,
                dice,
                reason,
            } => {
                let index = self.index_of.get(&job_id).copied().unwrap_or(index);
                if let Some(j) = self.jobs.get_mut(&index) {
                    j.pruned_at.get_or_insert(epoch);
                }
                let text =
                    format!("job {index} pruned at epoch {epoch} (Dice {dice:.4}): {reason}");
                self.line(at, &text);
            }
        }
        None
    }

    /// Jobs the pruner stopped (whose pruned reward is in), and the trainer-seconds they
    /// saved: per pruned job, the mean training time of the complete jobs minus its own (an
    /// estimate; 0 until a job completed).
    pub(super) fn pruning_savings(&self) -> (usize, f64) {
        let rewarded = || self.jobs.values().filter(|j| j.rewarded);
        let complete: Vec<f64> = rewarded()
            .filter(|j| j.pruned_at.is_none())
            .map(|j| j.train_seconds)
            .collect();
        let pruned: Vec<f64> = rewarded()
            .filter(|j| j.pruned_at.is_some())
            .map(|j| j.train_seconds)
            .collect();
        if complete.is_empty() {
            return (pruned.len(), 0.0);
        }
        let full = complete.iter().sum::<f64>() / complete.len() as f64;
        let saved = pruned.iter().map(|s| (full - s).max(0.0)).sum();
        (pruned.len(), saved)
    }

    pub(super) fn reward(&mut self, r: Reward) {
        let Some(&index) = self.index_of.get(&r.job_id) else {
            self.early_rewards.entry(r.job_id.clone()).or_insert(r);
            return;
        };
        if let Some(j) = self.jobs.get_mut(&index) {
            j.rewarded = true;
            j.per_class = r.per_class;
            j.trainer = r.trainer;
            j.train_seconds = r.train_seconds;
            // A job that finished before its stop reached the trainer is complete.
            j.pruned_at = r.pruned.then_some(r.epoch_reached);
            j.dice.get_or_insert(r.mean);
        }
    }

    pub(super) fn progress(&mut self, p: Progress) {
        self.progress_at(p, now_unix());
    }

    pub(super) fn progress_at(&mut self, p: Progress, now: f64) {
        let Some(&i) = self.index_of.get(&p.job_id) else {
            return;
        };
        let Some(j) = self.jobs.get_mut(&i) else {
            return;
        };
        if matches!(j.stage, Stage::Done | Stage::Failed(_)) {
            return;
        }
        j.stage = if p.epoch >= p.epochs {
            Stage::Evaluating
        } else {
            Stage::Training {
                epoch: p.epoch,
                epochs: p.epochs,
                loss: p.loss,
                patches_per_sec: p.patches_per_sec,
                worker: p.worker.clone(),
            }
        };
        let text = format!(
            "job {i} epoch {}/{} loss {:.4}, {:.1} patches/s ({})",
            p.epoch, p.epochs, p.loss, p.patches_per_sec, p.worker
        );
        self.line(now, &text);
    }

    /// Whether a job counted as rewarded still lacks its reward message.
    pub(super) fn awaiting_rewards(&self) -> bool {
        self.jobs
            .values()
            .any(|j| matches!(j.stage, Stage::Done) && !j.rewarded)
    }

    pub(super) fn max_jobs(&self) -> Option<u32> {
        self.spec.as_ref().map(|s| s.max_jobs)
    }

    /// Seconds left, from the mean time per reward so far.
    pub(super) fn eta(&self, now: f64) -> Option<f64> {
        let start = self.started_unix?;
        let max = self.max_jobs()?;
        if self.rewards == 0 || self.done_unix.is_some() || self.rewards >= max {
            return None;
        }
        Some((now - start) / self.rewards as f64 * (max - self.rewards) as f64)
    }

    /// The searched dimensions in order, and whether each is on a log scale.
    pub(super) fn dims(&self) -> Vec<(String, bool)> {
        match &self.spec {
            Some(spec) => spec
                .space
                .iter()
                .map(|d| (d.name.clone(), d.scale == Scale::Log))
                .collect(),
            None => self
                .jobs
                .values()
                .next()
                .map(|j| {
                    j.strategy
                        .values
                        .keys()
                        .map(|k| (k.clone(), k == protocol::strategy::LEARNING_RATE))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

pub(super) fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
