//! The paper's controller learns: on a noisy 8-dimensional objective with 4 jobs in flight
//! and out-of-order rewards (Algorithm 1), `ppo-rnn` with its defaults raises its mean reward
//! over a 200-job study and ends with a better incumbent than random search.

use std::collections::BTreeMap;

use protocol::{Dimension, Scale};
use search::{SearchSpace, build};

use crate::common::{Objective, Trace, median, run_study};

const SEEDS: u64 = 10;
const BUDGET: usize = 200;
const PARALLEL: usize = 4;
const NOISE: f64 = 0.01;

fn space() -> SearchSpace {
    SearchSpace::new(
        (0..8)
            .map(|i| Dimension {
                name: format!("p{i}"),
                min: 0.0,
                max: 1.0,
                scale: Scale::Linear,
            })
            .collect(),
    )
    .unwrap()
}

/// (best values, mean(last 50) − mean(first 50)) per seed.
fn study(kind: &str) -> (Vec<f64>, Vec<f64>) {
    let mut bests = vec![];
    let mut gains = vec![];
    for seed in 0..SEEDS {
        let mut s = build(kind, &space(), &BTreeMap::new(), seed).unwrap();
        let mut objective = Objective::random(8, NOISE, 1000 + seed);
        let t = run_study(s.as_mut(), &mut objective, BUDGET, PARALLEL, 77 + seed);
        bests.push(t.best_value);
        gains.push(Trace::mean(&t.rewards[BUDGET - 50..]) - Trace::mean(&t.rewards[..50]));
    }
    (bests, gains)
}

#[test]
fn ppo_rnn_learns_and_beats_random_search() {
    let (ppo_best, ppo_gain) = study("ppo-rnn");
    let (random_best, _) = study("random");
    let (ppo_median, random_median) = (median(ppo_best.clone()), median(random_best.clone()));
    println!("ppo-rnn gains (last 50 − first 50): {ppo_gain:.4?}");
    println!("ppo-rnn best: {ppo_best:.4?}, median {ppo_median:.4}");
    println!("random  best: {random_best:.4?}, median {random_median:.4}");
    for (seed, g) in ppo_gain.iter().enumerate() {
        assert!(
            *g > 0.01,
            "seed {seed}: ppo-rnn did not improve its mean reward ({g:.4})"
        );
    }
    assert!(
        ppo_median > random_median + 0.01,
        "ppo-rnn median best {ppo_median:.4} vs random {random_median:.4}"
    );
}

#[test]
fn tpe_and_cmaes_beat_random_search() {
    let (random_best, _) = study("random");
    let random_median = median(random_best);
    for kind in ["tpe", "cmaes"] {
        let (best, gain) = study(kind);
        let m = median(best.clone());
        println!("{kind} best: {best:.4?}, median {m:.4} (random {random_median:.4})");
        println!("{kind} gains (last 50 − first 50): {gain:.4?}");
        assert!(
            m > random_median + 0.01,
            "{kind} median best {m:.4} vs random {random_median:.4}"
        );
        assert!(gain.iter().all(|g| *g > 0.0), "{kind}: {gain:.4?}");
    }
}
