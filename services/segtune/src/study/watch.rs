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
    if let Finish::Done(_) = &finish {
        // The rewards replay apart from the events, so the done event can come before the
        // last rewards (always so when attaching to a finished study): read them, briefly, so
        // the final table has every job's trainer and per-class Dice.
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        while view.awaiting_rewards() {
            match tokio::time::timeout_at(until, rewards.next()).await {
                Ok(Some(Ok(msg))) => {
                    if let Ok(r) = protocol::decode::<Reward>(&msg.payload) {
                        view.reward(r);
                    }
                }
                _ => break,
            }
        }
    }
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
    /// Its reward message has been read (per-class Dice, trainer).
    rewarded: bool,
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
    /// Where frames, plain lines and the summary go: stdout, or a buffer in tests.
    out: Box<dyn std::io::Write + Send>,
}

impl View {
    fn new(study: &str, output: Output) -> Self {
        Self::with_output(study, output, Box::new(std::io::stdout()))
    }

    fn with_output(study: &str, output: Output, out: Box<dyn std::io::Write + Send>) -> Self {
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
            out,
        }
    }

    fn line(&mut self, at_unix: f64, text: &str) {
        if self.output == Output::Plain {
            let t = at_unix - self.t0.unwrap_or(at_unix);
            let _ = writeln!(self.out, "[{t:7.1}s] {text}");
            let _ = self.out.flush();
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
                        rewarded: false,
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
                    "job {index} ({job_id}) Dice {mean:.4} ({}{})",
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
            j.rewarded = true;
            j.per_class = r.per_class;
            j.trainer = r.trainer;
            j.dice.get_or_insert(r.mean);
        }
    }

    fn progress(&mut self, p: Progress) {
        self.progress_at(p, now_unix());
    }

    fn progress_at(&mut self, p: Progress, now: f64) {
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
        self.line(now, &text);
    }

    /// Whether a job counted as rewarded still lacks its reward message.
    fn awaiting_rewards(&self) -> bool {
        self.jobs
            .values()
            .any(|j| matches!(j.stage, Stage::Done) && !j.rewarded)
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

    fn header(&self, now: f64) -> String {
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

    /// The live view at `now` (Unix seconds), one string per terminal line.
    fn frame(&self, now: f64) -> Vec<String> {
        let mut lines = vec![self.header(now)];
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
        let lines = self.frame(now_unix());
        for l in &lines {
            out.extend(l.chars().take(width.saturating_sub(1)));
            out.push('\n');
        }
        self.drawn = lines.len();
        let _ = self.out.write_all(out.as_bytes());
        let _ = self.out.flush();
    }

    /// Erases the live frame.
    fn clear(&mut self) {
        if self.output == Output::Live && self.drawn > 0 {
            let _ = write!(self.out, "\x1b[{}F\x1b[J", self.drawn);
            let _ = self.out.flush();
            self.drawn = 0;
        }
    }

    /// The final table and the best strategy.
    fn summary(&mut self, outcome: Option<&Outcome>) {
        if self.output == Output::Quiet {
            return;
        }
        let mut text = match outcome {
            Some(o) => format!(
                "study {} done: {} rewards in {}; best job {} Dice {:.4}\n",
                self.study,
                o.rewards,
                duration(o.seconds),
                self.index_of
                    .get(&o.best_job_id)
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| o.best_job_id.clone()),
                o.best_mean
            ),
            None => format!("study {} failed\n", self.study),
        };
        if !self.jobs.is_empty() {
            let _ = writeln!(text, "{}", self.table_header());
            for (i, j) in &self.jobs {
                let _ = writeln!(text, "{}", self.table_row(*i, j));
            }
        }
        if let Some(o) = outcome {
            let _ = writeln!(
                text,
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
                let _ = writeln!(text, "  {k:<16} {}", value(o.best_strategy.values[&k], log));
            }
        }
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
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

        assert!(
            !view.awaiting_rewards(),
            "every rewarded job has its reward"
        );

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

    /// A writer the test reads back: what the view printed.
    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect()
        }
    }

    const T0: f64 = 1000.0;

    fn at(t: f64, event: StudyEventKind) -> StudyEvent {
        StudyEvent {
            schema: protocol::SCHEMA_VERSION,
            study: "s".into(),
            time_unix: T0 + t,
            event,
        }
    }

    fn strat(flip: f64, lr: f64) -> Strategy {
        Strategy {
            values: [
                ("p_flip".to_string(), flip),
                ("learning_rate".to_string(), lr),
            ]
            .into_iter()
            .collect(),
            unit: BTreeMap::new(),
        }
    }

    fn started() -> StudyEvent {
        let dim = |name: &str, min, max, scale| protocol::Dimension {
            name: name.into(),
            min,
            max,
            scale,
        };
        at(
            0.0,
            StudyEventKind::Started {
                spec: Box::new(StudySpec {
                    schema: protocol::SCHEMA_VERSION,
                    study: "s".into(),
                    dataset: protocol::DatasetRef::Id { id: "ds-1".into() },
                    space: vec![
                        dim("p_flip", 0.0, 1.0, Scale::Linear),
                        dim("learning_rate", 1e-4, 1e-2, Scale::Log),
                    ],
                    searcher: "ppo-rnn".into(),
                    searcher_settings: BTreeMap::new(),
                    max_jobs: 4,
                    parallel: 2,
                    max_failures: 10,
                    training: protocol::TrainingConfig::default(),
                    seed: 0,
                }),
                dataset_id: "ds-1".into(),
            },
        )
    }

    fn issue(t: f64, index: u32, strategy: Strategy) -> StudyEvent {
        at(
            t,
            StudyEventKind::Issued {
                job_id: format!("s-{index:04}"),
                index,
                strategy,
            },
        )
    }

    fn rewarded_at(t: f64, index: u32, mean: f64, so_far: u32) -> StudyEvent {
        at(
            t,
            StudyEventKind::Reward {
                job_id: format!("s-{index:04}"),
                index,
                mean,
                rewards_so_far: so_far,
            },
        )
    }

    fn new_best(t: f64, index: u32, mean: f64) -> StudyEvent {
        at(
            t,
            StudyEventKind::NewBest {
                job_id: format!("s-{index:04}"),
                mean,
                strategy: Strategy::default(),
            },
        )
    }

    fn epoch(index: u32, epoch: u32, loss: f64, pps: f64, worker: &str) -> Progress {
        Progress {
            schema: protocol::SCHEMA_VERSION,
            study: "s".into(),
            job_id: format!("s-{index:04}"),
            worker: worker.into(),
            epoch,
            epochs: 4,
            loss,
            patches_per_sec: pps,
            attempt: 1,
        }
    }

    /// Jobs 1-3 of a 4-job study 12 s in: job 1 rewarded (the best), job 2 training, job 3
    /// trained and being evaluated.
    fn first_half(view: &mut View) {
        assert!(view.event(started()).is_none());
        view.event(issue(1.0, 1, strat(0.25, 1e-3)));
        view.event(issue(2.0, 2, strat(0.75, 3e-4)));
        view.progress_at(epoch(1, 2, 0.4321, 12.5, "trainer-1"), T0 + 5.0);
        let mut r = reward("s-0001", 1, 0.5, "trainer-1");
        r.per_class = vec![0.6, 0.4];
        view.reward(r);
        view.event(rewarded_at(10.0, 1, 0.5, 1));
        view.event(new_best(10.0, 1, 0.5));
        view.event(issue(11.0, 3, strat(0.5, 1e-2)));
        view.progress_at(epoch(2, 3, 0.25, 7.5, "trainer-2"), T0 + 12.0);
        view.progress_at(epoch(3, 4, 0.125, 9.0, "trainer-1"), T0 + 13.0);
    }

    #[test]
    fn live_frame_shows_running_jobs_finished_jobs_best_and_eta() {
        let buf = Buf::default();
        let mut view = View::with_output("s", Output::Live, Box::new(buf.clone()));
        first_half(&mut view);
        // Handling events draws nothing: the frame is drawn on the tick.
        assert!(buf.lines().is_empty(), "{:?}", buf.lines());

        let frame = view.frame(T0 + 20.0);
        // 1 of 4 done in 20 s: 3 left at 20 s each.
        assert_eq!(
            frame[0],
            "study s · ppo-rnn · 1/4 done, best 0.5000 (job 1) · 20s elapsed · ETA 1m00s"
        );
        assert_eq!(frame[1], "running");
        // One bar per running job: job 2 at epoch 3 of 4 (18 of 24 cells), its loss,
        // throughput and trainer; job 3 has trained all its epochs.
        assert_eq!(
            frame[2],
            format!(
                "  job   2  [{}{}]    3/4   loss 0.2500  7.5 patches/s  trainer-2",
                "#".repeat(18),
                "-".repeat(6)
            )
        );
        assert_eq!(
            frame[3],
            format!("  job   3  [{}]  trained; evaluating", "#".repeat(24))
        );
        assert_eq!(frame[4], "finished");
        // The finished table: strategy values (log scale for the learning rate), Dice,
        // trainer, per-class Dice and the best mark.
        assert_eq!(
            frame[5],
            "   job    flip      lr    Dice  trainer    per class"
        );
        assert_eq!(
            frame[6],
            "     1    0.25  1.0e-3  0.5000  trainer-1  0.60 0.40  *best"
        );
        assert_eq!(frame.len(), 7, "{frame:#?}");

        // Job 2 finishes, better than job 1: it leaves the bars, joins the table, is the best.
        view.event(rewarded_at(24.0, 2, 0.625, 2));
        view.event(new_best(24.0, 2, 0.625));
        let frame = view.frame(T0 + 30.0);
        assert_eq!(
            frame[0],
            "study s · ppo-rnn · 2/4 done, best 0.6250 (job 2) · 30s elapsed · ETA 30s"
        );
        let running: Vec<&String> = frame.iter().filter(|l| l.starts_with("  job ")).collect();
        assert_eq!(running.len(), 1, "{frame:#?}");
        assert!(running[0].starts_with("  job   3 "), "{frame:#?}");
        let rows = &frame[frame.iter().position(|l| l == "finished").unwrap() + 2..];
        assert_eq!(rows.len(), 2, "{frame:#?}");
        assert!(!rows[0].contains("*best"), "{}", rows[0]);
        assert!(
            rows[1].starts_with("     2    0.75  3.0e-4  0.6250  ") && rows[1].ends_with("*best"),
            "{}",
            rows[1]
        );
        // Nothing was drawn to the output yet; a redraw writes the frame, a clear erases it.
        view.redraw();
        let drawn = buf.lines();
        assert_eq!(drawn.len(), frame.len(), "{drawn:#?}");
        assert!(drawn[0].starts_with("study s · ppo-rnn · 2/4 done"));
        view.clear();
        let after = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(
            after.ends_with(&format!("\x1b[{}F\x1b[J", frame.len())),
            "{after:?}"
        );
    }

    #[test]
    fn plain_lines_tell_the_same_story() {
        let buf = Buf::default();
        let mut view = View::with_output("s", Output::Plain, Box::new(buf.clone()));
        first_half(&mut view);
        view.event(rewarded_at(20.0, 2, 0.25, 2));
        view.event(rewarded_at(25.0, 3, 0.75, 3));
        view.event(new_best(25.0, 3, 0.75));
        view.event(issue(26.0, 4, strat(1.0, 1e-4)));
        view.event(rewarded_at(30.0, 4, 0.125, 4));
        let done = view.event(at(
            30.0,
            StudyEventKind::Done {
                best_job_id: "s-0003".into(),
                best_mean: 0.75,
                best_strategy: strat(0.5, 1e-2),
                rewards: 4,
            },
        ));
        let Some(Finish::Done(outcome)) = done else {
            panic!("the done event ends the study");
        };
        // Jobs 2-4 were counted from events alone: `follow` reads their rewards before the
        // summary. (Here they never come: the rows show no trainer.)
        assert!(view.awaiting_rewards());
        assert_eq!(outcome.seconds, 30.0);
        view.summary(Some(&outcome));

        let lines = buf.lines();
        let want = [
            "[    0.0s] study s started: ppo-rnn, 4 jobs, 2 in parallel, dataset ds-1",
            "[    1.0s] job 1 issued: flip=0.25 lr=1.0e-3",
            "[    2.0s] job 2 issued: flip=0.75 lr=3.0e-4",
            "[    5.0s] job 1 epoch 2/4 loss 0.4321, 12.5 patches/s (trainer-1)",
            // 1 of 4 in 10 s: 30 s left.
            "[   10.0s] job 1 (s-0001) Dice 0.5000 (1/4 done, ETA 30s)",
            "[   10.0s] new best: job 1 Dice 0.5000",
            "[   11.0s] job 3 issued: flip=0.50 lr=1.0e-2",
            "[   12.0s] job 2 epoch 3/4 loss 0.2500, 7.5 patches/s (trainer-2)",
            "[   13.0s] job 3 epoch 4/4 loss 0.1250, 9.0 patches/s (trainer-1)",
            "[   20.0s] job 2 (s-0002) Dice 0.2500 (2/4 done, best 0.5000 (job 1), ETA 20s)",
            "[   25.0s] job 3 (s-0003) Dice 0.7500 (3/4 done, best 0.5000 (job 1), ETA 8s)",
            "[   25.0s] new best: job 3 Dice 0.7500",
            "[   26.0s] job 4 issued: flip=1.00 lr=1.0e-4",
            // The last reward: no ETA.
            "[   30.0s] job 4 (s-0004) Dice 0.1250 (4/4 done, best 0.7500 (job 3))",
            "[   30.0s] study s done: 4 rewards",
            // The summary: the outcome, every job, the best strategy.
            "study s done: 4 rewards in 30s; best job 3 Dice 0.7500",
            "   job    flip      lr    Dice  trainer    per class",
            "     1    0.25  1.0e-3  0.5000  trainer-1  0.60 0.40",
            "     2    0.75  3.0e-4  0.2500  -        ",
            "     3    0.50  1.0e-2  0.7500  -          *best",
            "     4    1.00  1.0e-4  0.1250  -        ",
            "best strategy (s-0003, Dice 0.7500):",
            "  p_flip           0.50",
            "  learning_rate    1.0e-2",
        ];
        assert_eq!(lines, want);
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
