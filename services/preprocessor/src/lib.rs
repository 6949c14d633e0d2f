//! The preprocessor service: consumes `PreprocessRequest`s from the `preprocessors` durable
//! consumer, runs [`dataprep::preprocess`], and answers on `segtune.datasets.<dataset>`
//! with `DatasetReady` or `DatasetFailed`. A request is acked only after its answer is
//! stored in JetStream; while it runs, in-progress acks keep it from being redelivered.

use std::{
    future::Future,
    sync::{Arc, atomic::AtomicBool},
};

use anyhow::Context as _;
use async_nats::jetstream;
use protocol::{
    DatasetEvent, DatasetFailed, DatasetReady, PreprocessRequest, SCHEMA_VERSION, subjects,
};
use runtime::worker::{DeadLetters, Handler, Verdict};
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

impl runtime::Validate for Settings {
    fn validate(&self) -> anyhow::Result<()> {
        runtime::ensure_set("--nats", "SEGTUNE_NATS", &self.nats)?;
        runtime::ensure_set("--store", "SEGTUNE_STORE", &self.store)?;
        anyhow::ensure!(
            self.parallel_cases >= 1,
            "--parallel-cases (SEGTUNE_PARALLEL_CASES) must be at least 1, got 0"
        );
        anyhow::ensure!(
            self.max_voxels >= 1,
            "--max-voxels (SEGTUNE_MAX_VOXELS) must be at least 1, got 0"
        );
        Ok(())
    }
}

impl App {
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        let store = storage::open(&settings.store)?;
        let js = runtime::worker::connect(&settings.nats, Self::ROLE).await?;
        Ok(Self {
            js,
            store,
            options: dataprep::Options {
                limits: volume::ReadLimits {
                    max_voxels: settings.max_voxels,
                },
                parallel_cases: settings.parallel_cases,
            },
            worker: runtime::worker_name(Self::ROLE),
        })
    }
}

/// What became of a request that was answered.
#[derive(Debug, PartialEq)]
pub enum Answer {
    Ready {
        dataset_id: String,
        reused: bool,
    },
    /// `DatasetFailed` published and the request dead-lettered.
    Failed {
        dataset_id: Option<String>,
    },
}

pub type Outcome = runtime::worker::Outcome<Answer>;

/// Serves requests until `shutdown` resolves.
pub async fn run(app: App, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    runtime::worker::serve(&app, shutdown).await
}

impl Handler for App {
    type Job = PreprocessRequest;
    type Worked = Result<dataprep::Outcome, dataprep::Failure>;
    type Done = Answer;
    const ROLE: &'static str = "preprocessor";
    const DURABLE: &'static str = subjects::durable::PREPROCESSORS;
    /// A failed request is answered with a `DatasetFailed` and also filed with every other
    /// piece of work that will not be retried, whichever service it failed in.
    const DEAD_LETTERS: DeadLetters = DeadLetters::Subject(subjects::DEADLETTER_PREPROCESS);

    fn js(&self) -> &jetstream::Context {
        &self.js
    }
    fn worker(&self) -> &str {
        &self.worker
    }
    /// No study: a request's dead letter is named by its request id.
    fn key(req: &PreprocessRequest) -> (&str, &str) {
        ("", &req.request_id)
    }

    async fn lease(&self, _: &jetstream::consumer::PullConsumer) -> runtime::Lease {
        runtime::Lease {
            ack_wait: runtime::ack_wait(Self::DURABLE),
            progress_acks: true,
        }
    }

    /// Answered on `segtune.datasets._unknown`: there is no request id to match it by, but a
    /// requester waiting on the unknown subject learns that something was refused.
    async fn undecodable(
        &self,
        msg: &jetstream::Message,
        error: &protocol::DecodeError,
    ) -> anyhow::Result<String> {
        tracing::error!(error = %error, "undecodable preprocess request; rejecting it");
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
                reason: error.to_string(),
            }],
        };
        let event = DatasetEvent::Failed(failed);
        publish_event(self, subjects::DATASETS_UNKNOWN, None, event).await?;
        Ok(format!("undecodable preprocess request: {error}"))
    }

    async fn work(&self, req: &PreprocessRequest, _: u64, _: Arc<AtomicBool>) -> Self::Worked {
        tracing::info!(request = %req.request_id, source = %req.source, "preprocessing");
        dataprep::preprocess(&self.store, &req.source, &req.params, &self.options).await
    }

    async fn finish(
        &self,
        req: &PreprocessRequest,
        _: u64,
        worked: Self::Worked,
    ) -> anyhow::Result<Verdict<Answer>> {
        match worked {
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
                let subject = subjects::dataset(&o.dataset_id);
                publish_event(self, &subject, Some(&id), DatasetEvent::Ready(ready)).await?;
                Ok(Verdict::Done(Answer::Ready {
                    dataset_id: o.dataset_id,
                    reused: o.reused,
                }))
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
                publish_event(self, &subject, Some(&id), DatasetEvent::Failed(failed)).await?;
                Ok(Verdict::Answered {
                    outcome: Answer::Failed {
                        dataset_id: f.dataset_id,
                    },
                    reason: summary,
                })
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use runtime::Validate as _;

    #[test]
    fn zero_parallel_cases_is_a_config_error() {
        let settings = super::Settings {
            nats: runtime::DEFAULT_NATS.into(),
            store: "memory:///".into(),
            parallel_cases: 0,
            max_voxels: 1 << 30,
        };
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("--parallel-cases"), "{err}");
    }
}
