//! `segtune study watch ID`: a live view of a study, built only from what is on the bus —
//! the study's events (replayed from the start, so attaching late shows the whole study), its
//! rewards (per-class Dice) and the trainers' progress (core NATS, live only).
//!
//! On a terminal: a header (jobs done / max_jobs, best so far, elapsed, ETA), one progress bar
//! per running job and a table of finished jobs, redrawn in place. Otherwise plain lines, one
//! per event, for logs and CI. `study submit --wait` and `segtune demo` use the same follower.
//!
//! `follow` reads the bus, `state` folds what it reads into the view, `render` draws the view.

mod follow;
mod render;
mod state;

use std::{
    fmt::Write as _,
    io::IsTerminal as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use clap::Args;
use protocol::{Strategy, subjects};

pub use self::follow::follow;
use super::bus;

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Study id (printed by `segtune study submit`).
    pub id: String,
    #[arg(long, env = "SEGTUNE_NATS", default_value = runtime::DEFAULT_NATS)]
    pub nats: String,
    /// Seconds to wait for the study's first event before saying there is no such study
    /// (a study's first event comes once its dataset is preprocessed).
    #[arg(long, default_value_t = 5.0)]
    pub wait_start: f64,
    /// When the study is done, write its best strategy here as a strategy file (the TOML
    /// `segtune train --strategy` reads).
    #[arg(long)]
    pub best: Option<PathBuf>,
    /// Plain lines even on a terminal.
    #[arg(long)]
    pub plain: bool,
}

pub async fn run(a: WatchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.wait_start.is_finite() && a.wait_start > 0.0,
        "--wait-start must be a positive number of seconds"
    );
    subjects::check_token("study id", &a.id).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (client, js) = bus::connect_provisioned(&a.nats).await?;
    let opts = FollowOptions {
        start_timeout: Some(Duration::from_secs_f64(a.wait_start)),
        output: if a.plain {
            Output::Plain
        } else {
            Output::auto()
        },
        best_file: a.best,
    };
    follow(&client, &js, &a.id, &opts).await.map(|_| ())
}

/// How the follower shows the study.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Redrawn in place (a terminal).
    Live,
    /// One line per event.
    Plain,
    /// Nothing; only the outcome.
    Quiet,
}

impl Output {
    /// Live on a terminal, plain lines otherwise.
    pub fn auto() -> Self {
        if std::io::stdout().is_terminal() {
            Output::Live
        } else {
            Output::Plain
        }
    }
}

#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// Give up when the study has no event by then (unknown id); `None`: wait forever.
    pub start_timeout: Option<Duration>,
    pub output: Output,
    /// Where to write the best strategy (a strategy file) when the study is done.
    pub best_file: Option<PathBuf>,
}

/// A finished study.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub study: String,
    pub best_job_id: String,
    pub best_mean: f64,
    pub best_strategy: Strategy,
    pub rewards: u32,
    /// From `Started` to `Done`.
    pub seconds: f64,
}

/// Writes `outcome`'s best strategy as a strategy file (`name = value`, real units).
pub fn write_strategy_file(path: &Path, outcome: &Outcome) -> anyhow::Result<()> {
    let mut text = format!(
        "# Best strategy of study {} (job {}, validation Dice {:.4}).\n\
         # Train with it: segtune train --dataset <id> --strategy {}\n",
        outcome.study,
        outcome.best_job_id,
        outcome.best_mean,
        path.display()
    );
    for (k, v) in &outcome.best_strategy.values {
        // `{:?}` keeps a decimal point or exponent, so TOML reads a float.
        let _ = writeln!(text, "{k} = {v:?}");
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn strategy_file_reads_back_as_floats() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("best.toml");
        let outcome = Outcome {
            study: "s".into(),
            best_job_id: "s-0001".into(),
            best_mean: 0.5,
            best_strategy: Strategy {
                values: [
                    ("p_flip".to_string(), 1.0),
                    ("learning_rate".to_string(), 1e-7),
                ]
                .into_iter()
                .collect(),
                unit: BTreeMap::new(),
            },
            rewards: 1,
            seconds: 1.0,
        };
        write_strategy_file(&path, &outcome).unwrap();
        let back: BTreeMap<String, f64> =
            toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back, outcome.best_strategy.values);
    }
}
