//! Work that was delivered MaxDeliver times and never answered: dead-lettered here.
//!
//! A job whose trainer crashes on it every time (an out-of-memory kill, a segfault in a
//! kernel, a host that dies) is never acked, never naked and never dead-lettered by a worker:
//! JetStream redelivers it after each AckWait until the consumer's MaxDeliver is reached and
//! then stops. Without this, the study would wait for its reward forever.
//!
//! When a message passes MaxDeliver, nats-server publishes an advisory on
//! `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`; the `ADVISORIES` stream
//! keeps them (a controller that is down at that moment reads them when it is back) and the
//! controller's durable consumer reads them here. For each one it fetches the message from its
//! stream by sequence and answers for the worker that never did:
//! - a job (`JOBS`) or a trained model (`TRAINED`): a [`JobFailed`] on
//!   `segtune.deadletter.<study>` naming the original subject and the delivery count, which the
//!   study counts as a failure and replaces;
//! - a preprocess request: a [`DatasetFailed`] on `segtune.datasets._unknown`, which fails the
//!   studies waiting for it;
//! - a submission: logged.
//!
//! Then the message is deleted from its work-queue stream (nobody will ever ack it) and the
//! advisory acked. Each step is idempotent (the dead letter's message id is the one a worker
//! would use), so a controller killed half-way does it again on redelivery.

use std::time::Duration;

use async_nats::jetstream;
use protocol::{
    CaseError, DatasetEvent, DatasetFailed, JobFailed, PredictRequest, Predicted,
    PreprocessRequest, SCHEMA_VERSION, TrainJob, Trained, subjects,
};
use serde::Deserialize;

/// What the controller puts in `JobFailed::worker` for dead letters it writes itself.
pub const WORKER: &str = "controller (max deliveries)";

/// The fields of nats-server's `io.nats.jetstream.advisory.v1.max_deliver` advisory we use.
#[derive(Debug, Clone, Deserialize)]
pub struct MaxDeliveriesAdvisory {
    pub stream: String,
    pub consumer: String,
    pub stream_seq: u64,
    pub deliveries: u64,
}

/// What [`handle`] did with one advisory.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A `JobFailed` for `job_id` was published (and the message deleted).
    DeadLettered { study: String, job_id: String },
    /// A `DatasetFailed` for the preprocess request was published.
    DatasetFailed { request_id: String },
    /// A `Predicted` failing every input of the predict request was published.
    PredictFailed { request_id: String },
    /// The message was gone already (acked late, or handled before a restart).
    Gone,
    /// Logged only (a submission, or a stream this controller does not own).
    Logged,
}

/// Reads advisories until `stop` turns true. Errors (broker down) are retried with backoff.
pub async fn run(js: jetstream::Context, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut delay = Duration::from_millis(500);
    loop {
        let consumer =
            match runtime::consumer(&js, subjects::durable::CONTROLLER_MAX_DELIVERIES).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "cannot open the max-deliveries consumer; retrying"
                    );
                    if wait_or_stop(&mut stop, &mut delay).await {
                        return;
                    }
                    continue;
                }
            };
        delay = Duration::from_millis(500);
        loop {
            let next = tokio::select! {
                m = runtime::pull_one(&consumer, Duration::from_secs(5)) => m,
                _ = stop.wait_for(|s| *s) => return,
            };
            let msg = match next {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "max-deliveries pull failed; retrying"
                    );
                    break;
                }
            };
            match handle_message(&js, &msg.payload).await {
                Ok(outcome) => {
                    tracing::debug!(?outcome, "max-deliveries advisory handled");
                    if let Err(e) = msg.double_ack().await {
                        tracing::warn!(error = %e, "max-deliveries advisory ack failed");
                    }
                }
                Err(e) => {
                    // Left unacked: redelivered after AckWait and tried again.
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "max-deliveries advisory not handled; will retry"
                    );
                }
            }
        }
        if wait_or_stop(&mut stop, &mut delay).await {
            return;
        }
    }
}

/// Sleeps `delay` (doubling it, up to 30 s); true when `stop` came first.
async fn wait_or_stop(stop: &mut tokio::sync::watch::Receiver<bool>, delay: &mut Duration) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(*delay) => false,
        _ = stop.wait_for(|s| *s) => true,
    };
    *delay = (*delay * 2).min(Duration::from_secs(30));
    stopped
}

/// Handles one advisory payload. An advisory that is not JSON of the expected shape is
/// logged and dropped (`Logged`): retrying would not change it.
pub async fn handle_message(js: &jetstream::Context, payload: &[u8]) -> anyhow::Result<Outcome> {
    let advisory: MaxDeliveriesAdvisory = match serde_json::from_slice(payload) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, payload = %String::from_utf8_lossy(payload), "unreadable max-deliveries advisory; dropped");
            return Ok(Outcome::Logged);
        }
    };
    handle(js, &advisory).await
}

/// Dead-letters the message `advisory` names, then deletes it from its stream.
pub async fn handle(
    js: &jetstream::Context,
    advisory: &MaxDeliveriesAdvisory,
) -> anyhow::Result<Outcome> {
    use subjects::stream;
    let owned = [
        stream::JOBS,
        stream::TRAINED,
        stream::PREPROCESS,
        stream::SUBMISSIONS,
        stream::PREDICT,
    ];
    if !owned.contains(&advisory.stream.as_str()) {
        tracing::warn!(
            ?advisory,
            "max deliveries reached on a stream segtune does not own"
        );
        return Ok(Outcome::Logged);
    }
    let s = js
        .get_stream(&advisory.stream)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open stream {}: {e}", advisory.stream))?;
    let message = match s.get_raw_message(advisory.stream_seq).await {
        Ok(m) => m,
        Err(e)
            if matches!(
                e.kind(),
                jetstream::stream::RawMessageErrorKind::NoMessageFound
            ) =>
        {
            tracing::debug!(?advisory, "message past max deliveries is gone already");
            return Ok(Outcome::Gone);
        }
        Err(e) => anyhow::bail!(
            "cannot read message {} of {}: {e}",
            advisory.stream_seq,
            advisory.stream
        ),
    };
    let reason = format!(
        "delivered {} times (MaxDeliver of consumer {}) and never acknowledged: the worker \
         died, was killed or stalled past AckWait on every attempt",
        advisory.deliveries, advisory.consumer
    );
    let subject = message.subject.to_string();
    let outcome = match advisory.stream.as_str() {
        stream::JOBS | stream::TRAINED => {
            let (study, job_id) = if advisory.stream == stream::JOBS {
                protocol::decode::<TrainJob>(&message.payload).map(|j| (j.study, j.job_id))
            } else {
                protocol::decode::<Trained>(&message.payload).map(|t| (t.study, t.job_id))
            }
            .unwrap_or_else(|_| {
                // Workers dead-letter undecodable payloads on first sight, so this is rare:
                // the study is still in the subject.
                let study = subject.rsplit('.').next().unwrap_or_default().to_string();
                (study, String::new())
            });
            let failed = JobFailed {
                schema: SCHEMA_VERSION,
                study: study.clone(),
                job_id: job_id.clone(),
                reason: reason.clone(),
                original_subject: subject.clone(),
                deliveries: advisory.deliveries,
                worker: WORKER.to_string(),
            };
            let origin = Some((advisory.stream.clone(), advisory.stream_seq));
            runtime::publish_dead_letter(
                js,
                subjects::deadletter(&runtime::dead_letter_study(&study)),
                &failed,
                origin,
            )
            .await?;
            tracing::warn!(%study, job = %job_id, %reason, "job dead-lettered");
            Outcome::DeadLettered { study, job_id }
        }
        stream::PREPROCESS => {
            let request: PreprocessRequest = match protocol::decode(&message.payload) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "undecodable preprocess request past max deliveries");
                    delete(&s, advisory).await?;
                    return Ok(Outcome::Logged);
                }
            };
            let failed = DatasetFailed {
                schema: SCHEMA_VERSION,
                request_id: request.request_id.clone(),
                dataset_id: None,
                source: request.source.clone(),
                errors: vec![CaseError {
                    case: String::new(),
                    file: String::new(),
                    reason: reason.replace("the worker", "the preprocessor"),
                }],
            };
            runtime::publish(
                js,
                subjects::DATASETS_UNKNOWN.to_string(),
                Some(&format!("failed-{}", request.request_id)),
                protocol::encode(&DatasetEvent::Failed(failed))?,
            )
            .await?;
            dead_letter_request(
                js,
                subjects::DEADLETTER_PREPROCESS,
                &request.request_id,
                &reason,
                &subject,
                advisory,
            )
            .await?;
            tracing::warn!(request = %request.request_id, %reason, "preprocess request failed");
            Outcome::DatasetFailed {
                request_id: request.request_id,
            }
        }
        stream::PREDICT => {
            let request = match protocol::decode::<PredictRequest>(&message.payload) {
                Ok(r) if subjects::check_token("request_id", &r.request_id).is_ok() => r,
                _ => {
                    tracing::error!("unanswerable predict request past max deliveries");
                    delete(&s, advisory).await?;
                    return Ok(Outcome::Logged);
                }
            };
            let reason = reason.replace("the worker", "the evaluator");
            let answer = Predicted {
                schema: SCHEMA_VERSION,
                request_id: request.request_id.clone(),
                model: request.model.clone(),
                outputs: Vec::new(),
                errors: vec![CaseError {
                    case: String::new(),
                    file: String::new(),
                    reason: reason.clone(),
                }],
                worker: WORKER.to_string(),
                seconds: 0.0,
            };
            runtime::publish(
                js,
                subjects::predictions(&request.request_id),
                Some(&request.request_id),
                protocol::encode(&answer)?,
            )
            .await?;
            dead_letter_request(
                js,
                subjects::DEADLETTER_PREDICT,
                &request.request_id,
                &reason,
                &subject,
                advisory,
            )
            .await?;
            tracing::warn!(request = %request.request_id, %reason, "predict request failed");
            Outcome::PredictFailed {
                request_id: request.request_id,
            }
        }
        _ => {
            tracing::error!(%subject, %reason, "a submission could not be handled; dropped");
            Outcome::Logged
        }
    };
    delete(&s, advisory).await?;
    Ok(outcome)
}

/// The dead letter of a request that belongs to no study (preprocess, predict), next to the
/// answer its requester reads.
async fn dead_letter_request(
    js: &jetstream::Context,
    dead_letters: &str,
    request_id: &str,
    reason: &str,
    original_subject: &str,
    advisory: &MaxDeliveriesAdvisory,
) -> anyhow::Result<()> {
    let failed = JobFailed {
        schema: SCHEMA_VERSION,
        study: String::new(),
        job_id: request_id.to_string(),
        reason: reason.to_string(),
        original_subject: original_subject.to_string(),
        deliveries: advisory.deliveries,
        worker: WORKER.to_string(),
    };
    runtime::publish_dead_letter(
        js,
        dead_letters.to_string(),
        &failed,
        Some((advisory.stream.clone(), advisory.stream_seq)),
    )
    .await
}

/// Removes the message from its work-queue stream: nobody will ack it any more.
async fn delete(
    s: &jetstream::stream::Stream,
    advisory: &MaxDeliveriesAdvisory,
) -> anyhow::Result<()> {
    let Err(e) = s.delete_message(advisory.stream_seq).await else {
        return Ok(());
    };
    // Gone in the meantime (a late ack): what we wanted. Asked of the stream rather than read
    // from the error, whose code and text differ with how the message went away; anything
    // else leaves the advisory unacked, to be retried.
    match s.get_raw_message(advisory.stream_seq).await {
        Err(g)
            if matches!(
                g.kind(),
                jetstream::stream::RawMessageErrorKind::NoMessageFound
            ) =>
        {
            Ok(())
        }
        _ => anyhow::bail!(
            "cannot delete message {} of {}: {e}",
            advisory.stream_seq,
            advisory.stream
        ),
    }
}
