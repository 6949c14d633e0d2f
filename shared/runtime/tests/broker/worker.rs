//! The worker loop's settling of a message, against a real nats-server: what a handler's
//! verdict does to the message (ack, Term, Nak, nothing) and to the dead letters.

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer::PullConsumer};
use protocol::{JobFailed, subjects};
use runtime::worker::{Handler, Outcome, Verdict, handle_next};
use serde::{Deserialize, Serialize};
use test_support::NatsServer;

/// A job whose `then` says what the test handler's work concludes.
#[derive(Debug, Serialize, Deserialize)]
struct Job {
    study: String,
    job_id: String,
    then: String,
}

struct Tester {
    js: jetstream::Context,
    /// Notified when a job's work starts (for the shutdown test).
    started: Arc<tokio::sync::Notify>,
}

impl Handler for Tester {
    type Job = Job;
    type Worked = ();
    type Done = String;
    const ROLE: &'static str = "tester";
    const DURABLE: &'static str = subjects::durable::TRAINERS;

    fn js(&self) -> &jetstream::Context {
        &self.js
    }
    fn worker(&self) -> &str {
        "tester-1"
    }
    fn key(job: &Job) -> (&str, &str) {
        (&job.study, &job.job_id)
    }

    async fn work(&self, job: &Job, _: u64, _: Arc<AtomicBool>) {
        self.started.notify_one();
        if job.then == "hang" {
            std::future::pending::<()>().await;
        }
    }

    async fn finish(&self, job: &Job, _: u64, (): ()) -> anyhow::Result<Verdict<String>> {
        Ok(match job.then.as_str() {
            "done" => Verdict::Done(job.job_id.clone()),
            "answered" => Verdict::Answered {
                outcome: job.job_id.clone(),
                reason: "answered: no such dataset".into(),
            },
            "permanent" => Verdict::Permanent("invalid strategy".into()),
            "transient" => Verdict::Transient("store unavailable".into()),
            "superseded" => Verdict::Superseded,
            other => anyhow::bail!("no verdict {other:?}"),
        })
    }
}

struct Bus {
    _nats: NatsServer,
    js: jetstream::Context,
    consumer: PullConsumer,
    tester: Tester,
}

impl Bus {
    async fn start() -> Self {
        let nats = NatsServer::start();
        let js = jetstream::new(nats.client().await);
        runtime::provision(&js, None).await.unwrap();
        let consumer = runtime::consumer(&js, subjects::durable::TRAINERS)
            .await
            .unwrap();
        let tester = Tester {
            js: js.clone(),
            started: Arc::default(),
        };
        Self {
            _nats: nats,
            js,
            consumer,
            tester,
        }
    }

    /// Publishes a job on `segtune.jobs.<study>`; its stream sequence.
    async fn submit(&self, study: &str, job_id: &str, then: &str) -> u64 {
        let job = Job {
            study: study.into(),
            job_id: job_id.into(),
            then: then.into(),
        };
        self.submit_raw(study, protocol::encode(&job).unwrap())
            .await
    }

    async fn submit_raw(&self, study: &str, payload: Vec<u8>) -> u64 {
        runtime::publish(&self.js, subjects::jobs(study), None, payload)
            .await
            .unwrap()
            .sequence
    }

    async fn step(&self) -> Outcome<String> {
        let never = std::future::pending::<()>();
        tokio::pin!(never);
        handle_next(&self.tester, &self.consumer, never)
            .await
            .unwrap()
    }

    /// Messages left in the JOBS work queue, and deliveries not yet acked.
    async fn jobs_left(&self) -> (u64, usize) {
        let mut stream = self.js.get_stream(subjects::stream::JOBS).await.unwrap();
        let messages = stream.info().await.unwrap().state.messages;
        let mut consumer = self.consumer.clone();
        let pending = consumer.info().await.unwrap().num_ack_pending;
        (messages, pending)
    }

    /// The last dead letter of `study` and its `Nats-Msg-Id`.
    async fn dead_letter(&self, study: &str) -> Option<(JobFailed, String)> {
        let stream = self
            .js
            .get_stream(subjects::stream::DEADLETTER)
            .await
            .unwrap();
        let m = stream
            .get_last_raw_message_by_subject(&subjects::deadletter(study))
            .await
            .ok()?;
        let id = m.headers.get(subjects::MSG_ID_HEADER).unwrap().to_string();
        Some((protocol::decode(&m.payload).unwrap(), id))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_done_job_is_acked_and_leaves_the_queue() {
    let bus = Bus::start().await;
    bus.submit("s1", "s1-0001", "done").await;
    assert_eq!(bus.step().await, Outcome::Done("s1-0001".into()));
    assert_eq!(bus.jobs_left().await, (0, 0));
    assert!(bus.dead_letter("s1").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_is_dead_lettered_then_terminated() {
    let bus = Bus::start().await;
    bus.submit("s1", "s1-0002", "permanent").await;
    assert_eq!(
        bus.step().await,
        Outcome::DeadLettered {
            job_id: "s1-0002".into()
        }
    );
    let (failed, id) = bus.dead_letter("s1").await.expect("a dead letter");
    assert_eq!(id, "dl-s1-0002-1");
    assert_eq!(failed.study, "s1");
    assert_eq!(failed.job_id, "s1-0002");
    assert_eq!(failed.reason, "invalid strategy");
    assert_eq!(failed.original_subject, subjects::jobs("s1"));
    assert_eq!(failed.deliveries, 1);
    assert_eq!(failed.worker, "tester-1");
    // Terminated: gone from the work queue, never redelivered.
    assert_eq!(bus.jobs_left().await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_failure_is_dead_lettered_and_acked() {
    let bus = Bus::start().await;
    bus.submit("s1", "s1-0003", "answered").await;
    assert_eq!(bus.step().await, Outcome::Done("s1-0003".into()));
    let (failed, id) = bus.dead_letter("s1").await.expect("a dead letter");
    assert_eq!(
        (failed.reason.as_str(), id.as_str()),
        ("answered: no such dataset", "dl-s1-0003-1")
    );
    assert_eq!(bus.jobs_left().await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_message_is_dead_lettered_under_the_study_of_its_subject() {
    let bus = Bus::start().await;
    let seq = bus.submit_raw("s2", b"\xc1 not a job".to_vec()).await;
    assert_eq!(
        bus.step().await,
        Outcome::DeadLettered {
            job_id: String::new()
        }
    );
    let (failed, id) = bus.dead_letter("s2").await.expect("a dead letter");
    // No job id to name it by: its place in its stream.
    assert_eq!(id, format!("dl-JOBS-{seq}-1"));
    assert_eq!((failed.study.as_str(), failed.job_id.as_str()), ("s2", ""));
    assert!(failed.reason.contains("Job"), "{}", failed.reason);
    assert_eq!(bus.jobs_left().await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_naked_and_redelivered_after_the_retry_delay() {
    let bus = Bus::start().await;
    bus.submit("s1", "s1-0004", "transient").await;
    assert_eq!(
        bus.step().await,
        Outcome::Retried {
            job_id: "s1-0004".into()
        }
    );
    let naked = Instant::now();
    assert!(bus.dead_letter("s1").await.is_none());
    let again = runtime::pull_one(&bus.consumer, Duration::from_secs(15))
        .await
        .unwrap()
        .expect("redelivered");
    let after = naked.elapsed();
    assert_eq!(runtime::delivery_attempt(&again), 2);
    // Redelivered after the nak's delay, long before the consumer's AckWait.
    let ack_wait = runtime::consumer_ack_wait(&bus.consumer).await;
    assert!(
        after >= runtime::worker::RETRY_DELAY - Duration::from_millis(500) && after < ack_wait,
        "redelivered {after:?} after the nak (AckWait {ack_wait:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_job_is_neither_acked_nor_naked_nor_dead_lettered() {
    let bus = Bus::start().await;
    bus.submit("s1", "s1-0005", "superseded").await;
    assert_eq!(
        bus.step().await,
        Outcome::Superseded {
            job_id: "s1-0005".into(),
            attempt: 1
        }
    );
    // Still held by this (stale) delivery: the live one elsewhere settles it.
    assert_eq!(bus.jobs_left().await, (1, 1));
    assert!(bus.dead_letter("s1").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_the_work_naks_the_job_for_another_replica_at_once() {
    let bus = Bus::start().await;
    bus.submit("s1", "s1-0006", "hang").await;
    let started = bus.tester.started.clone();
    let shutdown = async move { started.notified().await };
    tokio::pin!(shutdown);
    let outcome = handle_next(&bus.tester, &bus.consumer, shutdown)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Interrupted);
    let stopped = Instant::now();
    let again = runtime::pull_one(&bus.consumer, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("handed over at once, not after AckWait");
    assert_eq!(runtime::delivery_attempt(&again), 2);
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "{:?}",
        stopped.elapsed()
    );
    assert!(bus.dead_letter("s1").await.is_none());
}
