//! The CLI's side of the bus. Unlike a service, a command a person typed must not wait
//! forever for a broker that is not there: connect once, fail fast, and say what to do.

use std::time::Duration;

use async_nats::jetstream;

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
    let spec = protocol::streams::consumer_spec(durable)
        .ok_or_else(|| anyhow::anyhow!("no consumer named {durable} in protocol::streams"))?;
    let stream = js
        .get_stream(spec.stream)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open stream {}: {e}", spec.stream))?;
    let info = stream
        .consumer_info(durable)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read consumer {durable}: {e}"))?;
    Ok(info.num_waiting)
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
