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

/// A job that kills its trainer every time (an OOM kill, a segfault) is never answered by a
/// worker: after MaxDeliver deliveries the server stops and announces it, and the controller
/// dead-letters the job from that advisory; the study replaces it and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_crashes_its_trainer_every_time_is_delivered_max_deliver_times_then_dead_lettered()
 {
    let env = Env::start().await;
    // A short AckWait on the jobs consumer, as the controller's --job-ack-wait-secs sets it.
    let ack_wait = Duration::from_secs(1);
    runtime::provision_with(&env.js, None, Some(ack_wait))
        .await
        .unwrap();
    let max_deliver = protocol::streams::consumer_spec(subjects::durable::TRAINERS)
        .unwrap()
        .max_deliver as usize;
    env.put_dataset(DATASET).await;
    let controller = env.spawn_controller().await;
    let trainer = Trainer::spawn(&env.js, Duration::from_millis(20), |job| {
        if job.index == 3 {
            Action::Crash
        } else {
            Action::Reward
        }
    });
    env.submit(&spec("crashy", "ppo-rnn", 8, 2)).await;
    let events = final_events(&env.js, "crashy").await;
    let k = kinds(&events);
    assert_eq!(k.get("done"), Some(&1), "{k:?}");
    assert_eq!(k["reward"], 8, "{k:?}");
    assert_eq!(k["job_failed"], 1, "{k:?}");
    assert_eq!(k["issued"], 9, "the crashing job is replaced: {k:?}");
    let (failed_at, reason) = events
        .iter()
        .find_map(|e| match &e.event {
            StudyEventKind::JobFailed { job_id, reason } if job_id == "crashy-0003" => {
                Some((e.time_unix, reason.clone()))
            }
            _ => None,
        })
        .expect("crashy-0003 failed");
    assert!(reason.contains("MaxDeliver"), "{reason}");

    let pulled_at = trainer.pulled_at.clone();
    let jobs = trainer.stop().await;
    let pulls: Vec<f64> = jobs
        .iter()
        .zip(pulled_at.lock().unwrap().iter())
        .filter(|(j, _)| j.job_id == "crashy-0003")
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(
        pulls.len(),
        max_deliver,
        "delivered exactly MaxDeliver times"
    );
    // Every other job was delivered once: the crashing one did not hold them up.
    for j in jobs.iter().filter(|j| j.job_id != "crashy-0003") {
        let n = jobs.iter().filter(|o| o.job_id == j.job_id).count();
        assert_eq!(n, 1, "{} delivered {n} times", j.job_id);
    }
    let after_last = failed_at - pulls[max_deliver - 1];
    eprintln!(
        "crashy-0003: deliveries {:?} s apart (AckWait {ack_wait:?}); dead-lettered {after_last:.2} s after the last one",
        pulls
            .windows(2)
            .map(|w| (w[1] - w[0]) as f32)
            .collect::<Vec<_>>()
    );
    assert!(
        after_last < 5.0 + ack_wait.as_secs_f64(),
        "dead-lettered {after_last:.2} s after the last delivery"
    );

    // One dead letter, on the DEADLETTER stream, saying where the job came from.
    let dead: Vec<protocol::JobFailed> = test_support::stream_payloads(
        &env.js,
        subjects::stream::DEADLETTER,
        &subjects::deadletter("crashy"),
    )
    .await
    .iter()
    .map(|p| protocol::decode(p).unwrap())
    .collect();
    assert_eq!(dead.len(), 1, "{dead:#?}");
    let d = &dead[0];
    assert_eq!(d.job_id, "crashy-0003");
    assert_eq!(d.deliveries, max_deliver as u64);
    assert_eq!(d.original_subject, subjects::jobs("crashy"));
    assert_eq!(d.worker, controller::max_deliveries::WORKER);
    // Nobody will ack it: it is gone from the work queue.
    eventually("the crashed job is removed from JOBS", || async {
        let mut s = env.js.get_stream(subjects::stream::JOBS).await.unwrap();
        s.info().await.unwrap().state.messages == 0
    })
    .await;
    let state = env.state("crashy").await;
    assert_eq!(state.failures.len(), 1);
    assert_eq!(state.failures[0].worker, controller::max_deliveries::WORKER);
    controller.stop().await;
}

/// A predict request that every evaluator taking it dies on (here: three deliveries given
/// back) is answered by the controller, every input failed with the reason, so whoever
/// waits on `segtune.predictions.<request>` is not left waiting; a dead letter records it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_predict_request_whose_evaluators_all_die_is_answered_by_the_controller() {
    use async_nats::jetstream::AckKind;
    use protocol::{PredictRequest, Predicted, SCHEMA_VERSION};

    let env = Env::start().await;
    let controller = env.spawn_controller().await;
    let request = PredictRequest {
        schema: SCHEMA_VERSION,
        request_id: "req-dead".into(),
        model: "studies/s/final/bundle".into(),
        inputs: vec!["scans/a.nii.gz".into()],
        overlap: None,
        tta: None,
        save_probabilities: false,
    };
    runtime::publish(
        &env.js,
        subjects::PREDICT_REQUESTS.into(),
        Some("req-dead"),
        protocol::encode(&request).unwrap(),
    )
    .await
    .unwrap();
    let max_deliver = protocol::streams::consumer_spec(subjects::durable::PREDICTORS)
        .unwrap()
        .max_deliver;
    let consumer = runtime::consumer(&env.js, subjects::durable::PREDICTORS)
        .await
        .unwrap();
    for _ in 0..max_deliver {
        let msg = runtime::pull_one(&consumer, Duration::from_secs(10))
            .await
            .unwrap()
            .expect("the request is delivered again");
        msg.ack_with(AckKind::Nak(None)).await.unwrap();
    }
    // The next pull finds the request past MaxDeliver: the server announces it instead.
    let next = runtime::pull_one(&consumer, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(next.is_none(), "delivered past MaxDeliver");
    eventually("the controller's answer", || async {
        let mut s = env
            .js
            .get_stream(subjects::stream::PREDICTIONS)
            .await
            .unwrap();
        s.info().await.unwrap().state.messages > 0
    })
    .await;
    let all = test_support::stream_payloads(
        &env.js,
        subjects::stream::PREDICTIONS,
        &subjects::predictions("req-dead"),
    )
    .await;
    assert_eq!(all.len(), 1);
    let answer: Predicted = protocol::decode(&all[0]).unwrap();
    assert_eq!(answer.worker, controller::max_deliveries::WORKER);
    assert!(answer.outputs.is_empty());
    assert_eq!(answer.errors.len(), 1);
    assert!(
        answer.errors[0].reason.contains("the evaluator"),
        "{:?}",
        answer.errors
    );
    let dead: Vec<protocol::JobFailed> = test_support::stream_payloads(
        &env.js,
        subjects::stream::DEADLETTER,
        subjects::DEADLETTER_PREDICT,
    )
    .await
    .iter()
    .map(|p| protocol::decode(p).unwrap())
    .collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].job_id, "req-dead");
    eventually("the request is removed from PREDICT", || async {
        let mut s = env.js.get_stream(subjects::stream::PREDICT).await.unwrap();
        s.info().await.unwrap().state.messages == 0
    })
    .await;
    controller.stop().await;
}
