//! The paper's controller H (section 3.2) as `docs/method.md` reads it: an Elman RNN cell
//! whose input is the previous strategy C_{i-1}, a K×2 softmax head, and PPO.
//!
//! Policy. One step per proposal, hidden state carried through the study:
//!
//! ```text
//! h_i   = tanh(W_x C_{i-1} + W_h h_{i-1} + b)          C_0 = 0.5…, h_0 = 0;  h: [H]
//! z_i   = W_o h_i + b_o                                 z: [K, 2] (logits, 2 channels per dim)
//! μ_k   = m + (1 − 2m) · softmax(z_k)[0]                m = `mu_min` (0.01)
//! C_i,k ~ Beta(μ_k κ, (1 − μ_k) κ)                      κ = `kappa`
//! ```
//!
//! The paper feeds softmax channel 0 itself back as the action; a policy gradient needs a
//! stochastic policy, so the action is drawn from a Beta with mean μ_k. "Clamp μ to
//! [m, 1 − m]" is done as the affine squash above rather than a hard clamp so the gradient
//! never vanishes at the edges (a hard clamp would freeze a saturated dimension for good).
//! The first n proposals (before any reward) are n draws from the initial policy, whose μ are
//! close to 0.5: the paper's random initialization C_1..C_n around its 0.5 start.
//!
//! Learning. Each reward r of a proposal gives an advantage A = r − b, with b an exponential
//! moving average of the rewards (`baseline_decay`; b starts at the first reward), as in Zoph &
//! Le. The sample (input, hidden state, action, old log-prob, A) joins a buffer of the last
//! `buffer` observed samples and the policy takes `epochs` RMSprop steps on the PPO clipped
//! surrogate (ε = `clip`) over the buffer. The old log-prob is the one stored in the proposal
//! when it was issued, so out-of-order rewards are handled by the importance ratio.
//! Backpropagation goes through the head and one RNN step, with the stored h_{i-1} held
//! constant: truncated BPTT of length 1. (The hidden state that produced a proposal is part of
//! the proposal, so the update never needs the rest of the sequence, which with parallel,
//! out-of-order jobs is not a single chain of rewarded steps anyway.)

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::searcher::{Ledger, foreign};
use crate::settings::{Rule, resolve};
use crate::special::{beta_log_pdf, digamma};
use crate::{Memo, Proposal, Rng, SearchError, Searcher, SearcherState, SettingInfo, WarmStart};

/// Actions are kept this far inside (0, 1) so their log-density stays finite.
const ACTION_EPS: f64 = 1e-6;
/// Bound on |ln ρ| in the PPO ratio.
const MAX_LOG_RATIO: f64 = 50.0;
/// RMSprop's ε, added to the root of the running mean square (PyTorch convention).
const RMS_EPS: f64 = 1e-8;

/// Resolved `ppo-rnn` settings (see [`PpoRnn::SETTINGS`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PpoSettings {
    pub hidden: usize,
    pub kappa: f64,
    pub lr: f64,
    pub clip: f64,
    pub epochs: usize,
    pub baseline_decay: f64,
    pub buffer: usize,
    pub rms_decay: f64,
    pub rms_init: f64,
    pub mu_min: f64,
    pub max_grad_norm: f64,
}

/// Shapes and fixed constants of the policy network; the weights are one flat vector laid out
/// as `[W_x (H×K) | W_h (H×H) | b (H) | W_o (2K×H) | b_o (2K)]`, row-major, and row `2k + c` of
/// `W_o` is channel c of dimension k.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Net {
    pub k: usize,
    pub h: usize,
    pub kappa: f64,
    pub mu_min: f64,
}

/// Forward values one backward pass needs.
#[derive(Debug, Clone)]
pub(crate) struct Forward {
    /// [H]
    pub h: Vec<f64>,
    /// softmax channel 0 per dimension, [K]
    pub s: Vec<f64>,
    /// [K]
    pub mu: Vec<f64>,
}

/// One observed proposal, as PPO replays it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Sample {
    pub input: Vec<f64>,
    pub hidden: Vec<f64>,
    pub action: Vec<f64>,
    pub log_prob: f64,
    pub advantage: f64,
}

impl Net {
    pub fn len(&self) -> usize {
        let (k, h) = (self.k, self.h);
        h * k + h * h + h + 2 * k * h + 2 * k
    }

    fn offsets(&self) -> [usize; 5] {
        let (k, h) = (self.k, self.h);
        let wx = 0;
        let wh = wx + h * k;
        let b = wh + h * h;
        let wo = b + h;
        let bo = wo + 2 * k * h;
        [wx, wh, b, wo, bo]
    }

    /// x: [K] previous strategy, h_prev: [H].
    pub fn forward(&self, theta: &[f64], x: &[f64], h_prev: &[f64]) -> Forward {
        let (k, hn) = (self.k, self.h);
        let [wx, wh, b, wo, bo] = self.offsets();
        let h: Vec<f64> = (0..hn)
            .map(|j| {
                let mut a = theta[b + j];
                a += (0..k).map(|i| theta[wx + j * k + i] * x[i]).sum::<f64>();
                a += (0..hn)
                    .map(|i| theta[wh + j * hn + i] * h_prev[i])
                    .sum::<f64>();
                a.tanh()
            })
            .collect();
        let mut s = Vec::with_capacity(k);
        let mut mu = Vec::with_capacity(k);
        for d in 0..k {
            let row0 = wo + 2 * d * hn;
            let row1 = row0 + hn;
            let z0 = theta[bo + 2 * d] + (0..hn).map(|j| theta[row0 + j] * h[j]).sum::<f64>();
            let z1 = theta[bo + 2 * d + 1] + (0..hn).map(|j| theta[row1 + j] * h[j]).sum::<f64>();
            // softmax([z0, z1])[0] = σ(z0 − z1)
            let sd = 1.0 / (1.0 + (z1 - z0).exp());
            s.push(sd);
            mu.push(self.mu_min + (1.0 - 2.0 * self.mu_min) * sd);
        }
        Forward { h, s, mu }
    }

    /// ln π(action | μ): independent Betas, one per dimension.
    pub fn log_prob(&self, mu: &[f64], action: &[f64]) -> f64 {
        mu.iter()
            .zip(action)
            .map(|(&m, &a)| beta_log_pdf(a, m * self.kappa, (1.0 - m) * self.kappa))
            .sum()
    }

    /// ∂ ln π / ∂μ_k = κ (ψ(β) − ψ(α) + ln a − ln(1 − a)), α = μκ, β = (1 − μ)κ.
    pub fn dlog_prob_dmu(&self, mu: &[f64], action: &[f64]) -> Vec<f64> {
        mu.iter()
            .zip(action)
            .map(|(&m, &a)| {
                let (al, be) = (m * self.kappa, (1.0 - m) * self.kappa);
                self.kappa * (digamma(be) - digamma(al) + a.ln() - (-a).ln_1p())
            })
            .collect()
    }

    /// Adds Σ_k g_mu[k] · ∂μ_k/∂θ to `grad`, through the head and one RNN step (h_prev held
    /// constant).
    pub fn backward(
        &self,
        theta: &[f64],
        x: &[f64],
        h_prev: &[f64],
        fwd: &Forward,
        g_mu: &[f64],
        grad: &mut [f64],
    ) {
        let (k, hn) = (self.k, self.h);
        let [wx, wh, b, wo, bo] = self.offsets();
        let mut dh = vec![0.0; hn];
        for d in 0..k {
            let s = fwd.s[d];
            // dμ/dz0 = (1 − 2m) σ'(z0 − z1), dμ/dz1 = −dμ/dz0
            let gd = g_mu[d] * (1.0 - 2.0 * self.mu_min) * s * (1.0 - s);
            if gd == 0.0 {
                continue;
            }
            let row0 = wo + 2 * d * hn;
            let row1 = row0 + hn;
            grad[bo + 2 * d] += gd;
            grad[bo + 2 * d + 1] -= gd;
            for j in 0..hn {
                grad[row0 + j] += gd * fwd.h[j];
                grad[row1 + j] -= gd * fwd.h[j];
                dh[j] += gd * (theta[row0 + j] - theta[row1 + j]);
            }
        }
        for j in 0..hn {
            let da = dh[j] * (1.0 - fwd.h[j] * fwd.h[j]);
            grad[b + j] += da;
            for i in 0..k {
                grad[wx + j * k + i] += da * x[i];
            }
            for i in 0..hn {
                grad[wh + j * hn + i] += da * h_prev[i];
            }
        }
    }

    /// The PPO clipped surrogate loss −mean_i min(ρ_i A_i, clip(ρ_i, 1 ± ε) A_i), with
    /// ρ_i = π_θ(a_i) / π_old(a_i), and its gradient in θ.
    pub fn surrogate(&self, theta: &[f64], samples: &[Sample], clip: f64) -> (f64, Vec<f64>) {
        let mut grad = vec![0.0; theta.len()];
        let mut loss = 0.0;
        let n = samples.len().max(1) as f64;
        for smp in samples {
            let fwd = self.forward(theta, &smp.input, &smp.hidden);
            let lp = self.log_prob(&fwd.mu, &smp.action);
            // A sample the policy has moved e^50 away from would overflow the ratio; it is
            // held at the bound and gives no gradient (a guard, not reached in practice).
            let log_ratio = lp - smp.log_prob;
            let ratio = log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp();
            let a = smp.advantage;
            let clipped = ratio.clamp(1.0 - clip, 1.0 + clip);
            loss -= (ratio * a).min(clipped * a) / n;
            // The unclipped term is the active one unless the ratio left the trust region in
            // the direction the advantage pushes it.
            let active = (a > 0.0 && ratio <= 1.0 + clip) || (a < 0.0 && ratio >= 1.0 - clip);
            if !active || log_ratio.abs() > MAX_LOG_RATIO {
                continue;
            }
            let g_lp = -ratio * a / n;
            let g_mu: Vec<f64> = self
                .dlog_prob_dmu(&fwd.mu, &smp.action)
                .into_iter()
                .map(|g| g * g_lp)
                .collect();
            self.backward(theta, &smp.input, &smp.hidden, &fwd, &g_mu, &mut grad);
        }
        (loss, grad)
    }
}

/// `ppo-rnn`: the paper's RL controller. See the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PpoRnn {
    settings: PpoSettings,
    dims: usize,
    theta: Vec<f64>,
    /// RMSprop running mean of squared gradients, one per weight.
    mean_square: Vec<f64>,
    /// C_{i-1}: the last issued strategy (0.5… before the first).
    input: Vec<f64>,
    /// h_{i-1}.
    hidden: Vec<f64>,
    baseline: Option<f64>,
    buffer: VecDeque<Sample>,
    updates: u64,
    ledger: Ledger,
    rng: Rng,
}

impl PpoRnn {
    pub const KIND: &'static str = "ppo-rnn";
    pub const SETTINGS: &'static [SettingInfo] = &[
        SettingInfo {
            name: "hidden",
            default: 32.0,
            rule: Rule::Count,
            doc: "RNN hidden units",
        },
        SettingInfo {
            name: "kappa",
            default: 20.0,
            rule: Rule::Positive,
            doc: "Beta concentration: action ~ Beta(μκ, (1−μ)κ); larger = less exploration",
        },
        SettingInfo {
            name: "lr",
            default: 1e-3,
            rule: Rule::Positive,
            doc: "RMSprop learning rate (the paper's 0.1 diverges here, see the README)",
        },
        SettingInfo {
            name: "clip",
            default: 0.2,
            rule: Rule::OpenUnit,
            doc: "PPO clip ε: the ratio is kept in [1 − ε, 1 + ε]",
        },
        SettingInfo {
            name: "epochs",
            default: 4.0,
            rule: Rule::Count,
            doc: "PPO passes (RMSprop steps) over the buffer after each reward",
        },
        SettingInfo {
            name: "baseline_decay",
            default: 0.9,
            rule: Rule::Fraction,
            doc: "reward baseline b ← decay·b + (1−decay)·r; advantage = r − b",
        },
        SettingInfo {
            name: "buffer",
            default: 8.0,
            rule: Rule::Count,
            doc: "the most recent observed samples each update replays",
        },
        SettingInfo {
            name: "rms_decay",
            default: 0.99,
            rule: Rule::Fraction,
            doc: "RMSprop decay of the mean square",
        },
        SettingInfo {
            name: "rms_init",
            default: 0.0,
            rule: Rule::NonNegative,
            doc: "RMSprop's initial mean square (0: PyTorch/Keras; 1: TensorFlow 1)",
        },
        SettingInfo {
            name: "mu_min",
            default: 0.01,
            rule: Rule::BelowHalf,
            doc: "μ is squashed into [mu_min, 1 − mu_min]",
        },
        SettingInfo {
            name: "max_grad_norm",
            default: 0.0,
            rule: Rule::NonNegative,
            doc: "clip the gradient's L2 norm before RMSprop; 0 = off",
        },
    ];

    pub fn new(
        dims: usize,
        settings: &BTreeMap<String, f64>,
        seed: u64,
    ) -> Result<Self, SearchError> {
        let s = resolve(Self::KIND, Self::SETTINGS, settings)?;
        let settings = PpoSettings {
            hidden: s[0] as usize,
            kappa: s[1],
            lr: s[2],
            clip: s[3],
            epochs: s[4] as usize,
            baseline_decay: s[5],
            buffer: s[6] as usize,
            rms_decay: s[7],
            rms_init: s[8],
            mu_min: s[9],
            max_grad_norm: s[10],
        };
        let mut rng = Rng::seed_from_u64(seed);
        let net = Net {
            k: dims,
            h: settings.hidden,
            kappa: settings.kappa,
            mu_min: settings.mu_min,
        };
        // PyTorch's RNN/Linear initialization: U(−1/√H, 1/√H) for every weight.
        let bound = 1.0 / (settings.hidden as f64).sqrt();
        let theta = (0..net.len())
            .map(|_| (2.0 * rng.uniform() - 1.0) * bound)
            .collect();
        Ok(Self {
            settings,
            dims,
            theta,
            mean_square: vec![settings.rms_init; net.len()],
            input: vec![0.5; dims],
            hidden: vec![0.0; settings.hidden],
            baseline: None,
            buffer: VecDeque::new(),
            updates: 0,
            ledger: Ledger::new(),
            rng,
        })
    }

    pub fn settings(&self) -> &PpoSettings {
        &self.settings
    }

    fn net(&self) -> Net {
        Net {
            k: self.dims,
            h: self.settings.hidden,
            kappa: self.settings.kappa,
            mu_min: self.settings.mu_min,
        }
    }

    /// μ of the next proposal: the policy's current mean strategy (what the paper feeds back
    /// as the action), e.g. to report the searched strategy at the end of a study.
    pub fn policy_mean(&self) -> Vec<f64> {
        self.net()
            .forward(&self.theta, &self.input, &self.hidden)
            .mu
    }

    /// PPO updates done so far (one per observed reward).
    pub fn updates(&self) -> u64 {
        self.updates
    }

    fn update(&mut self) {
        let net = self.net();
        let samples: Vec<Sample> = self.buffer.iter().cloned().collect();
        let st = self.settings;
        for _ in 0..st.epochs {
            let (_, mut grad) = net.surrogate(&self.theta, &samples, st.clip);
            if st.max_grad_norm > 0.0 {
                let norm = grad.iter().map(|g| g * g).sum::<f64>().sqrt();
                if norm > st.max_grad_norm {
                    let f = st.max_grad_norm / norm;
                    grad.iter_mut().for_each(|g| *g *= f);
                }
            }
            for ((w, v), g) in self.theta.iter_mut().zip(&mut self.mean_square).zip(&grad) {
                *v = st.rms_decay * *v + (1.0 - st.rms_decay) * g * g;
                *w -= st.lr * g / (v.sqrt() + RMS_EPS);
            }
        }
        self.updates += 1;
    }

    fn check_memo(&self, proposal: &Proposal) -> Result<(Vec<f64>, Vec<f64>, f64), SearchError> {
        match &proposal.memo {
            Memo::Policy {
                input,
                hidden,
                log_prob,
            } if input.len() == self.dims
                && hidden.len() == self.settings.hidden
                && log_prob.is_finite() =>
            {
                Ok((input.clone(), hidden.clone(), *log_prob))
            }
            _ => Err(foreign(Self::KIND, proposal)),
        }
    }
}

impl Searcher for PpoRnn {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn dims(&self) -> usize {
        self.dims
    }

    fn propose(&mut self) -> Proposal {
        let net = self.net();
        let fwd = net.forward(&self.theta, &self.input, &self.hidden);
        let kappa = self.settings.kappa;
        let action: Vec<f64> = fwd
            .mu
            .iter()
            .map(|&m| {
                self.rng
                    .beta(m * kappa, (1.0 - m) * kappa)
                    .clamp(ACTION_EPS, 1.0 - ACTION_EPS)
            })
            .collect();
        let log_prob = net.log_prob(&fwd.mu, &action);
        let memo = Memo::Policy {
            input: std::mem::replace(&mut self.input, action.clone()),
            hidden: std::mem::replace(&mut self.hidden, fwd.h),
            log_prob,
        };
        Proposal {
            ticket: self.ledger.issue(),
            unit: action,
            memo,
        }
    }

    fn observe(&mut self, proposal: &Proposal, reward: f64) -> Result<(), SearchError> {
        self.ledger
            .check(Self::KIND, self.dims, proposal, Some(reward))?;
        let (input, hidden, log_prob) = self.check_memo(proposal)?;
        self.ledger.settle(proposal, Some(reward));
        let advantage = match self.baseline {
            None => {
                self.baseline = Some(reward);
                0.0
            }
            Some(b) => {
                let d = self.settings.baseline_decay;
                self.baseline = Some(d * b + (1.0 - d) * reward);
                reward - b
            }
        };
        self.buffer.push_back(Sample {
            input,
            hidden,
            action: proposal
                .unit
                .iter()
                .map(|a| a.clamp(ACTION_EPS, 1.0 - ACTION_EPS))
                .collect(),
            log_prob,
            advantage,
        });
        while self.buffer.len() > self.settings.buffer {
            self.buffer.pop_front();
        }
        self.update();
        Ok(())
    }

    fn abandon(&mut self, proposal: &Proposal) -> Result<(), SearchError> {
        self.ledger.check(Self::KIND, self.dims, proposal, None)?;
        self.check_memo(proposal)?;
        self.ledger.settle(proposal, None);
        Ok(())
    }

    fn best(&self) -> Option<(Vec<f64>, f64)> {
        self.ledger.best()
    }

    fn outstanding(&self) -> usize {
        self.ledger.outstanding()
    }

    /// Starts from the earlier study's policy: its weights, RMSprop state and reward baseline
    /// (not its buffer, generator or tickets). The earlier study must be `ppo-rnn` with the
    /// same `hidden` size on the same space.
    fn warm_start(&mut self, from: &WarmStart) -> Result<(), SearchError> {
        from.checked(Self::KIND, self.dims, self.ledger.fresh())?;
        let refuse = |reason: String| SearchError::WarmStart {
            searcher: Self::KIND,
            reason,
        };
        let source = match &from.state {
            Some(SearcherState::PpoRnn(p)) => p,
            Some(other) => {
                return Err(refuse(format!(
                    "it starts from a ppo-rnn study's policy; the earlier study used `{}`",
                    other.kind()
                )));
            }
            None => return Err(refuse("the earlier study's policy is missing".into())),
        };
        if source.dims != self.dims || source.settings.hidden != self.settings.hidden {
            return Err(refuse(format!(
                "the earlier policy has {} dimensions and {} hidden units, this one {} and {}",
                source.dims, source.settings.hidden, self.dims, self.settings.hidden
            )));
        }
        self.theta = source.theta.clone();
        self.mean_square = source.mean_square.clone();
        self.baseline = source.baseline;
        Ok(())
    }

    fn state(&self) -> SearcherState {
        SearcherState::PpoRnn(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_vec(rng: &mut Rng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect()
    }

    fn net() -> Net {
        Net {
            k: 3,
            h: 5,
            kappa: 20.0,
            mu_min: 0.01,
        }
    }

    /// Central differences of `f` at `theta`, compared with `grad` entry by entry.
    fn check_gradient(f: impl Fn(&[f64]) -> f64, theta: &[f64], grad: &[f64]) {
        let eps = 1e-6;
        let mut worst: f64 = 0.0;
        for i in 0..theta.len() {
            let mut p = theta.to_vec();
            p[i] += eps;
            let up = f(&p);
            p[i] -= 2.0 * eps;
            let down = f(&p);
            let fd = (up - down) / (2.0 * eps);
            let err = (fd - grad[i]).abs() / (fd.abs() + grad[i].abs()).max(1e-3);
            worst = worst.max(err);
            assert!(
                err < 1e-5,
                "weight {i}: backprop {} vs finite difference {fd}",
                grad[i]
            );
        }
        assert!(worst.is_finite());
    }

    #[test]
    fn log_prob_gradient_matches_finite_differences() {
        let net = net();
        let mut rng = Rng::seed_from_u64(11);
        // Larger than the initialization so tanh and the softmax are away from linear.
        let theta = random_vec(&mut rng, net.len(), -1.0, 1.0);
        let x = random_vec(&mut rng, net.k, 0.0, 1.0);
        let h_prev = random_vec(&mut rng, net.h, -0.9, 0.9);
        let action = random_vec(&mut rng, net.k, 0.05, 0.95);
        let fwd = net.forward(&theta, &x, &h_prev);
        let g_mu = net.dlog_prob_dmu(&fwd.mu, &action);
        let mut grad = vec![0.0; net.len()];
        net.backward(&theta, &x, &h_prev, &fwd, &g_mu, &mut grad);
        let f = |t: &[f64]| net.log_prob(&net.forward(t, &x, &h_prev).mu, &action);
        check_gradient(f, &theta, &grad);
        assert!(grad.iter().any(|g| g.abs() > 1e-3));
    }

    #[test]
    fn surrogate_gradient_matches_finite_differences() {
        let net = net();
        let mut rng = Rng::seed_from_u64(12);
        let theta = random_vec(&mut rng, net.len(), -1.0, 1.0);
        // Old log-probs around the current ones: some ratios inside the trust region, some
        // clipped on either side, advantages of both signs.
        let shifts = [0.0, 0.1, -0.1, 0.5, -0.5, 0.05, -0.4, 0.3];
        let samples: Vec<Sample> = shifts
            .iter()
            .enumerate()
            .map(|(i, &shift)| {
                let input = random_vec(&mut rng, net.k, 0.0, 1.0);
                let hidden = random_vec(&mut rng, net.h, -0.9, 0.9);
                let action = random_vec(&mut rng, net.k, 0.05, 0.95);
                let lp = net.log_prob(&net.forward(&theta, &input, &hidden).mu, &action);
                Sample {
                    input,
                    hidden,
                    action,
                    log_prob: lp + shift,
                    advantage: if i % 3 == 0 {
                        -0.7
                    } else {
                        0.4 + 0.1 * i as f64
                    },
                }
            })
            .collect();
        let (loss, grad) = net.surrogate(&theta, &samples, 0.2);
        assert!(loss.is_finite());
        let f = |t: &[f64]| net.surrogate(t, &samples, 0.2).0;
        check_gradient(f, &theta, &grad);
        // Samples with all ratios clipped give no gradient.
        let frozen: Vec<Sample> = samples
            .iter()
            .map(|s| Sample {
                log_prob: s.log_prob - 5.0,
                advantage: 1.0,
                ..s.clone()
            })
            .collect();
        let (_, g) = net.surrogate(&theta, &frozen, 0.2);
        assert!(g.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn mu_stays_inside_the_squash() {
        let net = net();
        let theta = vec![50.0; net.len()];
        let fwd = net.forward(&theta, &[1.0; 3], &[1.0; 5]);
        for &m in &fwd.mu {
            assert!((0.01..=0.99).contains(&m));
        }
    }
}
