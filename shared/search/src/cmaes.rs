//! `cmaes`: CMA-ES (Hansen's tutorial, arXiv:1604.00772, with negative weights) in [0, 1]^K,
//! the way Optuna's `CmaEsSampler` drives the `cmaes` package by default: the mean starts at
//! 0.5 everywhere with σ = 1/6, the population is λ = 4 + ⌊3 ln K⌋, a draw outside the cube is
//! drawn again (10·K times, then clipped), and restarts are off.
//!
//! Ask/tell with jobs in flight: every proposal is a fresh draw from the current
//! distribution, tagged with the generation it came from ([`Memo::Cma`]). Once λ rewards of
//! the current generation are in, the distribution is updated with them (in arrival order)
//! and the next proposals come from the new generation; rewards of an older generation that
//! arrive later only count for the incumbent. With n jobs in flight a generation costs about
//! λ + n − 1 jobs, as in Optuna.
//!
//! `restarts` > 0 turns on IPOP: when a stop criterion of the `cmaes` package holds (flat
//! rewards, σ collapsed or exploded, no effect along a coordinate or an axis, condition
//! number above 1e14), start again from a uniform random mean with the population times
//! `inc_popsize`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::searcher::{Ledger, foreign};
use crate::settings::{Rule, resolve};
use crate::{Memo, Proposal, Rng, SearchError, Searcher, SearcherState, SettingInfo, WarmStart};

/// Floor for an eigenvalue of C that came out negative (the `cmaes` package's `_EPS`), and the
/// guard in the negative weights' norm.
const EPS: f64 = 1e-8;
const SIGMA_MAX: f64 = 1e32;

/// Resolved `cmaes` settings (see [`CmaEs::SETTINGS`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CmaSettings {
    /// 0: 4 + ⌊3 ln K⌋.
    pub popsize: usize,
    pub sigma0: f64,
    pub restarts: usize,
    pub inc_popsize: f64,
}

/// The strategy parameters of a run (they depend on K and λ only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Strategy {
    popsize: usize,
    mu: usize,
    /// λ recombination weights, positive for the best μ, negative for the rest.
    weights: Vec<f64>,
    mu_eff: f64,
    cc: f64,
    c1: f64,
    cmu: f64,
    c_sigma: f64,
    d_sigma: f64,
    /// E‖N(0, I)‖.
    chi_n: f64,
    /// Generations of best/worst reward kept for the flat-rewards stop criterion.
    funhist_term: usize,
}

impl Strategy {
    fn new(dims: usize, popsize: usize) -> Self {
        let n = dims as f64;
        let lambda = popsize as f64;
        let mu = popsize / 2;
        let wp: Vec<f64> = (0..popsize)
            .map(|i| ((lambda + 1.0) / 2.0).ln() - ((i + 1) as f64).ln())
            .collect();
        let eff = |w: &[f64]| {
            let s: f64 = w.iter().sum();
            let s2: f64 = w.iter().map(|x| x * x).sum();
            s * s / s2
        };
        let mu_eff = eff(&wp[..mu]);
        let mu_eff_minus = eff(&wp[mu..]);
        let alpha_cov = 2.0;
        let c1 = alpha_cov / ((n + 1.3).powi(2) + mu_eff);
        let cmu = (1.0 - c1 - 1e-8).min(
            alpha_cov * (mu_eff - 2.0 + 1.0 / mu_eff)
                / ((n + 2.0).powi(2) + alpha_cov * mu_eff / 2.0),
        );
        let min_alpha = (1.0 + c1 / cmu)
            .min(1.0 + (2.0 * mu_eff_minus) / (mu_eff + 2.0))
            .min((1.0 - c1 - cmu) / (n * cmu));
        let positive_sum: f64 = wp.iter().filter(|w| **w > 0.0).sum();
        let negative_sum: f64 = wp.iter().filter(|w| **w < 0.0).map(|w| w.abs()).sum();
        let weights = wp
            .iter()
            .map(|&w| {
                if w >= 0.0 {
                    w / positive_sum
                } else {
                    min_alpha / negative_sum * w
                }
            })
            .collect();
        let c_sigma = (mu_eff + 2.0) / (n + mu_eff + 5.0);
        let d_sigma = 1.0 + 2.0 * (((mu_eff - 1.0) / (n + 1.0)).sqrt() - 1.0).max(0.0) + c_sigma;
        let cc = (4.0 + mu_eff / n) / (n + 4.0 + 2.0 * mu_eff / n);
        let chi_n = n.sqrt() * (1.0 - 1.0 / (4.0 * n) + 1.0 / (21.0 * n * n));
        Self {
            popsize,
            mu,
            weights,
            mu_eff,
            cc,
            c1,
            cmu,
            c_sigma,
            d_sigma,
            chi_n,
            funhist_term: 10 + (30.0 * n / lambda).ceil() as usize,
        }
    }
}

/// `cmaes`. See the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CmaEs {
    settings: CmaSettings,
    dims: usize,
    strategy: Strategy,
    mean: Vec<f64>,
    sigma: f64,
    /// C, row-major K×K.
    cov: Vec<f64>,
    /// C = B diag(D²) Bᵀ: the eigenvectors (columns of `b`, row-major) and √eigenvalues.
    b: Vec<f64>,
    d: Vec<f64>,
    p_sigma: Vec<f64>,
    pc: Vec<f64>,
    /// Updates since the (re)start.
    updates: u64,
    /// The current generation's tag: counts updates and restarts over the whole study.
    generation: u64,
    /// Rewards of the current generation so far, in arrival order.
    results: Vec<(Vec<f64>, f64)>,
    restarts_done: usize,
    /// −best and −worst reward of recent generations (a ring of `funhist_term` pairs).
    funhist: Vec<f64>,
    tolx: f64,
    ledger: Ledger,
    rng: Rng,
}

impl CmaEs {
    pub const KIND: &'static str = "cmaes";
    pub const SETTINGS: &'static [SettingInfo] = &[
        SettingInfo {
            name: "popsize",
            default: 0.0,
            rule: Rule::Whole,
            doc: "population λ per generation; 0 = 4 + ⌊3 ln K⌋ (10 at K = 8, 9)",
        },
        SettingInfo {
            name: "sigma0",
            default: 1.0 / 6.0,
            rule: Rule::Positive,
            doc: "initial step size in unit coordinates (Optuna: 1/6 of the range)",
        },
        SettingInfo {
            name: "restarts",
            default: 0.0,
            rule: Rule::Whole,
            doc: "IPOP restarts allowed after a stop criterion; 0 = off",
        },
        SettingInfo {
            name: "inc_popsize",
            default: 2.0,
            rule: Rule::AboveOne,
            doc: "population multiplier at each restart",
        },
    ];

    pub fn new(
        dims: usize,
        settings: &BTreeMap<String, f64>,
        seed: u64,
    ) -> Result<Self, SearchError> {
        let s = resolve(Self::KIND, Self::SETTINGS, settings)?;
        if s[0] == 1.0 {
            return Err(SearchError::InvalidSetting {
                searcher: Self::KIND,
                name: "popsize",
                value: 1.0,
                reason: "must be 0 (automatic) or a whole number ≥ 2",
            });
        }
        let settings = CmaSettings {
            popsize: s[0] as usize,
            sigma0: s[1],
            restarts: s[2] as usize,
            inc_popsize: s[3],
        };
        let popsize = if settings.popsize == 0 {
            4 + (3.0 * (dims.max(1) as f64).ln()).floor() as usize
        } else {
            settings.popsize
        };
        let strategy = Strategy::new(dims, popsize);
        let mut s = Self {
            settings,
            dims,
            mean: vec![0.5; dims],
            sigma: settings.sigma0,
            cov: identity(dims),
            b: identity(dims),
            d: vec![1.0; dims],
            p_sigma: vec![0.0; dims],
            pc: vec![0.0; dims],
            updates: 0,
            generation: 0,
            results: vec![],
            restarts_done: 0,
            funhist: vec![0.0; 2 * strategy.funhist_term],
            tolx: 1e-12 * settings.sigma0,
            strategy,
            ledger: Ledger::new(),
            rng: Rng::seed_from_u64(seed),
        };
        s.eigen();
        Ok(s)
    }

    pub fn settings(&self) -> &CmaSettings {
        &self.settings
    }

    /// λ of the current run.
    pub fn popsize(&self) -> usize {
        self.strategy.popsize
    }

    /// The current generation's tag (what [`Memo::Cma`] carries).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The distribution's mean and step size.
    pub fn mean(&self) -> (&[f64], f64) {
        (&self.mean, self.sigma)
    }

    pub fn restarts_done(&self) -> usize {
        self.restarts_done
    }

    /// m + σ B D z, z ~ N(0, I).
    fn draw(&mut self) -> Vec<f64> {
        let k = self.dims;
        let z: Vec<f64> = (0..k).map(|_| self.rng.normal()).collect();
        (0..k)
            .map(|r| {
                let y: f64 = (0..k).map(|c| self.b[r * k + c] * self.d[c] * z[c]).sum();
                self.mean[r] + self.sigma * y
            })
            .collect()
    }

    fn sample(&mut self) -> Vec<f64> {
        for _ in 0..10 * self.dims {
            let x = self.draw();
            if x.iter().all(|v| (0.0..=1.0).contains(v)) {
                return x;
            }
        }
        self.draw().into_iter().map(|v| v.clamp(0.0, 1.0)).collect()
    }

    /// Symmetrizes C, takes its eigendecomposition (negative eigenvalues become EPS) and
    /// rebuilds C from it, as the `cmaes` package does before sampling.
    fn eigen(&mut self) {
        let k = self.dims;
        for r in 0..k {
            for c in 0..r {
                let v = 0.5 * (self.cov[r * k + c] + self.cov[c * k + r]);
                self.cov[r * k + c] = v;
                self.cov[c * k + r] = v;
            }
        }
        let (values, b) = symmetric_eigen(&self.cov, k);
        self.d = values
            .iter()
            .map(|&v| if v < 0.0 { EPS.sqrt() } else { v.sqrt() })
            .collect();
        for r in 0..k {
            for c in 0..k {
                self.cov[r * k + c] = (0..k)
                    .map(|i| b[r * k + i] * self.d[i] * self.d[i] * b[c * k + i])
                    .sum();
            }
        }
        self.b = b;
    }

    /// C^(−1/2) = B D⁻¹ Bᵀ.
    fn inv_sqrt_cov(&self) -> Vec<f64> {
        let k = self.dims;
        let mut out = vec![0.0; k * k];
        for r in 0..k {
            for c in 0..k {
                out[r * k + c] = (0..k)
                    .map(|i| self.b[r * k + i] / self.d[i] * self.b[c * k + i])
                    .sum();
            }
        }
        out
    }

    /// One generation's update from `self.results` (λ of them).
    fn update(&mut self) {
        let k = self.dims;
        let n = k as f64;
        let st = self.strategy.clone();
        self.updates += 1;
        let mut solutions = std::mem::take(&mut self.results);
        // Best first (the package minimizes −reward); stable for equal rewards.
        solutions.sort_by(|a, b| b.1.total_cmp(&a.1));
        let slot = 2 * (self.updates as usize % st.funhist_term);
        self.funhist[slot] = -solutions[0].1;
        self.funhist[slot + 1] = -solutions[solutions.len() - 1].1;

        let y: Vec<Vec<f64>> = solutions
            .iter()
            .map(|(x, _)| {
                x.iter()
                    .zip(&self.mean)
                    .map(|(xi, m)| (xi - m) / self.sigma)
                    .collect()
            })
            .collect();
        let mut y_w = vec![0.0; k];
        for (yi, w) in y.iter().zip(&st.weights).take(st.mu) {
            for (a, v) in y_w.iter_mut().zip(yi) {
                *a += w * v;
            }
        }
        for (m, v) in self.mean.iter_mut().zip(&y_w) {
            *m += self.sigma * v; // c_m = 1
        }
        let c_half = self.inv_sqrt_cov();
        let mat_vec = |v: &[f64]| -> Vec<f64> {
            (0..k)
                .map(|r| (0..k).map(|c| c_half[r * k + c] * v[c]).sum())
                .collect()
        };
        let c_half_yw = mat_vec(&y_w);
        let ps_gain = (st.c_sigma * (2.0 - st.c_sigma) * st.mu_eff).sqrt();
        for (p, v) in self.p_sigma.iter_mut().zip(&c_half_yw) {
            *p = (1.0 - st.c_sigma) * *p + ps_gain * v;
        }
        let norm_ps = self.p_sigma.iter().map(|p| p * p).sum::<f64>().sqrt();
        self.sigma *= ((st.c_sigma / st.d_sigma) * (norm_ps / st.chi_n - 1.0)).exp();
        self.sigma = self.sigma.min(SIGMA_MAX);

        let left =
            norm_ps / (1.0 - (1.0 - st.c_sigma).powf(2.0 * (self.updates + 1) as f64)).sqrt();
        let h_sigma = if left < (1.4 + 2.0 / (n + 1.0)) * st.chi_n {
            1.0
        } else {
            0.0
        };
        let pc_gain = h_sigma * (st.cc * (2.0 - st.cc) * st.mu_eff).sqrt();
        for (p, v) in self.pc.iter_mut().zip(&y_w) {
            *p = (1.0 - st.cc) * *p + pc_gain * v;
        }
        let w_io: Vec<f64> = st
            .weights
            .iter()
            .zip(&y)
            .map(|(&w, yi)| {
                if w >= 0.0 {
                    w
                } else {
                    let norm2: f64 = mat_vec(yi).iter().map(|v| v * v).sum();
                    w * n / (norm2 + EPS)
                }
            })
            .collect();
        let delta_h = (1.0 - h_sigma) * st.cc * (2.0 - st.cc);
        let weight_sum: f64 = st.weights.iter().sum();
        let keep = 1.0 + st.c1 * delta_h - st.c1 - st.cmu * weight_sum;
        for r in 0..k {
            for c in 0..k {
                let rank_mu: f64 = w_io.iter().zip(&y).map(|(w, yi)| w * yi[r] * yi[c]).sum();
                let i = r * k + c;
                self.cov[i] =
                    keep * self.cov[i] + st.c1 * self.pc[r] * self.pc[c] + st.cmu * rank_mu;
            }
        }
        self.eigen();
        self.generation += 1;
    }

    /// The `cmaes` package's `should_stop`.
    fn should_stop(&self) -> bool {
        let k = self.dims;
        let st = &self.strategy;
        let (lo, hi) = self
            .funhist
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        if self.updates as usize > st.funhist_term && hi - lo < 1e-12 {
            return true;
        }
        let diag = |i: usize| self.cov[i * k + i];
        if (0..k).all(|i| self.sigma * diag(i) < self.tolx)
            && self.pc.iter().all(|p| self.sigma * p < self.tolx)
        {
            return true;
        }
        let d_max = self.d.iter().copied().fold(0.0, f64::max);
        let d_min = self.d.iter().copied().fold(f64::INFINITY, f64::min);
        if self.sigma * d_max > 1e4 {
            return true;
        }
        if (0..k).any(|i| self.mean[i] == self.mean[i] + 0.2 * self.sigma * diag(i).sqrt()) {
            return true;
        }
        let axis = self.updates as usize % k;
        if (0..k).all(|r| {
            self.mean[r] == self.mean[r] + 0.1 * self.sigma * self.d[axis] * self.b[r * k + axis]
        }) {
            return true;
        }
        d_max / d_min > 1e14
    }

    /// IPOP: a fresh run from a uniform random mean with a larger population.
    fn restart(&mut self) {
        let k = self.dims;
        let popsize = (self.strategy.popsize as f64 * self.settings.inc_popsize).round() as usize;
        self.strategy = Strategy::new(k, popsize.max(self.strategy.popsize + 1));
        self.mean = (0..k).map(|_| self.rng.uniform()).collect();
        self.sigma = self.settings.sigma0;
        self.cov = identity(k);
        self.p_sigma = vec![0.0; k];
        self.pc = vec![0.0; k];
        self.updates = 0;
        self.funhist = vec![0.0; 2 * self.strategy.funhist_term];
        self.results.clear();
        self.restarts_done += 1;
        self.generation += 1;
        self.eigen();
    }

    fn settle(&mut self, proposal: &Proposal, reward: Option<f64>) -> Result<(), SearchError> {
        self.ledger.check(Self::KIND, self.dims, proposal, reward)?;
        let generation = match proposal.memo {
            Memo::Cma { generation } if generation <= self.generation => generation,
            _ => return Err(foreign(Self::KIND, proposal)),
        };
        self.ledger.settle(proposal, reward);
        if let Some(r) = reward
            && generation == self.generation
        {
            let x = proposal.unit.iter().map(|u| u.clamp(0.0, 1.0)).collect();
            self.results.push((x, r));
            if self.results.len() >= self.strategy.popsize {
                self.update();
                if self.restarts_done < self.settings.restarts && self.should_stop() {
                    self.restart();
                }
            }
        }
        Ok(())
    }
}

impl Searcher for CmaEs {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn dims(&self) -> usize {
        self.dims
    }

    fn propose(&mut self) -> Proposal {
        let ticket = self.ledger.issue();
        let unit = self.sample();
        Proposal {
            ticket,
            unit,
            memo: Memo::Cma {
                generation: self.generation,
            },
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

    /// Optuna's WS-CMA-ES start (`source_trials`, the `cmaes` package's
    /// `get_warm_start_mgd` with gamma = alpha = 0.1): the best ⌊n/10⌋ observations (at least
    /// one; Optuna refuses fewer than 10) give the mean m and Σ = α²I + their covariance;
    /// σ = det(Σ)^(1/2K), C = Σ/σ².
    fn warm_start(&mut self, from: &WarmStart) -> Result<(), SearchError> {
        const GAMMA: f64 = 0.1;
        const ALPHA: f64 = 0.1;
        let best = from.best_first(Self::KIND, self.dims, self.ledger.fresh())?;
        if best.is_empty() {
            return Ok(());
        }
        let k = self.dims;
        let top = &best[..((best.len() as f64 * GAMMA).floor() as usize).max(1)];
        let n = top.len() as f64;
        let mean: Vec<f64> = (0..k)
            .map(|i| top.iter().map(|(x, _)| x[i]).sum::<f64>() / n)
            .collect();
        let mut cov = vec![0.0; k * k];
        for r in 0..k {
            for c in 0..k {
                let second = top.iter().map(|(x, _)| x[r] * x[c]).sum::<f64>() / n;
                let first = if r == c { ALPHA * ALPHA } else { 0.0 };
                cov[r * k + c] = first + second - mean[r] * mean[c];
            }
        }
        self.cov = cov;
        self.eigen();
        // det Σ = Π d², so det^(1/2K) = exp(Σ ln d / K).
        let sigma = (self.d.iter().map(|d| d.ln()).sum::<f64>() / k as f64)
            .exp()
            .max(EPS);
        for v in &mut self.cov {
            *v /= sigma * sigma;
        }
        self.eigen();
        self.mean = mean;
        self.sigma = sigma;
        Ok(())
    }

    fn state(&self) -> SearcherState {
        SearcherState::CmaEs(self.clone())
    }
}

fn identity(k: usize) -> Vec<f64> {
    let mut m = vec![0.0; k * k];
    for i in 0..k {
        m[i * k + i] = 1.0;
    }
    m
}

/// Eigenvalues (ascending) and eigenvectors (the columns of the row-major matrix returned) of
/// the symmetric K×K matrix `a`, by cyclic Jacobi rotations: plain, deterministic, and exact
/// to rounding for the small K of a search space.
fn symmetric_eigen(a: &[f64], k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = identity(k);
    for _sweep in 0..100 {
        let off: f64 = (0..k)
            .flat_map(|p| (p + 1..k).map(move |q| (p, q)))
            .map(|(p, q)| a[p * k + q] * a[p * k + q])
            .sum();
        let scale: f64 = (0..k).map(|i| a[i * k + i] * a[i * k + i]).sum();
        if off == 0.0 || off <= 1e-32 * scale {
            break;
        }
        for p in 0..k {
            for q in p + 1..k {
                let apq = a[p * k + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * k + q] - a[p * k + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for i in 0..k {
                    let (aip, aiq) = (a[i * k + p], a[i * k + q]);
                    a[i * k + p] = c * aip - s * aiq;
                    a[i * k + q] = s * aip + c * aiq;
                }
                for i in 0..k {
                    let (api, aqi) = (a[p * k + i], a[q * k + i]);
                    a[p * k + i] = c * api - s * aqi;
                    a[q * k + i] = s * api + c * aqi;
                }
                for i in 0..k {
                    let (vip, viq) = (v[i * k + p], v[i * k + q]);
                    v[i * k + p] = c * vip - s * viq;
                    v[i * k + q] = s * vip + c * viq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&i, &j| a[i * k + i].total_cmp(&a[j * k + j]));
    let values = order.iter().map(|&i| a[i * k + i]).collect();
    let mut vectors = vec![0.0; k * k];
    for (col, &i) in order.iter().enumerate() {
        for r in 0..k {
            vectors[r * k + col] = v[r * k + i];
        }
    }
    (values, vectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64, tol: f64) {
        assert!((got - want).abs() < tol, "got {got}, want {want}");
    }

    // Reference values: the `cmaes` package 0.13.1, `CMA(mean=np.full(K, 0.5), sigma=1/6,
    // bounds=[[0, 1]]*K)`, its `_mu_eff`, `_c1`, `_cmu`, `_cc`, `_c_sigma`, `_d_sigma`,
    // `_chi_n` and `_weights`.
    #[test]
    fn strategy_parameters_match_the_cmaes_package() {
        let s = Strategy::new(8, 4 + (3.0 * 8f64.ln()).floor() as usize);
        assert_eq!((s.popsize, s.mu), (10, 5));
        for (got, want) in [
            (s.mu_eff, 3.167_299_281_410_702_6),
            (s.c1, 0.022_307_163_120_344_784),
            (s.cmu, 0.028_749_917_692_721_56),
            (s.cc, 0.343_650_141_548_384_75),
            (s.c_sigma, 0.319_614_252_910_633_45),
            (s.d_sigma, 1.319_614_252_910_633_4),
            (s.chi_n, 2.742_143_261_565_689),
        ] {
            close(got, want, 1e-15);
        }
        let want = [
            0.456_272_646_903_405_97,
            0.270_753_097_001_785_2,
            0.162_231_117_158_669_8,
            0.085_233_547_100_164_48,
            0.025_509_591_835_974_777,
            -0.086_173_045_226_155_75,
            -0.238_838_523_741_455_78,
            -0.371_083_376_470_495_55,
            -0.487_731_603_514_427_46,
            -0.592_076_998_277_172_8,
        ];
        for (got, want) in s.weights.iter().zip(want) {
            close(*got, want, 1e-15);
        }
        let s = Strategy::new(3, 4 + (3.0 * 3f64.ln()).floor() as usize);
        assert_eq!((s.popsize, s.mu), (7, 3));
        close(s.cmu, 0.051_243_087_013_586_15, 1e-15);
        assert_eq!(s.weights[3], 0.0);
        close(s.weights[6], -1.063_656_696_984_255_6, 1e-15);
    }

    /// Two generations of fixed points told to our update and to the `cmaes` package's
    /// `tell` (K = 3, λ = 7, the package minimizing −f): the same mean, σ, C, paths and
    /// eigenvalues. The points and f are written out in the Python that made the numbers:
    /// `x_i,d = ((0.13 i + 0.07 g (d+1) + 0.21 d) mod 0.6) + 0.2` for generation g.
    #[test]
    fn update_matches_the_cmaes_package() {
        let f = |x: &[f64]| {
            1.0 - ((x[0] - 0.3).powi(2)
                + 3.0 * (x[1] - 0.6).powi(2)
                + 0.5 * (x[2] - 0.45).powi(2)
                + 0.8 * (x[0] - 0.3) * (x[1] - 0.6))
        };
        let mut s = CmaEs::new(3, &BTreeMap::new(), 1).unwrap();
        for g in 0..2 {
            s.results = (0..7)
                .map(|i| {
                    let x: Vec<f64> = (0..3)
                        .map(|d| {
                            (0.13 * i as f64 + 0.07 * g as f64 * (d + 1) as f64 + 0.21 * d as f64)
                                % 0.6
                                + 0.2
                        })
                        .collect();
                    let r = f(&x);
                    (x, r)
                })
                .collect();
            s.update();
        }
        let tol = 1e-13;
        for (got, want) in s.mean.iter().zip([
            0.315_081_459_556_084_1,
            0.595_081_459_556_084_2,
            0.275_081_459_556_084_15,
        ]) {
            close(*got, want, tol);
        }
        close(s.sigma, 0.161_551_022_715_994_9, tol);
        let cov = [
            0.901_614_028_329_337_1,
            0.059_912_551_100_307_854,
            0.154_228_518_682_290_68,
            0.059_912_551_100_307_895,
            0.687_134_808_820_531_5,
            -0.089_467_143_208_718_3,
            0.154_228_518_682_290_62,
            -0.089_467_143_208_718_28,
            1.229_859_606_507_410_6,
        ];
        for (got, want) in s.cov.iter().zip(cov) {
            close(*got, want, tol);
        }
        for (got, want) in s.p_sigma.iter().zip([
            -0.950_693_084_360_396_3,
            0.402_637_865_967_835_2,
            -1.184_192_244_657_038_5,
        ]) {
            close(*got, want, tol);
        }
        for (got, want) in s.pc.iter().zip([
            -0.943_728_004_338_981_1,
            0.386_524_510_266_998_86,
            -1.255_414_542_115_477,
        ]) {
            close(*got, want, tol);
        }
        for (got, want) in s.d.iter().zip([
            0.801_141_386_036_104_2,
            0.937_831_428_660_718_2,
            1.138_970_207_974_565_4,
        ]) {
            close(*got, want, tol);
        }
        assert_eq!(s.generation, 2);
    }

    #[test]
    fn jacobi_diagonalizes() {
        let k = 5;
        let mut rng = Rng::seed_from_u64(4);
        let m: Vec<f64> = (0..k * k).map(|_| rng.normal()).collect();
        // A = M Mᵀ + I: symmetric positive definite.
        let mut a = vec![0.0; k * k];
        for r in 0..k {
            for c in 0..k {
                a[r * k + c] = (0..k).map(|i| m[r * k + i] * m[c * k + i]).sum::<f64>()
                    + if r == c { 1.0 } else { 0.0 };
            }
        }
        let (values, b) = symmetric_eigen(&a, k);
        assert!(values.windows(2).all(|w| w[0] <= w[1]));
        for r in 0..k {
            for c in 0..k {
                let rebuilt: f64 = (0..k)
                    .map(|i| b[r * k + i] * values[i] * b[c * k + i])
                    .sum();
                close(rebuilt, a[r * k + c], 1e-12);
                let orth: f64 = (0..k).map(|i| b[i * k + r] * b[i * k + c]).sum();
                close(orth, if r == c { 1.0 } else { 0.0 }, 1e-13);
            }
        }
    }

    #[test]
    fn popsize_one_is_refused() {
        let one: BTreeMap<String, f64> = [("popsize".to_owned(), 1.0)].into();
        assert!(matches!(
            CmaEs::new(4, &one, 0),
            Err(SearchError::InvalidSetting {
                name: "popsize",
                ..
            })
        ));
        let two: BTreeMap<String, f64> = [("popsize".to_owned(), 2.0)].into();
        assert_eq!(CmaEs::new(4, &two, 0).unwrap().popsize(), 2);
    }
}
