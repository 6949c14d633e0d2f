//! The submission step: accept, deduplicate, reject with a reason.

use std::time::Duration;

use controller::{Submission, handle_next_submission};
use protocol::{StudyEventKind, subjects};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_are_accepted_once_and_invalid_ones_rejected_with_an_event() {
    let env = Env::start().await;
    let app = env.app().await;
    let consumer = runtime::consumer(&env.js, subjects::durable::CONTROLLER_SUBMISSIONS)
        .await
        .unwrap();
    let wait = Duration::from_secs(2);
    let s = spec("once", "ppo-rnn", 4, 2);

    env.submit(&s).await;
    let Submission::Accepted(study) = handle_next_submission(&app, &consumer, wait).await.unwrap()
    else {
        panic!("not accepted");
    };
    assert_eq!(study.id(), "once");
    assert_eq!(env.state("once").await.phase, controller::Phase::Preparing);

    // The same spec again (a resubmission, or a redelivery after a crash before the ack).
    env.submit(&s).await;
    let next = handle_next_submission(&app, &consumer, wait).await.unwrap();
    assert!(
        matches!(next, Submission::Duplicate { ref study } if study == "once"),
        "{next:?}"
    );

    // Another spec under the same id.
    let mut other = s.clone();
    other.parallel = 3;
    env.submit(&other).await;
    let next = handle_next_submission(&app, &consumer, wait).await.unwrap();
    assert!(
        matches!(next, Submission::Rejected { ref reason, .. } if reason.contains("already exists")),
        "{next:?}"
    );
    // The same spec with only more jobs is an extension, refused while it is not done.
    let mut longer = s.clone();
    longer.max_jobs = 9;
    env.submit(&longer).await;
    let next = handle_next_submission(&app, &consumer, wait).await.unwrap();
    assert!(
        matches!(next, Submission::Rejected { ref reason, .. }
            if reason.contains("cannot extend study once to 9 jobs")),
        "{next:?}"
    );
    assert_eq!(env.state("once").await.spec, s);

    // Invalid: every problem named by its study-file key, and a Failed event for watchers.
    let mut bad = spec("bad", "bogus", 0, 2);
    bad.space[0].max = -1.0;
    env.submit(&bad).await;
    let next = handle_next_submission(&app, &consumer, wait).await.unwrap();
    let Submission::Rejected { reason, .. } = next else {
        panic!("{next:?}");
    };
    for key in ["search.searcher", "search.max_jobs", "space"] {
        assert!(reason.contains(key), "{key} not in {reason}");
    }
    let events = final_events(&env.js, "bad").await;
    assert!(matches!(&events[0].event, StudyEventKind::Failed { reason: r } if *r == reason));
    assert!(
        controller::read_state(&env.store, "bad")
            .await
            .unwrap()
            .is_none()
    );

    // Undecodable.
    runtime::publish(
        &env.js,
        subjects::SUBMISSIONS.into(),
        None,
        b"junk".to_vec(),
    )
    .await
    .unwrap();
    let next = handle_next_submission(&app, &consumer, wait).await.unwrap();
    assert!(matches!(next, Submission::Rejected { .. }), "{next:?}");

    // Every submission was settled: the work queue is empty.
    let mut stream = env
        .js
        .get_stream(subjects::stream::SUBMISSIONS)
        .await
        .unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 0);
}

/// `study finalize` and `study confirm` send their jobs through the controller: it publishes
/// the retraining jobs of an existing study and dead-letters, with the reason, those that are
/// not that study's (another study's id, another dataset, or no such study).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retraining_jobs_of_a_study_are_published_and_others_dead_lettered() {
    use protocol::{FinalModel, JobFailed, RetrainRequest, SCHEMA_VERSION, TrainJob};

    let env = Env::start().await;
    env.put_dataset(DATASET).await;
    let app = env.app().await;
    let consumer = runtime::consumer(&env.js, subjects::durable::CONTROLLER_SUBMISSIONS)
        .await
        .unwrap();
    let wait = Duration::from_secs(2);
    env.submit(&spec("src", "random", 2, 1)).await;
    let next = handle_next_submission(&app, &consumer, wait).await.unwrap();
    assert!(matches!(next, Submission::Accepted(_)), "{next:?}");

    let job = |study: &str, id: &str| TrainJob {
        schema: SCHEMA_VERSION,
        study: study.into(),
        job_id: id.into(),
        index: 1,
        dataset_id: DATASET.into(),
        strategy: protocol::strategy::routine_strategy(),
        training: protocol::TrainingConfig::default(),
        seed: 3,
        final_model: None,
        validation: None,
    };
    let send = |source: &str, jobs: Vec<TrainJob>| {
        let req = RetrainRequest {
            schema: SCHEMA_VERSION,
            source_study: source.into(),
            jobs,
        };
        let js = env.js.clone();
        async move {
            runtime::publish(
                &js,
                subjects::SUBMISSIONS.into(),
                None,
                protocol::encode(&req).unwrap(),
            )
            .await
            .unwrap()
        }
    };

    let mut last = job("src-final", "src-final-1");
    last.final_model = Some(FinalModel {
        source_study: "src".into(),
        bundle_prefix: "studies/src/final/bundle".into(),
        all_cases: true,
    });
    send(
        "src",
        vec![last.clone(), job("src-confirm", "src-confirm-0001")],
    )
    .await;
    let next = handle_next_submission(&app, &consumer, wait).await.unwrap();
    assert!(
        matches!(
            next,
            Submission::Retrain {
                jobs: 2,
                result: Ok(()),
                ..
            }
        ),
        "{next:?}"
    );
    // JOBS is a work queue (no second consumer): read the last job of each subject.
    let jobs = env.js.get_stream(subjects::stream::JOBS).await.unwrap();
    let last_job = |study: &'static str| {
        let jobs = jobs.clone();
        async move {
            let m = jobs
                .get_last_raw_message_by_subject(&subjects::jobs(study))
                .await
                .unwrap();
            protocol::decode::<TrainJob>(&m.payload).unwrap()
        }
    };
    let published = vec![last_job("src-final").await];
    assert_eq!(published, vec![last]);

    // Another study's job among them: nothing is published, each job is dead-lettered.
    send(
        "src",
        vec![
            job("src-confirm", "src-confirm-0002"),
            job("other-final", "other-final-1"),
        ],
    )
    .await;
    let next = handle_next_submission(&app, &consumer, wait).await.unwrap();
    let Submission::Retrain {
        result: Err(reason),
        ..
    } = next
    else {
        panic!("{next:?}");
    };
    assert!(
        reason.contains("expected src-final or src-confirm"),
        "{reason}"
    );
    let letters: Vec<JobFailed> = test_support::stream_payloads(
        &env.js,
        subjects::stream::DEADLETTER,
        &subjects::deadletter("src-confirm"),
    )
    .await
    .iter()
    .map(|p| protocol::decode(p).unwrap())
    .collect();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].job_id, "src-confirm-0002");
    assert!(
        letters[0]
            .reason
            .contains("retraining refused by the controller")
    );
    assert_eq!(
        last_job("src-confirm").await.job_id,
        "src-confirm-0001",
        "only the first request's confirm job"
    );

    // No such study.
    send("nope", vec![job("nope-final", "nope-final-1")]).await;
    let next = handle_next_submission(&app, &consumer, wait).await.unwrap();
    assert!(
        matches!(next, Submission::Retrain { result: Err(ref r), .. } if r.contains("no study nope")),
        "{next:?}"
    );
}
