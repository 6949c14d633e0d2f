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
