//! Pruners: rules that stop a job early from its intermediate validation Dice, so weak
//! strategies do not train to the end. The controller asks, one report at a time, whether a
//! job goes on ([`Pruner::report`]) and tells the pruner how each job ended
//! ([`Pruner::finish`]); like the searchers, a pruner is plain data that [`Pruner::save`] and
//! [`restore`] persist exactly, so a restarted controller decides as the first one would have.
//!
//! A pruner's step is the epoch a report was made after (1-based). Higher Dice is better.
//!
//! - `none`: never stops a job.
//! - `median`: Optuna's `MedianPruner`: a job is stopped when its best intermediate value so
//!   far is below the median of the completed jobs' values at the same epoch; never at an
//!   epoch below `warmup_steps`, never before `min_jobs` jobs completed, never when no
//!   completed job reported at that epoch.
//! - `asha`: asynchronous successive halving as Optuna's `SuccessiveHalvingPruner` runs it:
//!   rungs at epochs `min_epochs * eta^k`; a job reaching a rung records its value there and
//!   goes on only if it is among the top `max(1, n / eta)` of the `n` values recorded at that
//!   rung so far (itself included), so the first job at a rung always goes on.

use std::collections::BTreeMap;

use protocol::PruningSpec;
use serde::{Deserialize, Serialize};

/// The pruner kinds, as a study names them in `[pruning] kind`.
pub const PRUNER_KINDS: &[&str] = &["none", "median", "asha"];

/// Defaults of the settings a study may leave out.
pub const DEFAULT_WARMUP_STEPS: u32 = 0;
pub const DEFAULT_MIN_JOBS: u32 = 5;
pub const DEFAULT_ETA: u32 = 3;
pub const DEFAULT_MIN_EPOCHS: u32 = 1;

/// What the pruner decided about one report.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Continue,
    /// Stop the job; the reason is for logs and the study's `pruned` event.
    Prune {
        reason: String,
    },
}

/// How a job ended, as the pruner learns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// Trained to the end; its final reward counted.
    Completed,
    /// Stopped early by this pruner.
    Pruned,
    /// Failed (dead-lettered).
    Failed,
}

/// A pruning rule with its state.
pub trait Pruner: Send {
    fn kind(&self) -> &'static str;
    /// A job's intermediate Dice after `epoch`. A second report of the same job and epoch (a
    /// redelivered message) changes nothing and is answered `Continue`.
    fn report(&mut self, job: &str, epoch: u32, value: f64) -> Decision;
    /// The job ended; `median` compares running jobs only with completed ones.
    fn finish(&mut self, job: &str, ending: Ending);
    /// The whole state, restorable with [`restore`].
    fn save(&self) -> Vec<u8>;
}

/// Why a pruning spec cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct PruneError {
    /// The `[pruning]` key at fault (`pruning.eta`).
    pub key: String,
    pub message: String,
}

fn error(key: &str, message: impl Into<String>) -> PruneError {
    PruneError {
        key: format!("pruning.{key}"),
        message: message.into(),
    }
}

/// The most validation points a job may have.
pub const MAX_REPORTS: usize = 1000;

/// Every problem of a `[pruning]` section for a study of `epochs` epochs, each named by its
/// key.
pub fn check(spec: &PruningSpec, epochs: u32) -> Vec<PruneError> {
    let mut errors = check_settings(spec);
    if errors.is_empty() && spec.kind != "none" {
        let points = report_epochs(spec, epochs);
        let key = if spec.report_at.is_some() {
            "report_at"
        } else if spec.kind == "asha" && spec.report_every_epochs.is_none() {
            "min_epochs"
        } else {
            "report_every_epochs"
        };
        if points.is_empty() {
            errors.push(error(
                key,
                format!(
                    "no validation point before the last of the {epochs} training epochs, so \
                     nothing could be stopped early"
                ),
            ));
        } else if points.len() > MAX_REPORTS {
            errors.push(error(
                key,
                format!("more than {MAX_REPORTS} validation points per job"),
            ));
        }
    }
    errors
}

/// The problems of a `[pruning]` section that do not depend on the training budget.
fn check_settings(spec: &PruningSpec) -> Vec<PruneError> {
    let mut errors = Vec::new();
    if !PRUNER_KINDS.contains(&spec.kind.as_str()) {
        errors.push(error(
            "kind",
            format!(
                "unknown pruner {:?}; valid: {}",
                spec.kind,
                PRUNER_KINDS.join(", ")
            ),
        ));
        return errors;
    }
    let only = |key: &str, kind: &str, set: bool, errors: &mut Vec<PruneError>| {
        if set && spec.kind != kind {
            errors.push(error(
                key,
                format!(
                    "only applies to kind = \"{kind}\" (this study's is \"{}\")",
                    spec.kind
                ),
            ));
        }
    };
    only(
        "warmup_steps",
        "median",
        spec.warmup_steps.is_some(),
        &mut errors,
    );
    only("min_jobs", "median", spec.min_jobs.is_some(), &mut errors);
    only("eta", "asha", spec.eta.is_some(), &mut errors);
    only("min_epochs", "asha", spec.min_epochs.is_some(), &mut errors);
    if spec.report_every_epochs == Some(0) {
        errors.push(error("report_every_epochs", "must be at least 1"));
    }
    if let Some(at) = &spec.report_at {
        if at.is_empty() {
            errors.push(error("report_at", "is empty; give fractions in (0, 1)"));
        }
        if let Some(bad) = at
            .iter()
            .find(|f| !(f.is_finite() && **f > 0.0 && **f < 1.0))
        {
            errors.push(error(
                "report_at",
                format!("{bad} is not a fraction of the epochs in (0, 1)"),
            ));
        }
    }
    if spec.report_every_epochs.is_some() && spec.report_at.is_some() {
        errors.push(error(
            "report_at",
            "give either report_every_epochs or report_at, not both",
        ));
    }
    if let Some(o) = spec.overlap
        && !(0.0..1.0).contains(&o)
    {
        errors.push(error("overlap", format!("{o}, expected a value in [0, 1)")));
    }
    if spec.min_jobs == Some(0) {
        errors.push(error("min_jobs", "must be at least 1"));
    }
    if let Some(eta) = spec.eta
        && eta < 2
    {
        errors.push(error("eta", format!("{eta}, expected 2 or more")));
    }
    if spec.min_epochs == Some(0) {
        errors.push(error("min_epochs", "must be at least 1"));
    }
    errors
}

/// The epochs (ascending, each below `epochs`) after which trainers validate: the study's
/// `report_every_epochs` or `report_at`, and for `asha` every rung. `median` without either
/// validates after every quarter of the epochs. At most [`MAX_REPORTS`] + 1 points are made
/// (more is refused by [`check`]).
pub fn report_epochs(spec: &PruningSpec, epochs: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let every = match (
        spec.report_every_epochs,
        &spec.report_at,
        spec.kind.as_str(),
    ) {
        (Some(e), _, _) => Some(e),
        (None, None, "median") => Some((epochs / 4).max(1)),
        _ => None,
    };
    if let Some(e) = every.filter(|e| *e > 0) {
        out.extend((e..epochs).step_by(e as usize).take(MAX_REPORTS + 1));
    }
    if let Some(at) = &spec.report_at {
        for f in at {
            if f.is_finite() && *f > 0.0 {
                out.push((f * epochs as f64).ceil() as u32);
            }
        }
    }
    if spec.kind == "asha" {
        let eta = spec.eta.unwrap_or(DEFAULT_ETA).max(2) as u64;
        let mut rung = spec.min_epochs.unwrap_or(DEFAULT_MIN_EPOCHS).max(1) as u64;
        while rung < epochs as u64 && out.len() <= 2 * MAX_REPORTS {
            out.push(rung as u32);
            rung *= eta;
        }
    }
    out.retain(|e| (1..epochs).contains(e));
    out.sort_unstable();
    out.dedup();
    out
}

/// The pruner a study's `[pruning]` section names (`None`: the `none` pruner).
pub fn build(spec: Option<&PruningSpec>) -> Result<Box<dyn Pruner>, PruneError> {
    let Some(spec) = spec else {
        return Ok(Box::new(NoPruner));
    };
    if let Some(e) = check_settings(spec).into_iter().next() {
        return Err(e);
    }
    Ok(match spec.kind.as_str() {
        "median" => Box::new(Median::new(
            spec.warmup_steps.unwrap_or(DEFAULT_WARMUP_STEPS),
            spec.min_jobs.unwrap_or(DEFAULT_MIN_JOBS),
        )),
        "asha" => Box::new(Asha::new(
            spec.eta.unwrap_or(DEFAULT_ETA),
            spec.min_epochs.unwrap_or(DEFAULT_MIN_EPOCHS),
        )),
        _ => Box::new(NoPruner),
    })
}

/// The saved form: the kind and that pruner's own state.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Saved {
    None,
    Median(Median),
    Asha(Asha),
}

/// A pruner exactly as [`Pruner::save`] left it.
pub fn restore(bytes: &[u8]) -> Result<Box<dyn Pruner>, protocol::DecodeError> {
    Ok(match protocol::decode::<Saved>(bytes)? {
        Saved::None => Box::new(NoPruner),
        Saved::Median(m) => Box::new(m),
        Saved::Asha(a) => Box::new(a),
    })
}

fn encode(saved: &Saved) -> Vec<u8> {
    protocol::encode(saved).expect("pruner state encodes")
}

/// `none`: every job trains to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoPruner;

impl Pruner for NoPruner {
    fn kind(&self) -> &'static str {
        "none"
    }
    fn report(&mut self, _: &str, _: u32, _: f64) -> Decision {
        Decision::Continue
    }
    fn finish(&mut self, _: &str, _: Ending) {}
    fn save(&self) -> Vec<u8> {
        encode(&Saved::None)
    }
}

/// One job's intermediate values by epoch, and how it ended (`None`: still running).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobCurve {
    pub values: BTreeMap<u32, f64>,
    pub ending: Option<Ending>,
}

/// Optuna's median stopping rule (`MedianPruner(n_startup_trials = min_jobs,
/// n_warmup_steps = warmup_steps, interval_steps = 1)`, maximizing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Median {
    pub warmup_steps: u32,
    pub min_jobs: u32,
    pub jobs: BTreeMap<String, JobCurve>,
}

impl Median {
    pub fn new(warmup_steps: u32, min_jobs: u32) -> Self {
        Self {
            warmup_steps,
            min_jobs: min_jobs.max(1),
            jobs: BTreeMap::new(),
        }
    }
}

/// numpy's default (linear) percentile of `values` (not empty), `q` in [0, 100].
fn percentile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = q / 100.0 * (values.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    values[lo] + (values[hi] - values[lo]) * (rank - lo as f64)
}

impl Pruner for Median {
    fn kind(&self) -> &'static str {
        "median"
    }

    fn report(&mut self, job: &str, epoch: u32, value: f64) -> Decision {
        let curve = self.jobs.entry(job.to_string()).or_default();
        if curve.values.contains_key(&epoch) || curve.ending.is_some() {
            return Decision::Continue;
        }
        curve.values.insert(epoch, value);
        let best = curve
            .values
            .values()
            .copied()
            .filter(|v| !v.is_nan())
            .fold(f64::NAN, f64::max);
        let completed: Vec<&JobCurve> = self
            .jobs
            .values()
            .filter(|c| c.ending == Some(Ending::Completed))
            .collect();
        if completed.is_empty() || (completed.len() as u32) < self.min_jobs {
            return Decision::Continue;
        }
        if epoch < self.warmup_steps {
            return Decision::Continue;
        }
        if best.is_nan() {
            return Decision::Prune {
                reason: format!("no finite intermediate value by epoch {epoch}"),
            };
        }
        let mut at: Vec<f64> = completed
            .iter()
            .filter_map(|c| c.values.get(&epoch).copied())
            .filter(|v| !v.is_nan())
            .collect();
        if at.is_empty() {
            return Decision::Continue;
        }
        let n = at.len();
        let median = percentile(&mut at, 50.0);
        if best < median {
            Decision::Prune {
                reason: format!(
                    "median rule: best Dice {best:.4} by epoch {epoch} is below the median \
                     {median:.4} of {n} completed jobs at that epoch"
                ),
            }
        } else {
            Decision::Continue
        }
    }

    fn finish(&mut self, job: &str, ending: Ending) {
        self.jobs.entry(job.to_string()).or_default().ending = Some(ending);
    }

    fn save(&self) -> Vec<u8> {
        encode(&Saved::Median(self.clone()))
    }
}

/// Asynchronous successive halving (Optuna's `SuccessiveHalvingPruner(min_resource =
/// min_epochs, reduction_factor = eta, min_early_stopping_rate = 0)`, maximizing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Asha {
    pub eta: u32,
    pub min_epochs: u32,
    /// Per rung (0 = the first, at `min_epochs`), the value each job recorded there.
    pub rungs: BTreeMap<u32, BTreeMap<String, f64>>,
    /// Per job, the rungs it has passed (its next rung's index).
    pub passed: BTreeMap<String, u32>,
    /// Jobs that were stopped (a later report of theirs changes nothing).
    pub stopped: BTreeMap<String, u32>,
}

impl Asha {
    pub fn new(eta: u32, min_epochs: u32) -> Self {
        Self {
            eta: eta.max(2),
            min_epochs: min_epochs.max(1),
            rungs: BTreeMap::new(),
            passed: BTreeMap::new(),
            stopped: BTreeMap::new(),
        }
    }

    /// The epoch of rung `k`.
    pub fn rung_epoch(&self, k: u32) -> u64 {
        (self.min_epochs as u64).saturating_mul((self.eta as u64).saturating_pow(k))
    }
}

impl Pruner for Asha {
    fn kind(&self) -> &'static str {
        "asha"
    }

    fn report(&mut self, job: &str, epoch: u32, value: f64) -> Decision {
        if self.stopped.contains_key(job) {
            return Decision::Continue;
        }
        let mut rung = self.passed.get(job).copied().unwrap_or(0);
        loop {
            let at = self.rung_epoch(rung);
            if (epoch as u64) < at {
                break;
            }
            if value.is_nan() {
                self.stopped.insert(job.to_string(), rung);
                return Decision::Prune {
                    reason: format!("no finite Dice at epoch {epoch}"),
                };
            }
            let recorded = self.rungs.entry(rung).or_default();
            recorded.insert(job.to_string(), value);
            let mut competing: Vec<f64> = recorded.values().copied().collect();
            competing.sort_by(|a, b| b.total_cmp(a));
            let promoted = (competing.len() / self.eta as usize).max(1);
            let cutoff = competing[promoted - 1];
            if value < cutoff {
                self.stopped.insert(job.to_string(), rung);
                self.passed.insert(job.to_string(), rung);
                return Decision::Prune {
                    reason: format!(
                        "asha rung {rung} (epoch {at}): Dice {value:.4} is not among the top \
                         {promoted} of {} (cutoff {cutoff:.4})",
                        competing.len()
                    ),
                };
            }
            rung += 1;
            self.passed.insert(job.to_string(), rung);
        }
        Decision::Continue
    }

    fn finish(&mut self, _: &str, _: Ending) {}

    fn save(&self) -> Vec<u8> {
        encode(&Saved::Asha(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str) -> PruningSpec {
        PruningSpec {
            kind: kind.into(),
            ..Default::default()
        }
    }

    fn pruned(d: &Decision) -> bool {
        matches!(d, Decision::Prune { .. })
    }

    /// Worked by hand with Optuna's `MedianPruner(n_startup_trials=2, n_warmup_steps=2)`
    /// rules: the median of completed jobs at the same step, the job's best value so far,
    /// no pruning at a step below the warm-up nor before two jobs completed.
    #[test]
    fn median_rule_follows_optunas_warm_up_startup_and_best_so_far() {
        let mut m = Median::new(2, 2);
        // Nothing completed: never pruned, however low.
        assert_eq!(m.report("c", 1, 0.0), Decision::Continue);
        for (e, v) in [(1, 0.2), (2, 0.4), (3, 0.6)] {
            assert_eq!(m.report("a", e, v), Decision::Continue);
        }
        m.finish("a", Ending::Completed);
        // One completed job, min_jobs = 2: still no pruning.
        assert_eq!(m.report("d", 2, 0.0), Decision::Continue);
        for (e, v) in [(1, 0.4), (2, 0.6), (3, 0.8)] {
            assert_eq!(m.report("b", e, v), Decision::Continue);
        }
        m.finish("b", Ending::Completed);
        // Epoch 1 is inside the warm-up (1 < 2): kept although far below the median 0.3.
        assert_eq!(m.report("e", 1, 0.0), Decision::Continue);
        // At epoch 2 = warmup_steps pruning starts: median of [0.4, 0.6] is 0.5 > 0.45.
        assert!(pruned(&m.report("e", 2, 0.45)));
        // Equal to the median is not below it.
        assert_eq!(m.report("f", 2, 0.5), Decision::Continue);
        // The best value so far counts, not the last: 0.9 at epoch 1 keeps g at epoch 2.
        assert_eq!(m.report("g", 1, 0.9), Decision::Continue);
        assert_eq!(m.report("g", 2, 0.1), Decision::Continue);
        // No completed job reported at epoch 5: nothing to compare with.
        assert_eq!(m.report("h", 5, 0.0), Decision::Continue);
        // A repeated report (redelivery) changes nothing.
        assert_eq!(m.report("f", 2, 0.0), Decision::Continue);
        // Pruned and failed jobs are not "completed": the median stays over a and b.
        m.finish("e", Ending::Pruned);
        m.finish("d", Ending::Failed);
        assert!(pruned(&m.report("i", 2, 0.49)));
        // A third completed job with 0.1 at epoch 2: median of [0.1, 0.4, 0.6] is 0.4.
        m.report("c", 2, 0.1);
        m.finish("c", Ending::Completed);
        assert!(pruned(&m.report("j", 2, 0.39)));
        assert_eq!(m.report("k", 2, 0.4), Decision::Continue);
    }

    /// Worked by hand: eta = 3, rungs at epochs 1, 3, 9; a job goes on when its value is
    /// among the top max(1, n / 3) of the n values recorded at the rung (itself included).
    #[test]
    fn asha_promotes_the_top_third_of_each_rung() {
        let mut a = Asha::new(3, 1);
        let at1 = [
            ("j1", 0.5, false),  // alone: promoted
            ("j2", 0.4, true),   // [0.5, 0.4]: top 1 is 0.5
            ("j3", 0.6, false),  // top 1 of 3 is itself
            ("j4", 0.55, true),  // top 1 of 4 is 0.6
            ("j5", 0.3, true),   // top 1 of 5
            ("j6", 0.58, false), // top 2 of 6: 0.6, 0.58
        ];
        for (job, v, stop) in at1 {
            assert_eq!(pruned(&a.report(job, 1, v)), stop, "{job}");
        }
        // Epoch 2 is no rung: nothing is decided.
        assert_eq!(a.report("j1", 2, 0.0), Decision::Continue);
        assert_eq!(a.report("j1", 3, 0.7), Decision::Continue);
        assert!(pruned(&a.report("j3", 3, 0.65)));
        assert_eq!(a.report("j6", 3, 0.8), Decision::Continue);
        // A stopped job's later report changes nothing.
        assert_eq!(a.report("j2", 3, 0.99), Decision::Continue);
        // A first report past two rungs passes both in turn: rung 0 (top 2 of 7 = 0.9, 0.6),
        // then rung 1 ([0.9, 0.8, 0.7, 0.65]: top 1 is itself).
        assert_eq!(a.report("j7", 3, 0.9), Decision::Continue);
        assert_eq!(a.passed["j7"], 2);
        assert_eq!(a.rungs[&1].len(), 4);
        // Redelivered: j7 at epoch 3 again is not a new rung result.
        assert_eq!(a.report("j7", 3, 0.0), Decision::Continue);
    }

    #[test]
    fn a_restored_pruner_is_the_same_pruner() {
        let mut m: Box<dyn Pruner> = build(Some(&PruningSpec {
            min_jobs: Some(1),
            ..spec("median")
        }))
        .unwrap();
        m.report("a", 2, 0.5);
        m.finish("a", Ending::Completed);
        let bytes = m.save();
        let mut back = restore(&bytes).unwrap();
        assert_eq!(back.kind(), "median");
        assert_eq!(back.save(), bytes);
        assert_eq!(back.report("b", 2, 0.4), m.report("b", 2, 0.4));
        assert_eq!(back.save(), m.save());

        let mut a = build(Some(&spec("asha"))).unwrap();
        a.report("x", 1, 0.3);
        let mut b = restore(&a.save()).unwrap();
        assert!(pruned(&b.report("y", 1, 0.1)));
        assert!(pruned(&a.report("y", 1, 0.1)));
        assert_eq!(a.save(), b.save());
        assert_eq!(
            restore(&build(None).unwrap().save()).unwrap().kind(),
            "none"
        );
    }

    #[test]
    fn validation_points_come_from_the_schedule_and_the_rungs() {
        assert_eq!(report_epochs(&spec("asha"), 8), vec![1, 3]);
        assert_eq!(report_epochs(&spec("asha"), 27), vec![1, 3, 9]);
        assert_eq!(report_epochs(&spec("median"), 8), vec![2, 4, 6]);
        let every3 = PruningSpec {
            report_every_epochs: Some(3),
            ..spec("median")
        };
        assert_eq!(report_epochs(&every3, 8), vec![3, 6]);
        let fractions = PruningSpec {
            report_at: Some(vec![0.25, 0.5, 0.6]),
            ..spec("none")
        };
        assert_eq!(report_epochs(&fractions, 8), vec![2, 4, 5]);
        let both = PruningSpec {
            report_every_epochs: Some(2),
            ..spec("asha")
        };
        assert_eq!(report_epochs(&both, 8), vec![1, 2, 3, 4, 6]);
        assert!(report_epochs(&spec("none"), 8).is_empty());
    }

    #[test]
    fn bad_settings_name_their_key() {
        let cases = [
            (spec("bogus"), 8, "pruning.kind"),
            (
                PruningSpec {
                    eta: Some(3),
                    ..spec("median")
                },
                8,
                "pruning.eta",
            ),
            (
                PruningSpec {
                    eta: Some(1),
                    ..spec("asha")
                },
                8,
                "pruning.eta",
            ),
            (
                PruningSpec {
                    warmup_steps: Some(1),
                    ..spec("asha")
                },
                8,
                "pruning.warmup_steps",
            ),
            (
                PruningSpec {
                    report_at: Some(vec![1.5]),
                    ..spec("median")
                },
                8,
                "pruning.report_at",
            ),
            (
                PruningSpec {
                    report_every_epochs: Some(0),
                    ..spec("median")
                },
                8,
                "pruning.report_every_epochs",
            ),
            (
                PruningSpec {
                    overlap: Some(1.0),
                    ..spec("median")
                },
                8,
                "pruning.overlap",
            ),
            (spec("median"), 1, "pruning.report_every_epochs"),
            (
                PruningSpec {
                    min_epochs: Some(8),
                    ..spec("asha")
                },
                8,
                "pruning.min_epochs",
            ),
            (
                PruningSpec {
                    report_every_epochs: Some(1),
                    ..spec("median")
                },
                u32::MAX,
                "pruning.report_every_epochs: more than 1000",
            ),
        ];
        for (s, epochs, key) in cases {
            let errors = check(&s, epochs);
            assert!(
                errors.iter().any(|e| e.to_string().starts_with(key)),
                "{key}: {errors:?}"
            );
        }
        assert!(check(&spec("asha"), 8).is_empty());
        assert!(check(&spec("median"), 8).is_empty());
        assert!(check(&spec("none"), 1).is_empty());
        assert!(build(Some(&spec("bogus"))).is_err());
    }
}
