//! What `tpe` and `cmaes` do beyond the shared contract: TPE's startup phase and constant
//! liar, CMA-ES's generations with jobs in flight, convergence and restarts.

use std::collections::BTreeMap;

use protocol::{Dimension, Scale};
use search::{CmaEs, Memo, Proposal, Rng, SearchSpace, Searcher, build};

use crate::common::{Objective, median, run_study};

fn space(k: usize) -> SearchSpace {
    SearchSpace::new(
        (0..k)
            .map(|i| Dimension {
                name: format!("x{i}"),
                min: 0.0,
                max: 1.0,
                scale: Scale::Linear,
            })
            .collect(),
    )
    .unwrap()
}

fn settings(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

#[test]
fn tpe_ignores_rewards_until_startup_is_reached() {
    // Two copies told different rewards propose the same points until the 10th reward is
    // in (uniform startup), and different ones after.
    let mut a = build("tpe", &space(4), &BTreeMap::new(), 3).unwrap();
    let mut b = build("tpe", &space(4), &BTreeMap::new(), 3).unwrap();
    for i in 0..10 {
        let (pa, pb) = (a.propose(), b.propose());
        assert_eq!(pa, pb, "proposal {i} before the startup rewards are in");
        a.observe(&pa, pa.unit[0]).unwrap();
        b.observe(&pb, -pb.unit[0]).unwrap();
    }
    let (pa, pb) = (a.propose(), b.propose());
    assert_ne!(pa.unit, pb.unit);
    // a rewards a large first coordinate, b a small one.
    assert!(pa.unit[0] > pb.unit[0], "{pa:?} {pb:?}");
}

/// Mean distance of each of `n` proposals issued in a row (after `warm` rewards of the
/// quadratic) to its nearest sibling.
fn spacing(k: usize, constant_liar: f64, seed: u64, warm: usize, n: usize) -> f64 {
    let liar = settings(&[("constant_liar", constant_liar)]);
    let mut s = build("tpe", &space(k), &liar, seed).unwrap();
    let mut objective = Objective::random(k, 0.0, seed);
    for _ in 0..warm {
        let p = s.propose();
        s.observe(&p, objective.sample(&p.unit)).unwrap();
    }
    let ps: Vec<Proposal> = (0..n).map(|_| s.propose()).collect();
    let distance = |a: &Proposal, b: &Proposal| {
        let d2: f64 = a
            .unit
            .iter()
            .zip(&b.unit)
            .map(|(x, y)| (x - y) * (x - y))
            .sum();
        d2.sqrt()
    };
    let nearest = |i: usize| {
        (0..n)
            .filter(|&j| j != i)
            .map(|j| distance(&ps[i], &ps[j]))
            .fold(f64::INFINITY, f64::min)
    };
    (0..n).map(nearest).sum::<f64>() / n as f64
}

#[test]
fn the_constant_liar_spreads_jobs_in_flight() {
    // Without the liar, 8 proposals in a row all sample near the few best points; with it,
    // each one out pushes the next away (K = 2 and 12 rewards in: 0.21 against 0.04).
    let on: Vec<f64> = (0..10).map(|seed| spacing(2, 1.0, seed, 12, 8)).collect();
    let off: Vec<f64> = (0..10).map(|seed| spacing(2, 0.0, seed, 12, 8)).collect();
    let (on, off) = (median(on), median(off));
    println!("nearest-sibling distance of 8 proposals in a row: liar {on:.3}, none {off:.3}");
    assert!(on > 2.0 * off, "liar {on:.3} vs no liar {off:.3}");
}

#[test]
fn independent_tpe_learns_too() {
    let mut bests = vec![];
    let mut randoms = vec![];
    for seed in 0..6 {
        for (kind, extra, out) in [
            ("tpe", settings(&[("multivariate", 0.0)]), &mut bests),
            ("random", BTreeMap::new(), &mut randoms),
        ] {
            let mut s = build(kind, &space(8), &extra, seed).unwrap();
            let mut objective = Objective::random(8, 0.01, 1000 + seed);
            out.push(run_study(s.as_mut(), &mut objective, 200, 4, 77 + seed).best_value);
        }
    }
    let (tpe, random) = (median(bests), median(randoms));
    assert!(
        tpe > random + 0.01,
        "independent tpe {tpe:.4} vs random {random:.4}"
    );
}

fn generation(p: &Proposal) -> u64 {
    match p.memo {
        Memo::Cma { generation } => generation,
        ref m => panic!("cmaes memo {m:?}"),
    }
}

#[test]
fn cmaes_moves_to_the_next_generation_after_lambda_rewards() {
    // K = 8: λ = 4 + ⌊3 ln 8⌋ = 10.
    let mut s = CmaEs::new(8, &BTreeMap::new(), 5).unwrap();
    assert_eq!(s.popsize(), 10);
    let first: Vec<Proposal> = (0..13).map(|_| s.propose()).collect();
    assert!(first.iter().all(|p| generation(p) == 0));
    for (i, p) in first[..9].iter().enumerate() {
        s.observe(p, 0.5 + 0.01 * i as f64).unwrap();
    }
    assert_eq!((s.generation(), s.mean().0), (0, &[0.5; 8][..]));
    s.observe(&first[9], 0.1).unwrap();
    // The 10th reward of generation 0 updated the distribution.
    assert_eq!(s.generation(), 1);
    assert_ne!(s.mean().0, &[0.5; 8][..]);
    let next = s.propose();
    assert_eq!(generation(&next), 1);
    // Late rewards of generation 0 are taken (the incumbent moves), the distribution is not.
    let before = s.mean().0.to_vec();
    s.observe(&first[10], 0.99).unwrap();
    s.abandon(&first[11]).unwrap();
    assert_eq!(s.best().unwrap(), (first[10].unit.clone(), 0.99));
    assert_eq!((s.generation(), s.mean().0), (1, &before[..]));
    // A generation the searcher has not reached yet cannot be from it.
    let forged = Proposal {
        memo: Memo::Cma { generation: 7 },
        ..first[12].clone()
    };
    assert!(s.observe(&forged, 0.5).is_err());
    s.observe(&first[12], 0.5).unwrap();
    s.observe(&next, 0.5).unwrap();
    assert_eq!(s.outstanding(), 0);
}

#[test]
fn cmaes_converges_on_a_noise_free_quadratic() {
    for (parallel, seed) in [(1, 1), (4, 2)] {
        let mut s = build("cmaes", &space(8), &BTreeMap::new(), seed).unwrap();
        let mut objective = Objective::random(8, 0.0, seed);
        let t = run_study(s.as_mut(), &mut objective, 3000, parallel, seed);
        println!(
            "cmaes, parallel {parallel}: 1 − best = {:.2e}",
            1.0 - t.best_value
        );
        assert!(
            t.best_value > 1.0 - 1e-9,
            "parallel {parallel}: {}",
            t.best_value
        );
        for u in s.best().unwrap().0 {
            assert!((0.0..=1.0).contains(&u));
        }
    }
}

#[test]
fn cmaes_restarts_only_when_asked_to() {
    // A flat objective: the flat-rewards criterion holds after 10 + ⌈30 K / λ⌉ generations.
    for (restarts, want) in [(0.0, 0), (2.0, 2)] {
        let mut s = CmaEs::new(3, &settings(&[("restarts", restarts)]), 9).unwrap();
        let lambda = s.popsize();
        let mut order = Rng::seed_from_u64(1);
        let mut out: Vec<Proposal> = (0..3).map(|_| s.propose()).collect();
        for _ in 0..2000 {
            let p = out.swap_remove(order.below(out.len()));
            s.observe(&p, 0.7).unwrap();
            out.push(s.propose());
        }
        assert_eq!(s.restarts_done(), want, "restarts = {restarts}");
        let expected = if want == 0 { lambda } else { lambda * 4 };
        assert_eq!(s.popsize(), expected, "restarts = {restarts}");
        // The restarted run saves and restores like any other.
        let mut copy = search::restore("cmaes", &s.save()).unwrap();
        for p in &out {
            s.observe(p, 0.7).unwrap();
            copy.observe(p, 0.7).unwrap();
        }
        for _ in 0..50 {
            let (a, b) = (s.propose(), copy.propose());
            assert_eq!(a, b);
            s.observe(&a, a.unit[0]).unwrap();
            copy.observe(&b, b.unit[0]).unwrap();
        }
        assert_eq!(s.save(), copy.save());
    }
}
