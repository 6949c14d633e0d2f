//! The CLI's side of the bus. Unlike a service, a command a person typed must not wait
//! forever for a broker that is not there: connect once, fail fast, and say what to do.
//! Every study command then reads the study back the same way, with [`replay_consumer`].

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{
    self,
    consumer::{
        DeliverPolicy,
        pull::{Ordered, OrderedConfig},
    },
    stream::LastRawMessageErrorKind,
};
use futures::StreamExt;
use protocol::{Reward, StudyEvent, subjects};
use serde::de::DeserializeOwned;

/// What to do when nothing answers at the NATS URL.
pub const START_HINT: &str =
    "start the local stack with `segtune up` (or point --nats / SEGTUNE_NATS at a running server)";

/// Connects once, failing fast (no retry loop: services use `runtime::connect`, which waits
/// for the broker). `name` is the client name the server lists. Leaves the server as it is:
/// the read-only commands use it.
pub async fn connect(
    url: &str,
    name: &str,
) -> anyhow::Result<(async_nats::Client, jetstream::Context)> {
    let (client, _) = connect_once(url, name).await?;
    let js = jetstream::new(client.clone());
    Ok((client, js))
}

/// [`connect`], then provisions the JetStream topology (idempotent): for the commands that
/// submit a study, wait for one to start, or run the stack.
pub async fn connect_provisioned(
    url: &str,
) -> anyhow::Result<(async_nats::Client, jetstream::Context)> {
    let (client, url) = connect_once(url, "segtune-cli").await?;
    let js = jetstream::new(client.clone());
    tokio::time::timeout(Duration::from_secs(15), runtime::provision(&js, None))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "NATS at {url} does not answer JetStream requests: is it a nats-server \
                 started with -js? {START_HINT}"
            )
        })?
        .map_err(|e| anyhow::anyhow!("{e:#} (NATS at {url}): is JetStream enabled (-js)?"))?;
    Ok((client, js))
}

/// The one place the CLI connects: the client, and the URL as it may be shown (without
/// credentials).
async fn connect_once(url: &str, name: &str) -> anyhow::Result<(async_nats::Client, String)> {
    let (options, url) = runtime::connect_options(url)?;
    let client = options
        .name(name)
        .connection_timeout(Duration::from_secs(3))
        .connect(runtime::servers(&url))
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach NATS at {url} ({e}): {START_HINT}"))?;
    Ok((client, url))
}

/// Pull requests waiting on a durable consumer: each idle service replica keeps one open
/// (they poll every 5 s), so zero for longer than a poll means nobody is serving it.
pub async fn waiting_pulls(js: &jetstream::Context, durable: &str) -> anyhow::Result<usize> {
    // Opening the consumer reads its info from the server, the count included.
    let consumer = runtime::consumer(js, durable).await?;
    Ok(consumer.cached_info().num_waiting)
}

/// Waits up to `within` for at least `at_least` pull requests on `durable`.
pub async fn await_pullers(
    js: &jetstream::Context,
    durable: &str,
    at_least: usize,
    within: Duration,
) -> anyhow::Result<bool> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if waiting_pulls(js, durable).await? >= at_least {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How long to wait for the next stored message before giving up on a replay.
const REPLAY_STALL: Duration = Duration::from_secs(30);

/// Reads a study back: an ordered, ephemeral consumer of `subject` on `stream` from the
/// stream's first message (the study streams, REWARDS and EVENTS, have limits retention, so
/// that replays the study from its start; nothing durable is left on the server), and the
/// stream sequence of the last message stored on `subject` when it opened (`None`: none
/// yet). Every study command reads the bus through it.
pub async fn replay_consumer(
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
) -> anyhow::Result<(Ordered, Option<u64>)> {
    let stream = open_stream(js, stream, subject).await?;
    let last = last_on(&stream, subject).await?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject.to_string(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot open a consumer on {subject}"))?;
    let messages = consumer
        .messages()
        .await
        .with_context(|| format!("replaying {subject}"))?;
    Ok((messages, last))
}

/// The stream sequence of the last message stored on `subject` of `stream` now.
pub async fn last_sequence(
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
) -> anyhow::Result<Option<u64>> {
    last_on(&open_stream(js, stream, subject).await?, subject).await
}

async fn open_stream(
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
) -> anyhow::Result<jetstream::stream::Stream> {
    js.get_stream(stream).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot read {subject}: this NATS server has no {stream} stream ({e}); has a \
             segtune stack run on it?"
        )
    })
}

async fn last_on(stream: &jetstream::stream::Stream, subject: &str) -> anyhow::Result<Option<u64>> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(m) => Ok(Some(m.sequence)),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!(
            "cannot read the last message on {subject}: {e}"
        )),
    }
}

/// Every message stored on `subject` of `stream` now, decoded, in stream order. Undecodable
/// payloads are skipped with a warning (a newer schema must not break old readers).
pub async fn replay<T: DeserializeOwned>(
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
) -> anyhow::Result<Vec<T>> {
    let (mut messages, last) = replay_consumer(js, stream, subject).await?;
    let Some(last) = last else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    loop {
        let msg = tokio::time::timeout(REPLAY_STALL, messages.next())
            .await
            .map_err(|_| anyhow::anyhow!("replaying {subject}: no message for {REPLAY_STALL:?}"))?
            .ok_or_else(|| anyhow::anyhow!("replaying {subject}: the consumer closed"))?
            .with_context(|| format!("replaying {subject}"))?;
        let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(u64::MAX);
        match protocol::decode::<T>(&msg.payload) {
            Ok(v) => out.push(v),
            Err(e) => tracing::warn!(%subject, seq, error = %e, "skipping an undecodable message"),
        }
        if seq >= last {
            return Ok(out);
        }
    }
}

/// The study's stored rewards and events; an error when the bus has neither (unknown study).
pub async fn replay_study(
    js: &jetstream::Context,
    study: &str,
) -> anyhow::Result<(Vec<Reward>, Vec<StudyEvent>)> {
    subjects::check_token("study id", study)?;
    let rewards: Vec<Reward> =
        replay(js, subjects::stream::REWARDS, &subjects::rewards(study)).await?;
    let events: Vec<StudyEvent> =
        replay(js, subjects::stream::EVENTS, &subjects::study_events(study)).await?;
    if rewards.is_empty() && events.is_empty() {
        anyhow::bail!(
            "unknown study {study:?}: no events or rewards for it on this NATS server \
             (check the id and SEGTUNE_NATS)"
        );
    }
    Ok((rewards, events))
}
