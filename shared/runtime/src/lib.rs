//! What every segtune service needs around its work loop: tracing, a NATS connection that
//! survives a broker that is not up yet, the JetStream topology provisioned idempotently
//! from `protocol::streams`, deduplicated publishes, and a shutdown future.

use anyhow::Context as _;
use std::time::Duration;

use async_nats::{
    HeaderMap,
    jetstream::{self, consumer::pull, stream},
};
use bytes::Bytes;
use protocol::streams::{CONSUMERS, ConsumerSpec, Retention, STREAMS, StreamSpec};

pub use async_nats;

/// Default broker URL when `SEGTUNE_NATS` is unset.
pub const DEFAULT_NATS: &str = "nats://127.0.0.1:4222";

/// Logs to stderr; `SEGTUNE_LOG` (or `RUST_LOG`) sets the filter, default `info`.
pub fn init_tracing() {
    let filter = std::env::var("SEGTUNE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,async_nats=warn".to_string());
    // async-nats traces its CONNECT frame, credentials included: never below debug there.
    let filter = format!("{filter},async_nats::connection=debug");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

mod auth;
pub use auth::*;
mod cache_settings;
mod service;
pub use cache_settings::{
    CacheSettings, DEFAULT_CACHE_DIR, DEFAULT_CACHE_MAX_BYTES, DEFAULT_CACHE_MEMORY_BUDGET,
    parse_bytes,
};
pub use service::{Shutdown, Validate, ensure_set, service_main};
pub mod worker;

pub const ENV_LOG: &str = "SEGTUNE_LOG";
pub const ENV_WORKER: &str = "SEGTUNE_WORKER";
/// Every env var this crate reads for every service, besides the service's own settings:
/// for checks that a deployment sets only variables something reads.
pub const ENV_VARS: &[&str] = &[
    ENV_NATS_USER,
    ENV_NATS_PASSWORD,
    ENV_NATS_PASSWORD_FILE,
    ENV_NATS_TOKEN,
    ENV_NATS_TOKEN_FILE,
    ENV_NATS_NKEY_FILE,
    ENV_NATS_CREDS_FILE,
    ENV_NATS_TLS_CA,
    ENV_NATS_TLS_CERT,
    ENV_NATS_TLS_KEY,
    ENV_NATS_INBOX_PREFIX,
    ENV_LOG,
    ENV_WORKER,
];

/// Connects to NATS, retrying until the broker is up (services may start before it), and
/// reconnecting forever afterwards. Credentials: see [`connect_options`].
pub async fn connect(url: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    let (options, url) = connect_options(url)?;
    let client = options
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .ping_interval(Duration::from_secs(10))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
                async_nats::Event::ServerError(e) => {
                    tracing::warn!(error = %e, "NATS server error")
                }
                other => tracing::debug!(event = %other, "NATS event"),
            }
        })
        .connect(servers(&url))
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to NATS at {url}: {e}"))?;
    Ok(client)
}

fn stream_config(spec: &StreamSpec, replicas: usize) -> stream::Config {
    stream::Config {
        num_replicas: replicas,
        name: spec.name.to_string(),
        subjects: spec.subjects.iter().map(|s| s.to_string()).collect(),
        retention: match spec.retention {
            Retention::WorkQueue => stream::RetentionPolicy::WorkQueue,
            Retention::Limits => stream::RetentionPolicy::Limits,
        },
        discard: match spec.retention {
            // A full work queue refuses new jobs visibly instead of silently evicting old ones.
            Retention::WorkQueue => stream::DiscardPolicy::New,
            Retention::Limits => stream::DiscardPolicy::Old,
        },
        storage: stream::StorageType::File,
        duplicate_window: spec.duplicate_window,
        max_messages: if spec.max_msgs > 0 { spec.max_msgs } else { -1 },
        max_age: spec.max_age,
        ..Default::default()
    }
}

fn consumer_config(spec: &ConsumerSpec, ack_wait: Duration) -> pull::Config {
    pull::Config {
        durable_name: Some(spec.durable.to_string()),
        filter_subject: spec.filter_subject.to_string(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait,
        max_deliver: spec.max_deliver,
        max_ack_pending: spec.max_ack_pending,
        ..Default::default()
    }
}

/// Creates or updates every stream and durable consumer of `protocol::streams`. Idempotent:
/// every service calls it at start, whichever starts first. Reads first and writes only what
/// is missing or differs, so once the topology is in place a role allowed only to read
/// stream and consumer info (a worker in deploy/nats.conf) passes; before that it fails
/// (no right to create) and [`provision_with_retry`] waits for a role that may.
///
/// `replicas`: how many JetStream cluster nodes keep each stream (1 on a single server, 3 in
/// a 3-node cluster). `None` (the workers): create with 1 and keep what an existing stream
/// has; the controller passes its `--stream-replicas` and scales existing streams to it.
pub async fn provision(js: &jetstream::Context, replicas: Option<usize>) -> anyhow::Result<()> {
    provision_with(js, replicas, None).await
}

/// The durable consumers of jobs (`trainers`) and of trained models (`evaluators`): their
/// AckWait is the controller's `--job-ack-wait-secs`, not a constant (see [`provision_with`]).
pub const JOB_CONSUMERS: &[&str] = &[
    protocol::subjects::durable::TRAINERS,
    protocol::subjects::durable::EVALUATORS,
];

/// [`provision`], and the AckWait of the [`JOB_CONSUMERS`]: `Some` (the controller) sets it
/// (how long a dead worker's job waits before another replica gets it; progress acks keep a
/// live worker's job); `None` (the workers) creates them with `protocol::streams`' default
/// and keeps what an existing consumer has, so a worker starting never undoes the
/// controller's setting. Workers read the AckWait back from the consumer
/// ([`consumer_ack_wait`]) to time their progress acks.
pub async fn provision_with(
    js: &jetstream::Context,
    replicas: Option<usize>,
    job_ack_wait: Option<Duration>,
) -> anyhow::Result<()> {
    use jetstream::ErrorCode;
    use jetstream::context::GetStreamErrorKind;
    for spec in STREAMS {
        let mut want = stream_config(spec, replicas.unwrap_or(1));
        match js.get_stream(spec.name).await {
            Ok(s)
                if stream_matches(&s.cached_info().config, &want)
                    && replicas.is_none_or(|r| s.cached_info().config.num_replicas == r) =>
            {
                continue;
            }
            Ok(s) => js
                .update_stream({
                    if replicas.is_none() {
                        want.num_replicas = s.cached_info().config.num_replicas;
                    }
                    want
                })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    js.create_stream(want)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
                _ => Err(e.to_string()),
            },
        }
        .map_err(|e| anyhow::anyhow!("cannot provision stream {}: {e}", spec.name))?;
    }
    for spec in CONSUMERS {
        let stream = js
            .get_stream(spec.stream)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open stream {}: {e}", spec.stream))?;
        let existing = stream.consumer_info(spec.durable).await.ok();
        let ack_wait = match job_ack_wait {
            Some(d) if JOB_CONSUMERS.contains(&spec.durable) => d,
            None if JOB_CONSUMERS.contains(&spec.durable) => existing
                .as_ref()
                .map_or(spec.ack_wait, |i| i.config.ack_wait),
            _ => spec.ack_wait,
        };
        let want = consumer_config(spec, ack_wait);
        if let Some(info) = &existing
            && consumer_matches(&info.config, &want)
        {
            continue;
        }
        stream
            .create_consumer(want)
            .await
            .map_err(|e| anyhow::anyhow!("cannot provision consumer {}: {e}", spec.durable))?;
    }
    Ok(())
}

/// The fields [`stream_config`] sets (the server fills in the rest).
fn stream_matches(have: &stream::Config, want: &stream::Config) -> bool {
    have.subjects == want.subjects
        && have.retention == want.retention
        && have.discard == want.discard
        && have.storage == want.storage
        && have.duplicate_window == want.duplicate_window
        && have.max_messages == want.max_messages
        && have.max_age == want.max_age
}

/// The fields [`consumer_config`] sets.
fn consumer_matches(have: &jetstream::consumer::Config, want: &pull::Config) -> bool {
    have.durable_name == want.durable_name
        && have.filter_subject == want.filter_subject
        && have.ack_policy == want.ack_policy
        && have.ack_wait == want.ack_wait
        && have.max_deliver == want.max_deliver
        && have.max_ack_pending == want.max_ack_pending
}

/// The servers of a NATS URL that may list several (`nats://a:4222,nats://b:4222`), for
/// `ConnectOptions::connect` (which takes a single `&str` as one server).
pub fn servers(url: &str) -> Vec<String> {
    url.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// [`provision`], retried until the broker answers (JetStream may still be starting).
pub async fn provision_with_retry(
    js: &jetstream::Context,
    replicas: Option<usize>,
) -> anyhow::Result<()> {
    provision_with_ack_wait_retry(js, replicas, None).await
}

/// [`provision_with`], retried until the broker answers (JetStream may still be starting).
/// While the client is not connected (a service started before its broker) it waits for the
/// connection however long that takes, checking every 100 ms so it provisions as soon as
/// the broker is up; only failures while connected count towards giving up.
pub async fn provision_with_ack_wait_retry(
    js: &jetstream::Context,
    replicas: Option<usize>,
    job_ack_wait: Option<Duration>,
) -> anyhow::Result<()> {
    use async_nats::connection::State;
    let mut delay = Duration::from_millis(200);
    let mut last = None;
    let mut attempts = 0;
    let mut waiting_since: Option<std::time::Instant> = None;
    while attempts < 30 {
        if js.client().connection_state() != State::Connected {
            let since = *waiting_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= Duration::from_secs(10) {
                tracing::warn!("no NATS server yet; still waiting for one");
                waiting_since = Some(std::time::Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        attempts += 1;
        match provision_with(js, replicas, job_ack_wait).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "JetStream not ready; retrying");
                last = Some(e);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("provisioning failed")))
}

/// The durable pull consumer `durable`, as provisioned.
pub async fn consumer(
    js: &jetstream::Context,
    durable: &str,
) -> anyhow::Result<jetstream::consumer::Consumer<pull::Config>> {
    let spec = protocol::streams::consumer_spec(durable)
        .ok_or_else(|| anyhow::anyhow!("no consumer named {durable} in protocol::streams"))?;
    let stream = js
        .get_stream(spec.stream)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open stream {}: {e}", spec.stream))?;
    stream
        .get_consumer(durable)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open consumer {durable}: {e}"))
}

/// The AckWait `consumer` has now on the server (the controller may have changed it since
/// this worker started); what it had when opened if the server does not answer.
pub async fn consumer_ack_wait(consumer: &jetstream::consumer::Consumer<pull::Config>) -> Duration {
    match consumer.get_info().await {
        Ok(info) => info.config.ack_wait,
        Err(e) => {
            tracing::warn!(error = %e, "consumer info failed; using the AckWait read at start");
            consumer.cached_info().config.ack_wait
        }
    }
}

/// Pulls at most one message, waiting up to `wait`. Never prefetches: a worker asks for its
/// next job only when idle, so other replicas get the rest.
pub async fn pull_one(
    consumer: &jetstream::consumer::Consumer<pull::Config>,
    wait: Duration,
) -> anyhow::Result<Option<jetstream::Message>> {
    use futures::StreamExt;
    let mut batch = consumer
        .batch()
        .max_messages(1)
        .expires(wait)
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("pull request failed: {e}"))?;
    match batch.next().await {
        Some(Ok(m)) => Ok(Some(m)),
        Some(Err(e)) => Err(anyhow::anyhow!("pull failed: {e}")),
        None => Ok(None),
    }
}

/// Publishes to JetStream and waits for the server's acknowledgement. With `msg_id` set the
/// stream drops a duplicate within its window. Retries transient failures (broker restarting)
/// with the same id, so a retried publish never creates a second message.
pub async fn publish(
    js: &jetstream::Context,
    subject: String,
    msg_id: Option<&str>,
    payload: Vec<u8>,
) -> anyhow::Result<jetstream::publish::PublishAck> {
    let payload = Bytes::from(payload);
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut headers = HeaderMap::new();
        if let Some(id) = msg_id {
            headers.insert(protocol::subjects::MSG_ID_HEADER, id);
        }
        let result = match js
            .publish_with_headers(subject.clone(), headers, payload.clone())
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match result {
            Ok(ack) => return Ok(ack),
            Err(e) if attempt < 20 => {
                tracing::warn!(%subject, attempt, error = %e, "publish not acknowledged; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(3));
            }
            Err(e) => return Err(anyhow::anyhow!("publish to {subject} failed: {e}")),
        }
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled: from then on neither signal can kill the process with the
/// default action, however late the future is awaited (a banner printed after the call can
/// be answered with a signal at once). Call it inside a Tokio runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}

/// A worker identity for logs and messages: `SEGTUNE_WORKER`, else `<hostname>-<pid>`.
pub fn worker_name(role: &str) -> String {
    std::env::var("SEGTUNE_WORKER").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        format!("{role}-{host}-{}", std::process::id())
    })
}

/// How [`work_under_lease`] keeps a message's delivery.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    /// The consumer's AckWait ([`consumer_ack_wait`]): liveness is checked and progress acked
    /// every third of it.
    pub ack_wait: Duration,
    /// Off only in tests (the negative control that shows a job is redelivered without them).
    pub progress_acks: bool,
}

/// How a piece of work bounded by [`work_under_lease`] ended.
pub enum Leased<T> {
    Done(T),
    /// Shutdown was requested; the message has been naked so another replica takes it now.
    Interrupted,
    /// The message was redelivered to another worker (this one was paused or cut off past
    /// AckWait): `work` was dropped and the message left alone, since any ack, nak or
    /// progress sent now would act on the other worker's live delivery (JetStream acks name
    /// the stream sequence, not the delivery).
    Superseded,
}

/// Runs `work` while, every third of the AckWait, asking `still_live` whether this delivery
/// is still the live one and then sending an in-progress ack. A `false` ends the work as
/// [`Leased::Superseded`]; an error is logged and counts as live (the check is repeated, and
/// the caller checks again before committing a result). The first check runs one tick in,
/// and a worker resumed after a pause (SIGSTOP, VM freeze) checks at once.
pub async fn work_under_lease<T, F, Fut>(
    msg: &jetstream::Message,
    lease: Lease,
    mut still_live: F,
    work: impl std::future::Future<Output = T>,
    shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Leased<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    use jetstream::AckKind;
    tokio::pin!(work);
    let mut shutdown = shutdown;
    let mut ticker = tokio::time::interval(lease.ack_wait / 3);
    // After a pause, one check now rather than a burst of missed ticks.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            r = &mut work => return Leased::Done(r),
            _ = ticker.tick() => {
                match still_live().await {
                    Ok(true) => {}
                    Ok(false) => return Leased::Superseded,
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "lease check failed"),
                }
                if lease.progress_acks
                    && let Err(e) = msg.ack_with(AckKind::Progress).await
                {
                    tracing::warn!(error = %e, "in-progress ack failed");
                }
            }
            _ = &mut shutdown => {
                match msg.ack_with(AckKind::Nak(None)).await {
                    Ok(()) => tracing::info!(
                        attempt = delivery_attempt(msg),
                        "shutting down: the job in hand is naked, another replica takes it now"
                    ),
                    Err(e) => tracing::warn!(error = %e, "nak on shutdown failed"),
                }
                return Leased::Interrupted;
            }
        }
    }
}

/// The study token a dead letter is filed under: the study, or `_unknown` when the failed
/// message did not even name a valid one.
pub fn dead_letter_study(study: &str) -> String {
    if protocol::subjects::check_token("study", study).is_ok() {
        study.to_string()
    } else {
        "_unknown".to_string()
    }
}

/// Where a message sits: its stream and stream sequence (None for a core NATS message).
pub fn message_origin(msg: &jetstream::Message) -> Option<(String, u64)> {
    msg.info()
        .ok()
        .map(|i| (i.stream.to_string(), i.stream_sequence))
}

/// The Nats-Msg-Id of a dead letter: `dl-<job>-<delivery>`, so a worker giving up on a
/// delivery and the controller seeing that delivery reach MaxDeliver write one entry
/// between them. A message that did not decode has no job id; it is named by its place in
/// its stream (`dl-<stream>-<seq>-<delivery>`), so two different undecodable messages are
/// two entries, not one swallowed as a duplicate of the other.
pub fn dead_letter_msg_id(failed: &protocol::JobFailed, origin: Option<(String, u64)>) -> String {
    match origin {
        Some((stream, seq)) if failed.job_id.is_empty() => {
            format!("dl-{stream}-{seq}-{}", failed.deliveries)
        }
        _ => format!("dl-{}-{}", failed.job_id, failed.deliveries),
    }
}

/// Publishes `failed` to `subject` (a `segtune.deadletter.*` subject), awaiting the server's
/// ack, with the id of [`dead_letter_msg_id`].
pub async fn publish_dead_letter(
    js: &jetstream::Context,
    subject: String,
    failed: &protocol::JobFailed,
    origin: Option<(String, u64)>,
) -> anyhow::Result<()> {
    let id = dead_letter_msg_id(failed, origin);
    let payload = protocol::encode(failed)?;
    publish(js, subject.clone(), Some(&id), payload)
        .await
        .with_context(|| format!("publishing the dead letter {id} to {subject}"))?;
    Ok(())
}

/// The delivery attempt of a JetStream message (1 = first).
pub fn delivery_attempt(msg: &jetstream::Message) -> u64 {
    msg.info().map(|i| i.delivered as u64).unwrap_or(1)
}

/// AckWait of a durable consumer from `protocol::streams` (its default: the work consumers'
/// is set by the controller, see [`consumer_ack_wait`]).
pub fn ack_wait(durable: &str) -> Duration {
    protocol::streams::consumer_spec(durable)
        .map(|c| c.ack_wait)
        .unwrap_or(protocol::streams::WORK_ACK_WAIT)
}
