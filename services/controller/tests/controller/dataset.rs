//! Studies on a raw MSD folder: the controller asks the (real) preprocessor and waits.

use std::time::Duration;

use protocol::{DatasetRef, DatasetSource, PreprocessParams, StudyEventKind};
use volume::synth::{SynthKind, SynthSpec, write_task};

use crate::common::*;

/// The real preprocessor service in a task, on the test's broker and store.
async fn spawn_preprocessor(env: &Env) -> tokio::sync::oneshot::Sender<()> {
    let app = preprocessor::App {
        js: async_nats::jetstream::new(env.nats.client().await),
        store: env.store.clone(),
        options: dataprep::Options::default(),
        worker: "test-preprocessor".into(),
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        preprocessor::run(app, async {
            let _ = rx.await;
        })
        .await
        .unwrap()
    });
    tx
}

fn source_spec(study: &str, dir: &std::path::Path) -> protocol::StudySpec {
    let mut s = spec(study, "random", 3, 2);
    s.dataset = DatasetRef::Source {
        source: DatasetSource::Local {
            path: dir.to_string_lossy().into_owned(),
        },
        params: PreprocessParams::default(),
    };
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_study_waits_for_preprocessing_then_runs() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let task = dir.path().join("synth-ct");
    write_task(&SynthSpec::new(SynthKind::CtOrgan, 4, 24, 1), &task).unwrap();
    let controller = env.spawn_controller().await;
    // The controller asks before any preprocessor is up; the request waits in its queue.
    env.submit(&source_spec("raw", &task)).await;
    let trainer = Trainer::spawn(&env.js, Duration::ZERO, |_| Action::Reward);
    let preprocessor = spawn_preprocessor(&env).await;

    let events = final_events(&env.js, "raw").await;
    let StudyEventKind::Started { dataset_id, .. } = &events[0].event else {
        panic!("{:#?}", events.iter().map(brief).collect::<Vec<_>>());
    };
    assert!(
        storage::exists(&env.store, &storage::keys::manifest(dataset_id).unwrap())
            .await
            .unwrap(),
        "the dataset the study runs on is in the store"
    );
    assert!(matches!(
        events.last().unwrap().event,
        StudyEventKind::Done { rewards: 3, .. }
    ));
    let jobs = trainer.stop().await;
    assert_eq!(jobs.len(), 3);
    assert!(jobs.iter().all(|j| &j.dataset_id == dataset_id));
    let state = env.state("raw").await;
    assert_eq!(state.dataset_id.as_ref(), Some(dataset_id));
    assert!(state.dataset_request.unwrap().starts_with("raw-"));
    let _ = preprocessor.send(());
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_cannot_be_preprocessed_fails_the_study() {
    let env = Env::start().await;
    let empty = tempfile::tempdir().unwrap();
    let controller = env.spawn_controller().await;
    let preprocessor = spawn_preprocessor(&env).await;
    env.submit(&source_spec("nodata", empty.path())).await;
    let events = final_events(&env.js, "nodata").await;
    assert_eq!(events.len(), 1, "no Started, no jobs");
    let StudyEventKind::Failed { reason } = &events[0].event else {
        panic!("{:?}", brief(&events[0]));
    };
    assert!(reason.contains("preprocessing"), "{reason}");
    let _ = preprocessor.send(());
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_dataset_id_fails_the_study() {
    let env = Env::start().await;
    let controller = env.spawn_controller().await;
    env.submit(&spec("ghost", "random", 3, 2)).await;
    let events = final_events(&env.js, "ghost").await;
    let StudyEventKind::Failed { reason } = &events[0].event else {
        panic!("{:?}", brief(&events[0]));
    };
    assert!(
        reason.contains(DATASET) && reason.contains("not in the store"),
        "{reason}"
    );
    controller.stop().await;
}
