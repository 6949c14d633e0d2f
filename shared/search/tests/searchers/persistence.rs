//! Saved state: a restored searcher continues bit-for-bit.

use std::collections::BTreeMap;

use search::{KINDS, Proposal, Rng, SearchError, SearchSpace, Searcher, build, restore};

use crate::common::Objective;

/// Drives a searcher with 4 jobs out, rewards in a seeded random order.
#[derive(Clone)]
struct Driver {
    out: Vec<Proposal>,
    order: Rng,
    log: Vec<(Proposal, f64)>,
}

/// A noisy reward that depends only on the proposal.
fn reward(p: &Proposal) -> f64 {
    let objective = Objective::random(9, 0.0, 3);
    objective.value(&p.unit) + 0.01 * Rng::seed_from_u64(p.ticket).normal()
}

impl Driver {
    fn new(searcher: &mut dyn Searcher) -> Self {
        Self {
            out: (0..4).map(|_| searcher.propose()).collect(),
            order: Rng::seed_from_u64(3),
            log: vec![],
        }
    }

    fn step(&mut self, searcher: &mut dyn Searcher) {
        let p = self.out.swap_remove(self.order.below(self.out.len()));
        let r = reward(&p);
        searcher.observe(&p, r).unwrap();
        let next = searcher.propose();
        self.log.push((next.clone(), r));
        self.out.push(next);
    }
}

#[test]
fn restored_searchers_continue_bit_for_bit() {
    for kind in KINDS {
        restores_bit_for_bit(kind, &BTreeMap::new());
    }
    // The variants that take other paths: independent TPE without the liar, CMA-ES with
    // another population (restarts themselves: `models::cmaes_restarts_only_when_asked_to`).
    let settings = |pairs: &[(&str, f64)]| -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    };
    restores_bit_for_bit(
        "tpe",
        &settings(&[("multivariate", 0.0), ("constant_liar", 0.0)]),
    );
    restores_bit_for_bit("cmaes", &settings(&[("popsize", 4.0), ("restarts", 3.0)]));
}

/// Runs `kind` for 30 rewards, restores a copy from its save and checks that both go on
/// identically for 40 more.
fn restores_bit_for_bit(kind: &str, settings: &BTreeMap<String, f64>) {
    let space = SearchSpace::default_augmentation();
    {
        let mut original = build(kind, &space, settings, 42).unwrap();
        let mut driver = Driver::new(original.as_mut());
        for _ in 0..30 {
            driver.step(original.as_mut());
        }
        let saved = original.save();
        let mut restored = restore(kind, &saved).unwrap();
        assert_eq!(restored.save(), saved, "{kind}: save ∘ restore ∘ save");
        assert_eq!(restored.state(), original.state(), "{kind}");
        // The proposals still out are plain data the two copies share (as a restarted
        // controller finds its jobs still running); rewards depend only on the proposal.
        driver.log.clear();
        let mut copy = driver.clone();
        for _ in 0..40 {
            driver.step(original.as_mut());
            copy.step(restored.as_mut());
        }
        assert_eq!(
            driver.log, copy.log,
            "{kind}: proposals or rewards diverged"
        );
        assert_eq!(original.save(), restored.save(), "{kind}: states diverged");
        assert_eq!(original.best(), restored.best());
    }
}

#[test]
fn restore_checks_the_kind_and_the_bytes() {
    let space = SearchSpace::default_augmentation();
    let s = build("hill-discrete", &space, &BTreeMap::new(), 1).unwrap();
    let err = restore("ppo-rnn", &s.save()).unwrap_err();
    assert_eq!(
        err,
        SearchError::KindMismatch {
            expected: "ppo-rnn".into(),
            found: "hill-discrete"
        }
    );
    assert!(matches!(
        restore("random", b"not msgpack"),
        Err(SearchError::Decode { len: 11, .. })
    ));
}
