//! Warm starts: a new study seeded with what an earlier study on the same space learned
//! starts better than a cold one, continues bit-for-bit after a save, keeps its own incumbent,
//! and is refused clearly where it would mean nothing.

use std::collections::BTreeMap;

use protocol::{Dimension, Scale};
use search::{SearchError, SearchSpace, Searcher, WarmStart, build, restore};

use crate::common::{Objective, median, run_study};

const K: usize = 8;

fn space() -> SearchSpace {
    SearchSpace::new(
        (0..K)
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

fn fresh(kind: &str, seed: u64) -> Box<dyn Searcher> {
    build(kind, &space(), &BTreeMap::new(), seed).unwrap()
}

/// An earlier study of `jobs` jobs with `kind` on the objective of `seed`, recorded as the
/// controller records it: every reward with its strategy, and the searcher's saved state.
fn earlier(kind: &str, seed: u64, jobs: usize) -> WarmStart {
    let mut s = fresh(kind, 500 + seed);
    let mut objective = Objective::random(K, 0.01, 1000 + seed);
    let mut observations = vec![];
    let mut out: Vec<_> = (0..4).map(|_| s.propose()).collect();
    while observations.len() < jobs {
        let p = out.remove(0);
        let r = objective.sample(&p.unit);
        s.observe(&p, r).unwrap();
        observations.push((p.unit.clone(), r));
        out.push(s.propose());
    }
    WarmStart {
        observations,
        state: Some(search::SearcherState::decode(&s.save()).unwrap()),
    }
}

/// Median over seeds of the noise-free value of the incumbent after a short study (20 jobs,
/// 4 in flight), cold and warm-started from a 60-job study on the same objective: of the same
/// kind for `ppo-rnn` (it takes the policy), of `tpe` for the others (they take the
/// observations, whoever made them).
fn cold_and_warm(kind: &str) -> (f64, f64) {
    let source = if kind == "ppo-rnn" { kind } else { "tpe" };
    let (mut cold, mut warm) = (vec![], vec![]);
    for seed in 0..10 {
        let mut objective = Objective::random(K, 0.01, 1000 + seed);
        let mut c = fresh(kind, seed);
        cold.push(run_study(c.as_mut(), &mut objective, 20, 4, 7 + seed).best_value);
        let mut objective = Objective::random(K, 0.01, 1000 + seed);
        let mut w = fresh(kind, seed);
        w.warm_start(&earlier(source, seed, 60)).unwrap();
        warm.push(run_study(w.as_mut(), &mut objective, 20, 4, 7 + seed).best_value);
    }
    (median(cold), median(warm))
}

#[test]
fn a_warm_start_beats_a_cold_start_of_the_same_budget() {
    for kind in [
        "tpe",
        "cmaes",
        "hill-discrete",
        "hill-continuous",
        "ppo-rnn",
    ] {
        let (cold, warm) = cold_and_warm(kind);
        eprintln!("{kind}: cold {cold:.4} warm {warm:.4}");
        assert!(
            warm > cold,
            "{kind}: warm-started median best {warm:.4} is not above the cold {cold:.4}"
        );
    }
}

#[test]
fn random_search_draws_the_same_points_warm_or_cold() {
    let mut cold = fresh("random", 3);
    let mut warm = fresh("random", 3);
    warm.warm_start(&earlier("random", 3, 20)).unwrap();
    for _ in 0..10 {
        assert_eq!(cold.propose().unit, warm.propose().unit);
    }
}

#[test]
fn warm_start_observations_are_not_this_studys_rewards() {
    for kind in ["tpe", "cmaes", "hill-discrete", "hill-continuous", "random"] {
        let mut s = fresh(kind, 1);
        s.warm_start(&earlier(kind, 1, 30)).unwrap();
        assert_eq!(s.best(), None, "{kind}");
        assert_eq!(s.outstanding(), 0, "{kind}");
        let p = s.propose();
        s.observe(&p, 0.25).unwrap();
        assert_eq!(s.best().unwrap().1, 0.25, "{kind}");
    }
}

#[test]
fn a_warm_started_searcher_continues_bit_for_bit_after_a_restore() {
    for kind in [
        "tpe",
        "cmaes",
        "hill-discrete",
        "hill-continuous",
        "ppo-rnn",
    ] {
        let mut a = fresh(kind, 2);
        a.warm_start(&earlier(kind, 2, 40)).unwrap();
        let first = a.propose();
        let mut b = restore(kind, &a.save()).unwrap();
        for (i, r) in [0.5, 0.7, 0.6].into_iter().enumerate() {
            let (pa, pb) = if i == 0 {
                (first.clone(), first.clone())
            } else {
                (a.propose(), b.propose())
            };
            assert_eq!(pa, pb, "{kind}");
            a.observe(&pa, r).unwrap();
            b.observe(&pb, r).unwrap();
        }
        assert_eq!(a.save(), b.save(), "{kind}");
    }
}

#[test]
fn ppo_rnn_starts_from_the_earlier_policy() {
    let from = earlier("ppo-rnn", 4, 40);
    let Some(search::SearcherState::PpoRnn(source)) = &from.state else {
        unreachable!()
    };
    let mut s = search::PpoRnn::new(K, &BTreeMap::new(), 99).unwrap();
    assert_ne!(s.policy_mean(), source.policy_mean());
    s.warm_start(&from).unwrap();
    // Same weights and the same starting input and hidden state: the same mean strategy.
    let mut cold_source = search::PpoRnn::new(K, &BTreeMap::new(), 99).unwrap();
    cold_source.warm_start(&from).unwrap();
    assert_eq!(s.policy_mean(), cold_source.policy_mean());
    assert_ne!(
        s.policy_mean(),
        search::PpoRnn::new(K, &BTreeMap::new(), 99)
            .unwrap()
            .policy_mean()
    );
}

fn refusal(kind: &str, from: &WarmStart) -> String {
    let mut s = fresh(kind, 0);
    match s.warm_start(from) {
        Err(e @ SearchError::WarmStart { .. }) => e.to_string(),
        other => panic!("{kind}: expected a warm-start refusal, got {other:?}"),
    }
}

#[test]
fn meaningless_warm_starts_are_refused_with_the_reason() {
    let e = refusal("fixed", &earlier("random", 0, 5));
    assert!(e.contains("`fixed`") && e.contains("learns nothing"), "{e}");

    let e = refusal("ppo-rnn", &earlier("tpe", 0, 5));
    assert!(e.contains("used `tpe`"), "{e}");

    let e = refusal(
        "ppo-rnn",
        &WarmStart {
            observations: vec![],
            state: None,
        },
    );
    assert!(e.contains("policy is missing"), "{e}");

    let short = WarmStart {
        observations: vec![(vec![0.5; K - 1], 0.5)],
        state: None,
    };
    for kind in ["tpe", "cmaes", "hill-discrete", "hill-continuous", "random"] {
        let e = refusal(kind, &short);
        assert!(e.contains("observation 0 has 7 values"), "{kind}: {e}");
    }
    let nan = WarmStart {
        observations: vec![(vec![0.5; K], f64::NAN)],
        state: None,
    };
    assert!(refusal("tpe", &nan).contains("not finite"));

    // Only before the first proposal.
    let mut s = fresh("tpe", 0);
    s.propose();
    let e = s.warm_start(&earlier("tpe", 0, 5)).unwrap_err().to_string();
    assert!(e.contains("already proposed"), "{e}");
}
