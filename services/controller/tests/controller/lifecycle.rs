//! A study from submission to `Done`, through the controller's `run()`.

use std::{collections::BTreeSet, time::Duration};

use protocol::{StudyEventKind, subjects};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn study_runs_to_done_with_exactly_max_jobs_rewards_and_ordered_events() {
    let env = Env::start().await;
    env.put_dataset(DATASET).await;
    let controller = env.spawn_controller().await;
    let trainer = Trainer::spawn(&env.js, Duration::ZERO, |_| Action::Reward);
    let (max_jobs, parallel) = (8, 3);
    env.submit(&spec("s1", "ppo-rnn", max_jobs, parallel)).await;

    let events = final_events(&env.js, "s1").await;
    let trace: Vec<_> = events.iter().map(brief).collect();

    // Started, then the paper's n initial strategies.
    let StudyEventKind::Started { dataset_id, spec } = &events[0].event else {
        panic!("first event is not Started: {trace:#?}");
    };
    assert_eq!(dataset_id, DATASET);
    assert_eq!(spec.study, "s1");
    for (k, e) in events[1..=parallel as usize].iter().enumerate() {
        let StudyEventKind::Issued { index, job_id, .. } = &e.event else {
            panic!("event {} is not Issued: {trace:#?}", k + 1);
        };
        assert_eq!(*index, k as u32 + 1);
        assert_eq!(job_id, &format!("s1-{:04}", k + 1));
    }

    // Each reward counted once, in order; only issued jobs rewarded; one job per reward
    // until max_jobs are out; best-so-far strictly improving.
    let mut issued = BTreeSet::new();
    let mut rewarded = Vec::new();
    let mut best = f64::NEG_INFINITY;
    let mut best_job = String::new();
    for e in &events {
        match &e.event {
            StudyEventKind::Issued { job_id, .. } => assert!(issued.insert(job_id.clone())),
            StudyEventKind::Reward {
                job_id,
                rewards_so_far,
                mean,
                ..
            } => {
                assert!(issued.contains(job_id), "reward before issue: {trace:#?}");
                rewarded.push(job_id.clone());
                assert_eq!(*rewards_so_far as usize, rewarded.len());
                assert!((0.0..=1.0).contains(mean));
            }
            StudyEventKind::NewBest { job_id, mean, .. } => {
                assert!(*mean > best);
                best = *mean;
                best_job = job_id.clone();
            }
            _ => {}
        }
    }
    assert_eq!(rewarded.len(), max_jobs as usize, "{trace:#?}");
    assert_eq!(
        rewarded.iter().collect::<BTreeSet<_>>().len(),
        max_jobs as usize
    );
    assert_eq!(issued.len(), max_jobs as usize);
    let StudyEventKind::Done {
        best_job_id,
        best_mean,
        rewards,
        best_strategy,
    } = &events.last().unwrap().event
    else {
        panic!("{trace:#?}");
    };
    assert_eq!(*rewards, max_jobs);
    assert_eq!((best_job_id, *best_mean), (&best_job, best));
    assert_eq!(best_strategy.unit.len(), 4);

    // The trainer saw exactly the issued jobs, each once, with the derived seeds.
    let jobs = trainer.stop().await;
    assert_eq!(jobs.len(), max_jobs as usize);
    for job in &jobs {
        assert!(issued.contains(&job.job_id));
        assert_eq!(job.dataset_id, DATASET);
        assert_eq!(job.seed, study::job_seed(7, job.index));
        assert_eq!(job.strategy.values.len(), 4);
        let lr = job.strategy.values["learning_rate"];
        assert!((1e-4..=1e-2).contains(&lr), "{lr}");
    }

    // The saved state agrees, and the study's consumers are gone.
    let state = env.state("s1").await;
    assert_eq!(state.phase, controller::Phase::Done);
    assert_eq!(state.rewards.len(), max_jobs as usize);
    assert!(state.outbox.is_empty());
    assert_eq!(state.best.as_ref().unwrap().job_id, best_job);
    let searcher = search::restore("ppo-rnn", &state.searcher).unwrap();
    assert_eq!(searcher.outstanding(), 0);
    eventually("the study's consumers are deleted", || async {
        !consumer_exists(
            &env.js,
            subjects::stream::REWARDS,
            &subjects::durable::rewards("s1"),
        )
        .await
    })
    .await;
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_studies_run_at_once() {
    let env = Env::start().await;
    env.put_dataset(DATASET).await;
    let controller = env.spawn_controller().await;
    let trainer = Trainer::spawn(&env.js, Duration::ZERO, |_| Action::Reward);
    let studies = [("a", "ppo-rnn"), ("b", "random"), ("c", "hill-continuous")];
    for (id, searcher) in studies {
        env.submit(&spec(id, searcher, 6, 2)).await;
    }
    for (id, _) in studies {
        let events = final_events(&env.js, id).await;
        let k = kinds(&events);
        assert_eq!(k.get("done"), Some(&1), "{id}: {k:?}");
        assert_eq!(k["reward"], 6, "{id}: {k:?}");
    }
    let jobs = trainer.stop().await;
    assert_eq!(jobs.len(), 18);
    for (id, _) in studies {
        assert_eq!(jobs.iter().filter(|j| j.study == id).count(), 6);
    }
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_converged_hill_climber_stops_early() {
    // One dimension, 3 bins: the discrete climber runs out of neighbours long before 50 jobs.
    let env = Env::start().await;
    env.put_dataset(DATASET).await;
    let mut s = spec("hill", "hill-discrete", 50, 2);
    s.space.truncate(1);
    s.searcher_settings.insert("bins".into(), 3.0);
    let controller = env.spawn_controller().await;
    let trainer = Trainer::spawn(&env.js, Duration::ZERO, |_| Action::Reward);
    env.submit(&s).await;
    let events = final_events(&env.js, "hill").await;
    let StudyEventKind::Done { rewards, .. } = events.last().unwrap().event else {
        panic!("{:#?}", events.iter().map(brief).collect::<Vec<_>>());
    };
    assert!(rewards < 50, "{rewards}");
    assert_eq!(trainer.stop().await.len(), rewards as usize);
    controller.stop().await;
}
