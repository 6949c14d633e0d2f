//! `segtune study submit FILE [--wait]`: hand a study to the controller over NATS and follow
//! its events until it is done.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::DeliverPolicy};
use clap::{Args, Subcommand};
use futures::StreamExt;
use protocol::{StudyEvent, StudyEventKind, subjects};

#[derive(Debug, Subcommand)]
pub enum StudyCommand {
    /// Submit a study file (see studies/*.toml) to the controller.
    Submit(SubmitArgs),
    /// Write a study's report: plots (PNG + SVG), jobs.csv, best.toml, summary.md/.html.
    Report(crate::report::ReportArgs),
    /// Print a study's rewards (replayed from the start): a table, or JSON lines with --json.
    Rewards(crate::rewards::RewardsArgs),
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
    #[arg(long, env = "SEGTUNE_NATS", default_value = runtime::DEFAULT_NATS)]
    pub nats: String,
}

pub async fn run(cmd: StudyCommand) -> anyhow::Result<()> {
    match cmd {
        StudyCommand::Submit(a) => submit(a).await,
        StudyCommand::Report(a) => crate::report::run(a).await,
        StudyCommand::Rewards(a) => crate::rewards::run(a).await,
    }
}

async fn submit(a: SubmitArgs) -> anyhow::Result<()> {
    let mut spec = controller::load_study_file(&a.file)?;
    if let Some(id) = a.id {
        spec.study = id;
    }
    if let Err(errors) = controller::validate_spec(&spec) {
        let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        anyhow::bail!("{}: invalid study:\n{}", a.file.display(), lines.join("\n"));
    }
    let client = runtime::connect(&a.nats, "segtune-cli").await?;
    let js = jetstream::new(client);
    runtime::provision_with_retry(&js).await?;
    runtime::publish(
        &js,
        subjects::SUBMISSIONS.to_string(),
        Some(&format!("submit-{}", spec.study)),
        protocol::encode(&spec)?,
    )
    .await
    .context("submitting the study")?;
    eprintln!(
        "submitted study {} ({}, {} jobs, {} in parallel)",
        spec.study, spec.searcher, spec.max_jobs, spec.parallel
    );
    if !a.wait {
        println!("{}", spec.study);
        return Ok(());
    }
    follow(&js, &spec.study).await
}

/// Prints the study's events (replayed from the start) until `done` or `failed`.
pub async fn follow(js: &jetstream::Context, study: &str) -> anyhow::Result<()> {
    let stream = js.get_stream(subjects::stream::EVENTS).await?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: subjects::study_events(study),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let started = std::time::Instant::now();
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        let ev: StudyEvent = match protocol::decode(&msg.payload) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("skipping an undecodable event: {e}");
                continue;
            }
        };
        let t = started.elapsed().as_secs_f64();
        match ev.event {
            StudyEventKind::Started { dataset_id, .. } => {
                eprintln!("[{t:7.1}s] started on dataset {dataset_id}")
            }
            StudyEventKind::Issued { job_id, .. } => eprintln!("[{t:7.1}s] issued {job_id}"),
            StudyEventKind::Reward {
                job_id,
                mean,
                rewards_so_far,
                ..
            } => eprintln!("[{t:7.1}s] reward {job_id}: Dice {mean:.4} ({rewards_so_far} so far)"),
            StudyEventKind::NewBest { job_id, mean, .. } => {
                eprintln!("[{t:7.1}s] new best {job_id}: Dice {mean:.4}")
            }
            StudyEventKind::JobFailed { job_id, reason } => {
                eprintln!("[{t:7.1}s] job {job_id} failed: {reason}")
            }
            StudyEventKind::Done {
                best_job_id,
                best_mean,
                best_strategy,
                rewards,
            } => {
                eprintln!("[{t:7.1}s] done after {rewards} rewards; best {best_job_id}");
                for (k, v) in &best_strategy.values {
                    eprintln!("    {k:14} {v:.4}");
                }
                println!("{best_mean:.6}");
                return Ok(());
            }
            StudyEventKind::Failed { reason } => anyhow::bail!("study {study} failed: {reason}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(0)).await;
    anyhow::bail!("the event stream ended before the study finished")
}
