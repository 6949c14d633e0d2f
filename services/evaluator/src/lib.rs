//! The evaluator service: consumes `Trained` from the durable consumer `evaluators`, runs
//! sliding-window inference of the checkpoint over the dataset's validation cases, and
//! publishes the `Reward` (Dice per case and class and their mean; which trainer trained the
//! job and how long training and evaluation took) on `segtune.rewards.<study>` with
//! `Nats-Msg-Id` = job id, then acks.

use std::{future::Future, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind};
use engine::{DatasetCache, JobError};
use protocol::{JobFailed, Reward, SCHEMA_VERSION, Trained, subjects};
use runtime::Worked;
use storage::DynStore;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "segtune-evaluator",
    about = "Scores trained models by validation Dice"
)]
pub struct Settings {
    /// NATS server URL.
    #[arg(long, env = "SEGTUNE_NATS", default_value = runtime::DEFAULT_NATS)]
    pub nats: String,
    /// Object store URL (path, file:///, s3://bucket/prefix, memory://).
    #[arg(long, env = "SEGTUNE_STORE", default_value = storage::DEFAULT_STORE)]
    pub store: String,
    /// Compute device: cpu, or cuda / cuda:N in a build with the `cuda` feature.
    #[arg(long, env = "SEGTUNE_DEVICE", default_value = "cpu")]
    pub device: String,
}

pub struct App {
    pub js: jetstream::Context,
    pub store: DynStore,
    pub device: segmodel::candle_core::Device,
    pub cache: DatasetCache,
    pub worker: String,
}

impl App {
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        let device = engine::device(&settings.device)?;
        let store = storage::open(&settings.store)?;
        let client = runtime::connect(&settings.nats, "segtune-evaluator").await?;
        let js = jetstream::new(client);
        runtime::provision_with_retry(&js, None).await?;
        Ok(Self {
            js,
            store,
            device,
            cache: DatasetCache::default(),
            worker: runtime::worker_name("evaluator"),
        })
    }
}

#[derive(Debug, PartialEq)]
pub enum Outcome {
    Idle,
    Rewarded { job_id: String, mean: f64 },
    DeadLettered { job_id: String },
    Retried { job_id: String },
    Interrupted,
}

pub async fn run(app: App, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let consumer = runtime::consumer(&app.js, subjects::durable::EVALUATORS).await?;
    tokio::pin!(shutdown);
    tracing::info!(worker = %app.worker, device = ?app.device, "evaluator ready");
    loop {
        match handle_next(&app, &consumer, shutdown.as_mut()).await {
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
    if let Err(e) = app.js.client().flush().await {
        tracing::warn!(error = %e, "flushing acks on shutdown failed");
    }
    tracing::info!("evaluator stopped");
    Ok(())
}

pub async fn handle_next(
    app: &App,
    consumer: &jetstream::consumer::PullConsumer,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> anyhow::Result<Outcome> {
    let msg = tokio::select! {
        m = runtime::pull_one(consumer, Duration::from_secs(5)) => m?,
        _ = &mut shutdown => return Ok(Outcome::Interrupted),
    };
    let Some(msg) = msg else {
        return Ok(Outcome::Idle);
    };
    let attempt = runtime::delivery_attempt(&msg);
    let failed = |study: &str, job_id: &str, reason: String| JobFailed {
        schema: SCHEMA_VERSION,
        study: study.to_string(),
        job_id: job_id.to_string(),
        reason,
        original_subject: msg.subject.to_string(),
        deliveries: attempt,
        worker: app.worker.clone(),
    };
    let trained: Trained = match protocol::decode(&msg.payload) {
        Ok(t) => t,
        Err(e) => {
            let study = msg.subject.rsplit('.').next().unwrap_or("").to_string();
            runtime::dead_letter(&app.js, &msg, &failed(&study, "", e.to_string())).await?;
            return Ok(Outcome::DeadLettered {
                job_id: String::new(),
            });
        }
    };
    tracing::info!(job = %trained.job_id, "evaluating");
    // The consumer's AckWait (the controller's `--job-ack-wait-secs`) times the progress acks.
    let ack_wait = runtime::consumer_ack_wait(consumer).await;
    let work = score(app, &trained);
    let result = match runtime::work_with_progress_acks(&msg, ack_wait, work, shutdown).await {
        Worked::Done(r) => r,
        Worked::Interrupted => return Ok(Outcome::Interrupted),
    };
    match result {
        Ok(reward) => {
            let mean = reward.mean;
            runtime::publish(
                &app.js,
                subjects::rewards(&trained.study),
                Some(&trained.job_id),
                protocol::encode(&reward)?,
            )
            .await
            .context("publishing Reward")?;
            msg.double_ack()
                .await
                .map_err(|e| anyhow::anyhow!("ack failed: {e}"))?;
            tracing::info!(job = %trained.job_id, dice = mean, "reward published");
            Ok(Outcome::Rewarded {
                job_id: trained.job_id,
                mean,
            })
        }
        Err(JobError::Permanent(reason)) => {
            let f = failed(&trained.study, &trained.job_id, reason);
            runtime::dead_letter(&app.js, &msg, &f).await?;
            Ok(Outcome::DeadLettered {
                job_id: trained.job_id,
            })
        }
        Err(JobError::Transient(reason)) => {
            tracing::warn!(job = %trained.job_id, %reason, "transient failure; retrying later");
            msg.ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await
                .map_err(|e| anyhow::anyhow!("nak failed: {e}"))?;
            Ok(Outcome::Retried {
                job_id: trained.job_id,
            })
        }
        Err(JobError::Cancelled) => Ok(Outcome::Interrupted),
    }
}

async fn score(app: &App, t: &Trained) -> Result<Reward, JobError> {
    let started = std::time::Instant::now();
    let data = app.cache.get(&app.store, &t.dataset_id).await?;
    let ckpt = storage::get(&app.store, &t.checkpoint_key)
        .await
        .map_err(|e| {
            if e.is_transient() {
                JobError::Transient(e.to_string())
            } else {
                JobError::Permanent(format!("checkpoint: {e}"))
            }
        })?;
    let device = app.device.clone();
    let training = t.training.clone();
    let eval =
        tokio::task::spawn_blocking(move || engine::evaluate(&data, &training, &ckpt, &device))
            .await
            .map_err(|e| JobError::Transient(format!("evaluation task: {e}")))??;
    Ok(Reward {
        schema: SCHEMA_VERSION,
        study: t.study.clone(),
        job_id: t.job_id.clone(),
        index: t.index,
        strategy: t.strategy.clone(),
        per_case: eval.per_case,
        per_class: eval.per_class,
        mean: eval.mean,
        checkpoint_key: t.checkpoint_key.clone(),
        trainer: t.worker.clone(),
        attempt: t.attempt,
        train_seconds: t.train_seconds,
        final_loss: t.final_loss,
        eval_seconds: started.elapsed().as_secs_f64(),
    })
}
