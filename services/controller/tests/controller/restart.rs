//! A controller killed mid-study and started again on the same store and broker.

use std::{collections::BTreeSet, time::Duration};

use protocol::StudyEventKind;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_controller_resumes_without_double_jobs_or_rewards() {
    let env = Env::start().await;
    env.put_dataset(DATASET).await;
    let (max_jobs, parallel) = (16, 3);
    // Job 5 is poison, so the ledger of failures survives the kills too.
    let trainer = Trainer::spawn(&env.js, Duration::from_millis(15), |job| {
        if job.index == 5 {
            Action::Fail
        } else {
            Action::Reward
        }
    });
    let mut controller = env.spawn_controller().await;
    env.submit(&spec("phoenix", "ppo-rnn", max_jobs, parallel))
        .await;

    // Kill it five times, each time soon after a reward was counted (wherever it is then: saving,
    // acking, publishing), and start a fresh one on the same store and broker.
    let mut slowest = Duration::ZERO;
    for (k, after) in [2, 4, 7, 9, 12].into_iter().enumerate() {
        events_until_rewards(&env.js, "phoenix", after).await;
        // Vary where in the step the kill lands.
        tokio::time::sleep(Duration::from_micros(900 * k as u64)).await;
        controller.kill().await;
        let state = env.state("phoenix").await;
        assert!(
            !state.phase.is_finished(),
            "killed too late to test a resume"
        );
        // The policy a restart resumes from (what `run` loads at start) is the last persisted
        // snapshot, byte for byte: weights, optimizer, baseline, random generator, tickets.
        let snapshot = controller::study::snapshot_hash(&state.searcher);
        let resumed = controller::resume_all(&env.app().await).await.unwrap();
        let study = resumed.iter().find(|s| s.id() == "phoenix").unwrap();
        assert_eq!(study.policy_hash(), snapshot, "kill {k}: policy state lost");
        assert_eq!(study.state, state, "kill {k}: study state differs");

        // Ready: counting rewards again within 30 s of starting.
        let started = std::time::Instant::now();
        controller = env.spawn_controller().await;
        let counted = state.rewards.len();
        eventually("the restarted controller counts a reward", || async {
            env.state("phoenix").await.rewards.len() > counted
        })
        .await;
        let ready = started.elapsed();
        assert!(
            ready < Duration::from_secs(30),
            "kill {k}: ready after {ready:?}"
        );
        slowest = slowest.max(ready);
        eprintln!(
            "kill {k} after {} rewards: policy {} resumed; next reward counted {:.2} s after restart",
            counted,
            &snapshot[..16],
            ready.as_secs_f64()
        );
    }
    eprintln!("slowest restart to the next counted reward: {slowest:?}");

    let jobs = trainer_and_study_done(&env, trainer, "phoenix").await;
    assert_exactly_once(&env, "phoenix", max_jobs, 1, &jobs).await;
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_waiting_for_rewards_survives_a_graceful_restart() {
    let env = Env::start().await;
    env.put_dataset(DATASET).await;
    let controller = env.spawn_controller().await;
    env.submit(&spec("nap", "hill-continuous", 4, 2)).await;
    // Nobody trains yet: the study is started and waits.
    events_until(&env.js, "nap", |e| {
        matches!(e.event, StudyEventKind::Issued { index: 2, .. })
    })
    .await;
    controller.stop().await;
    let controller = env.spawn_controller().await;
    let trainer = Trainer::spawn(&env.js, Duration::ZERO, |_| Action::Reward);
    let events = final_events(&env.js, "nap").await;
    assert_eq!(kinds(&events)["reward"], 4);
    assert_eq!(trainer.stop().await.len(), 4);
    controller.stop().await;
}

/// Kills at pseudo-random moments (many land inside a step: between saving, acking and
/// publishing), until the study is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_storm_loses_and_duplicates_nothing() {
    let env = Env::start().await;
    env.put_dataset(DATASET).await;
    let (max_jobs, parallel) = (24, 4);
    let trainer = Trainer::spawn(&env.js, Duration::from_millis(2), |job| {
        if job.index % 10 == 3 {
            Action::Fail
        } else {
            Action::RewardThrice
        }
    });
    // Accepted first: a submission pulled by a killed controller waits a full AckWait.
    let mut controller = env.spawn_controller().await;
    env.submit(&spec("storm", "ppo-rnn", max_jobs, parallel))
        .await;
    events_until(&env.js, "storm", |_| true).await;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut kills = 0;
    loop {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_micros(2_000 + rng % 25_000)).await;
        let finished = controller::read_state(&env.store, "storm")
            .await
            .unwrap()
            .is_some_and(|s| s.phase.is_finished());
        if finished || kills == 40 {
            let jobs = trainer_and_study_done(&env, trainer, "storm").await;
            let failures = jobs.iter().filter(|j| j.index % 10 == 3).count();
            assert_exactly_once(&env, "storm", max_jobs, failures, &jobs).await;
            controller.stop().await;
            break;
        }
        controller.kill().await;
        kills += 1;
        controller = env.spawn_controller().await;
    }
    assert!(kills >= 3, "only {kills} kills");
}

async fn trainer_and_study_done(
    env: &Env,
    trainer: Trainer,
    study: &str,
) -> Vec<protocol::TrainJob> {
    final_events(&env.js, study).await;
    trainer.stop().await
}

/// Exactly `max_jobs` rewards, each once, every event once, no job id issued twice.
async fn assert_exactly_once(
    env: &Env,
    study: &str,
    max_jobs: u32,
    failures: usize,
    jobs: &[protocol::TrainJob],
) {
    let events = final_events(&env.js, study).await;
    let trace: Vec<_> = events.iter().map(brief).collect();
    let StudyEventKind::Done { rewards, .. } = events.last().unwrap().event else {
        panic!("{trace:#?}");
    };
    assert_eq!(rewards, max_jobs);

    // Every event once: republished outboxes were dropped as duplicates.
    let k = kinds(&events);
    assert_eq!(k["started"], 1, "{trace:#?}");
    assert_eq!(k["reward"], max_jobs as usize, "{trace:#?}");
    assert_eq!(
        k.get("job_failed").copied().unwrap_or(0),
        failures,
        "{trace:#?}"
    );
    assert_eq!(k["issued"], max_jobs as usize + failures, "{trace:#?}");
    let rewarded: BTreeSet<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            StudyEventKind::Reward { job_id, .. } => Some(job_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(rewarded.len(), max_jobs as usize);

    // No job issued twice: the trainer saw each id once, max_jobs + failures of them.
    let ids: BTreeSet<_> = jobs.iter().map(|j| j.job_id.clone()).collect();
    assert_eq!(ids.len(), jobs.len(), "a job was delivered twice");
    assert_eq!(jobs.len(), max_jobs as usize + failures);

    let state = env.state(study).await;
    assert_eq!(state.rewards.len(), max_jobs as usize);
    assert_eq!(state.failures.len(), failures);
    assert_eq!(state.jobs.len(), max_jobs as usize + failures);
    assert_eq!(state.next_index as usize, max_jobs as usize + failures + 1);
}
