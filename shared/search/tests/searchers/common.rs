//! A simulated study: a cheap noisy objective over [0, 1]^K and the paper's Algorithm 1 with
//! `parallel` jobs in flight and rewards coming back in random order.

use search::{Proposal, Rng, Searcher};

/// f(u) = 1 − mean_k (u_k − u*_k)², plus N(0, noise²) per evaluation. Smooth, unimodal,
/// in about the range of a Dice score; the noise plays the part of training noise.
pub struct Objective {
    pub optimum: Vec<f64>,
    pub noise: f64,
    rng: Rng,
}

impl Objective {
    pub fn new(optimum: Vec<f64>, noise: f64, seed: u64) -> Self {
        Self {
            optimum,
            noise,
            rng: Rng::seed_from_u64(seed ^ 0x0B1E_C71F),
        }
    }

    /// An optimum drawn in [0.1, 0.9]^k (away from 0.5 on average) from `seed`.
    pub fn random(k: usize, noise: f64, seed: u64) -> Self {
        let mut rng = Rng::seed_from_u64(seed ^ 0x5EED);
        let optimum = (0..k).map(|_| 0.1 + 0.8 * rng.uniform()).collect();
        Self::new(optimum, noise, seed)
    }

    pub fn value(&self, u: &[f64]) -> f64 {
        let sq: f64 = u
            .iter()
            .zip(&self.optimum)
            .map(|(a, b)| (a - b) * (a - b))
            .sum();
        1.0 - sq / u.len() as f64
    }

    pub fn sample(&mut self, u: &[f64]) -> f64 {
        self.value(u) + self.noise * self.rng.normal()
    }
}

/// What a simulated study saw.
pub struct Trace {
    /// Noisy rewards in observation order.
    pub rewards: Vec<f64>,
    /// Noise-free value of the searcher's incumbent (`best()`) at the end.
    pub best_value: f64,
}

impl Trace {
    pub fn mean(xs: &[f64]) -> f64 {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// Algorithm 1: `parallel` proposals out; repeatedly a random one of them finishes, the
/// searcher observes it and proposes one more, until `budget` rewards are in.
pub fn run_study(
    searcher: &mut dyn Searcher,
    objective: &mut Objective,
    budget: usize,
    parallel: usize,
    order_seed: u64,
) -> Trace {
    let mut order = Rng::seed_from_u64(order_seed);
    let mut out: Vec<Proposal> = (0..parallel.min(budget))
        .map(|_| searcher.propose())
        .collect();
    let mut issued = out.len();
    let mut rewards = Vec::with_capacity(budget);
    while rewards.len() < budget {
        let p = out.swap_remove(order.below(out.len()));
        let r = objective.sample(&p.unit);
        searcher.observe(&p, r).expect("observe");
        rewards.push(r);
        if issued < budget {
            out.push(searcher.propose());
            issued += 1;
        }
    }
    let (best, _) = searcher.best().expect("some reward observed");
    Trace {
        rewards,
        best_value: objective.value(&best),
    }
}

pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        0.5 * (xs[n / 2 - 1] + xs[n / 2])
    }
}
