//! The preprocessor service: consumes `PreprocessRequest`s from the `preprocessors` durable
//! consumer, runs [`dataprep::preprocess`], and answers on `segtune.datasets.<dataset>`
//! with `DatasetReady` or `DatasetFailed`. A request is acked only after its answer is
//! stored in JetStream; while it runs, in-progress acks keep it from being redelivered.

use std::{future::Future, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind};
use protocol::{
    DatasetEvent, DatasetFailed, DatasetReady, PreprocessRequest, SCHEMA_VERSION, subjects,
};
use storage::DynStore;

/// Configuration (flags or `SEGTUNE_*` env vars).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "segtune-preprocessor",
    about = "Preprocesses MSD datasets into the object store"
)]
pub struct Settings {
    /// NATS server URL.
    #[arg(long, env = "SEGTUNE_NATS", default_value = runtime::DEFAULT_NATS)]
    pub nats: String,
    /// Object store URL (file path, file:///, s3://bucket/prefix, memory://).
    #[arg(long, env = "SEGTUNE_STORE", default_value = storage::DEFAULT_STORE)]
    pub store: String,
    /// Cases processed at once (bounds memory).
    #[arg(long, env = "SEGTUNE_PARALLEL_CASES", default_value_t = 2)]
    pub parallel_cases: usize,
    /// Largest accepted volume, in voxels × channels.
    #[arg(long, env = "SEGTUNE_MAX_VOXELS", default_value_t = 1 << 30)]
    pub max_voxels: usize,
}

pub struct App {
    pub js: jetstream::Context,
    pub store: DynStore,
    pub options: dataprep::Options,
    pub worker: String,
}

impl App {
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        let store = storage::open(&settings.store)?;
        let client = runtime::connect(&settings.nats, "segtune-preprocessor").await?;
        let js = jetstream::new(client);
        runtime::provision_with_retry(&js, None).await?;
        Ok(Self {
            js,
            store,
            options: dataprep::Options {
                limits: volume::ReadLimits {
                    max_voxels: settings.max_voxels,
                },
                parallel_cases: settings.parallel_cases,
            },
            worker: runtime::worker_name("preprocessor"),
        })
    }
}

/// What one step did.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Idle,
    Ready { dataset_id: String, reused: bool },
    Failed { dataset_id: Option<String> },
    Rejected,
    Interrupted,
}

/// Serves requests until `shutdown` resolves.
pub async fn run(app: App, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let consumer = runtime::consumer(&app.js, subjects::durable::PREPROCESSORS).await?;
    tokio::pin!(shutdown);
    tracing::info!(worker = %app.worker, "preprocessor ready");
    loop {
        let step = handle_next(&app, &consumer, shutdown.as_mut());
        match step.await {
            Ok(Outcome::Interrupted) => break,
            Ok(outcome) => tracing::debug!(?outcome, "step"),
            Err(e) => {
                tracing::warn!(error = %e, "step failed; retrying shortly");
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
    tracing::info!("preprocessor stopped");
    Ok(())
}

/// Pulls one request (waiting up to 5 s) and handles it.
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
    let req: PreprocessRequest = match protocol::decode(&msg.payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "undecodable preprocess request; rejecting it");
            let failed = DatasetFailed {
                schema: SCHEMA_VERSION,
                request_id: String::new(),
                dataset_id: None,
                source: protocol::DatasetSource::Local {
                    path: String::new(),
                },
                errors: vec![protocol::CaseError {
                    case: String::new(),
                    file: msg.subject.to_string(),
                    reason: e.to_string(),
                }],
            };
            publish_event(
                app,
                subjects::DATASETS_UNKNOWN,
                None,
                DatasetEvent::Failed(failed),
            )
            .await?;
            // No request id to name it by: the dead letter's id is its place in the stream.
            dead_letter(
                app,
                &msg,
                "",
                format!("undecodable preprocess request: {e}"),
            )
            .await?;
            msg.ack_with(AckKind::Term)
                .await
                .map_err(|e| anyhow::anyhow!("term failed: {e}"))?;
            return Ok(Outcome::Rejected);
        }
    };
    tracing::info!(request = %req.request_id, source = %req.source, "preprocessing");

    let ack_wait = runtime::ack_wait(subjects::durable::PREPROCESSORS);
    let work = dataprep::preprocess(&app.store, &req.source, &req.params, &app.options);
    let result = match runtime::work_with_progress_acks(&msg, ack_wait, work, shutdown).await {
        runtime::Worked::Done(r) => r,
        // Naked already: another replica takes the request at once.
        runtime::Worked::Interrupted => return Ok(Outcome::Interrupted),
    };

    let outcome = match result {
        Ok(o) => {
            let ready = DatasetReady {
                schema: SCHEMA_VERSION,
                request_id: req.request_id.clone(),
                dataset_id: o.dataset_id.clone(),
                manifest_key: storage::keys::manifest(&o.dataset_id)?,
                train_cases: o.manifest.train_cases().count() as u32,
                validation_cases: o.manifest.validation_cases().count() as u32,
                reused: o.reused,
            };
            let id = format!("ready-{}-{}", req.request_id, o.dataset_id);
            publish_event(
                app,
                &subjects::dataset(&o.dataset_id),
                Some(&id),
                DatasetEvent::Ready(ready),
            )
            .await?;
            Outcome::Ready {
                dataset_id: o.dataset_id,
                reused: o.reused,
            }
        }
        Err(f) => {
            let summary = f.summary();
            tracing::warn!(request = %req.request_id, "{summary}");
            let subject = f
                .dataset_id
                .as_deref()
                .map(subjects::dataset)
                .unwrap_or_else(|| subjects::DATASETS_UNKNOWN.to_string());
            let failed = DatasetFailed {
                schema: SCHEMA_VERSION,
                request_id: req.request_id.clone(),
                dataset_id: f.dataset_id.clone(),
                source: req.source.clone(),
                errors: f.errors,
            };
            let id = format!("failed-{}", req.request_id);
            publish_event(app, &subject, Some(&id), DatasetEvent::Failed(failed)).await?;
            dead_letter(app, &msg, &req.request_id, summary).await?;
            Outcome::Failed {
                dataset_id: f.dataset_id,
            }
        }
    };
    msg.double_ack()
        .await
        .map_err(|e| anyhow::anyhow!("ack failed: {e}"))?;
    Ok(outcome)
}

/// Records a failed request on `segtune.deadletter._preprocess` (the DEADLETTER stream holds
/// every piece of work that will not be retried, whichever service it failed in).
async fn dead_letter(
    app: &App,
    msg: &jetstream::Message,
    request_id: &str,
    reason: String,
) -> anyhow::Result<()> {
    let failed = protocol::JobFailed {
        schema: SCHEMA_VERSION,
        study: String::new(),
        job_id: request_id.to_string(),
        reason,
        original_subject: msg.subject.to_string(),
        deliveries: runtime::delivery_attempt(msg),
        worker: app.worker.clone(),
    };
    runtime::publish_dead_letter(
        &app.js,
        subjects::DEADLETTER_PREPROCESS.to_string(),
        &failed,
        runtime::message_origin(msg),
    )
    .await
}

async fn publish_event(
    app: &App,
    subject: &str,
    msg_id: Option<&str>,
    event: DatasetEvent,
) -> anyhow::Result<()> {
    let payload = protocol::encode(&event)?;
    runtime::publish(&app.js, subject.to_string(), msg_id, payload)
        .await
        .with_context(|| format!("publishing to {subject}"))?;
    Ok(())
}
