//! Dead-lettered jobs: replaced within the failure budget, the end of the study past it.

use std::time::Duration;

use protocol::{StudyEventKind, subjects};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_job_is_replaced_and_the_study_finishes() {
    let env = Env::start().await;
    env.put_dataset(DATASET).await;
    let controller = env.spawn_controller().await;
    // Jobs 2 and 4 are poison.
    let trainer = Trainer::spawn(&env.js, Duration::ZERO, |job| {
        if job.index == 2 || job.index == 4 {
            Action::Fail
        } else {
            Action::Reward
        }
    });
    env.submit(&spec("flaky", "ppo-rnn", 5, 2)).await;
    let events = final_events(&env.js, "flaky").await;
    let k = kinds(&events);
    assert_eq!(k.get("done"), Some(&1), "{k:?}");
    assert_eq!(k["reward"], 5, "{k:?}");
    assert_eq!(k["job_failed"], 2, "{k:?}");
    assert_eq!(k["issued"], 7, "{k:?}");
    let failed: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            StudyEventKind::JobFailed { job_id, reason } => Some((job_id.clone(), reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(failed[0], ("flaky-0002".into(), "test: poison job".into()));
    assert_eq!(failed[1].0, "flaky-0004");

    let jobs = trainer.stop().await;
    assert_eq!(jobs.len(), 7, "max_jobs + failures");
    let state = env.state("flaky").await;
    assert_eq!(state.failures.len(), 2);
    assert_eq!(state.failures[0].worker, "fake-trainer");
    assert_eq!(state.rewards.len(), 5);
    assert_eq!(state.live_jobs(), 5);
    let searcher = search::restore("ppo-rnn", &state.searcher).unwrap();
    assert_eq!(searcher.outstanding(), 0, "failed jobs are abandoned");
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_failure_budget_the_study_fails() {
    let env = Env::start().await;
    env.put_dataset(DATASET).await;
    let controller = env.spawn_controller().await;
    let trainer = Trainer::spawn(&env.js, Duration::ZERO, |_| Action::Fail);
    let mut s = spec("doomed", "random", 10, 2);
    s.max_failures = 2;
    env.submit(&s).await;
    let events = final_events(&env.js, "doomed").await;
    let k = kinds(&events);
    assert_eq!(
        k["job_failed"], 3,
        "the third failure is one too many: {k:?}"
    );
    assert_eq!(k.get("reward"), None);
    let StudyEventKind::Failed { reason } = &events.last().unwrap().event else {
        panic!("{k:?}");
    };
    assert!(reason.contains("max_failures = 2"), "{reason}");
    assert_eq!(
        env.state("doomed").await.phase,
        controller::Phase::Failed {
            reason: reason.clone()
        }
    );
    trainer.stop().await;
    // Nothing of the failed study is left waiting for a trainer.
    eventually("the failed study's jobs are purged", || async {
        let mut jobs = env.js.get_stream(subjects::stream::JOBS).await.unwrap();
        jobs.info().await.unwrap().state.messages == 0
    })
    .await;
    controller.stop().await;
}
