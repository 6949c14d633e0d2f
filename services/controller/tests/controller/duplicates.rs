//! A reward counts once per job id, however often it arrives.

use std::time::Duration;

use controller::{Feed, Step, Study};
use protocol::{JobFailed, SCHEMA_VERSION, StudyEventKind, TrainJob, subjects};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewards_published_several_times_count_once() {
    let env = Env::start().await;
    env.put_dataset(DATASET).await;
    let controller = env.spawn_controller().await;
    let trainer = Trainer::spawn(&env.js, Duration::ZERO, |_| Action::RewardThrice);
    let s = spec("dup", "ppo-rnn", 6, 2);
    env.submit(&s).await;

    // Noise the controller must ignore: a reward and a dead letter for job ids it never
    // issued, and a reward addressed to another study on this study's subject.
    let mut stranger = reward(&fake_job("dup", 9999));
    publish(&env.js, subjects::rewards("dup"), "stranger", &stranger).await;
    stranger.study = "other".into();
    stranger.job_id = "dup-0001".into();
    publish(&env.js, subjects::rewards("dup"), "other-study", &stranger).await;
    let ghost = JobFailed {
        schema: SCHEMA_VERSION,
        study: "dup".into(),
        job_id: "dup-9998".into(),
        reason: "never issued".into(),
        original_subject: subjects::jobs("dup"),
        deliveries: 1,
        worker: "nobody".into(),
    };
    publish(&env.js, subjects::deadletter("dup"), "ghost", &ghost).await;

    let events = final_events(&env.js, "dup").await;
    let k = kinds(&events);
    assert_eq!(k["reward"], 6, "{k:?}");
    assert_eq!(k["issued"], 6, "{k:?}");
    assert_eq!(k.get("job_failed"), None, "{k:?}");
    let StudyEventKind::Done { rewards, .. } = events.last().unwrap().event else {
        panic!("{k:?}");
    };
    assert_eq!(rewards, 6);
    let state = env.state("dup").await;
    assert_eq!(state.rewards.len(), 6);
    assert!(state.failures.is_empty());
    assert_eq!(trainer.stop().await.len(), 6);
    // Three copies of each of the 6 rewards reached the stream (the same-id copy was dropped).
    let mut rewards_stream = env.js.get_stream(subjects::stream::REWARDS).await.unwrap();
    let stored = rewards_stream.info().await.unwrap().state.messages;
    assert_eq!(stored, 6 * 3 + 2);
    controller.stop().await;
}

/// A redelivery, made for real: the controller saves a reward and dies before acking it;
/// after AckWait JetStream hands the same message to the restarted study.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_reward_counts_once() {
    let env = Env::start().await;
    env.put_dataset(DATASET).await;
    let app = env.app().await;
    let (_stop_tx, mut stop) = tokio::sync::watch::channel(false);

    let mut study = Study::create(&app, spec("redo", "ppo-rnn", 4, 2))
        .await
        .unwrap();
    assert!(study.prepare(&mut stop).await.unwrap());
    study.attach().await.unwrap();
    let jobs = pull_jobs(&env, 2).await;
    publish(
        &env.js,
        subjects::rewards("redo"),
        &jobs[0].job_id,
        &reward(&jobs[0]),
    )
    .await;

    let d = study
        .next_delivery(Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((d.feed, d.delivered()), (Feed::Reward, 1));
    let step = study.process(&d).await.unwrap();
    assert_eq!(
        step,
        Step::Counted {
            job_id: jobs[0].job_id.clone(),
            rewards: 1
        }
    );
    // "Crash": saved, not acknowledged, outbox (the Reward event, job 3) not published.
    drop(d);
    drop(study);
    assert_eq!(env.state("redo").await.rewards.len(), 1);

    let mut study = Study::load(&app, "redo").await.unwrap().unwrap();
    study.flush().await.unwrap();
    study.attach().await.unwrap();
    let d = study
        .next_delivery(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the unacknowledged reward comes back");
    assert_eq!(d.delivered(), 2, "a JetStream redelivery");
    let step = study.handle(d).await.unwrap();
    assert!(
        matches!(&step, Step::Ignored { why, .. } if why.contains("already counted")),
        "{step:?}"
    );
    assert_eq!(study.state.rewards.len(), 1);
    assert_eq!(env.state("redo").await.rewards.len(), 1);

    // The job the first reward released went out exactly once.
    let third = pull_jobs(&env, 1).await;
    assert_eq!(third[0].job_id, "redo-0003");
    assert!(
        runtime::pull_one(
            &runtime::consumer(&env.js, subjects::durable::TRAINERS)
                .await
                .unwrap(),
            Duration::from_millis(300)
        )
        .await
        .unwrap()
        .is_none()
    );
    let events = events_until_rewards(&env.js, "redo", 1).await;
    assert_eq!(kinds(&events)["reward"], 1);
}

fn fake_job(study: &str, index: u32) -> TrainJob {
    TrainJob {
        schema: SCHEMA_VERSION,
        study: study.into(),
        job_id: study::job_id(study, index),
        index,
        dataset_id: DATASET.into(),
        strategy: Default::default(),
        training: Default::default(),
        seed: 0,
        final_model: None,
        validation: None,
    }
}

/// Pulls `n` jobs from the trainers' consumer and acks them.
pub async fn pull_jobs(env: &Env, n: usize) -> Vec<TrainJob> {
    let consumer = runtime::consumer(&env.js, subjects::durable::TRAINERS)
        .await
        .unwrap();
    let mut jobs = Vec::new();
    while jobs.len() < n {
        let msg = runtime::pull_one(&consumer, Duration::from_secs(5))
            .await
            .unwrap()
            .expect("a job");
        jobs.push(protocol::decode::<TrainJob>(&msg.payload).unwrap());
        msg.double_ack().await.unwrap();
    }
    jobs
}
