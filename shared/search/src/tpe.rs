//! `tpe`: the Tree-structured Parzen Estimator (Bergstra et al. 2011) as Optuna 5 runs it by
//! default on one objective, with the constant liar for jobs in flight.
//!
//! After `startup` rewards (before that: uniform draws), each proposal splits the rewarded
//! points into the best `min(⌈gamma·n⌉, gamma_max)` ("below", l) and the rest ("above", g),
//! builds a Parzen estimator of each, draws `candidates` points from l and proposes the one
//! with the largest ln l(x) − ln g(x) (the expected-improvement criterion of TPE). Constant
//! liar: the proposals still out count as "above" points, so parallel jobs spread out instead
//! of piling onto the same spot.
//!
//! The estimator is Optuna's: one kernel per point plus a prior kernel N(0.5, 1) of weight
//! `prior_weight`; point weights 1, except that with more than 25 points in a group the older
//! ones (by ticket) ramp down linearly from 1/n; each kernel is a product over dimensions of
//! normals truncated to [0, 1] (`multivariate = 1`: one kernel index for all dimensions, Optuna
//! 5's default for one objective; `0`: each dimension on its own, Optuna ≤ 4's default). The
//! bandwidth of a point in a dimension is the larger gap to its neighbours among the group's
//! points and the ends 0 and 1 (the two extreme points look only inwards), clipped to
//! [1/min(100, n + 2), 1] ("magic clip").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::searcher::{Ledger, foreign};
use crate::settings::{Rule, resolve};
use crate::special::normal_cdf;
use crate::{Memo, Proposal, Rng, SearchError, Searcher, SearcherState, SettingInfo, WarmStart};

/// Resolved `tpe` settings (see [`Tpe::SETTINGS`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TpeSettings {
    pub startup: usize,
    pub candidates: usize,
    pub gamma: f64,
    pub gamma_max: usize,
    pub prior_weight: f64,
    pub multivariate: bool,
    pub constant_liar: bool,
}

/// `tpe`. See the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tpe {
    settings: TpeSettings,
    dims: usize,
    /// Rewarded proposals by ticket: unit (clamped to [0, 1]) and reward.
    observed: BTreeMap<u64, (Vec<f64>, f64)>,
    /// Outstanding proposals by ticket: the constant liar's points.
    pending: BTreeMap<u64, Vec<f64>>,
    ledger: Ledger,
    rng: Rng,
}

impl Tpe {
    pub const KIND: &'static str = "tpe";
    pub const SETTINGS: &'static [SettingInfo] = &[
        SettingInfo {
            name: "startup",
            default: 10.0,
            rule: Rule::Count,
            doc: "uniform random proposals until this many rewards are in (n_startup_trials)",
        },
        SettingInfo {
            name: "candidates",
            default: 24.0,
            rule: Rule::Count,
            doc: "points drawn from l(x) per proposal; the best ln l − ln g wins (n_ei_candidates)",
        },
        SettingInfo {
            name: "gamma",
            default: 0.1,
            rule: Rule::OpenUnit,
            doc: "share of the rewarded points that make l(x): ⌈gamma·n⌉, at most gamma_max",
        },
        SettingInfo {
            name: "gamma_max",
            default: 25.0,
            rule: Rule::Count,
            doc: "cap on the number of points in l(x)",
        },
        SettingInfo {
            name: "prior_weight",
            default: 1.0,
            rule: Rule::Positive,
            doc: "weight of the prior kernel N(0.5, 1) in each estimator (a point weighs 1)",
        },
        SettingInfo {
            name: "multivariate",
            default: 1.0,
            rule: Rule::Flag,
            doc: "1: joint kernels over all dimensions (Optuna 5); 0: each dimension alone",
        },
        SettingInfo {
            name: "constant_liar",
            default: 1.0,
            rule: Rule::Flag,
            doc: "1: proposals still out count as bad points, so parallel jobs spread out",
        },
    ];

    pub fn new(
        dims: usize,
        settings: &BTreeMap<String, f64>,
        seed: u64,
    ) -> Result<Self, SearchError> {
        let s = resolve(Self::KIND, Self::SETTINGS, settings)?;
        Ok(Self {
            settings: TpeSettings {
                startup: s[0] as usize,
                candidates: s[1] as usize,
                gamma: s[2],
                gamma_max: s[3] as usize,
                prior_weight: s[4],
                multivariate: s[5] == 1.0,
                constant_liar: s[6] == 1.0,
            },
            dims,
            observed: BTreeMap::new(),
            pending: BTreeMap::new(),
            ledger: Ledger::new(),
            rng: Rng::seed_from_u64(seed),
        })
    }

    pub fn settings(&self) -> &TpeSettings {
        &self.settings
    }

    /// The two estimators: l(x) from the best points, g(x) from the others (and, with the
    /// constant liar, the proposals still out).
    fn estimators(&self) -> (Parzen, Parzen) {
        let n = self.observed.len();
        let n_below = ((self.settings.gamma * n as f64).ceil() as usize)
            .min(self.settings.gamma_max)
            .min(n);
        let mut ranked: Vec<(u64, &[f64], f64)> = self
            .observed
            .iter()
            .map(|(t, (u, r))| (*t, u.as_slice(), *r))
            .collect();
        // Best first; the sort is stable, so equal rewards keep ticket order.
        ranked.sort_by(|a, b| b.2.total_cmp(&a.2));
        let mut below: Vec<(u64, &[f64])> = ranked[..n_below].iter().map(|x| (x.0, x.1)).collect();
        let mut above: Vec<(u64, &[f64])> = ranked[n_below..].iter().map(|x| (x.0, x.1)).collect();
        if self.settings.constant_liar {
            above.extend(self.pending.iter().map(|(t, u)| (*t, u.as_slice())));
        }
        below.sort_by_key(|x| x.0);
        above.sort_by_key(|x| x.0);
        let points = |v: &[(u64, &[f64])]| v.iter().map(|x| x.1.to_vec()).collect::<Vec<_>>();
        let w = self.settings.prior_weight;
        (
            Parzen::new(&points(&below), self.dims, w),
            Parzen::new(&points(&above), self.dims, w),
        )
    }

    fn suggest(&mut self) -> Vec<f64> {
        let (l, g) = self.estimators();
        let n = self.settings.candidates;
        let rng = &mut self.rng;
        let scratch = &mut Vec::new();
        if self.settings.multivariate {
            let mut best: Option<(f64, Vec<f64>)> = None;
            for _ in 0..n {
                let j = l.draw_kernel(rng);
                let x: Vec<f64> = (0..self.dims).map(|d| l.draw(rng, j, d)).collect();
                let score = l.log_pdf(&x, scratch) - g.log_pdf(&x, scratch);
                if best.as_ref().is_none_or(|(s, _)| score > *s) {
                    best = Some((score, x));
                }
            }
            best.map(|(_, x)| x).expect("at least one candidate")
        } else {
            (0..self.dims)
                .map(|d| {
                    let mut best: Option<(f64, f64)> = None;
                    for _ in 0..n {
                        let j = l.draw_kernel(rng);
                        let x = l.draw(rng, j, d);
                        let score = l.log_pdf_dim(x, d, scratch) - g.log_pdf_dim(x, d, scratch);
                        if best.is_none_or(|(s, _)| score > s) {
                            best = Some((score, x));
                        }
                    }
                    best.map(|(_, x)| x).expect("at least one candidate")
                })
                .collect()
        }
    }

    fn settle(&mut self, proposal: &Proposal, reward: Option<f64>) -> Result<(), SearchError> {
        self.ledger.check(Self::KIND, self.dims, proposal, reward)?;
        if proposal.memo != Memo::Tpe {
            return Err(foreign(Self::KIND, proposal));
        }
        self.ledger.settle(proposal, reward);
        self.pending.remove(&proposal.ticket);
        if let Some(r) = reward {
            let unit = proposal.unit.iter().map(|u| u.clamp(0.0, 1.0)).collect();
            self.observed.insert(proposal.ticket, (unit, r));
        }
        Ok(())
    }
}

impl Searcher for Tpe {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn dims(&self) -> usize {
        self.dims
    }

    fn propose(&mut self) -> Proposal {
        let ticket = self.ledger.issue();
        let unit = if self.observed.len() < self.settings.startup {
            (0..self.dims).map(|_| self.rng.uniform()).collect()
        } else {
            self.suggest()
        };
        self.pending.insert(ticket, unit.clone());
        Proposal {
            ticket,
            unit,
            memo: Memo::Tpe,
        }
    }

    fn observe(&mut self, proposal: &Proposal, reward: f64) -> Result<(), SearchError> {
        self.settle(proposal, Some(reward))
    }

    fn abandon(&mut self, proposal: &Proposal) -> Result<(), SearchError> {
        self.settle(proposal, None)
    }

    fn best(&self) -> Option<(Vec<f64>, f64)> {
        self.ledger.best()
    }

    fn outstanding(&self) -> usize {
        self.ledger.outstanding()
    }

    /// The observations become the oldest rewarded points (tickets before this study's), so
    /// they count towards `startup` and ramp down first among more than 25 points.
    fn warm_start(&mut self, from: &WarmStart) -> Result<(), SearchError> {
        for (unit, reward) in from.checked(Self::KIND, self.dims, self.ledger.fresh())? {
            let ticket = self.ledger.skip();
            self.observed.insert(ticket, (unit, reward));
        }
        Ok(())
    }

    fn state(&self) -> SearcherState {
        SearcherState::Tpe(self.clone())
    }
}

/// Optuna's `default_weights(n)`: ones up to 25 points; beyond, the oldest n − 25 ramp
/// linearly from 1/n up to 1 (numpy's `linspace(1/n, 1, n − 25)`), the newest 25 weigh 1.
fn point_weights(n: usize) -> Vec<f64> {
    if n < 25 {
        return vec![1.0; n];
    }
    let ramp = n - 25;
    let start = 1.0 / n as f64;
    let mut w: Vec<f64> = match ramp {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (1.0 - start) / (ramp - 1) as f64;
            let mut r: Vec<f64> = (0..ramp).map(|i| start + i as f64 * step).collect();
            r[ramp - 1] = 1.0;
            r
        }
    };
    w.extend(std::iter::repeat_n(1.0, 25));
    w
}

/// The bandwidths of `mus` (points of one dimension, in [0, 1]): the larger gap to the sorted
/// neighbours with 0 and 1 as the outer neighbours; with two points or more the smallest and
/// the largest look only inwards; clipped to [`min_sigma`, 1].
fn bandwidths(mus: &[f64], min_sigma: f64) -> Vec<f64> {
    let n = mus.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| mus[a].total_cmp(&mus[b]));
    let mut ends = Vec::with_capacity(n + 2);
    ends.push(0.0);
    ends.extend(order.iter().map(|&i| mus[i]));
    ends.push(1.0);
    let mut sorted: Vec<f64> = (1..=n)
        .map(|i| (ends[i] - ends[i - 1]).max(ends[i + 1] - ends[i]))
        .collect();
    if n >= 2 {
        sorted[0] = ends[2] - ends[1];
        sorted[n - 1] = ends[n] - ends[n - 1];
    }
    let mut sigma = vec![0.0; n];
    for (rank, &i) in order.iter().enumerate() {
        sigma[i] = sorted[rank].clamp(min_sigma, 1.0);
    }
    sigma
}

/// A Parzen estimator over [0, 1]^K: a mixture of product kernels, one per point plus the
/// prior, each dimension a normal truncated to [0, 1].
#[derive(Debug, Clone)]
pub(crate) struct Parzen {
    dims: usize,
    /// ln of the normalized kernel weights; the prior is last.
    log_weights: Vec<f64>,
    /// Cumulative normalized weights, to draw a kernel.
    cumulative: Vec<f64>,
    /// Kernel-major: `mu[j * dims + d]`.
    mu: Vec<f64>,
    sigma: Vec<f64>,
    inv_sigma: Vec<f64>,
    /// ln of the kernel's density normalizer: −ln σ − ln √(2π) − ln(Φ(b) − Φ(a)) with
    /// a = −μ/σ, b = (1 − μ)/σ.
    log_norm: Vec<f64>,
}

impl Parzen {
    pub(crate) fn new(points: &[Vec<f64>], dims: usize, prior_weight: f64) -> Self {
        let n = points.len();
        let mut w = point_weights(n);
        w.push(prior_weight);
        let total: f64 = w.iter().sum();
        let w: Vec<f64> = w.iter().map(|x| x / total).collect();
        let mut acc = 0.0;
        let mut cumulative: Vec<f64> = w
            .iter()
            .map(|x| {
                acc += x;
                acc
            })
            .collect();
        cumulative[n] = 1.0;
        let kernels = n + 1;
        let min_sigma = 1.0 / 100f64.min(1.0 + kernels as f64);
        let mut mu = vec![0.5; kernels * dims];
        let mut sigma = vec![1.0; kernels * dims];
        for d in 0..dims {
            let mus: Vec<f64> = points.iter().map(|p| p[d]).collect();
            for (j, s) in bandwidths(&mus, min_sigma).into_iter().enumerate() {
                mu[j * dims + d] = mus[j];
                sigma[j * dims + d] = s;
            }
        }
        let sqrt_tau = std::f64::consts::TAU.sqrt();
        // Φ beyond 8.5σ is below 1e-17: it cannot change 1 − Φ(a) − Φ(−b), skip it.
        let tail = |t: f64| if t < -8.5 { 0.0 } else { normal_cdf(t) };
        let log_norm = mu
            .iter()
            .zip(&sigma)
            .map(|(&m, &s)| {
                let (a, b) = (-m / s, (1.0 - m) / s);
                // a ≤ 0 ≤ b: each tail is at most 1/2, the mass at least 1/3: one ln will do.
                let mass = 1.0 - tail(a) - tail(-b);
                -(s * sqrt_tau * mass).ln()
            })
            .collect();
        let inv_sigma = sigma.iter().map(|s| 1.0 / s).collect();
        Self {
            dims,
            log_weights: w.iter().map(|x| x.ln()).collect(),
            cumulative,
            mu,
            sigma,
            inv_sigma,
            log_norm,
        }
    }

    /// A kernel index drawn by weight.
    pub(crate) fn draw_kernel(&self, rng: &mut Rng) -> usize {
        let u = rng.uniform();
        self.cumulative
            .iter()
            .position(|&c| u < c)
            .unwrap_or(self.cumulative.len() - 1)
    }

    /// A draw of kernel `j` in dimension `d`: N(μ, σ) truncated to [0, 1], by rejection
    /// (μ ∈ [0, 1] and σ ≤ 1 keep at least a third of the mass inside).
    pub(crate) fn draw(&self, rng: &mut Rng, j: usize, d: usize) -> f64 {
        let (m, s) = (self.mu[j * self.dims + d], self.sigma[j * self.dims + d]);
        for _ in 0..1000 {
            let x = m + s * rng.normal();
            if (0.0..=1.0).contains(&x) {
                return x;
            }
        }
        m // unreachable in practice: (2/3)^1000
    }

    /// ln of the density at `x` (joint kernels); `scratch` is working space.
    pub(crate) fn log_pdf(&self, x: &[f64], scratch: &mut Vec<f64>) -> f64 {
        let k = self.dims;
        scratch.clear();
        scratch.extend(
            self.log_weights
                .iter()
                .zip(self.mu.chunks_exact(k))
                .zip(self.inv_sigma.chunks_exact(k))
                .zip(self.log_norm.chunks_exact(k))
                .map(|(((lw, mu), inv), ln)| {
                    let mut s = *lw;
                    for d in 0..k {
                        let z = (x[d] - mu[d]) * inv[d];
                        s += ln[d] - 0.5 * z * z;
                    }
                    s
                }),
        );
        log_sum_exp(scratch)
    }

    /// ln of the marginal density of dimension `d` at `x`.
    pub(crate) fn log_pdf_dim(&self, x: f64, d: usize, scratch: &mut Vec<f64>) -> f64 {
        let k = self.dims;
        scratch.clear();
        scratch.extend(self.log_weights.iter().enumerate().map(|(j, lw)| {
            let i = j * k + d;
            let z = (x - self.mu[i]) * self.inv_sigma[i];
            lw + self.log_norm[i] - 0.5 * z * z
        }));
        log_sum_exp(scratch)
    }
}

fn log_sum_exp(terms: &[f64]) -> f64 {
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64, tol: f64) {
        assert!((got - want).abs() < tol, "got {got}, want {want}");
    }

    #[test]
    fn bandwidth_rule() {
        // Sorted with the ends: 0, .2, .5, .9, 1. Gaps .2 .3 .4 .1: .5 takes max(.3, .4);
        // the extreme points look inwards: .2 → .3, .9 → .4. Magic clip: 1/min(100, 3 + 2).
        let s = bandwidths(&[0.9, 0.2, 0.5], 1.0 / 5.0);
        for (got, want) in s.into_iter().zip([0.4, 0.3, 0.4]) {
            close(got, want, 1e-15);
        }
        // One point: the larger distance to an end.
        assert_eq!(bandwidths(&[0.3], 0.01), vec![0.7]);
        // Clipped from below.
        assert_eq!(bandwidths(&[0.5, 0.501, 0.502], 0.2), vec![0.2; 3]);
    }

    #[test]
    fn weights_ramp_the_oldest_beyond_25() {
        assert_eq!(point_weights(3), vec![1.0; 3]);
        assert_eq!(point_weights(25), vec![1.0; 25]);
        let w = point_weights(28);
        assert_eq!(w.len(), 28);
        close(w[0], 1.0 / 28.0, 1e-15);
        close(w[1], (1.0 / 28.0 + 1.0) / 2.0, 1e-15);
        assert_eq!(&w[2..], &[1.0; 26]);
    }

    /// The estimator against Optuna 5.0.0's: 30 points in [0, 1]^2 (so the weights ramp),
    /// the log-density at three points, jointly and of the first dimension alone. Made with
    /// `optuna.samplers._tpe.parzen_estimator._ParzenEstimator(obs, space,
    /// TPESampler()._parzen_estimator_parameters).log_pdf(x)`, `space` two
    /// `FloatDistribution(0, 1)`, `obs` the points below (and `x0` alone for the marginal).
    #[test]
    fn log_density_matches_optuna() {
        let points: Vec<Vec<f64>> = (0..30)
            .map(|i| {
                let t = i as f64;
                vec![(0.37 * t + 0.11) % 1.0, (0.61 * t * t / 30.0 + 0.05) % 1.0]
            })
            .collect();
        let p = Parzen::new(&points, 2, 1.0);
        let s = &mut vec![];
        for (x, want, want0) in GOLDEN {
            close(p.log_pdf(&x, s), want, 1e-12);
            close(p.log_pdf_dim(x[0], 0, s), want0, 1e-12);
        }
        // The density integrates to one over the square (midpoint rule).
        let n = 400;
        let mut total = 0.0;
        for i in 0..n {
            for j in 0..n {
                let x = [(i as f64 + 0.5) / n as f64, (j as f64 + 0.5) / n as f64];
                total += p.log_pdf(&x, s).exp() / (n * n) as f64;
            }
        }
        close(total, 1.0, 1e-3);
    }

    const GOLDEN: [([f64; 2], f64, f64); 3] = [
        ([0.0, 0.0], -2.638_946_233_095_232, -0.787_848_214_138_386_2),
        (
            [0.5, 0.25],
            0.131_502_797_216_072_75,
            0.074_520_902_617_030_82,
        ),
        (
            [0.93, 0.71],
            -0.459_168_729_505_672_1,
            -0.014_992_297_021_531_042,
        ),
    ];

    #[test]
    fn draws_stay_in_the_cube_and_follow_the_points() {
        let points = vec![vec![0.9, 0.1]; 20];
        let p = Parzen::new(&points, 2, 1.0);
        let mut rng = Rng::seed_from_u64(1);
        let mut near = 0;
        for _ in 0..2000 {
            let j = p.draw_kernel(&mut rng);
            let x = [p.draw(&mut rng, j, 0), p.draw(&mut rng, j, 1)];
            assert!(x.iter().all(|v| (0.0..=1.0).contains(v)));
            if (x[0] - 0.9).abs() < 0.1 && (x[1] - 0.1).abs() < 0.1 {
                near += 1;
            }
        }
        // 20 of 21 weights sit on (0.9, 0.1) with σ = 1/22 (the clip), the prior is wide.
        assert!(near > 1700, "{near}");
    }
}
