//! The loop every worker service runs (preprocessor, trainer, evaluator): pull one message
//! when idle, decode it or dead-letter it, do the work under a lease (in-progress acks, a nak
//! on shutdown), then settle the message by what the work says — ack, dead letter + Term,
//! or Nak. The services say only what their work is ([`Handler`]); how a message is
//! acknowledged is decided here, once.
//!
//! The handler is a trait whose methods return `impl Future + Send` rather than closures:
//! the serve loop borrows the handler and the job across awaits and the services spawn it,
//! and a trait states the `Send` bound once where closures returning borrowed futures cannot.

use std::{
    fmt::Debug,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use protocol::{JobFailed, SCHEMA_VERSION};
use serde::de::DeserializeOwned;

use crate::{Lease, Leased};

/// How long one pull waits for a message before the step reports [`Outcome::Idle`].
pub const POLL: Duration = Duration::from_secs(5);

/// How long a job naked for a transient failure waits before it is redelivered.
pub const RETRY_DELAY: Duration = Duration::from_secs(5);

/// Where a worker's dead letters go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetters {
    /// `segtune.deadletter.<study>`: the job's study (for a message that did not decode, the
    /// last token of its subject; `_unknown` if that is no valid study).
    PerStudy,
    /// One subject for all, with no study named (preprocess requests belong to no study).
    Subject(&'static str),
}

/// What the work on one job decided; the serve loop acts on the message accordingly.
#[derive(Debug)]
pub enum Verdict<T> {
    /// The result is stored and published: the message is double-acked.
    Done(T),
    /// The job failed for good and the handler has already told whoever waits for it (a
    /// `DatasetFailed`): a dead letter records the failure, then the message is
    /// double-acked like a done one.
    Answered { outcome: T, reason: String },
    /// The job will fail again on any replica (invalid strategy, missing input): dead letter,
    /// then Term, so nobody waits for it forever and it is never redelivered.
    Permanent(String),
    /// The job may pass later (store unavailable): Nak, redelivered after [`RETRY_DELAY`].
    Transient(String),
    /// The work stopped because it was cancelled: the message is left alone.
    Interrupted,
    /// A later delivery of this job exists (this worker was stalled past AckWait): the job is
    /// abandoned without acking, storing or publishing anything.
    Superseded,
}

/// What one step ([`handle_next`]) did.
#[derive(Debug, PartialEq)]
pub enum Outcome<T> {
    /// No message within [`POLL`].
    Idle,
    /// Acked: the handler's account of it.
    Done(T),
    /// Dead-lettered and terminated (`job_id` empty for a message that did not decode).
    DeadLettered { job_id: String },
    /// Naked for a transient failure.
    Retried { job_id: String },
    /// Abandoned: the job was redelivered to another worker while this one was stalled.
    Superseded { job_id: String, attempt: u64 },
    /// Shutdown was requested; a job in hand has been naked so another replica takes it.
    Interrupted,
}

/// One worker service's work. The serve loop owns the message; the handler sees the decoded
/// job and says what became of it ([`Verdict`]).
pub trait Handler: Sync {
    /// The message consumed.
    type Job: DeserializeOwned + Send + Sync;
    /// What the work under the lease produces (a result not yet published).
    type Worked: Send;
    /// A finished job, as the step reports it.
    type Done: Debug + Send;
    /// Names the logs ("trainer ready") and the NATS connection (`segtune-<role>`).
    const ROLE: &'static str;
    /// The durable pull consumer served (from `protocol::subjects::durable`).
    const DURABLE: &'static str;
    /// Where dead letters go; default: the job's study's.
    const DEAD_LETTERS: DeadLetters = DeadLetters::PerStudy;

    fn js(&self) -> &jetstream::Context;
    /// This replica's name, written into dead letters.
    fn worker(&self) -> &str;
    /// The job's study and id, for its dead letter.
    fn key(job: &Self::Job) -> (&str, &str);

    /// How the delivery is held while the work runs; default: the consumer's AckWait as the
    /// server has it now (the controller may have changed it), with progress acks.
    fn lease(&self, consumer: &PullConsumer) -> impl Future<Output = Lease> + Send {
        async move {
            Lease {
                ack_wait: crate::consumer_ack_wait(consumer).await,
                progress_acks: true,
            }
        }
    }

    /// Whether this delivery of `job` is still the live one (checked at every progress tick);
    /// default: always.
    fn still_live(
        &self,
        _job: &Self::Job,
        _attempt: u64,
    ) -> impl Future<Output = anyhow::Result<bool>> + Send {
        async { Ok(true) }
    }

    /// Called for a message that does not decode, before it is dead-lettered: answers
    /// whoever may wait for it and returns the dead letter's reason (default: the error).
    fn undecodable(
        &self,
        _msg: &jetstream::Message,
        error: &protocol::DecodeError,
    ) -> impl Future<Output = anyhow::Result<String>> + Send {
        let reason = error.to_string();
        async move { Ok(reason) }
    }

    /// The work, run under the lease: dropped on shutdown or when superseded, after which
    /// `cancel` is set (for work that runs on a blocking thread).
    fn work(
        &self,
        job: &Self::Job,
        attempt: u64,
        cancel: Arc<AtomicBool>,
    ) -> impl Future<Output = Self::Worked> + Send;

    /// After the work: stores or publishes its result and says what became of the job. An
    /// error leaves the message unacked (redelivered after AckWait) and the loop retries.
    fn finish(
        &self,
        job: &Self::Job,
        attempt: u64,
        worked: Self::Worked,
    ) -> impl Future<Output = anyhow::Result<Verdict<Self::Done>>> + Send;
}

/// Connects as `segtune-<role>` (waiting for the broker) and provisions the topology.
pub async fn connect(nats_url: &str, role: &str) -> anyhow::Result<jetstream::Context> {
    let client = crate::connect(nats_url, &format!("segtune-{role}")).await?;
    let js = jetstream::new(client);
    crate::provision_with_retry(&js, None).await?;
    Ok(js)
}

/// Serves `H::DURABLE` one message at a time until `shutdown` resolves. A step that fails
/// (broker unreachable, a publish not acknowledged) is retried after a second; its message,
/// unacked, comes back after AckWait.
pub async fn serve<H: Handler>(
    handler: &H,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let consumer = crate::consumer(handler.js(), H::DURABLE).await?;
    tokio::pin!(shutdown);
    tracing::info!(worker = %handler.worker(), "{} ready", H::ROLE);
    loop {
        match handle_next(handler, &consumer, shutdown.as_mut()).await {
            Ok(Outcome::Interrupted) => break,
            Ok(o) => tracing::debug!(outcome = ?o, "step"),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "step failed; retrying shortly");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = &mut shutdown => break,
                }
            }
        }
    }
    // Acks and naks are queued, not sent: flush them before the connection goes away (a nak
    // lost here would leave the job to wait out its AckWait instead of moving on at once).
    if let Err(e) = handler.js().client().flush().await {
        tracing::warn!(error = %e, "flushing acks on shutdown failed");
    }
    tracing::info!("{} stopped", H::ROLE);
    Ok(())
}

/// One step: pulls one message (waiting up to [`POLL`]) and takes it to its end.
pub async fn handle_next<H: Handler>(
    handler: &H,
    consumer: &PullConsumer,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> anyhow::Result<Outcome<H::Done>> {
    let msg = tokio::select! {
        m = crate::pull_one(consumer, POLL) => m?,
        _ = &mut shutdown => return Ok(Outcome::Interrupted),
    };
    let Some(msg) = msg else {
        return Ok(Outcome::Idle);
    };
    let attempt = crate::delivery_attempt(&msg);
    let job: H::Job = match protocol::decode(&msg.payload) {
        Ok(job) => job,
        Err(e) => {
            let reason = handler.undecodable(&msg, &e).await?;
            let study = match H::DEAD_LETTERS {
                DeadLetters::PerStudy => msg.subject.rsplit('.').next().unwrap_or(""),
                DeadLetters::Subject(_) => "",
            };
            dead_letter(handler, &msg, study, "", reason).await?;
            msg.ack_with(AckKind::Term)
                .await
                .map_err(|e| anyhow::anyhow!("term failed: {e}"))?;
            return Ok(Outcome::DeadLettered {
                job_id: String::new(),
            });
        }
    };
    let (study, job_id) = H::key(&job);
    let lease = handler.lease(consumer).await;
    let cancel = Arc::new(AtomicBool::new(false));
    let still_live = || handler.still_live(&job, attempt);
    let work = handler.work(&job, attempt, cancel.clone());
    let verdict = match crate::work_under_lease(&msg, lease, still_live, work, shutdown).await {
        Leased::Done(worked) => handler.finish(&job, attempt, worked).await?,
        Leased::Interrupted => {
            cancel.store(true, Ordering::Relaxed);
            return Ok(Outcome::Interrupted);
        }
        Leased::Superseded => Verdict::Superseded,
    };
    match verdict {
        Verdict::Done(done) => {
            double_ack(&msg).await?;
            Ok(Outcome::Done(done))
        }
        Verdict::Answered { outcome, reason } => {
            dead_letter(handler, &msg, study, job_id, reason).await?;
            double_ack(&msg).await?;
            Ok(Outcome::Done(outcome))
        }
        Verdict::Permanent(reason) => {
            dead_letter(handler, &msg, study, job_id, reason).await?;
            msg.ack_with(AckKind::Term)
                .await
                .map_err(|e| anyhow::anyhow!("term failed: {e}"))?;
            Ok(Outcome::DeadLettered {
                job_id: job_id.to_string(),
            })
        }
        Verdict::Transient(reason) => {
            tracing::warn!(job = %job_id, %reason, "transient failure; job goes back to the queue");
            msg.ack_with(AckKind::Nak(Some(RETRY_DELAY)))
                .await
                .map_err(|e| anyhow::anyhow!("nak failed: {e}"))?;
            Ok(Outcome::Retried {
                job_id: job_id.to_string(),
            })
        }
        Verdict::Interrupted => Ok(Outcome::Interrupted),
        Verdict::Superseded => {
            cancel.store(true, Ordering::Relaxed);
            tracing::warn!(
                job = %job_id,
                attempt,
                "job superseded: it was redelivered to another {} while this one was stalled; \
                 abandoning it (nothing stored, published or acked)",
                H::ROLE
            );
            Ok(Outcome::Superseded {
                job_id: job_id.to_string(),
                attempt,
            })
        }
    }
}

async fn double_ack(msg: &jetstream::Message) -> anyhow::Result<()> {
    msg.double_ack()
        .await
        .map_err(|e| anyhow::anyhow!("ack failed: {e}"))
}

/// Publishes the dead letter of `msg` (awaiting the server's ack) to where `H` files them.
/// The message itself is the caller's to settle, after this returned: never lost between.
async fn dead_letter<H: Handler>(
    handler: &H,
    msg: &jetstream::Message,
    study: &str,
    job_id: &str,
    reason: String,
) -> anyhow::Result<()> {
    let failed = JobFailed {
        schema: SCHEMA_VERSION,
        study: study.to_string(),
        job_id: job_id.to_string(),
        reason,
        original_subject: msg.subject.to_string(),
        deliveries: crate::delivery_attempt(msg),
        worker: handler.worker().to_string(),
    };
    let subject = match H::DEAD_LETTERS {
        DeadLetters::PerStudy => protocol::subjects::deadletter(&crate::dead_letter_study(study)),
        DeadLetters::Subject(subject) => subject.to_string(),
    };
    crate::publish_dead_letter(handler.js(), subject, &failed, crate::message_origin(msg)).await?;
    tracing::warn!(job = %failed.job_id, reason = %failed.reason, "job dead-lettered");
    Ok(())
}
