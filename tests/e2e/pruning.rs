//! The real trainer and a pruned job: it validates at its plan's epochs with the evaluator's
//! code, stops on the controller's stop (published while it trains, or before it took the job,
//! as after a redelivery), stores the checkpoint, publishes the pruned reward itself and acks;
//! a stop for a job that already finished changes nothing.

use std::time::Duration;

use futures::StreamExt;
use protocol::{
    Reward, SCHEMA_VERSION, StopJob, TrainJob, ValidationPlan, ValidationReport, subjects,
};
use test_support::NatsServer;

use crate::train::job;

fn planned(index: u32, dataset_id: &str, epochs: u32, plan: &[u32]) -> TrainJob {
    let mut j = job(
        "prune",
        index,
        dataset_id,
        &[("learning_rate", 1e-2), ("p_flip", 0.5)],
    );
    j.training.epochs = epochs;
    j.validation = Some(ValidationPlan {
        epochs: plan.to_vec(),
        overlap: 0.0,
    });
    j
}

fn stop(job: &TrainJob, epoch: u32, dice: f64) -> StopJob {
    StopJob {
        schema: SCHEMA_VERSION,
        study: job.study.clone(),
        job_id: job.job_id.clone(),
        epoch,
        dice,
        reason: "test".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trainer_stops_a_pruned_job_and_publishes_its_pruned_reward() {
    test_support::init_test_tracing();
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let store_url = dir.path().join("store").display().to_string();
    let store = storage::open(&store_url).unwrap();
    let ds = crate::train::preprocessed(dir.path(), &store_url).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut trainer = trainer::App::connect(&trainer::Settings {
        nats: nats.url(),
        store: store_url.clone(),
        device: "cpu".into(),
        augment_workers: None,
        cache: Default::default(),
    })
    .await
    .unwrap();
    trainer.worker = "trainer-prune".into();
    let mut rx = stop_rx.clone();
    let t = tokio::spawn(trainer::run(trainer, async move {
        let _ = rx.wait_for(|s| *s).await;
    }));

    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let mut rewards = client.subscribe(subjects::rewards("prune")).await.unwrap();
    let mut trained = client.subscribe(subjects::trained("prune")).await.unwrap();
    let mut reports = client
        .subscribe(subjects::validation_all("prune"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let publish = |subject: String, id: String, bytes: Vec<u8>| {
        let js = js.clone();
        async move {
            runtime::publish(&js, subject, Some(&id), bytes)
                .await
                .unwrap();
        }
    };
    let wait = Duration::from_secs(120);

    // 1. Stopped while it trains: after its report at epoch 1 (of 6) the stop goes out.
    let a = planned(1, &ds.dataset_id, 6, &[1, 2]);
    publish(
        subjects::jobs("prune"),
        a.job_id.clone(),
        protocol::encode(&a).unwrap(),
    )
    .await;
    let msg = tokio::time::timeout(wait, reports.next())
        .await
        .unwrap()
        .unwrap();
    let report: ValidationReport = protocol::decode(&msg.payload).unwrap();
    assert_eq!(
        (report.job_id.as_str(), report.epoch, report.epochs),
        (a.job_id.as_str(), 1, 6)
    );
    assert_eq!(report.step, 2, "4 patches of 2 per epoch");
    assert!((0.0..=1.0).contains(&report.dice));
    assert_eq!(
        msg.headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.to_string()),
        Some(subjects::validation_msg_id(&a.job_id, 1))
    );
    let s = stop(&a, 1, report.dice);
    publish(
        subjects::stop("prune", &a.job_id),
        subjects::stop_msg_id(&a.job_id),
        protocol::encode(&s).unwrap(),
    )
    .await;
    let r: Reward = protocol::decode(
        &tokio::time::timeout(wait, rewards.next())
            .await
            .unwrap()
            .unwrap()
            .payload,
    )
    .unwrap();
    assert_eq!(r.job_id, a.job_id);
    assert!(r.pruned);
    assert_eq!((r.epoch_reached, r.mean), (1, report.dice));
    assert_eq!((r.trainer.as_str(), r.attempt), ("trainer-prune", 1));
    assert!(r.train_seconds > 0.0 && r.per_case.is_empty());
    assert!(
        storage::exists(&store, &r.checkpoint_key).await.unwrap(),
        "the checkpoint of the weights reached is stored"
    );

    // 2. Stopped before the trainer took the job (a redelivery after its trainer died): the
    // stop is read from the start of its subject, the job ends at once with the stop's Dice.
    let b = planned(2, &ds.dataset_id, 50, &[10]);
    let s = stop(&b, 10, 0.125);
    publish(
        subjects::stop("prune", &b.job_id),
        subjects::stop_msg_id(&b.job_id),
        protocol::encode(&s).unwrap(),
    )
    .await;
    publish(
        subjects::jobs("prune"),
        b.job_id.clone(),
        protocol::encode(&b).unwrap(),
    )
    .await;
    let r: Reward = protocol::decode(
        &tokio::time::timeout(wait, rewards.next())
            .await
            .unwrap()
            .unwrap()
            .payload,
    )
    .unwrap();
    assert_eq!(r.job_id, b.job_id);
    assert!(r.pruned);
    assert_eq!((r.epoch_reached, r.mean), (10, 0.125));

    // 3. A job that finished before its stop: its Trained goes to the evaluator as usual, and
    // the late stop changes nothing (no reward from the trainer).
    let c = planned(3, &ds.dataset_id, 2, &[1]);
    publish(
        subjects::jobs("prune"),
        c.job_id.clone(),
        protocol::encode(&c).unwrap(),
    )
    .await;
    let msg = tokio::time::timeout(wait, trained.next())
        .await
        .unwrap()
        .unwrap();
    let done: protocol::Trained = protocol::decode(&msg.payload).unwrap();
    assert_eq!(done.job_id, c.job_id);
    let s = stop(&c, 1, 0.5);
    publish(
        subjects::stop("prune", &c.job_id),
        subjects::stop_msg_id(&c.job_id),
        protocol::encode(&s).unwrap(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Nothing else was published: no Trained for the pruned jobs, no reward for the finished
    // one; every job was acked (the work queue is empty).
    assert!(
        tokio::time::timeout(Duration::from_millis(200), trained.next())
            .await
            .is_err(),
        "a pruned job must not reach the evaluator"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), rewards.next())
            .await
            .is_err(),
        "a stop for a finished job must change nothing"
    );
    let mut jobs = js.get_stream(subjects::stream::JOBS).await.unwrap();
    assert_eq!(
        jobs.info().await.unwrap().state.messages,
        0,
        "every job acked"
    );

    let _ = stop_tx.send(true);
    t.await.unwrap().unwrap();
}
