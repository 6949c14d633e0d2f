//! Studies that go on from where another stopped: `segtune study extend` (a done study
//! resubmitted with a larger `max_jobs`) and `warm_start` (a new study seeded from an earlier
//! one's observations or policy).

use std::{cell::Cell, collections::BTreeSet, time::Duration};

use protocol::{StudyEvent, StudyEventKind, StudySpec};

use crate::common::*;

/// Events until the `n`th `Done`.
async fn events_until_done(env: &Env, study: &str, n: usize) -> Vec<StudyEvent> {
    let seen = Cell::new(0);
    events_until(&env.js, study, |e| {
        if matches!(e.event, StudyEventKind::Done { .. }) {
            seen.set(seen.get() + 1);
        }
        seen.get() >= n
    })
    .await
}

fn with_max_jobs(spec: &StudySpec, max_jobs: u32) -> StudySpec {
    StudySpec {
        max_jobs,
        ..spec.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_done_study_extends_with_its_searcher_and_ledger_and_survives_a_kill() {
    let env = Env::start().await;
    env.put_dataset(DATASET).await;
    let trainer = Trainer::spawn(&env.js, Duration::from_millis(10), |_| Action::Reward);
    let mut controller = env.spawn_controller().await;
    let first = spec("more", "tpe", 6, 2);
    env.submit(&first).await;
    final_events(&env.js, "more").await;
    let done = env.state("more").await;
    assert_eq!(done.rewards.len(), 6);

    env.submit(&with_max_jobs(&first, 14)).await;
    // Kill the controller once the extension is out and a reward of it counted; a fresh one
    // resumes the extended study from the store.
    events_until_rewards(&env.js, "more", 9).await;
    controller.kill().await;
    controller = env.spawn_controller().await;

    let events = events_until_done(&env, "more", 2).await;
    let trace: Vec<_> = events.iter().map(brief).collect();
    let k = kinds(&events);
    assert_eq!(k["started"], 1, "{trace:#?}");
    assert_eq!(k["extended"], 1, "{trace:#?}");
    assert_eq!(k["done"], 2, "{trace:#?}");
    assert_eq!(k["issued"], 14, "{trace:#?}");
    assert_eq!(k["reward"], 14, "{trace:#?}");
    let extended = events
        .iter()
        .position(|e| {
            matches!(
                e.event,
                StudyEventKind::Extended {
                    max_jobs: 14,
                    previous_max_jobs: 6
                }
            )
        })
        .expect("an extended event");
    // The new jobs come after the extension and continue the numbering.
    let issued_after: Vec<u32> = events[extended..]
        .iter()
        .filter_map(|e| match e.event {
            StudyEventKind::Issued { index, .. } => Some(index),
            _ => None,
        })
        .collect();
    assert_eq!(issued_after, (7..=14).collect::<Vec<_>>(), "{trace:#?}");
    let StudyEventKind::Done { rewards, .. } = events.last().unwrap().event else {
        unreachable!()
    };
    assert_eq!(rewards, 14);

    let state = env.state("more").await;
    assert_eq!(state.spec.max_jobs, 14);
    assert_eq!(state.rewards.len(), 14);
    // The first six rewards and their jobs are the ledger of the first run, untouched.
    assert_eq!(state.rewards[..6], done.rewards[..]);
    for r in &done.rewards {
        assert_eq!(state.jobs[&r.job_id], done.jobs[&r.job_id]);
    }
    let jobs = trainer.stop().await;
    let ids: BTreeSet<_> = jobs.iter().map(|j| j.job_id.clone()).collect();
    assert_eq!(ids.len(), jobs.len(), "a job was delivered twice");
    assert_eq!(jobs.len(), 14);
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extensions_of_a_running_study_or_to_fewer_jobs_change_nothing() {
    let env = Env::start().await;
    env.put_dataset(DATASET).await;
    // A trainer that never answers keeps the study running.
    let controller = env.spawn_controller().await;
    let first = spec("busy", "random", 4, 2);
    env.submit(&first).await;
    eventually("the study is running", || async {
        controller::read_state(&env.store, "busy")
            .await
            .unwrap()
            .is_some_and(|s| s.phase == controller::Phase::Running)
    })
    .await;
    env.submit(&with_max_jobs(&first, 8)).await;
    let trainer = Trainer::spawn(&env.js, Duration::from_millis(10), |_| Action::Reward);
    final_events(&env.js, "busy").await;
    // Done at 4: the extension sent while it ran was refused, not queued.
    env.submit(&with_max_jobs(&first, 3)).await;
    // A later, valid extension shows the refused ones were consumed and changed nothing.
    env.submit(&with_max_jobs(&first, 5)).await;
    let events = events_until_done(&env, "busy", 2).await;
    let k = kinds(&events);
    assert_eq!(k["extended"], 1);
    assert_eq!(k["reward"], 5);
    assert!(!k.contains_key("failed"));
    let state = env.state("busy").await;
    assert_eq!((state.spec.max_jobs, state.rewards.len()), (5, 5));
    trainer.stop().await;
    controller.stop().await;
}

/// The unit coordinates of each issued job of `study`, by job index.
async fn issued_units(env: &Env, study: &str) -> Vec<Vec<f64>> {
    let state = env.state(study).await;
    let mut jobs: Vec<_> = state.jobs.values().cloned().collect();
    jobs.sort_by_key(|j| j.index);
    jobs.into_iter().map(|j| j.proposal.unit).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_started_study_starts_from_the_earlier_one() {
    let env = Env::start().await;
    env.put_dataset(DATASET).await;
    let trainer = Trainer::spawn(&env.js, Duration::from_millis(5), |_| Action::Reward);
    let controller = env.spawn_controller().await;
    env.submit(&spec("source", "tpe", 12, 3)).await;
    final_events(&env.js, "source").await;
    let source = env.state("source").await;
    let best = source.best.clone().unwrap();
    let best_unit = source.jobs[&best.job_id].proposal.unit.clone();

    // A hill climber starts at the earlier study's best strategy.
    let mut climber = spec("climber", "hill-continuous", 3, 1);
    climber.warm_start = Some("source".into());
    env.submit(&climber).await;
    let events = final_events(&env.js, "climber").await;
    assert!(matches!(
        events.last().unwrap().event,
        StudyEventKind::Done { .. }
    ));
    assert_eq!(issued_units(&env, "climber").await[0], best_unit);
    let cold = spec("cold-climber", "hill-continuous", 3, 1);
    env.submit(&cold).await;
    final_events(&env.js, "cold-climber").await;
    assert_ne!(issued_units(&env, "cold-climber").await[0], best_unit);

    // TPE with the 12 observations is past its 10 uniform start-up draws: its first proposals
    // differ from the same study started cold, which are uniform.
    let mut warm = spec("warm-tpe", "tpe", 4, 2);
    warm.warm_start = Some("source".into());
    env.submit(&warm).await;
    env.submit(&spec("cold-tpe", "tpe", 4, 2)).await;
    final_events(&env.js, "warm-tpe").await;
    final_events(&env.js, "cold-tpe").await;
    let (w, c) = (
        issued_units(&env, "warm-tpe").await,
        issued_units(&env, "cold-tpe").await,
    );
    assert_ne!(w[0], c[0]);
    // The seed is the same, so only the warm start can make them differ: and the warm
    // study's own ledger holds only its own 4 rewards.
    assert_eq!(env.state("warm-tpe").await.rewards.len(), 4);
    assert_eq!(
        env.state("warm-tpe").await.spec.warm_start.as_deref(),
        Some("source")
    );
    trainer.stop().await;
    controller.stop().await;
}

async fn refused(env: &Env, spec: &StudySpec) -> String {
    env.submit(spec).await;
    let events = final_events(&env.js, &spec.study).await;
    let StudyEventKind::Failed { reason } = &events.last().unwrap().event else {
        panic!("{:#?}", events.iter().map(brief).collect::<Vec<_>>());
    };
    assert!(
        controller::read_state(&env.store, &spec.study)
            .await
            .unwrap()
            .is_none(),
        "a refused study is not stored"
    );
    reason.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_starts_that_cannot_work_are_refused_with_the_reason() {
    let env = Env::start().await;
    env.put_dataset(DATASET).await;
    let trainer = Trainer::spawn(&env.js, Duration::from_millis(5), |_| Action::Reward);
    let controller = env.spawn_controller().await;
    env.submit(&spec("tpe-source", "tpe", 3, 1)).await;
    final_events(&env.js, "tpe-source").await;

    let mut s = spec("from-nowhere", "tpe", 3, 1);
    s.warm_start = Some("nowhere".into());
    let r = refused(&env, &s).await;
    assert!(
        r.contains("search.warm_start: no study named nowhere"),
        "{r}"
    );

    let mut s = spec("other-space", "tpe", 3, 1);
    s.space.pop();
    s.warm_start = Some("tpe-source".into());
    let r = refused(&env, &s).await;
    assert!(r.contains("searched another space"), "{r}");
    assert!(r.contains("learning_rate"), "{r}");

    let mut s = spec("policy-from-tpe", "ppo-rnn", 3, 1);
    s.warm_start = Some("tpe-source".into());
    let r = refused(&env, &s).await;
    assert!(r.contains("used `tpe`"), "{r}");

    let mut s = spec("itself", "tpe", 3, 1);
    s.warm_start = Some("itself".into());
    let r = refused(&env, &s).await;
    assert!(
        r.contains("search.warm_start: names this study itself"),
        "{r}"
    );
    trainer.stop().await;
    controller.stop().await;
}
