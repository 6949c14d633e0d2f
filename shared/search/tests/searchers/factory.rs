use std::collections::BTreeMap;

use search::{KINDS, Memo, SearchError, SearchSpace, build, restore, settings_of};

fn settings(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

#[test]
fn every_kind_builds_and_proposes_in_the_unit_cube() {
    let space = SearchSpace::default_augmentation();
    for kind in KINDS {
        let mut s = build(kind, &space, &BTreeMap::new(), 1).unwrap();
        assert_eq!((s.kind(), s.dims()), (kind, 9));
        for i in 0..20 {
            let p = s.propose();
            assert_eq!(p.ticket, i);
            assert_eq!(p.unit.len(), 9);
            assert!(
                p.unit.iter().all(|u| (0.0..=1.0).contains(u)),
                "{kind}: {p:?}"
            );
            space.strategy(&p.unit).unwrap();
        }
        assert_eq!(s.outstanding(), 20);
        assert!(s.best().is_none());
        let defaults = settings_of(kind).unwrap();
        assert!(defaults.iter().all(|d| !d.doc.is_empty()));
    }
}

#[test]
fn unknown_kind_lists_the_valid_ones() {
    let space = SearchSpace::default_augmentation();
    let err = build("ppo", &space, &BTreeMap::new(), 0).unwrap_err();
    let text = err.to_string();
    for kind in KINDS {
        assert!(text.contains(kind), "{text}");
    }
    assert!(matches!(
        settings_of("nope"),
        Err(SearchError::UnknownSearcher { .. })
    ));
    assert!(matches!(
        restore("nope", &[]),
        Err(SearchError::UnknownSearcher { .. })
    ));
}

#[test]
fn unknown_setting_lists_the_valid_ones() {
    let space = SearchSpace::default_augmentation();
    let err = build("ppo-rnn", &space, &settings(&[("learning_rate", 0.1)]), 0).unwrap_err();
    let text = err.to_string();
    for name in [
        "hidden",
        "kappa",
        "lr",
        "clip",
        "epochs",
        "baseline_decay",
        "buffer",
    ] {
        assert!(text.contains(name), "{text}");
    }
    let err = build("random", &space, &settings(&[("x", 1.0)]), 0).unwrap_err();
    assert!(err.to_string().contains("(none)"), "{err}");
    let err = build("hill-discrete", &space, &settings(&[("step", 1.0)]), 0).unwrap_err();
    assert!(err.to_string().contains("bins"), "{err}");
}

#[test]
fn invalid_setting_values() {
    let space = SearchSpace::default_augmentation();
    for (kind, name, value) in [
        ("ppo-rnn", "hidden", 0.0),
        ("ppo-rnn", "epochs", 2.5),
        ("ppo-rnn", "clip", 1.5),
        ("ppo-rnn", "kappa", -1.0),
        ("ppo-rnn", "lr", f64::NAN),
        ("ppo-rnn", "baseline_decay", 1.0),
        ("ppo-rnn", "mu_min", 0.5),
        ("hill-discrete", "bins", 0.0),
        ("hill-continuous", "grow", 1.0),
        ("hill-continuous", "step", 0.0),
        ("tpe", "multivariate", 0.5),
        ("tpe", "constant_liar", 2.0),
        ("tpe", "gamma", 1.0),
        ("tpe", "candidates", 0.0),
        ("cmaes", "popsize", 2.5),
        ("cmaes", "popsize", 1.0),
        ("cmaes", "restarts", -1.0),
        ("cmaes", "inc_popsize", 1.0),
    ] {
        let err = build(kind, &space, &settings(&[(name, value)]), 0).unwrap_err();
        assert!(
            matches!(&err, SearchError::InvalidSetting { name: n, .. } if *n == name),
            "{kind} {name}={value}: {err}"
        );
    }
    // Valid overrides are taken.
    let mut s = build("hill-discrete", &space, &settings(&[("bins", 10.0)]), 0).unwrap();
    s.propose();
    let p = s.propose();
    assert!(matches!(p.memo, Memo::Step { step, .. } if step == 0.1));
}

#[test]
fn fixed_is_the_routine() {
    let space = SearchSpace::default_augmentation();
    let mut s = build("fixed", &space, &BTreeMap::new(), 3).unwrap();
    for _ in 0..3 {
        assert_eq!(s.propose().unit, space.routine_unit());
    }
    assert!(s.converged());
}

#[test]
fn same_seed_same_proposals_other_seed_others() {
    let space = SearchSpace::default_augmentation();
    for kind in ["ppo-rnn", "random"] {
        let run = |seed| {
            let mut s = build(kind, &space, &BTreeMap::new(), seed).unwrap();
            (0..5).map(|_| s.propose().unit).collect::<Vec<_>>()
        };
        assert_eq!(run(4), run(4));
        assert_ne!(run(4), run(5));
    }
}
