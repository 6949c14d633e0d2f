//! The paper's baselines reach the optimum of a unimodal function, also with parallel,
//! out-of-order rewards.

use std::collections::BTreeMap;

use protocol::{Dimension, Scale};
use search::{Memo, Proposal, Rng, SearchSpace, Searcher, build};

use crate::common::Objective;

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

/// Runs with `parallel` jobs out until the searcher reports convergence or `budget` rewards
/// are in; returns how many rewards it took.
fn climb(
    s: &mut dyn Searcher,
    objective: &mut Objective,
    parallel: usize,
    budget: usize,
    seed: u64,
) -> usize {
    let out = (0..parallel).map(|_| s.propose()).collect();
    climb_from(s, objective, out, budget, seed)
}

/// [`climb`] with the first proposals already out.
fn climb_from(
    s: &mut dyn Searcher,
    objective: &mut Objective,
    mut out: Vec<Proposal>,
    budget: usize,
    seed: u64,
) -> usize {
    let mut order = Rng::seed_from_u64(seed);
    for n in 1..=budget {
        let p = out.swap_remove(order.below(out.len()));
        let r = objective.sample(&p.unit);
        s.observe(&p, r).unwrap();
        if s.converged() {
            return n;
        }
        out.push(s.propose());
    }
    budget
}

const OPTIMUM: [f64; 8] = [0.30, 0.70, 0.45, 0.62, 0.50, 0.35, 0.58, 0.41];

#[test]
fn discrete_reaches_the_grid_optimum_and_stops() {
    for (parallel, seed) in [(1, 1), (4, 2), (8, 3)] {
        let mut s = build("hill-discrete", &space(8), &BTreeMap::new(), seed).unwrap();
        let mut objective = Objective::new(OPTIMUM.to_vec(), 0.0, seed);
        let used = climb(s.as_mut(), &mut objective, parallel, 3000, seed);
        assert!(
            s.converged(),
            "parallel {parallel}: not converged after {used}"
        );
        let (best, reward) = s.best().unwrap();
        let grid: Vec<i64> = best.iter().map(|u| (u * 100.0).round() as i64).collect();
        let want: Vec<i64> = OPTIMUM.iter().map(|u| (u * 100.0).round() as i64).collect();
        assert_eq!(grid, want, "parallel {parallel}");
        assert!((reward - 1.0).abs() < 1e-12);
        // Converged: it proposes the incumbent again.
        let p = s.propose();
        assert_eq!((p.memo, p.unit), (Memo::Repeat, best));
        println!("hill-discrete, parallel {parallel}: converged after {used} rewards");
    }
}

#[test]
fn continuous_reaches_the_optimum_and_stops() {
    for (parallel, seed) in [(1, 1), (4, 2)] {
        let mut s = build("hill-continuous", &space(8), &BTreeMap::new(), seed).unwrap();
        let mut objective = Objective::new(OPTIMUM.to_vec(), 0.0, seed);
        let used = climb(s.as_mut(), &mut objective, parallel, 5000, seed);
        assert!(
            s.converged(),
            "parallel {parallel}: not converged after {used}"
        );
        let (best, _) = s.best().unwrap();
        for (b, o) in best.iter().zip(OPTIMUM) {
            assert!((b - o).abs() < 0.01, "parallel {parallel}: {best:?}");
        }
        assert_eq!(s.propose().memo, Memo::Repeat);
        println!("hill-continuous, parallel {parallel}: converged after {used} rewards");
    }
}

#[test]
fn climbers_stay_in_the_cube_at_a_corner_optimum() {
    for kind in ["hill-discrete", "hill-continuous"] {
        let mut s = build(kind, &space(2), &BTreeMap::new(), 5).unwrap();
        let mut objective = Objective::new(vec![1.0, 0.0], 0.0, 5);
        let mut order = Rng::seed_from_u64(5);
        let mut out: Vec<Proposal> = (0..3).map(|_| s.propose()).collect();
        for _ in 0..2000 {
            let p = out.swap_remove(order.below(out.len()));
            assert!(
                p.unit.iter().all(|u| (0.0..=1.0).contains(u)),
                "{kind}: {p:?}"
            );
            s.observe(&p, objective.sample(&p.unit)).unwrap();
            out.push(s.propose());
        }
        let (best, _) = s.best().unwrap();
        assert!(
            (best[0] - 1.0).abs() < 1e-9 && best[1].abs() < 1e-9,
            "{kind}: {best:?}"
        );
    }
}

#[test]
fn more_jobs_than_moves_repeat_the_incumbent() {
    // K = 1: two neighbours, so of 5 parallel jobs at least 2 are repeats.
    let mut s = build("hill-discrete", &space(1), &BTreeMap::new(), 0).unwrap();
    let ps: Vec<Proposal> = (0..5).map(|_| s.propose()).collect();
    let memos: Vec<&Memo> = ps.iter().map(|p| &p.memo).collect();
    assert_eq!(memos[0], &Memo::Start);
    assert!(matches!(memos[1], Memo::Step { .. }) && matches!(memos[2], Memo::Step { .. }));
    assert!(memos[3..].iter().all(|m| **m == Memo::Repeat));
    assert!(!s.converged());
    let mut objective = Objective::new(vec![0.8], 0.0, 0);
    let used = climb_from(s.as_mut(), &mut objective, ps, 1000, 0);
    assert!(s.converged(), "after {used}");
    assert!((s.best().unwrap().0[0] - 0.8).abs() < 1e-9);
}

#[test]
fn an_abandoned_move_is_tried_again() {
    for kind in ["hill-discrete", "hill-continuous"] {
        let mut s = build(kind, &space(3), &BTreeMap::new(), 8).unwrap();
        let start = s.propose();
        let step = s.propose();
        assert_eq!(start.memo, Memo::Start);
        s.abandon(&step).unwrap();
        let again = s.propose();
        assert_eq!(
            (&again.memo, &again.unit),
            (&step.memo, &step.unit),
            "{kind}"
        );
        // An abandoned start is re-proposed as the start.
        s.abandon(&start).unwrap();
        assert_eq!(s.propose().memo, Memo::Start, "{kind}");
    }
}
