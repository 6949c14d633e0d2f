//! `segtune study submit FILE [--wait]`: hand a study to the controller over NATS and follow
//! it until it is done (with `segtune study watch`'s follower).
//!
//! `segtune study extend ID --max-jobs N`: continue a done study (same searcher, same ledger).
//!
//! The other study commands live beside it: `watch`, `report`, `rewards`, `finalize`,
//! `confirm` (both run jobs through `retrain`), and `bus`, the CLI's side of NATS that they
//! all read the study through.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream;
use clap::{Args, Subcommand};
use futures::StreamExt as _;
use protocol::{StudyEventKind, subjects};

pub mod bus;
pub mod confirm;
pub mod finalize;
pub mod format;
pub mod report;
pub mod retrain;
pub mod rewards;
pub mod watch;

#[derive(Debug, Subcommand)]
pub enum StudyCommand {
    /// Submit a study file (see studies/*.toml) to the controller.
    Submit(SubmitArgs),
    /// Follow a study live: running jobs, finished jobs with their Dice, best so far, ETA.
    Watch(watch::WatchArgs),
    /// Write a study's report: plots (PNG + SVG), jobs.csv, best.toml, summary.md/.html.
    Report(report::ReportArgs),
    /// Print a study's rewards (replayed from the start): a table, or JSON lines with --json.
    Rewards(rewards::RewardsArgs),
    /// Continue a done study to more jobs: same searcher state, same ledger, new jobs only.
    Extend(ExtendArgs),
    /// Train the final model with the study's best strategy (a job any trainer takes) and
    /// store it as a model bundle for `segtune predict`; prints `store:<prefix>`.
    Finalize(finalize::FinalizeArgs),
    /// Does the searched augmentation help? Retrain the study's top strategies with fresh
    /// seeds next to the same strategies without augmentation and the routine strategy (all
    /// with the same seeds); print per-arm Dice and paired differences with a 95% interval.
    Confirm(confirm::ConfirmArgs),
}

#[derive(Debug, Args)]
pub struct ExtendArgs {
    /// Study id.
    pub study: String,
    /// Rewards to collect in all, more than the study's `max_jobs` now.
    #[arg(long)]
    pub max_jobs: u32,
    /// Follow the study until it is done again; exit 1 if it fails.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: write the best strategy here as a strategy file when it is done.
    #[arg(long, requires = "wait")]
    pub best: Option<PathBuf>,
    #[arg(long, env = "SEGTUNE_NATS", default_value = runtime::DEFAULT_NATS)]
    pub nats: String,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Study file (TOML).
    pub file: PathBuf,
    /// Study id (default: the file's `study` key, else its name).
    #[arg(long)]
    pub id: Option<String>,
    /// Follow the study's events until it is done or failed; exit 1 if it failed.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: write the best strategy here as a strategy file when the study is done.
    #[arg(long, requires = "wait")]
    pub best: Option<PathBuf>,
    #[arg(long, env = "SEGTUNE_NATS", default_value = runtime::DEFAULT_NATS)]
    pub nats: String,
}

pub async fn run(cmd: StudyCommand) -> anyhow::Result<()> {
    match cmd {
        StudyCommand::Submit(a) => submit(a).await,
        StudyCommand::Watch(a) => watch::run(a).await,
        StudyCommand::Report(a) => report::run(a).await,
        StudyCommand::Rewards(a) => rewards::run(a).await,
        StudyCommand::Extend(a) => extend(a).await,
        StudyCommand::Finalize(a) => finalize::run(a).await,
        StudyCommand::Confirm(a) => confirm::run(a).await,
    }
}

/// Resubmits a done study's spec (from its `started` event, as extended since) with a larger
/// `max_jobs`; the controller continues it. Refused here, with the reason, when the study is
/// unknown, not done, or already that long.
async fn extend(a: ExtendArgs) -> anyhow::Result<()> {
    subjects::check_token("study id", &a.study)?;
    let (client, js) = bus::connect_provisioned(&a.nats).await?;
    let events: Vec<protocol::StudyEvent> = bus::replay(
        &js,
        subjects::stream::EVENTS,
        &subjects::study_events(&a.study),
    )
    .await?;
    let mut spec = None;
    let mut phase = "preparing";
    let mut rewards = 0;
    for ev in events {
        match ev.event {
            StudyEventKind::Started { spec: s, .. } => {
                spec = Some(*s);
                phase = "running";
            }
            StudyEventKind::Reward { rewards_so_far, .. } => rewards = rewards_so_far,
            StudyEventKind::Extended { max_jobs, .. } => {
                if let Some(s) = spec.as_mut() {
                    s.max_jobs = max_jobs;
                }
                phase = "running";
            }
            StudyEventKind::Done { .. } => phase = "done",
            StudyEventKind::Failed { .. } => phase = "failed",
            _ => {}
        }
    }
    let Some(mut spec) = spec else {
        anyhow::bail!(
            "unknown study {:?}: no started event for it on {} (check the id and SEGTUNE_NATS)",
            a.study,
            a.nats
        );
    };
    match phase {
        "done" => {}
        "failed" => anyhow::bail!(
            "study {} failed; only a done study can be extended",
            a.study
        ),
        _ => anyhow::bail!(
            "study {} is still running ({rewards}/{} rewards); extend it when it is done",
            a.study,
            spec.max_jobs
        ),
    }
    if a.max_jobs <= spec.max_jobs {
        anyhow::bail!(
            "--max-jobs {} must be more than study {}'s max_jobs {}",
            a.max_jobs,
            a.study,
            spec.max_jobs
        );
    }
    let previous = spec.max_jobs;
    spec.max_jobs = a.max_jobs;
    send_spec(
        &js,
        &a.nats,
        &spec,
        &format!("extend-{}-{}", spec.study, a.max_jobs),
    )
    .await?;
    // The controller says it took the extension with an `extended` event (and only then may a
    // follower start: the `done` before it must not end the follow). One consumer, replayed
    // then live, until it comes.
    let (mut events, _) = bus::replay_consumer(
        &js,
        subjects::stream::EVENTS,
        &subjects::study_events(&spec.study),
    )
    .await?;
    let extended = async {
        while let Some(msg) = events.next().await {
            let msg = msg.context("reading the study's events")?;
            if let Ok(ev) = protocol::decode::<protocol::StudyEvent>(&msg.payload)
                && matches!(ev.event, StudyEventKind::Extended { max_jobs, .. } if max_jobs == a.max_jobs)
            {
                return anyhow::Ok(true);
            }
        }
        Ok(false)
    };
    match tokio::time::timeout(Duration::from_secs(30), extended).await {
        Ok(Ok(true)) => {}
        Ok(Err(e)) => return Err(e),
        Ok(Ok(false)) | Err(_) => anyhow::bail!(
            "the controller did not extend study {} within 30 s (its log says why)",
            spec.study
        ),
    }
    eprintln!(
        "extended study {} from {previous} to {} jobs ({})",
        spec.study, spec.max_jobs, spec.searcher
    );
    print_or_follow(&client, &js, &spec.study, a.wait, a.best).await
}

async fn submit(a: SubmitArgs) -> anyhow::Result<()> {
    let mut spec = ::study::load_study_file(&a.file)?;
    if let Some(id) = a.id {
        spec.study = id;
    }
    if let Err(errors) = ::study::validate_spec(&spec) {
        let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        anyhow::bail!("{}: invalid study:\n{}", a.file.display(), lines.join("\n"));
    }
    let (client, js) = bus::connect_provisioned(&a.nats).await?;
    submit_spec(&js, &a.nats, &spec).await?;
    print_or_follow(&client, &js, &spec.study, a.wait, a.best).await
}

/// Without `wait`, prints the study id (for scripts); with it, follows the study to its end
/// (exit 1 if it fails), writing the best strategy to `best` when given.
async fn print_or_follow(
    client: &async_nats::Client,
    js: &jetstream::Context,
    study: &str,
    wait: bool,
    best: Option<PathBuf>,
) -> anyhow::Result<()> {
    if !wait {
        println!("{study}");
        return Ok(());
    }
    let opts = watch::FollowOptions {
        start_timeout: None,
        output: watch::Output::auto(),
        best_file: best,
    };
    watch::follow(client, js, study, &opts).await.map(|_| ())
}

/// Hands `spec` to the controller. Refuses (instead of queueing it for nobody) when no
/// controller is pulling submissions: each keeps a pull request open, renewed every 5 s.
pub async fn submit_spec(
    js: &jetstream::Context,
    nats_url: &str,
    spec: &protocol::StudySpec,
) -> anyhow::Result<()> {
    send_spec(js, nats_url, spec, &format!("submit-{}", spec.study)).await?;
    eprintln!(
        "submitted study {} ({}, {} jobs, {} in parallel)",
        spec.study, spec.searcher, spec.max_jobs, spec.parallel
    );
    Ok(())
}

/// Publishes `spec` on the submissions subject with message id `msg_id` (JetStream drops a
/// second one within its duplicate window), once a controller is pulling.
async fn send_spec(
    js: &jetstream::Context,
    nats_url: &str,
    spec: &protocol::StudySpec,
    msg_id: &str,
) -> anyhow::Result<()> {
    let controller = subjects::durable::CONTROLLER_SUBMISSIONS;
    if !bus::await_pullers(js, controller, 1, Duration::from_secs(7)).await? {
        anyhow::bail!(
            "no controller is taking submissions on {nats_url}: {}",
            bus::START_HINT
        );
    }
    runtime::publish(
        js,
        subjects::SUBMISSIONS.to_string(),
        Some(msg_id),
        protocol::encode(spec)?,
    )
    .await
    .context("submitting the study")?;
    Ok(())
}
