//! Retraining outside the search: `segtune study finalize` and `segtune study confirm` run
//! strategies as ordinary `TrainJob`s under a study id of their own (`<study>-final`,
//! `<study>-confirm`; `study::retrain`), which the controller publishes for the CLI but does
//! not search, so any trainer replica takes them, the evaluator scores them, and the study's
//! own reward stream keeps the search's jobs only.
//!
//! [`run_jobs`] listens first (progress is core NATS, best effort; rewards and dead letters
//! are replayed from their streams, so nothing is missed), then submits through
//! [`publish_jobs`], the one place these commands send jobs, then collects each job's
//! `Reward` or `JobFailed`.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt as _;
use protocol::{JobFailed, Progress, Reward, TrainJob, subjects};

use super::bus;

/// Hands retraining jobs of the study `source` to the controller, which checks that they are
/// that study's and publishes them, each with its job id as `Nats-Msg-Id` (or dead-letters
/// each with its reason, which [`run_jobs`] reports as the job's failure). The one place these
/// commands send jobs; the operator's broker role needs no right to publish jobs. The request
/// goes out once per call, under a message id made of the job ids, so a retried publish is not
/// trained twice.
pub async fn publish_jobs(
    js: &jetstream::Context,
    source: &str,
    jobs: &[TrainJob],
) -> anyhow::Result<()> {
    let ids: Vec<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
    let req = protocol::RetrainRequest {
        schema: protocol::SCHEMA_VERSION,
        source_study: source.to_string(),
        jobs: jobs.to_vec(),
    };
    runtime::publish(
        js,
        subjects::SUBMISSIONS.to_string(),
        Some(&format!("retrain-{}", ids.join(","))),
        protocol::encode(&req)?,
    )
    .await
    .with_context(|| format!("submitting {} retraining job(s) of {source}", jobs.len()))?;
    Ok(())
}

/// What became of one job: the evaluator's reward, or the dead letter of its failure.
pub type Outcome = Result<Reward, JobFailed>;

/// Runs `jobs` (all of one study id, `study`) and waits for every one's outcome, printing
/// their progress to stderr. Outcomes come back in the order of `jobs`. Past `timeout` it
/// gives up with an error naming the jobs still out (they stay queued).
pub async fn run_jobs(
    client: &async_nats::Client,
    js: &jetstream::Context,
    source: &str,
    study: &str,
    jobs: &[TrainJob],
    timeout: Option<Duration>,
) -> anyhow::Result<Vec<Outcome>> {
    if let Some(other) = jobs.iter().find(|j| j.study != study) {
        anyhow::bail!(
            "job {} belongs to study {}, not {study}",
            other.job_id,
            other.study
        );
    }
    let mut progress = client
        .subscribe(subjects::progress_all(study))
        .await
        .with_context(|| format!("subscribing to the progress of {study}"))?;
    let (mut results, _) =
        bus::replay_consumer(js, subjects::stream::REWARDS, &subjects::rewards(study)).await?;
    let (mut failures, _) = bus::replay_consumer(
        js,
        subjects::stream::DEADLETTER,
        &subjects::deadletter(study),
    )
    .await?;
    publish_jobs(js, source, jobs).await?;
    if !bus::await_pullers(js, subjects::durable::TRAINERS, 1, Duration::from_secs(6)).await? {
        eprintln!(
            "note: no trainer is pulling jobs right now; the jobs wait in the queue until one \
             does (`segtune up`, or scale the trainers)"
        );
    }

    let wanted: BTreeMap<&str, usize> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.job_id.as_str(), i))
        .collect();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; jobs.len()];
    let mut left = jobs.len();
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    while left > 0 {
        let timeout_fut = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let (i, outcome) = tokio::select! {
            Some(msg) = progress.next() => {
                if let Ok(p) = protocol::decode::<Progress>(&msg.payload)
                    && wanted.contains_key(p.job_id.as_str())
                {
                    eprintln!(
                        "{}  epoch {}/{}  loss {:.4}  {:.1} patches/s  ({})",
                        p.job_id, p.epoch, p.epochs, p.loss, p.patches_per_sec, p.worker
                    );
                }
                continue;
            }
            Some(msg) = results.next() => {
                let msg = msg.with_context(|| format!("reading the rewards of {study}"))?;
                let Ok(r) = protocol::decode::<Reward>(&msg.payload) else { continue };
                let Some(&i) = wanted.get(r.job_id.as_str()) else { continue };
                (i, Ok(r))
            }
            Some(msg) = failures.next() => {
                let msg = msg.with_context(|| format!("reading the dead letters of {study}"))?;
                let Ok(f) = protocol::decode::<JobFailed>(&msg.payload) else { continue };
                let Some(&i) = wanted.get(f.job_id.as_str()) else { continue };
                (i, Err(f))
            }
            _ = timeout_fut => {
                let out: Vec<&str> = jobs
                    .iter()
                    .zip(&outcomes)
                    .filter(|(_, o)| o.is_none())
                    .map(|(j, _)| j.job_id.as_str())
                    .collect();
                anyhow::bail!(
                    "{} of {} jobs did not finish within {} s ({}); they stay queued",
                    out.len(),
                    jobs.len(),
                    timeout.unwrap_or_default().as_secs(),
                    out.join(", ")
                );
            }
        };
        if outcomes[i].is_none() {
            match &outcome {
                Ok(r) => eprintln!("{}: Dice {:.4}", r.job_id, r.mean),
                Err(f) => eprintln!("{}: failed: {}", f.job_id, f.reason),
            }
            outcomes[i] = Some(outcome);
            left -= 1;
        }
    }
    Ok(outcomes.into_iter().flatten().collect())
}
