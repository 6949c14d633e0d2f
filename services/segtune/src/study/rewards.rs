//! `segtune study rewards ID [--json] [--follow]`: the study's reward stream for shell users,
//! replayed from its first reward (see [`bus::replay_consumer`]).

use std::{collections::HashSet, io::Write as _};

use async_nats::jetstream;
use clap::Args;
use futures::StreamExt;
use protocol::{Reward, StudyEvent, StudyEventKind, subjects};

use super::{
    bus,
    format::{format_value, short_name},
};

#[derive(Debug, Args)]
pub struct RewardsArgs {
    /// Study id.
    pub study: String,
    /// One JSON object per reward (every field of the `Reward` message), one per line.
    #[arg(long)]
    pub json: bool,
    /// Keep printing rewards as they arrive; ends when the study is done (or on Ctrl-C).
    #[arg(long)]
    pub follow: bool,
    #[arg(long, env = "SEGTUNE_NATS", default_value = runtime::DEFAULT_NATS)]
    pub nats: String,
}

pub async fn run(a: RewardsArgs) -> anyhow::Result<()> {
    subjects::check_token("study id", &a.study)?;
    let (_, js) = bus::connect(&a.nats, "segtune-rewards").await?;
    let mut out = Printer::new(a.json);
    if !a.follow {
        let (rewards, _) = bus::replay_study(&js, &a.study).await?;
        if rewards.is_empty() && !a.json {
            eprintln!("study {}: no rewards yet", a.study);
        }
        let mut seen = HashSet::new();
        for r in rewards.iter().filter(|r| seen.insert(r.job_id.clone())) {
            out.print(r)?;
        }
        return Ok(());
    }
    follow(&js, &a.study, &mut out).await
}

/// Prints rewards as they come until the study's `done`/`failed` event and every reward
/// stored before it are printed, or Ctrl-C.
async fn follow(js: &jetstream::Context, study: &str, out: &mut Printer) -> anyhow::Result<()> {
    let rewards_subject = subjects::rewards(study);
    let (mut rewards, _) =
        bus::replay_consumer(js, subjects::stream::REWARDS, &rewards_subject).await?;
    let (mut events, last_event) =
        bus::replay_consumer(js, subjects::stream::EVENTS, &subjects::study_events(study)).await?;
    if last_event.is_none() {
        anyhow::bail!(
            "unknown study {study:?}: no events for it on this NATS server (submit it first, \
             or check the id and SEGTUNE_NATS)"
        );
    }
    let mut printed_through = 0u64;
    // Set when the study has ended: the stream sequence of its last reward then.
    let mut end_at: Option<u64> = None;
    let mut seen = HashSet::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        if end_at.is_some_and(|end| printed_through >= end) {
            return Ok(());
        }
        tokio::select! {
            m = rewards.next() => {
                let msg = m.ok_or_else(|| anyhow::anyhow!("the reward consumer closed"))??;
                printed_through = msg.info().map(|i| i.stream_sequence).unwrap_or(printed_through);
                match protocol::decode::<Reward>(&msg.payload) {
                    // A redelivered evaluation past the dedup window: the controller counts
                    // it once, so do we.
                    Ok(r) if seen.insert(r.job_id.clone()) => out.print(&r)?,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "skipping an undecodable reward"),
                }
            }
            e = events.next(), if end_at.is_none() => {
                let msg = e.ok_or_else(|| anyhow::anyhow!("the event consumer closed"))??;
                let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(u64::MAX);
                let Ok(ev) = protocol::decode::<StudyEvent>(&msg.payload) else { continue };
                // A `done` followed by `extended` (stored before we attached) is not the end.
                let superseded = last_event.is_some_and(|end| seq < end);
                if let StudyEventKind::Done { .. } | StudyEventKind::Failed { .. } = ev.event
                    && !superseded
                {
                    end_at = Some(
                        bus::last_sequence(js, subjects::stream::REWARDS, &rewards_subject)
                            .await?
                            .unwrap_or(0),
                    );
                }
            }
            _ = &mut ctrl_c => return Ok(()),
        }
    }
}

/// JSON lines, or a table whose columns come from the first reward's strategy.
struct Printer {
    json: bool,
    columns: Option<Vec<String>>,
}

impl Printer {
    fn new(json: bool) -> Self {
        Self {
            json,
            columns: None,
        }
    }

    fn print(&mut self, r: &Reward) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        if self.json {
            writeln!(stdout, "{}", serde_json::to_string(r)?)?;
            return Ok(stdout.flush()?);
        }
        let columns = self.columns.get_or_insert_with(|| {
            // Alphabetical (the map's order), the learning rate last.
            let mut cols: Vec<String> = r.strategy.values.keys().cloned().collect();
            cols.sort_by_key(|c| c == protocol::strategy::LEARNING_RATE);
            let mut header = format!(
                "{:>4}  {:<24} {:>7}  {:<16}",
                "#", "job", "Dice", "per class"
            );
            for c in &cols {
                header.push_str(&format!(" {:>9}", short_name(c)));
            }
            let _ = writeln!(stdout, "{header}");
            cols
        });
        let per_class: Vec<String> = if r.pruned {
            // A pruned job's Dice is its last intermediate one: no per-class scores.
            vec![format!("pruned@{}", r.epoch_reached)]
        } else {
            r.per_class.iter().map(|d| format!("{d:.3}")).collect()
        };
        let mut line = format!(
            "{:>4}  {:<24} {:>7.4}  {:<16}",
            r.index,
            r.job_id,
            r.mean,
            per_class.join(" ")
        );
        for c in columns.iter() {
            match r.strategy.values.get(c) {
                Some(v) => line.push_str(&format!(" {:>9}", format_value(c, *v))),
                None => line.push_str(&format!(" {:>9}", "-")),
            }
        }
        writeln!(stdout, "{line}")?;
        Ok(stdout.flush()?)
    }
}
