//! The study as the report sees it: a [`StudyRecord`] folded from the study's rewards and
//! events, pure (no NATS).

use std::collections::{BTreeMap, HashMap, HashSet};

use protocol::{
    Dimension, Reward, Scale, Strategy, StudyEvent, StudyEventKind, StudySpec, strategy,
};

/// One rewarded job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    /// 1-based issue order.
    pub index: u32,
    pub job_id: String,
    pub strategy: Strategy,
    /// Mean Dice over validation cases of each foreground class (index 0 = label 1).
    pub per_class: Vec<f64>,
    /// The reward.
    pub mean: f64,
    /// Wall seconds from the job's issue to its reward (from the study events): queueing,
    /// training and evaluation together. `None` when either event is missing.
    pub seconds: Option<f64>,
    /// Who trained the job and how long it took; `None` for a reward from an evaluator that
    /// did not report it (older than these fields: `attempt` 0 on the wire).
    pub run: Option<JobRun>,
    /// `Some(epoch)`: the pruner stopped the job after its intermediate report at `epoch`, and
    /// `mean` is that intermediate Dice.
    pub pruned_at: Option<u32>,
    /// The epoch the job's training reached (0: not reported).
    pub epoch_reached: u32,
}

/// The training run behind a reward, as the evaluator reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRun {
    /// The trainer replica (`SEGTUNE_WORKER`, e.g. `trainer-2` under `segtune up`).
    pub trainer: String,
    /// Delivery attempt of the training job (1 = first; more after a replica stopped).
    pub attempt: u64,
    pub train_seconds: f64,
    pub eval_seconds: f64,
    pub final_loss: f64,
}

impl JobRun {
    fn of(r: &Reward) -> Option<Self> {
        (r.attempt > 0).then(|| Self {
            trainer: r.trainer.clone(),
            attempt: r.attempt,
            train_seconds: r.train_seconds,
            eval_seconds: r.eval_seconds,
            final_loss: r.final_loss,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum StudyStatus {
    Running,
    Done,
    Failed(String),
}

/// Everything the report shows, gathered from a study's rewards and events.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyRecord {
    pub study: String,
    /// From the `started` event.
    pub spec: Option<StudySpec>,
    pub dataset_id: Option<String>,
    /// One per job id (the first reward stored wins, as in the controller), in issue order.
    pub rows: Vec<JobRow>,
    /// (job id, reason) of jobs that failed for good.
    pub failed_jobs: Vec<(String, String)>,
    pub status: StudyStatus,
    /// The study's confirmations (`segtune study confirm`), oldest first; the report draws
    /// the last one.
    pub confirmations: Vec<protocol::Confirmation>,
    /// The reward of the study's latest final model (`segtune study finalize`), if any.
    pub final_model: Option<protocol::Reward>,
}

impl StudyRecord {
    /// Where `study finalize` stores the final model's bundle (for the report's text).
    pub fn final_bundle(&self) -> String {
        storage::keys::final_bundle(&self.study)
            .map(|p| format!("store:{p}"))
            .unwrap_or_default()
    }

    pub fn from_messages(study: &str, rewards: &[Reward], events: &[StudyEvent]) -> Self {
        let mut spec = None;
        let mut dataset_id = None;
        let mut issued = HashMap::new();
        let mut rewarded = HashMap::new();
        let mut failed_jobs = Vec::new();
        let mut status = StudyStatus::Running;
        for ev in events.iter().filter(|e| e.study == study) {
            match &ev.event {
                StudyEventKind::Started {
                    spec: s,
                    dataset_id: d,
                } => {
                    spec = Some((**s).clone());
                    dataset_id = Some(d.clone());
                }
                StudyEventKind::Issued { job_id, .. } => {
                    issued.entry(job_id.clone()).or_insert(ev.time_unix);
                }
                StudyEventKind::Reward { job_id, .. } => {
                    rewarded.entry(job_id.clone()).or_insert(ev.time_unix);
                }
                StudyEventKind::JobFailed { job_id, reason } => {
                    failed_jobs.push((job_id.clone(), reason.clone()))
                }
                StudyEventKind::Done { .. } => status = StudyStatus::Done,
                StudyEventKind::Failed { reason } => status = StudyStatus::Failed(reason.clone()),
                StudyEventKind::NewBest { .. } | StudyEventKind::Pruned { .. } => {}
                StudyEventKind::Extended { max_jobs, .. } => {
                    status = StudyStatus::Running;
                    if let Some(s) = spec.as_mut() {
                        s.max_jobs = *max_jobs;
                    }
                }
            }
        }
        let mut seen = HashSet::new();
        let mut rows: Vec<JobRow> = rewards
            .iter()
            .filter(|r| r.study == study && seen.insert(r.job_id.clone()))
            .map(|r| JobRow {
                index: r.index,
                job_id: r.job_id.clone(),
                strategy: r.strategy.clone(),
                per_class: r.per_class.clone(),
                mean: r.mean,
                seconds: match (issued.get(&r.job_id), rewarded.get(&r.job_id)) {
                    (Some(a), Some(b)) if b >= a => Some(b - a),
                    _ => None,
                },
                run: JobRun::of(r),
                pruned_at: r.pruned.then_some(r.epoch_reached),
                epoch_reached: r.epoch_reached,
            })
            .collect();
        rows.sort_by(|a, b| (a.index, &a.job_id).cmp(&(b.index, &b.job_id)));
        Self {
            study: study.to_string(),
            confirmations: Vec::new(),
            final_model: None,
            spec,
            dataset_id,
            rows,
            failed_jobs,
            status,
        }
    }

    /// The searched dimensions in the study's order; without a `started` event, the
    /// strategies' names, the learning rate taken as log-scaled and the rest as linear over
    /// the values seen (and at least [0, 1]).
    pub fn dimensions(&self) -> Vec<Dimension> {
        let mut dims: Vec<Dimension> = self
            .spec
            .as_ref()
            .map(|s| s.space.clone())
            .unwrap_or_default();
        let known: HashSet<String> = dims.iter().map(|d| d.name.clone()).collect();
        let mut extra: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
        for row in &self.rows {
            for (k, v) in &row.strategy.values {
                if known.contains(k) || !v.is_finite() {
                    continue;
                }
                let e = extra.entry(k).or_insert((*v, *v));
                e.0 = e.0.min(*v);
                e.1 = e.1.max(*v);
            }
        }
        // The learning rate last, as in the paper's space.
        let mut extra: Vec<(&str, (f64, f64))> = extra.into_iter().collect();
        extra.sort_by_key(|(name, _)| *name == strategy::LEARNING_RATE);
        for (name, (lo, hi)) in extra {
            dims.push(if name == strategy::LEARNING_RATE {
                let [min, max] = strategy::LEARNING_RATE_RANGE;
                Dimension {
                    name: name.into(),
                    min: lo.min(min),
                    max: hi.max(max),
                    scale: strategy::LEARNING_RATE_SCALE,
                }
            } else {
                Dimension {
                    name: name.into(),
                    min: lo.min(0.0),
                    max: hi.max(1.0),
                    scale: Scale::Linear,
                }
            });
        }
        dims
    }

    /// The complete job (not pruned) with the highest finite reward (the first one on a tie,
    /// as the controller).
    pub fn best(&self) -> Option<&JobRow> {
        let mut best: Option<&JobRow> = None;
        for r in self
            .rows
            .iter()
            .filter(|r| r.mean.is_finite() && r.pruned_at.is_none())
        {
            if best.is_none_or(|b| r.mean > b.mean) {
                best = Some(r);
            }
        }
        best
    }

    /// Pruned jobs, and the trainer-seconds they saved: for each, the mean training time of
    /// the complete jobs minus its own (an estimate; 0 without a complete job yet).
    pub fn pruning_savings(&self) -> (usize, f64) {
        let complete: Vec<f64> = self
            .rows
            .iter()
            .filter(|r| r.pruned_at.is_none())
            .filter_map(|r| r.run.as_ref().map(|run| run.train_seconds))
            .collect();
        let pruned: Vec<&JobRow> = self.rows.iter().filter(|r| r.pruned_at.is_some()).collect();
        if complete.is_empty() {
            return (pruned.len(), 0.0);
        }
        let full = complete.iter().sum::<f64>() / complete.len() as f64;
        let saved = pruned
            .iter()
            .filter_map(|r| r.run.as_ref())
            .map(|run| (full - run.train_seconds).max(0.0))
            .sum();
        (pruned.len(), saved)
    }

    /// Total trainer-seconds of the rewarded jobs (as reported with their rewards).
    pub fn trainer_seconds(&self) -> f64 {
        self.rows
            .iter()
            .filter_map(|r| r.run.as_ref().map(|run| run.train_seconds))
            .sum()
    }

    /// Number of foreground classes (the longest per-class list).
    pub fn classes(&self) -> usize {
        self.rows
            .iter()
            .map(|r| r.per_class.len())
            .max()
            .unwrap_or(0)
    }

    pub(super) fn max_index(&self) -> u32 {
        let last = self.rows.iter().map(|r| r.index).max().unwrap_or(0);
        last.max(self.spec.as_ref().map_or(0, |s| s.max_jobs))
            .max(1)
    }

    pub(super) fn searcher(&self) -> &str {
        self.spec.as_ref().map_or("?", |s| s.searcher.as_str())
    }

    /// "study ID (searcher)" for plot titles.
    pub(super) fn label(&self) -> String {
        match &self.spec {
            Some(s) => format!("study {} ({})", self.study, s.searcher),
            None => format!("study {}", self.study),
        }
    }
}

/// A probability: what the best-strategy bar chart shows as a bar.
pub(super) fn is_probability(d: &Dimension) -> bool {
    !d.name.starts_with(protocol::strategy::MAGNITUDE_PREFIX)
        && d.scale == Scale::Linear
        && d.min >= 0.0
        && d.max <= 1.0
}

/// The routine strategy's value of a dimension, where it has one: the routine learning rate,
/// probability, or an augmentation magnitude's default.
pub(super) fn routine_value(d: &Dimension) -> Option<f64> {
    if d.name == protocol::strategy::LEARNING_RATE {
        Some(protocol::strategy::ROUTINE_LEARNING_RATE)
    } else if let Some(m) = protocol::strategy::Magnitude::from_dimension(&d.name) {
        Some(m.default)
    } else if is_probability(d) {
        Some(protocol::strategy::ROUTINE_PROBABILITY)
    } else {
        None
    }
}

/// The report tests' study: twelve jobs of the demo's space.
#[cfg(test)]
pub(super) mod fixtures {
    use std::collections::BTreeMap;

    use protocol::{
        CaseDice, Reward, SCHEMA_VERSION, Strategy, StudyEvent, StudyEventKind, StudySpec,
    };

    use super::StudyRecord;

    /// The paper's eight augmentation probabilities.
    pub const PROBS: [&str; 8] = protocol::strategy::AUGMENTATIONS;

    /// A deterministic pseudo-random number in [0, 1) (splitmix-like), for fixture values.
    fn u(i: u64, j: u64) -> f64 {
        let mut z = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ j.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z ^= z >> 31;
        z = z.wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 29;
        (z % 10_000) as f64 / 10_000.0
    }

    /// The demo's study: the paper's space, PPO-RNN, two jobs at a time.
    fn spec(max_jobs: u32) -> StudySpec {
        ::study::testing::StudySpecBuilder::new("demo")
            .dataset_id("ds1")
            .max_jobs(max_jobs)
            .parallel(2)
            .build()
    }

    pub fn strategy(i: u32) -> Strategy {
        let mut values: BTreeMap<String, f64> = PROBS
            .iter()
            .enumerate()
            .map(|(j, n)| (n.to_string(), u(i as u64 + 1, j as u64)))
            .collect();
        values.insert(
            "learning_rate".into(),
            10f64.powf(-4.0 + 2.0 * u(i as u64 + 1, 99)),
        );
        Strategy {
            values,
            unit: BTreeMap::new(),
        }
    }

    pub fn reward(i: u32, mean: f64) -> Reward {
        Reward {
            schema: SCHEMA_VERSION,
            study: "demo".into(),
            job_id: format!("demo-{i:04}"),
            index: i,
            strategy: strategy(i),
            per_case: vec![CaseDice {
                case: "case_0".into(),
                per_class: vec![mean],
                mean,
            }],
            per_class: vec![mean],
            mean,
            checkpoint_key: format!("studies/demo/jobs/demo-{i:04}/model.safetensors"),
            trainer: format!("trainer-{}", i % 2 + 1),
            // Job 5 was handed over to another replica.
            attempt: if i == 5 { 2 } else { 1 },
            train_seconds: 10.0 + i as f64 / 4.0,
            final_loss: 0.5 - mean / 2.0,
            eval_seconds: 2.125,
            pruned: false,
            epoch_reached: 4,
        }
    }

    fn event(t: f64, event: StudyEventKind) -> StudyEvent {
        StudyEvent {
            schema: SCHEMA_VERSION,
            study: "demo".into(),
            time_unix: t,
            event,
        }
    }

    /// 12 jobs of a 12-job study; job 9 is the best; rewards arrive out of issue order.
    pub fn record() -> StudyRecord {
        let means = [
            0.41, 0.35, 0.48, 0.44, 0.52, 0.39, 0.55, 0.50, 0.612, 0.58, 0.47, 0.60,
        ];
        let mut rewards: Vec<Reward> = means
            .iter()
            .enumerate()
            .map(|(i, m)| reward(i as u32 + 1, *m))
            .collect();
        rewards.swap(0, 1);
        // A redelivered evaluation of job 3 past the dedup window: counted once.
        rewards.push(reward(3, 0.9));
        let mut events = vec![event(
            0.0,
            StudyEventKind::Started {
                spec: Box::new(spec(12)),
                dataset_id: "ds1".into(),
            },
        )];
        for i in 1..=12u32 {
            events.push(event(
                i as f64 * 10.0,
                StudyEventKind::Issued {
                    job_id: format!("demo-{i:04}"),
                    index: i,
                    strategy: strategy(i),
                },
            ));
            events.push(event(
                i as f64 * 10.0 + 18.5,
                StudyEventKind::Reward {
                    job_id: format!("demo-{i:04}"),
                    index: i,
                    mean: means[i as usize - 1],
                    rewards_so_far: i,
                },
            ));
        }
        events.push(event(
            50.0,
            StudyEventKind::JobFailed {
                job_id: "demo-0013".into(),
                reason: "diverged: loss is NaN".into(),
            },
        ));
        events.push(event(
            200.0,
            StudyEventKind::Done {
                best_job_id: "demo-0009".into(),
                best_mean: 0.612,
                best_strategy: strategy(9),
                rewards: 12,
            },
        ));
        StudyRecord::from_messages("demo", &rewards, &events)
    }

    /// A confirmation of the demo study's best job: 3 seeds, one of the routine's failed.
    pub fn confirmation() -> protocol::Confirmation {
        use crate::study::confirm;
        let reward = |i: u32, mean: f64| Reward {
            schema: SCHEMA_VERSION,
            study: "demo".into(),
            job_id: format!("demo-{i:04}"),
            index: i,
            strategy: strategy(i),
            per_case: Vec::new(),
            per_class: vec![mean],
            mean,
            checkpoint_key: String::new(),
            trainer: String::new(),
            attempt: 1,
            train_seconds: 0.0,
            final_loss: 0.0,
            eval_seconds: 0.0,
            pruned: false,
            epoch_reached: 0,
        };
        let spec = spec(12);
        let arms = confirm::plan_arms(&[reward(9, 0.612)], 1);
        let seeds = confirm::fresh_seeds(spec.seed, 0, 3);
        let jobs = confirm::plan_jobs(
            "demo-confirm-1",
            "demo-confirm",
            "ds1",
            &spec,
            &arms,
            &seeds,
        )
        .unwrap();
        let dice = vec![
            vec![Some(0.61), Some(0.64), Some(0.60)],
            vec![Some(0.55), Some(0.60), Some(0.58)],
            vec![Some(0.30), None, Some(0.28)],
        ];
        confirm::summarize(
            "demo",
            "demo-confirm-1",
            "demo-confirm",
            "ds1",
            &spec,
            &seeds,
            &arms,
            &jobs,
            dice,
            300.0,
        )
    }

    /// A study of the `paper+magnitudes` space: the demo's jobs with magnitudes too.
    pub fn magnitudes_record() -> StudyRecord {
        let mut rec = record();
        let mut spec = rec.spec.clone().unwrap();
        spec.space = protocol::strategy::paper_magnitudes_space();
        rec.spec = Some(spec);
        for row in &mut rec.rows {
            for (k, m) in protocol::strategy::MAGNITUDES.iter().enumerate() {
                let [lo, hi] = m.range;
                let v = lo + (hi - lo) * u(row.index as u64 + 1, 50 + k as u64);
                row.strategy.values.insert(m.name.into(), v);
            }
        }
        rec
    }
}

#[cfg(test)]
mod tests {
    use super::{fixtures::*, *};

    #[test]
    fn record_orders_by_issue_dedups_and_times_jobs() {
        let rec = record();
        assert_eq!(rec.rows.len(), 12);
        let idx: Vec<u32> = rec.rows.iter().map(|r| r.index).collect();
        assert_eq!(idx, (1..=12).collect::<Vec<_>>());
        assert_eq!(rec.rows[2].mean, 0.48, "the first reward of a job id wins");
        assert_eq!(rec.rows[0].seconds, Some(18.5));
        assert_eq!(rec.best().unwrap().job_id, "demo-0009");
        assert_eq!(rec.status, StudyStatus::Done);
        assert_eq!(rec.failed_jobs.len(), 1);
        assert_eq!(rec.dimensions().len(), 9);
    }

    #[test]
    fn dimensions_are_inferred_without_a_started_event() {
        let rec = StudyRecord::from_messages("demo", &[reward(1, 0.5), reward(2, 0.6)], &[]);
        let dims = rec.dimensions();
        assert_eq!(dims.len(), 9);
        let lr = dims.iter().find(|d| d.name == "learning_rate").unwrap();
        assert_eq!(lr.scale, Scale::Log);
        assert!(lr.min <= 1e-4 && lr.max >= 1e-2);
        assert!(dims.iter().filter(|d| is_probability(d)).count() == 8);
        assert_eq!(rec.status, StudyStatus::Running);
    }

    #[test]
    fn best_skips_non_finite_rewards_and_keeps_the_first_of_a_tie() {
        let rec = StudyRecord::from_messages(
            "demo",
            &[reward(1, f64::NAN), reward(2, 0.5), reward(3, 0.5)],
            &[],
        );
        assert_eq!(rec.best().unwrap().index, 2);
    }
}
