//! `segtune study watch ID`: a live view of a study, built only from what is on the bus —
//! the study's events (replayed from the start, so attaching late shows the whole study), its
//! rewards (per-class Dice) and the trainers' progress (core NATS, live only).
//!
//! On a terminal: a header (jobs done / max_jobs, best so far, elapsed, ETA), one progress bar
//! per running job and a table of finished jobs, redrawn in place. Otherwise plain lines, one
//! per event, for logs and CI. `study submit --wait` and `segtune demo` use the same follower.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    io::{IsTerminal as _, Write as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::DeliverPolicy};
use clap::Args;
use futures::StreamExt;
use protocol::{
    Progress, Reward, Scale, Strategy, StudyEvent, StudyEventKind, StudySpec, subjects,
};

use crate::bus;

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
    let (client, js) = bus::connect(&a.nats).await?;
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

/// Follows `study` until it is done (the outcome) or failed (an error).
pub async fn follow(
    client: &async_nats::Client,
    js: &jetstream::Context,
    study: &str,
    opts: &FollowOptions,
) -> anyhow::Result<Outcome> {
    // Progress first: it is core NATS, so only what comes after the subscription is seen.
    let mut progress = client
        .subscribe(subjects::progress_all(study))
        .await
        .context("subscribing to progress")?;
    let mut events = replay(js, subjects::stream::EVENTS, subjects::study_events(study)).await?;
    let mut rewards = replay(js, subjects::stream::REWARDS, subjects::rewards(study)).await?;
    let mut view = View::new(study, opts.output);
    let give_up = opts.start_timeout.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let finish = loop {
        tokio::select! {
            m = events.next() => {
                let msg = match m {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => anyhow::bail!("reading the events of study {study}: {e}"),
                    None => anyhow::bail!("the event stream of study {study} ended"),
                };
                match protocol::decode::<StudyEvent>(&msg.payload) {
                    Ok(ev) => {
                        if let Some(f) = view.event(ev) {
                            break f;
                        }
                    }
                    Err(e) => view.note(&format!("skipping an undecodable event: {e}")),
                }
            }
            Some(Ok(msg)) = rewards.next() => {
                if let Ok(r) = protocol::decode::<Reward>(&msg.payload) {
                    view.reward(r);
                }
            }
            Some(msg) = progress.next() => {
                if let Ok(p) = protocol::decode::<Progress>(&msg.payload) {
                    view.progress(p);
                }
            }
            _ = tick.tick() => {
                if view.events == 0
                    && let Some(t) = give_up
                    && tokio::time::Instant::now() >= t
                {
                    view.clear();
                    anyhow::bail!(
                        "no events for study {study} within {:.0} s: no such study on this \
                         NATS server (check the id `segtune study submit` printed), or it is \
                         still preparing its dataset (retry with --wait-start 120)",
                        opts.start_timeout.unwrap_or_default().as_secs_f64()
                    );
                }
                view.redraw();
            }
        }
    };
    view.clear();
    match finish {
        Finish::Failed(reason) => {
            view.summary(None);
            anyhow::bail!("study {study} failed: {reason}")
        }
        Finish::Done(outcome) => {
            view.summary(Some(&outcome));
            if let Some(path) = &opts.best_file {
                write_strategy_file(path, &outcome)?;
                if view.output != Output::Quiet {
                    println!("best strategy written to {}", path.display());
                }
            }
            Ok(outcome)
        }
    }
}

/// An ordered consumer over `subject` from the first message kept.
async fn replay(
    js: &jetstream::Context,
    stream: &str,
    subject: String,
) -> anyhow::Result<jetstream::consumer::pull::Ordered> {
    let s = js
        .get_stream(stream)
        .await
        .with_context(|| format!("opening stream {stream}"))?;
    let consumer = s
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: subject.clone(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .with_context(|| format!("replaying {subject}"))?;
    consumer
        .messages()
        .await
        .with_context(|| format!("replaying {subject}"))
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

enum Finish {
    Done(Outcome),
    Failed(String),
}

#[derive(Debug, Clone)]
enum Stage {
    Queued,
    Training {
        epoch: u32,
        epochs: u32,
        loss: f64,
        patches_per_sec: f64,
        worker: String,
    },
    Evaluating,
    Done,
    Failed(String),
}

#[derive(Debug, Clone)]
struct JobView {
    strategy: Strategy,
    stage: Stage,
    dice: Option<f64>,
    per_class: Vec<f64>,
    /// The trainer replica that trained it (from its reward; empty until then, or when the
    /// evaluator did not say).
    trainer: String,
}

/// Everything known about the study, and how it was last drawn.
struct View {
    study: String,
    output: Output,
    spec: Option<StudySpec>,
    dataset_id: Option<String>,
    /// Unix time of the first event (the origin of plain-line timestamps).
    t0: Option<f64>,
    started_unix: Option<f64>,
    done_unix: Option<f64>,
    events: u64,
    jobs: BTreeMap<u32, JobView>,
    index_of: HashMap<String, u32>,
    /// Rewards read before their job's `issued` event (the two streams replay independently).
    early_rewards: HashMap<String, Reward>,
    rewards: u32,
    best: Option<(u32, f64)>,
    /// Lines of the last live frame (erased before the next).
    drawn: usize,
}

impl View {
    fn new(study: &str, output: Output) -> Self {
        Self {
            study: study.to_string(),
            output,
            spec: None,
            dataset_id: None,
            t0: None,
            started_unix: None,
            done_unix: None,
            events: 0,
            jobs: BTreeMap::new(),
            index_of: HashMap::new(),
            early_rewards: HashMap::new(),
            rewards: 0,
            best: None,
            drawn: 0,
        }
    }

    fn line(&mut self, at_unix: f64, text: &str) {
        if self.output == Output::Plain {
            let t = at_unix - self.t0.unwrap_or(at_unix);
            println!("[{t:7.1}s] {text}");
        }
    }

    fn note(&mut self, text: &str) {
        if self.output != Output::Quiet {
            self.clear();
            eprintln!("{text}");
        }
    }

    fn event(&mut self, ev: StudyEvent) -> Option<Finish> {
        self.events += 1;
        let at = ev.time_unix;
        self.t0.get_or_insert(at);
        match ev.event {
            StudyEventKind::Started { spec, dataset_id } => {
                self.started_unix = Some(at);
                let text = format!(
                    "study {} started: {}, {} jobs, {} in parallel, dataset {dataset_id}",
                    self.study, spec.searcher, spec.max_jobs, spec.parallel
                );
                self.spec = Some(*spec);
                self.dataset_id = Some(dataset_id);
                self.line(at, &text);
            }
            StudyEventKind::Issued {
                job_id,
                index,
                strategy,
            } => {
                let text = format!("job {index} issued: {}", self.compact(&strategy));
                self.index_of.insert(job_id.clone(), index);
                self.jobs.insert(
                    index,
                    JobView {
                        strategy,
                        stage: Stage::Queued,
                        dice: None,
                        per_class: Vec::new(),
                        trainer: String::new(),
                    },
                );
                if let Some(r) = self.early_rewards.remove(&job_id) {
                    self.reward(r);
                }
                self.line(at, &text);
            }
            StudyEventKind::Reward {
                job_id,
                index,
                mean,
                rewards_so_far,
            } => {
                self.rewards = rewards_so_far;
                let index = self.index_of.get(&job_id).copied().unwrap_or(index);
                if let Some(j) = self.jobs.get_mut(&index) {
                    j.stage = Stage::Done;
                    j.dice = Some(mean);
                }
                let text = format!(
                    "job {index} Dice {mean:.4} ({}{})",
                    self.done_text(),
                    self.eta(at)
                        .map(|s| format!(", ETA {}", duration(s)))
                        .unwrap_or_default()
                );
                self.line(at, &text);
            }
            StudyEventKind::NewBest { job_id, mean, .. } => {
                if let Some(&i) = self.index_of.get(&job_id) {
                    self.best = Some((i, mean));
                    self.line(at, &format!("new best: job {i} Dice {mean:.4}"));
                }
            }
            StudyEventKind::JobFailed { job_id, reason } => {
                if let Some(&i) = self.index_of.get(&job_id) {
                    if let Some(j) = self.jobs.get_mut(&i) {
                        j.stage = Stage::Failed(reason.clone());
                    }
                    self.line(at, &format!("job {i} failed: {reason}"));
                }
            }
            StudyEventKind::Done {
                best_job_id,
                best_mean,
                best_strategy,
                rewards,
            } => {
                self.done_unix = Some(at);
                self.rewards = rewards;
                let seconds = at - self.started_unix.unwrap_or(at);
                self.line(at, &format!("study {} done: {rewards} rewards", self.study));
                return Some(Finish::Done(Outcome {
                    study: self.study.clone(),
                    best_job_id,
                    best_mean,
                    best_strategy,
                    rewards,
                    seconds,
                }));
            }
            StudyEventKind::Failed { reason } => {
                self.line(at, &format!("study {} failed: {reason}", self.study));
                return Some(Finish::Failed(reason));
            }
        }
        None
    }

    fn reward(&mut self, r: Reward) {
        let Some(&index) = self.index_of.get(&r.job_id) else {
            self.early_rewards.entry(r.job_id.clone()).or_insert(r);
            return;
        };
        if let Some(j) = self.jobs.get_mut(&index) {
            j.per_class = r.per_class;
            j.trainer = r.trainer;
            j.dice.get_or_insert(r.mean);
        }
    }

    fn progress(&mut self, p: Progress) {
        let Some(&i) = self.index_of.get(&p.job_id) else {
            return;
        };
        let Some(j) = self.jobs.get_mut(&i) else {
            return;
        };
        if matches!(j.stage, Stage::Done | Stage::Failed(_)) {
            return;
        }
        j.stage = if p.epoch >= p.epochs {
            Stage::Evaluating
        } else {
            Stage::Training {
                epoch: p.epoch,
                epochs: p.epochs,
                loss: p.loss,
                patches_per_sec: p.patches_per_sec,
                worker: p.worker.clone(),
            }
        };
        let text = format!(
            "job {i} epoch {}/{} loss {:.4}, {:.1} patches/s ({})",
            p.epoch, p.epochs, p.loss, p.patches_per_sec, p.worker
        );
        self.line(now_unix(), &text);
    }

    fn max_jobs(&self) -> Option<u32> {
        self.spec.as_ref().map(|s| s.max_jobs)
    }

    fn done_text(&self) -> String {
        let mut s = format!(
            "{}/{} done",
            self.rewards,
            self.max_jobs()
                .map(|m| m.to_string())
                .unwrap_or_else(|| "?".into())
        );
        if let Some((i, d)) = self.best {
            let _ = write!(s, ", best {d:.4} (job {i})");
        }
        s
    }

    /// Seconds left, from the mean time per reward so far.
    fn eta(&self, now: f64) -> Option<f64> {
        let start = self.started_unix?;
        let max = self.max_jobs()?;
        if self.rewards == 0 || self.done_unix.is_some() || self.rewards >= max {
            return None;
        }
        Some((now - start) / self.rewards as f64 * (max - self.rewards) as f64)
    }

    /// The strategy as `name=value` pairs, short names.
    fn compact(&self, s: &Strategy) -> String {
        self.dims()
            .iter()
            .filter_map(|(name, log)| {
                s.values
                    .get(name)
                    .map(|v| format!("{}={}", short(name), value(*v, *log)))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The searched dimensions in order, and whether each is on a log scale.
    fn dims(&self) -> Vec<(String, bool)> {
        match &self.spec {
            Some(spec) => spec
                .space
                .iter()
                .map(|d| (d.name.clone(), d.scale == Scale::Log))
                .collect(),
            None => self
                .jobs
                .values()
                .next()
                .map(|j| {
                    j.strategy
                        .values
                        .keys()
                        .map(|k| (k.clone(), k == "learning_rate"))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Width of the trainer column: the longest trainer name seen (at least "trainer").
    fn trainer_width(&self) -> usize {
        self.jobs
            .values()
            .map(|j| j.trainer.chars().count())
            .max()
            .unwrap_or(0)
            .max("trainer".len())
    }

    fn table_header(&self) -> String {
        let mut s = format!("  {:>4}", "job");
        for (name, _) in self.dims() {
            let _ = write!(s, " {:>7}", short(&name));
        }
        let _ = write!(
            s,
            "    Dice  {:<w$}  per class",
            "trainer",
            w = self.trainer_width()
        );
        s
    }

    fn table_row(&self, index: u32, j: &JobView) -> String {
        let mut s = format!("  {index:>4}");
        for (name, log) in self.dims() {
            match j.strategy.values.get(&name) {
                Some(v) => {
                    let _ = write!(s, " {:>7}", value(*v, log));
                }
                None => s.push_str("       -"),
            }
        }
        match (&j.stage, j.dice) {
            (Stage::Failed(reason), _) => {
                let _ = write!(s, "  failed: {reason}");
            }
            (_, Some(d)) => {
                let trainer = if j.trainer.is_empty() {
                    "-"
                } else {
                    &j.trainer
                };
                let _ = write!(s, "  {d:.4}  {trainer:<w$}", w = self.trainer_width());
                if !j.per_class.is_empty() {
                    let pc: Vec<String> = j.per_class.iter().map(|c| format!("{c:.2}")).collect();
                    let _ = write!(s, "  {}", pc.join(" "));
                }
                if self.best.map(|(b, _)| b) == Some(index) {
                    s.push_str("  *best");
                }
            }
            _ => {}
        }
        s
    }

    fn header(&self) -> String {
        let now = now_unix();
        let mut s = format!("study {}", self.study);
        match &self.spec {
            None if self.events == 0 => s.push_str(" · waiting for its first event"),
            None => s.push_str(" · preparing"),
            Some(spec) => {
                let _ = write!(s, " · {} · {}", spec.searcher, self.done_text());
            }
        }
        if let Some(start) = self.started_unix {
            let _ = write!(s, " · {} elapsed", duration(now - start));
        }
        if let Some(eta) = self.eta(now) {
            let _ = write!(s, " · ETA {}", duration(eta));
        }
        s
    }

    fn frame(&self) -> Vec<String> {
        let mut lines = vec![self.header()];
        let running: Vec<(&u32, &JobView)> = self
            .jobs
            .iter()
            .filter(|(_, j)| {
                matches!(
                    j.stage,
                    Stage::Queued | Stage::Training { .. } | Stage::Evaluating
                )
            })
            .collect();
        if !running.is_empty() {
            lines.push("running".into());
            for (i, j) in running {
                lines.push(match &j.stage {
                    Stage::Training {
                        epoch,
                        epochs,
                        loss,
                        patches_per_sec,
                        worker,
                    } => format!(
                        "  job {i:>3}  {}  {epoch:>3}/{epochs:<3} loss {loss:.4}  \
                         {patches_per_sec:.1} patches/s  {worker}",
                        bar(*epoch, *epochs, 24)
                    ),
                    Stage::Evaluating => {
                        format!("  job {i:>3}  {}  trained; evaluating", bar(1, 1, 24))
                    }
                    _ => format!("  job {i:>3}  {}  queued", bar(0, 1, 24)),
                });
            }
        }
        let finished: Vec<(&u32, &JobView)> = self
            .jobs
            .iter()
            .filter(|(_, j)| matches!(j.stage, Stage::Done | Stage::Failed(_)))
            .collect();
        if !finished.is_empty() {
            lines.push("finished".into());
            lines.push(self.table_header());
            const SHOWN: usize = 12;
            if finished.len() > SHOWN {
                lines.push(format!("  ... {} earlier jobs", finished.len() - SHOWN));
            }
            for (i, j) in finished.iter().skip(finished.len().saturating_sub(SHOWN)) {
                lines.push(self.table_row(**i, j));
            }
        }
        lines
    }

    fn redraw(&mut self) {
        if self.output != Output::Live {
            return;
        }
        let width = terminal_width();
        let mut out = String::new();
        if self.drawn > 0 {
            let _ = write!(out, "\x1b[{}F\x1b[J", self.drawn);
        }
        let lines = self.frame();
        for l in &lines {
            out.extend(l.chars().take(width.saturating_sub(1)));
            out.push('\n');
        }
        self.drawn = lines.len();
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
    }

    /// Erases the live frame.
    fn clear(&mut self) {
        if self.output == Output::Live && self.drawn > 0 {
            print!("\x1b[{}F\x1b[J", self.drawn);
            let _ = std::io::stdout().flush();
            self.drawn = 0;
        }
    }

    /// The final table and the best strategy.
    fn summary(&self, outcome: Option<&Outcome>) {
        if self.output == Output::Quiet {
            return;
        }
        match outcome {
            Some(o) => println!(
                "study {} done: {} rewards in {}; best job {} Dice {:.4}",
                self.study,
                o.rewards,
                duration(o.seconds),
                self.index_of
                    .get(&o.best_job_id)
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| o.best_job_id.clone()),
                o.best_mean
            ),
            None => println!("study {} failed", self.study),
        }
        if !self.jobs.is_empty() {
            println!("{}", self.table_header());
            for (i, j) in &self.jobs {
                println!("{}", self.table_row(*i, j));
            }
        }
        if let Some(o) = outcome {
            println!(
                "best strategy ({}, Dice {:.4}):",
                o.best_job_id, o.best_mean
            );
            let dims = self.dims();
            let mut names: Vec<(String, bool)> = dims
                .iter()
                .filter(|(n, _)| o.best_strategy.values.contains_key(n))
                .cloned()
                .collect();
            for k in o.best_strategy.values.keys() {
                if !dims.iter().any(|(n, _)| n == k) {
                    names.push((k.clone(), false));
                }
            }
            for (k, log) in names {
                println!("  {k:<16} {}", value(o.best_strategy.values[&k], log));
            }
        }
    }
}

/// Column names: `p_sharpen` -> `sharpen`, `learning_rate` -> `lr`, at most 7 characters.
fn short(name: &str) -> String {
    if name == "learning_rate" {
        return "lr".into();
    }
    name.strip_prefix("p_")
        .unwrap_or(name)
        .chars()
        .take(7)
        .collect()
}

fn value(v: f64, log: bool) -> String {
    if log {
        format!("{v:.1e}")
    } else {
        format!("{v:.2}")
    }
}

fn bar(done: u32, total: u32, width: usize) -> String {
    let filled = if total == 0 {
        0
    } else {
        (done.min(total) as usize * width) / total as usize
    };
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Columns of the terminal on stdout (lines are clipped to it so a redraw never wraps).
fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills a winsize struct we own; failure leaves it zeroed.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        ws.ws_col as usize
    } else {
        std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(120)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_and_values() {
        assert_eq!(short("p_sharpen"), "sharpen");
        assert_eq!(short("p_rotate90"), "rotate9");
        assert_eq!(short("learning_rate"), "lr");
        assert_eq!(value(0.5, false), "0.50");
        assert_eq!(value(1e-4, true), "1.0e-4");
        assert_eq!(bar(2, 4, 8), "[####----]");
        assert_eq!(bar(9, 4, 4), "[####]");
        assert_eq!(duration(75.0), "1m15s");
        assert_eq!(duration(3.2), "3s");
    }

    fn issued(job_id: &str, index: u32) -> StudyEvent {
        StudyEvent {
            schema: protocol::SCHEMA_VERSION,
            study: "s".into(),
            time_unix: index as f64,
            event: StudyEventKind::Issued {
                job_id: job_id.into(),
                index,
                strategy: Strategy {
                    values: [("p_flip".to_string(), 0.5)].into_iter().collect(),
                    unit: BTreeMap::new(),
                },
            },
        }
    }

    fn rewarded(job_id: &str, index: u32, mean: f64) -> StudyEvent {
        StudyEvent {
            event: StudyEventKind::Reward {
                job_id: job_id.into(),
                index,
                mean,
                rewards_so_far: index,
            },
            ..issued(job_id, index)
        }
    }

    fn reward(job_id: &str, index: u32, mean: f64, trainer: &str) -> Reward {
        Reward {
            schema: protocol::SCHEMA_VERSION,
            study: "s".into(),
            job_id: job_id.into(),
            index,
            strategy: Strategy::default(),
            per_case: Vec::new(),
            per_class: vec![mean],
            mean,
            checkpoint_key: String::new(),
            trainer: trainer.into(),
            attempt: 1,
            train_seconds: 3.0,
            final_loss: 0.4,
            eval_seconds: 1.0,
        }
    }

    #[test]
    fn finished_jobs_show_their_trainer() {
        let mut view = View::new("s", Output::Quiet);
        view.event(issued("s-0001", 1));
        view.reward(reward("s-0001", 1, 0.5, "trainer-12"));
        view.event(rewarded("s-0001", 1, 0.5));
        // The reward stream can run ahead of the events: a reward before its `issued`.
        view.reward(reward("s-0002", 2, 0.25, "trainer-1"));
        view.event(issued("s-0002", 2));
        view.event(rewarded("s-0002", 2, 0.25));
        // A reward from an older evaluator names no trainer.
        view.event(issued("s-0003", 3));
        view.reward(reward("s-0003", 3, 0.75, ""));
        view.event(rewarded("s-0003", 3, 0.75));

        let header = view.table_header();
        assert_eq!(header, "   job    flip    Dice  trainer     per class");
        let rows: Vec<String> = (1..=3).map(|i| view.table_row(i, &view.jobs[&i])).collect();
        assert_eq!(rows[0], "     1    0.50  0.5000  trainer-12  0.50");
        assert_eq!(rows[1], "     2    0.50  0.2500  trainer-1   0.25");
        assert_eq!(rows[2], "     3    0.50  0.7500  -           0.75");
        let at = header.find("per class").unwrap();
        assert!(
            rows.iter().all(|r| r[at..].starts_with("0.")),
            "aligned: {rows:?}"
        );
    }

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
