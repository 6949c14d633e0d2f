//! The evaluator service: consumes `Trained` from the durable consumer `evaluators`, runs
//! sliding-window inference of the checkpoint over the dataset's validation cases, and
//! publishes the `Reward` (Dice per case and class and their mean; which trainer trained the
//! job and how long training and evaluation took) on `segtune.rewards.<study>` with
//! `Nats-Msg-Id` = job id, then acks. It also serves predict requests ([`predict`]).

pub mod predict;

use std::{
    future::Future,
    sync::{Arc, atomic::AtomicBool},
};

use anyhow::Context as _;
use async_nats::jetstream;
use engine::{DatasetCache, JobError};
use protocol::{Reward, SCHEMA_VERSION, Trained, subjects};
use runtime::worker::{Handler, Verdict};
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
    #[command(flatten)]
    pub cache: runtime::CacheSettings,
}

impl runtime::Validate for Settings {
    fn validate(&self) -> anyhow::Result<()> {
        runtime::ensure_set("--nats", "SEGTUNE_NATS", &self.nats)?;
        runtime::ensure_set("--store", "SEGTUNE_STORE", &self.store)?;
        self.cache.validate()?;
        engine::check_device(&self.device).map_err(|e| anyhow::anyhow!("--device: {e}"))
    }
}

pub struct App {
    pub js: jetstream::Context,
    pub store: DynStore,
    pub device: segmodel::candle_core::Device,
    pub cache: DatasetCache,
    pub worker: String,
    /// Held while a job or a predict request computes: the two take turns on the cores.
    pub compute: tokio::sync::Mutex<()>,
}

impl App {
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        let device = engine::device(&settings.device)?;
        let store = storage::open(&settings.store)?;
        let data = engine::DataOptions::with_cache(
            &settings.cache.cache_dir,
            settings.cache.cache_max_bytes,
            settings.cache.cache_memory_budget,
        );
        let js = runtime::worker::connect(&settings.nats, Self::ROLE).await?;
        Ok(Self {
            js,
            store,
            device,
            cache: DatasetCache::new(data),
            worker: runtime::worker_name(Self::ROLE),
            compute: tokio::sync::Mutex::new(()),
        })
    }
}

/// A scored job, as [`runtime::worker::handle_next`] reports it.
#[derive(Debug, PartialEq)]
pub struct Rewarded {
    pub job_id: String,
    pub mean: f64,
}

pub type Outcome = runtime::worker::Outcome<Rewarded>;

/// Serves the `evaluators` and `predictors` consumers until `shutdown` resolves.
pub async fn run(app: App, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    tracing::info!(device = ?app.device, "compute device");
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let evaluate = runtime::worker::serve(&app, stopped(stopping.clone()));
    let predictor = predict::PredictWork(&app);
    let predict = runtime::worker::serve(&predictor, stopped(stopping));
    let signal = async move {
        shutdown.await;
        let _ = stop.send(true);
        Ok(())
    };
    // Either loop failing (its consumer missing) ends the service.
    tokio::try_join!(evaluate, predict, signal).map(|_| ())
}

impl Handler for App {
    type Job = Trained;
    type Worked = Result<Reward, JobError>;
    type Done = Rewarded;
    const ROLE: &'static str = "evaluator";
    const DURABLE: &'static str = subjects::durable::EVALUATORS;

    fn js(&self) -> &jetstream::Context {
        &self.js
    }
    fn worker(&self) -> &str {
        &self.worker
    }
    fn key(job: &Trained) -> (&str, &str) {
        (&job.study, &job.job_id)
    }

    async fn work(&self, job: &Trained, _: u64, _: Arc<AtomicBool>) -> Result<Reward, JobError> {
        tracing::info!(job = %job.job_id, "evaluating");
        score(self, job).await
    }

    async fn finish(
        &self,
        job: &Trained,
        _: u64,
        scored: Result<Reward, JobError>,
    ) -> anyhow::Result<Verdict<Rewarded>> {
        let reward = match scored {
            Ok(reward) => reward,
            Err(JobError::Permanent(reason)) => return Ok(Verdict::Permanent(reason)),
            Err(JobError::Transient(reason)) => return Ok(Verdict::Transient(reason)),
            Err(JobError::Cancelled) => return Ok(Verdict::Interrupted),
        };
        runtime::publish(
            &self.js,
            subjects::rewards(&job.study),
            Some(&job.job_id),
            protocol::encode(&reward)?,
        )
        .await
        .context("publishing Reward")?;
        tracing::info!(job = %job.job_id, dice = reward.mean, "reward published");
        Ok(Verdict::Done(Rewarded {
            job_id: job.job_id.clone(),
            mean: reward.mean,
        }))
    }
}

async fn score(app: &App, t: &Trained) -> Result<Reward, JobError> {
    let _turn = app.compute.lock().await;
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
        pruned: false,
        epoch_reached: t.training.epochs,
    })
}

#[cfg(test)]
mod tests {
    use runtime::Validate as _;

    #[test]
    fn a_device_that_is_not_cpu_or_cuda_is_a_config_error() {
        let settings = super::Settings {
            nats: runtime::DEFAULT_NATS.into(),
            store: "memory:///".into(),
            device: "gpu".into(),
            cache: Default::default(),
        };
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("--device") && err.contains("gpu"), "{err}");
    }
}
