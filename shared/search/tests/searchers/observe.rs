//! The ask/tell contract: out-of-order rewards, what `observe` refuses, proposals as data.

use std::collections::BTreeMap;

use search::{KINDS, Memo, Proposal, SearchError, SearchSpace, build};

fn space() -> SearchSpace {
    SearchSpace::default_augmentation()
}

#[test]
fn rewards_in_any_order_and_once_only() {
    for kind in KINDS {
        let mut s = build(kind, &space(), &BTreeMap::new(), 9).unwrap();
        let ps: Vec<Proposal> = (0..6).map(|_| s.propose()).collect();
        for &i in &[4, 0, 5, 2] {
            s.observe(&ps[i], 0.1 * i as f64).unwrap();
        }
        assert_eq!(s.outstanding(), 2, "{kind}");
        let (unit, reward) = s.best().unwrap();
        assert_eq!((unit, reward), (ps[5].unit.clone(), 0.5), "{kind}");
        // A second reward for the same proposal is refused and changes nothing.
        let before = s.save();
        let err = s.observe(&ps[4], 0.9).unwrap_err();
        assert_eq!(
            err,
            SearchError::UnknownTicket {
                searcher: kind,
                ticket: 4
            }
        );
        assert_eq!(s.save(), before, "{kind}");
        // Abandoned proposals are settled without a reward.
        s.abandon(&ps[1]).unwrap();
        assert_eq!(s.outstanding(), 1);
        assert!(s.observe(&ps[1], 1.0).is_err());
        s.observe(&ps[3], 0.0).unwrap();
        assert_eq!(s.outstanding(), 0);
    }
}

#[test]
fn refuses_bad_rewards_and_foreign_proposals() {
    for kind in KINDS {
        let mut s = build(kind, &space(), &BTreeMap::new(), 2).unwrap();
        let p = s.propose();
        let before = s.save();
        let err = s.observe(&p, f64::NAN).unwrap_err();
        assert!(
            matches!(err, SearchError::NonFiniteReward { ticket: 0, .. }),
            "{kind}: {err}"
        );
        let mut short = p.clone();
        short.unit.pop();
        let err = s.observe(&short, 0.5).unwrap_err();
        assert!(
            matches!(err, SearchError::DimensionMismatch { .. }),
            "{kind}: {err}"
        );
        let mut never = p.clone();
        never.ticket = 77;
        let err = s.observe(&never, 0.5).unwrap_err();
        assert!(
            matches!(err, SearchError::UnknownTicket { ticket: 77, .. }),
            "{kind}: {err}"
        );
        // A memo the searcher cannot have written.
        let foreign = match &p.memo {
            Memo::Plain => Memo::Repeat,
            _ => Memo::Plain,
        };
        let err = s
            .observe(
                &Proposal {
                    memo: foreign,
                    ..p.clone()
                },
                0.5,
            )
            .unwrap_err();
        assert!(
            matches!(err, SearchError::ForeignProposal { .. }),
            "{kind}: {err}"
        );
        assert_eq!(
            s.save(),
            before,
            "{kind}: a refused observe changed the state"
        );
        s.observe(&p, 0.5).unwrap();
    }
}

#[test]
fn a_policy_memo_with_the_wrong_shape_is_foreign() {
    let mut s = build("ppo-rnn", &space(), &BTreeMap::new(), 2).unwrap();
    let mut p = s.propose();
    let Memo::Policy { hidden, .. } = &mut p.memo else {
        panic!("ppo-rnn proposes with a policy memo: {:?}", p.memo)
    };
    hidden.pop();
    assert!(matches!(
        s.observe(&p, 0.5),
        Err(SearchError::ForeignProposal { .. })
    ));
}

#[test]
fn proposals_round_trip_through_messagepack() {
    for kind in KINDS {
        let mut s = build(kind, &space(), &BTreeMap::new(), 5).unwrap();
        for _ in 0..3 {
            let p = s.propose();
            let bytes = rmp_serde::to_vec_named(&p).unwrap();
            let back: Proposal = rmp_serde::from_slice(&bytes).unwrap();
            assert_eq!(back, p);
            s.observe(&back, 0.3).unwrap();
        }
    }
}
