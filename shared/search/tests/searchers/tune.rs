//! How the `ppo-rnn` defaults were chosen: not a test, a sweep (ignored by default).
//!
//! ```text
//! cargo test -p search --release --test searchers -- --ignored --nocapture sweep
//! ```
//! Env: `NAME` (a ppo-rnn setting, default `lr`), `VALUES` (comma-separated), `EXTRA`
//! (`k=v,k=v` settings for every run), `BUDGET` (200), `PARALLEL` (4), `NOISE` (0.01).
//! Prints, over 10 seeds, the median noise-free value of the final incumbent, the median of
//! mean(last 50 rewards) − mean(first 50), the worst incumbent, and how many seeds improved.

use std::collections::BTreeMap;

use search::{SearchSpace, build};

use crate::common::{Objective, Trace, median, run_study};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn space(k: usize) -> SearchSpace {
    SearchSpace::new(
        (0..k)
            .map(|i| protocol::Dimension {
                name: format!("d{i}"),
                min: 0.0,
                max: 1.0,
                scale: protocol::Scale::Linear,
            })
            .collect(),
    )
    .unwrap()
}

fn evaluate(kind: &str, settings: &BTreeMap<String, f64>) -> String {
    let (budget, parallel, noise) = (env("BUDGET", 200), env("PARALLEL", 4), env("NOISE", 0.01));
    let mut bests = vec![];
    let mut gains = vec![];
    for seed in 0..10u64 {
        let mut s = build(kind, &space(8), settings, seed).unwrap();
        let mut objective = Objective::random(8, noise, 1000 + seed);
        let t = run_study(s.as_mut(), &mut objective, budget, parallel, 77 + seed);
        bests.push(t.best_value);
        gains.push(Trace::mean(&t.rewards[budget - 50..]) - Trace::mean(&t.rewards[..50]));
    }
    let worst = bests.iter().copied().fold(f64::INFINITY, f64::min);
    let improved = gains.iter().filter(|g| **g > 0.0).count();
    format!(
        "median best {:.4}, median gain {:.4}, worst best {worst:.4}, improved {improved}/10",
        median(bests),
        median(gains)
    )
}

#[test]
#[ignore = "a tuning sweep that prints a table"]
fn sweep() {
    println!("random: {}", evaluate("random", &BTreeMap::new()));
    let name: String = env("NAME", "lr".to_owned());
    let values: String = env("VALUES", "0.1,0.01,0.003,0.001".to_owned());
    let extra: String = env("EXTRA", String::new());
    let mut settings: BTreeMap<String, f64> = extra
        .split(',')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("EXTRA is k=v,k=v");
            (k.to_owned(), v.parse().expect("a number"))
        })
        .collect();
    for v in values.split(',') {
        settings.insert(name.clone(), v.parse().expect("VALUES are numbers"));
        println!("ppo-rnn {settings:?}: {}", evaluate("ppo-rnn", &settings));
    }
}
