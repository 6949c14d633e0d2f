//! `segtune study report ID --out DIR`: plots (PNG + SVG), a CSV of the jobs, the best
//! strategy as a strategy file, and a Markdown/HTML summary, all from what the bus keeps
//! about a study (its rewards and its events). [`write_report`] reads the streams; the rest
//! of this module is pure (a [`StudyRecord`] in, text or files out), so it is tested
//! without NATS.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::Once,
};

use anyhow::Context as _;
use async_nats::jetstream;
use clap::Args;
use plotters::{
    coord::Shift,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};
use protocol::{Dimension, Reward, Scale, Strategy, StudyEvent, StudyEventKind, StudySpec};

use super::rewards::{format_value, short_name};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Study id.
    pub study: String,
    /// Output folder (created if missing; files in it are overwritten).
    #[arg(long, default_value = "reports/<STUDY>")]
    pub out: PathBuf,
    #[arg(long, env = "SEGTUNE_NATS", default_value = runtime::DEFAULT_NATS)]
    pub nats: String,
}

/// What [`write_report`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportSummary {
    pub study: String,
    /// Rewarded jobs (one per job id).
    pub jobs: usize,
    pub best_job_id: String,
    pub best_mean: f64,
    pub best_strategy: Strategy,
    /// Every file written, in `out`.
    pub files: Vec<PathBuf>,
}

/// One rewarded job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    /// 1-based issue order.
    pub index: u32,
    pub job_id: String,
    pub strategy: Strategy,
    /// Mean Dice over validation cases of each foreground class (index 0 = label 1).
    pub per_class: Vec<f64>,
    /// The reward.
    pub mean: f64,
    /// Wall seconds from the job's issue to its reward (from the study events): queueing,
    /// training and evaluation together. `None` when either event is missing.
    pub seconds: Option<f64>,
    /// Who trained the job and how long it took; `None` for a reward from an evaluator that
    /// did not report it (older than these fields: `attempt` 0 on the wire).
    pub run: Option<JobRun>,
}

/// The training run behind a reward, as the evaluator reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRun {
    /// The trainer replica (`SEGTUNE_WORKER`, e.g. `trainer-2` under `segtune up`).
    pub trainer: String,
    /// Delivery attempt of the training job (1 = first; more after a replica stopped).
    pub attempt: u64,
    pub train_seconds: f64,
    pub eval_seconds: f64,
    pub final_loss: f64,
}

impl JobRun {
    fn of(r: &Reward) -> Option<Self> {
        (r.attempt > 0).then(|| Self {
            trainer: r.trainer.clone(),
            attempt: r.attempt,
            train_seconds: r.train_seconds,
            eval_seconds: r.eval_seconds,
            final_loss: r.final_loss,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum StudyStatus {
    Running,
    Done,
    Failed(String),
}

/// Everything the report shows, gathered from a study's rewards and events.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyRecord {
    pub study: String,
    /// From the `started` event.
    pub spec: Option<StudySpec>,
    pub dataset_id: Option<String>,
    /// One per job id (the first reward stored wins, as in the controller), in issue order.
    pub rows: Vec<JobRow>,
    /// (job id, reason) of jobs that failed for good.
    pub failed_jobs: Vec<(String, String)>,
    pub status: StudyStatus,
}

impl StudyRecord {
    pub fn from_messages(study: &str, rewards: &[Reward], events: &[StudyEvent]) -> Self {
        let mut spec = None;
        let mut dataset_id = None;
        let mut issued = HashMap::new();
        let mut rewarded = HashMap::new();
        let mut failed_jobs = Vec::new();
        let mut status = StudyStatus::Running;
        for ev in events.iter().filter(|e| e.study == study) {
            match &ev.event {
                StudyEventKind::Started {
                    spec: s,
                    dataset_id: d,
                } => {
                    spec = Some((**s).clone());
                    dataset_id = Some(d.clone());
                }
                StudyEventKind::Issued { job_id, .. } => {
                    issued.entry(job_id.clone()).or_insert(ev.time_unix);
                }
                StudyEventKind::Reward { job_id, .. } => {
                    rewarded.entry(job_id.clone()).or_insert(ev.time_unix);
                }
                StudyEventKind::JobFailed { job_id, reason } => {
                    failed_jobs.push((job_id.clone(), reason.clone()))
                }
                StudyEventKind::Done { .. } => status = StudyStatus::Done,
                StudyEventKind::Failed { reason } => status = StudyStatus::Failed(reason.clone()),
                StudyEventKind::NewBest { .. } => {}
            }
        }
        let mut seen = HashSet::new();
        let mut rows: Vec<JobRow> = rewards
            .iter()
            .filter(|r| r.study == study && seen.insert(r.job_id.clone()))
            .map(|r| JobRow {
                index: r.index,
                job_id: r.job_id.clone(),
                strategy: r.strategy.clone(),
                per_class: r.per_class.clone(),
                mean: r.mean,
                seconds: match (issued.get(&r.job_id), rewarded.get(&r.job_id)) {
                    (Some(a), Some(b)) if b >= a => Some(b - a),
                    _ => None,
                },
                run: JobRun::of(r),
            })
            .collect();
        rows.sort_by(|a, b| (a.index, &a.job_id).cmp(&(b.index, &b.job_id)));
        Self {
            study: study.to_string(),
            spec,
            dataset_id,
            rows,
            failed_jobs,
            status,
        }
    }

    /// The searched dimensions in the study's order; without a `started` event, the
    /// strategies' names, the learning rate taken as log-scaled and the rest as linear over
    /// the values seen (and at least [0, 1]).
    pub fn dimensions(&self) -> Vec<Dimension> {
        let mut dims: Vec<Dimension> = self
            .spec
            .as_ref()
            .map(|s| s.space.clone())
            .unwrap_or_default();
        let known: HashSet<String> = dims.iter().map(|d| d.name.clone()).collect();
        let mut extra: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
        for row in &self.rows {
            for (k, v) in &row.strategy.values {
                if known.contains(k) || !v.is_finite() {
                    continue;
                }
                let e = extra.entry(k).or_insert((*v, *v));
                e.0 = e.0.min(*v);
                e.1 = e.1.max(*v);
            }
        }
        // The learning rate last, as in the paper's space.
        let mut extra: Vec<(&str, (f64, f64))> = extra.into_iter().collect();
        extra.sort_by_key(|(name, _)| *name == engine::LR_DIMENSION);
        for (name, (lo, hi)) in extra {
            dims.push(if name == engine::LR_DIMENSION {
                Dimension {
                    name: name.into(),
                    min: lo.min(1e-4),
                    max: hi.max(1e-2),
                    scale: Scale::Log,
                }
            } else {
                Dimension {
                    name: name.into(),
                    min: lo.min(0.0),
                    max: hi.max(1.0),
                    scale: Scale::Linear,
                }
            });
        }
        dims
    }

    /// The job with the highest finite reward (the first one on a tie, as the controller).
    pub fn best(&self) -> Option<&JobRow> {
        let mut best: Option<&JobRow> = None;
        for r in self.rows.iter().filter(|r| r.mean.is_finite()) {
            if best.is_none_or(|b| r.mean > b.mean) {
                best = Some(r);
            }
        }
        best
    }

    /// Number of foreground classes (the longest per-class list).
    pub fn classes(&self) -> usize {
        self.rows
            .iter()
            .map(|r| r.per_class.len())
            .max()
            .unwrap_or(0)
    }

    fn max_index(&self) -> u32 {
        let last = self.rows.iter().map(|r| r.index).max().unwrap_or(0);
        last.max(self.spec.as_ref().map_or(0, |s| s.max_jobs))
            .max(1)
    }

    fn searcher(&self) -> &str {
        self.spec.as_ref().map_or("?", |s| s.searcher.as_str())
    }

    /// "study ID (searcher)" for plot titles.
    fn label(&self) -> String {
        match &self.spec {
            Some(s) => format!("study {} ({})", self.study, s.searcher),
            None => format!("study {}", self.study),
        }
    }
}

/// A probability: what the best-strategy bar chart shows as a bar.
fn is_probability(d: &Dimension) -> bool {
    d.scale == Scale::Linear && d.min >= 0.0 && d.max <= 1.0
}

/// Reads the study from the bus and writes the report into `out` (created).
pub async fn write_report(
    js: &jetstream::Context,
    study: &str,
    out: &Path,
) -> anyhow::Result<ReportSummary> {
    let (rewards, events) = super::rewards::replay_study(js, study).await?;
    let record = StudyRecord::from_messages(study, &rewards, &events);
    write_files(&record, out)
}

pub async fn run(a: ReportArgs) -> anyhow::Result<()> {
    protocol::subjects::check_token("study id", &a.study)?;
    let out = if a.out.as_os_str() == "reports/<STUDY>" {
        Path::new("reports").join(&a.study)
    } else {
        a.out
    };
    let js = super::rewards::connect_once(&a.nats, "segtune-report").await?;
    let s = write_report(&js, &a.study, &out).await?;
    eprintln!(
        "study {}: {} jobs, best Dice {:.4} ({}); wrote {} files to {}",
        s.study,
        s.jobs,
        s.best_mean,
        s.best_job_id,
        s.files.len(),
        out.display()
    );
    for f in &s.files {
        println!("{}", f.display());
    }
    Ok(())
}

/// Writes every report file for `rec` into `out`.
pub fn write_files(rec: &StudyRecord, out: &Path) -> anyhow::Result<ReportSummary> {
    let best = rec.best().ok_or_else(|| {
        anyhow::anyhow!(
            "study {:?} has no rewarded job yet: nothing to report",
            rec.study
        )
    })?;
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create the report folder {}", out.display()))?;
    let mut files = Vec::new();
    let mut svgs = Vec::new();
    for (stem, title, plot) in [
        (
            "rewards",
            "Reward per job",
            &RewardsPlot(rec) as &dyn PlotAny,
        ),
        ("strategy", "Strategy over the study", &StrategyPlot(rec)),
        ("best", "Best strategy", &BestPlot(rec)),
    ] {
        let png = out.join(format!("{stem}.png"));
        plot.png(&png)
            .with_context(|| format!("cannot draw {}", png.display()))?;
        let svg = plot.svg()?;
        let svg_path = out.join(format!("{stem}.svg"));
        write(&svg_path, &svg)?;
        files.push(png);
        files.push(svg_path);
        svgs.push((stem, title, svg));
    }
    let text_files = [
        ("jobs.csv", jobs_csv(rec)),
        ("best.toml", best_toml(rec)?),
        ("summary.md", summary_markdown(rec)),
        ("summary.html", summary_html(rec, &svgs)),
    ];
    for (name, text) in text_files {
        let p = out.join(name);
        write(&p, &text)?;
        files.push(p);
    }
    Ok(ReportSummary {
        study: rec.study.clone(),
        jobs: rec.rows.len(),
        best_job_id: best.job_id.clone(),
        best_mean: best.mean,
        best_strategy: best.strategy.clone(),
        files,
    })
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// One row per rewarded job: index, job_id, each dimension (real units), each class's Dice,
/// mean, seconds from issue to reward, then the training run: trainer, attempt,
/// train_seconds, eval_seconds, final_loss. Unknown cells are empty.
pub fn jobs_csv(rec: &StudyRecord) -> String {
    let dims = rec.dimensions();
    let classes = rec.classes();
    let mut header = vec!["index".to_string(), "job_id".to_string()];
    header.extend(dims.iter().map(|d| d.name.clone()));
    header.extend((1..=classes).map(|c| format!("dice_class_{c}")));
    header.extend(
        [
            "mean",
            "seconds",
            "trainer",
            "attempt",
            "train_seconds",
            "eval_seconds",
            "final_loss",
        ]
        .map(String::from),
    );
    let mut s = header.join(",") + "\n";
    for r in &rec.rows {
        let mut cells = vec![r.index.to_string(), r.job_id.clone()];
        cells.extend(dims.iter().map(|d| {
            r.strategy
                .values
                .get(&d.name)
                .map_or(String::new(), |v| v.to_string())
        }));
        cells
            .extend((0..classes).map(|c| r.per_class.get(c).map_or(String::new(), f64::to_string)));
        cells.push(r.mean.to_string());
        cells.push(r.seconds.map_or(String::new(), |s| format!("{s:.1}")));
        match &r.run {
            Some(run) => cells.extend([
                csv_field(&run.trainer),
                run.attempt.to_string(),
                format!("{:.3}", run.train_seconds),
                format!("{:.3}", run.eval_seconds),
                run.final_loss.to_string(),
            ]),
            None => cells.extend(std::iter::repeat_n(String::new(), 5)),
        }
        s.push_str(&cells.join(","));
        s.push('\n');
    }
    s
}

/// A CSV cell, quoted when it holds a comma, a quote or a line break (a trainer name is
/// whatever `SEGTUNE_WORKER` says).
fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

/// The best strategy as a strategy file (`name = value`, real units), which
/// `segtune train --strategy` reads.
pub fn best_toml(rec: &StudyRecord) -> anyhow::Result<String> {
    let best = rec
        .best()
        .ok_or_else(|| anyhow::anyhow!("study {:?} has no rewarded job", rec.study))?;
    let mut s = format!(
        "# Best strategy of study {} ({}, {} jobs): job {} (#{}), mean validation Dice {:.6}.\n\
         # Train with it: segtune train --dataset <id> --strategy best.toml\n",
        rec.study,
        rec.searcher(),
        rec.rows.len(),
        best.job_id,
        best.index,
        best.mean
    );
    s.push_str(&toml::to_string(&best.strategy.values)?);
    Ok(s)
}

fn status_text(rec: &StudyRecord) -> String {
    match &rec.status {
        StudyStatus::Running => "running (or stopped before it was done)".into(),
        StudyStatus::Done => "done".into(),
        StudyStatus::Failed(r) => format!("failed: {r}"),
    }
}

fn jobs_text(rec: &StudyRecord) -> String {
    let mut s = match &rec.spec {
        Some(spec) => format!(
            "{} rewarded of max_jobs {} ({} in parallel)",
            rec.rows.len(),
            spec.max_jobs,
            spec.parallel
        ),
        None => format!("{} rewarded", rec.rows.len()),
    };
    if !rec.failed_jobs.is_empty() {
        let _ = write!(s, "; {} failed", rec.failed_jobs.len());
    }
    s
}

/// `summary.md`: the study at a glance, the best strategy, the plots and every job.
pub fn summary_markdown(rec: &StudyRecord) -> String {
    let dims = rec.dimensions();
    let mut s = format!("# Study `{}`\n\n| | |\n|---|---|\n", rec.study);
    let _ = writeln!(s, "| searcher | {} |", rec.searcher());
    if let Some(d) = &rec.dataset_id {
        let _ = writeln!(s, "| dataset | `{d}` |");
    }
    let _ = writeln!(s, "| status | {} |", status_text(rec));
    let _ = writeln!(s, "| jobs | {} |", jobs_text(rec));
    if let Some(b) = rec.best() {
        let _ = writeln!(
            s,
            "| best | job #{} `{}`: mean Dice **{:.4}** |",
            b.index, b.job_id, b.mean
        );
        s.push_str("\n## Best strategy\n\n| dimension | value |\n|---|---|\n");
        for d in &dims {
            if let Some(v) = b.strategy.values.get(&d.name) {
                let _ = writeln!(s, "| {} | {} |", d.name, format_value(&d.name, *v));
            }
        }
        s.push_str(
            "\nAs a strategy file: [best.toml](best.toml) \
             (`segtune train --dataset <id> --strategy best.toml`).\n",
        );
    }
    s.push_str(
        "\n## Plots\n\n![Reward per job](rewards.png)\n\n![Strategy over the study](strategy.png)\
         \n\n![Best strategy](best.png)\n\n(SVG versions next to them; all jobs in \
         [jobs.csv](jobs.csv).)\n\n## Jobs\n\n`train s`: seconds the trainer spent training the job; \
         `s`: seconds from issue to reward (queueing, training and evaluation).\n\n",
    );
    let best_id = rec.best().map(|b| b.job_id.as_str());
    let mut header = vec!["#".to_string(), "job".into(), "Dice".into()];
    if rec.classes() > 1 {
        header.push("per class".into());
    }
    header.extend(dims.iter().map(|d| short_name(&d.name)));
    header.extend(["trainer".into(), "train s".into(), "s".into()]);
    let _ = writeln!(s, "| {} |", header.join(" | "));
    let _ = writeln!(s, "|{}", "---|".repeat(header.len()));
    for r in &rec.rows {
        let mark = if Some(r.job_id.as_str()) == best_id {
            " ★"
        } else {
            ""
        };
        let mut cells = vec![
            format!("{}{mark}", r.index),
            format!("`{}`", r.job_id),
            format!("{:.4}", r.mean),
        ];
        if rec.classes() > 1 {
            let pc: Vec<String> = r.per_class.iter().map(|d| format!("{d:.3}")).collect();
            cells.push(pc.join(" "));
        }
        cells.extend(dims.iter().map(|d| {
            r.strategy
                .values
                .get(&d.name)
                .map_or("-".into(), |v| format_value(&d.name, *v))
        }));
        cells.push(trainer_text(r).replace('|', "\\|"));
        cells.push(train_seconds_text(r));
        cells.push(r.seconds.map_or("-".into(), |t| format!("{t:.0}")));
        let _ = writeln!(s, "| {} |", cells.join(" | "));
    }
    if !rec.failed_jobs.is_empty() {
        s.push_str("\n## Failed jobs\n\n| job | reason |\n|---|---|\n");
        for (job, reason) in &rec.failed_jobs {
            let _ = writeln!(s, "| `{job}` | {} |", reason.replace('|', "\\|"));
        }
    }
    s
}

/// The trainer, with the attempt when the job was retried (`trainer-2 (attempt 2)`).
fn trainer_text(r: &JobRow) -> String {
    match &r.run {
        Some(run) if run.trainer.is_empty() => "-".into(),
        Some(run) if run.attempt > 1 => format!("{} (attempt {})", run.trainer, run.attempt),
        Some(run) => run.trainer.clone(),
        None => "-".into(),
    }
}

fn train_seconds_text(r: &JobRow) -> String {
    r.run
        .as_ref()
        .map_or("-".into(), |run| format!("{:.1}", run.train_seconds))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `summary.html`: the Markdown summary's content with the SVG plots inline.
pub fn summary_html(rec: &StudyRecord, svgs: &[(&str, &str, String)]) -> String {
    let dims = rec.dimensions();
    let mut s = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>segtune study {0}</title>\n<style>\
         body{{font-family:sans-serif;max-width:1250px;margin:2em auto;padding:0 1em;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;\
         text-align:right}}td:nth-child(2),th{{text-align:left}}tr.best{{background:#fff3cd}}\
         figure{{margin:1.5em 0}}figure svg{{max-width:100%;height:auto}}code{{font-size:90%}}\
         </style></head><body>\n<h1>Study <code>{0}</code></h1>\n<table>\n",
        esc(&rec.study)
    );
    let mut kv = |k: &str, v: String| {
        let _ = writeln!(
            s,
            "<tr><th>{k}</th><td style=\"text-align:left\">{v}</td></tr>"
        );
    };
    kv("searcher", esc(rec.searcher()));
    if let Some(d) = &rec.dataset_id {
        kv("dataset", format!("<code>{}</code>", esc(d)));
    }
    kv("status", esc(&status_text(rec)));
    kv("jobs", esc(&jobs_text(rec)));
    let best = rec.best();
    if let Some(b) = best {
        kv(
            "best",
            format!(
                "job #{} <code>{}</code>: mean Dice <b>{:.4}</b>",
                b.index,
                esc(&b.job_id),
                b.mean
            ),
        );
    }
    s.push_str("</table>\n");
    if let Some(b) = best {
        s.push_str("<h2>Best strategy</h2>\n<table><tr><th>dimension</th><th>value</th></tr>\n");
        for d in &dims {
            if let Some(v) = b.strategy.values.get(&d.name) {
                let _ = writeln!(
                    s,
                    "<tr><td style=\"text-align:left\">{}</td><td>{}</td></tr>",
                    esc(&d.name),
                    format_value(&d.name, *v)
                );
            }
        }
        s.push_str(
            "</table>\n<p>As a strategy file: <a href=\"best.toml\">best.toml</a> \
             (<code>segtune train --dataset &lt;id&gt; --strategy best.toml</code>).</p>\n",
        );
    }
    s.push_str("<h2>Plots</h2>\n");
    for (stem, title, svg) in svgs {
        let body = svg.find("<svg").map_or(svg.as_str(), |i| &svg[i..]);
        let _ = writeln!(
            s,
            "<figure id=\"{stem}\">{body}<figcaption>{} (<a href=\"{stem}.svg\">SVG</a>, \
             <a href=\"{stem}.png\">PNG</a>)</figcaption></figure>",
            esc(title)
        );
    }
    s.push_str(
        "<h2>Jobs</h2>\n<p>Also as <a href=\"jobs.csv\">jobs.csv</a>. <i>train seconds</i>: \
         the trainer's time on the job; <i>seconds</i>: from issue to reward (queueing, \
         training and evaluation).</p>\n<table><tr>",
    );
    let mut header = vec!["#".to_string(), "job".into(), "Dice".into()];
    if rec.classes() > 1 {
        header.push("per class".into());
    }
    header.extend(dims.iter().map(|d| d.name.clone()));
    header.extend(["trainer".into(), "train seconds".into(), "seconds".into()]);
    for h in &header {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr>\n");
    let best_id = best.map(|b| b.job_id.as_str());
    for r in &rec.rows {
        let class = if Some(r.job_id.as_str()) == best_id {
            " class=\"best\""
        } else {
            ""
        };
        let _ = write!(
            s,
            "<tr{class}><td>{}</td><td><code>{}</code></td><td>{:.4}</td>",
            r.index,
            esc(&r.job_id),
            r.mean
        );
        if rec.classes() > 1 {
            let pc: Vec<String> = r.per_class.iter().map(|d| format!("{d:.3}")).collect();
            let _ = write!(s, "<td>{}</td>", pc.join(" "));
        }
        for d in &dims {
            let v = r
                .strategy
                .values
                .get(&d.name)
                .map_or("-".into(), |v| format_value(&d.name, *v));
            let _ = write!(s, "<td>{v}</td>");
        }
        let t = r.seconds.map_or("-".into(), |t| format!("{t:.0}"));
        let _ = writeln!(
            s,
            "<td style=\"text-align:left\">{}</td><td>{}</td><td>{t}</td></tr>",
            esc(&trainer_text(r)),
            train_seconds_text(r)
        );
    }
    s.push_str("</table>\n");
    if !rec.failed_jobs.is_empty() {
        s.push_str("<h2>Failed jobs</h2>\n<table><tr><th>job</th><th>reason</th></tr>\n");
        for (job, reason) in &rec.failed_jobs {
            let _ = writeln!(
                s,
                "<tr><td><code>{}</code></td><td style=\"text-align:left\">{}</td></tr>",
                esc(job),
                esc(reason)
            );
        }
        s.push_str("</table>\n");
    }
    s.push_str("</body></html>\n");
    s
}

// ---------------------------------------------------------------------------------------
// Plots

/// Registers DejaVu Sans (embedded) as plotters' "sans-serif": the `ab_glyph` text path
/// never looks at system fonts, which Docker images and CI do not have.
fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (style, bytes) in [
            (FontStyle::Normal, dejavu::sans::regular()),
            (FontStyle::Bold, dejavu::sans::bold()),
        ] {
            if plotters::style::register_font(FONT, style, bytes).is_err() {
                tracing::warn!("the embedded DejaVu Sans font did not load");
            }
        }
    });
}

const FONT: &str = "sans-serif";
const C_REWARD: RGBColor = RGBColor(31, 119, 180);
const C_BEST: RGBColor = RGBColor(255, 127, 14);
const C_MARK: RGBColor = RGBColor(214, 39, 40);
const C_GRID: RGBColor = RGBColor(232, 232, 232);
const C_ROUTINE: RGBColor = RGBColor(120, 120, 120);
const C_RANGE: RGBColor = RGBColor(236, 242, 250);
/// Tableau 10: one colour per dimension.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

type PlotResult = anyhow::Result<()>;

/// A plot drawable on any plotters backend.
trait Plot {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> PlotResult
    where
        DB::ErrorType: 'static;
}

/// Object-safe rendering of a [`Plot`] to PNG and SVG.
trait PlotAny {
    fn png(&self, path: &Path) -> PlotResult;
    fn svg(&self) -> anyhow::Result<String>;
}

impl<P: Plot> PlotAny for P {
    fn png(&self, path: &Path) -> PlotResult {
        register_fonts();
        let root = BitMapBackend::new(path, self.size()).into_drawing_area();
        self.draw(&root)?;
        root.present()?;
        Ok(())
    }

    fn svg(&self) -> anyhow::Result<String> {
        register_fonts();
        let mut s = String::new();
        {
            let root = SVGBackend::with_string(&mut s, self.size()).into_drawing_area();
            self.draw(&root)?;
            root.present()?;
        }
        Ok(s)
    }
}

/// Renders one of the report's plots as an SVG document (for tests and embedding).
pub fn plot_svg(rec: &StudyRecord, which: &str) -> anyhow::Result<String> {
    match which {
        "rewards" => RewardsPlot(rec).svg(),
        "strategy" => StrategyPlot(rec).svg(),
        "best" => BestPlot(rec).svg(),
        other => anyhow::bail!("no plot named {other}"),
    }
}

fn font(size: u32) -> TextStyle<'static> {
    (FONT, size).into_font().into()
}

/// A y range around the rewards: tight enough to show differences, never outside [0, 1],
/// with `headroom` (fraction of the span) above for a legend.
fn dice_range(values: impl Iterator<Item = f64>, headroom: f64) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = (hi - lo).max(0.05);
    let lo = (lo - 0.1 * span).max(0.0);
    let hi = (hi + (0.1 + headroom) * span).min(1.0);
    (lo, hi.max(lo + 0.05))
}

/// A log axis a bit wider than the dimension's range, so that both ends get tick labels.
fn log_range(d: &Dimension) -> (f64, f64) {
    (d.min / 1.6, d.max * 1.6)
}

/// Reward per job in issue order, the best-so-far line, the best job ringed.
struct RewardsPlot<'a>(&'a StudyRecord);

impl Plot for RewardsPlot<'_> {
    fn size(&self) -> (u32, u32) {
        (1000, 560)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> PlotResult
    where
        DB::ErrorType: 'static,
    {
        let rec = self.0;
        root.fill(&WHITE)?;
        let points: Vec<(u32, f64)> = rec
            .rows
            .iter()
            .filter(|r| r.mean.is_finite())
            .map(|r| (r.index, r.mean))
            .collect();
        let n = rec.max_index();
        let (lo, hi) = dice_range(points.iter().map(|p| p.1), 0.35);
        let mut chart = ChartBuilder::on(root)
            .caption(format!("Reward per job — {}", rec.label()), font(24))
            .margin(18)
            .x_label_area_size(52)
            .y_label_area_size(72)
            .build_cartesian_2d(0u32..n + 1, lo..hi)?;
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(C_GRID)
            .x_labels((n as usize + 1).min(25))
            .x_label_formatter(&|x| {
                if *x == 0 || *x > n {
                    String::new()
                } else {
                    x.to_string()
                }
            })
            .y_label_formatter(&|y| format!("{y:.2}"))
            .x_desc("job (issue order)")
            .y_desc("validation Dice (reward)")
            .label_style(font(15))
            .axis_desc_style(font(17))
            .draw()?;
        let mut steps = Vec::new();
        let mut best = f64::NEG_INFINITY;
        for &(x, y) in &points {
            if y > best {
                if best.is_finite() {
                    steps.push((x, best));
                }
                best = y;
                steps.push((x, best));
            }
        }
        if let Some(&(x, b)) = steps.last()
            && x < n
        {
            steps.push((n, b));
        }
        chart
            .draw_series(LineSeries::new(steps, C_BEST.stroke_width(3)))?
            .label("best so far")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], C_BEST.stroke_width(3)));
        chart
            .draw_series(
                points
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 5, C_REWARD.filled())),
            )?
            .label("reward of a job (mean validation Dice)")
            .legend(|(x, y)| Circle::new((x + 12, y), 5, C_REWARD.filled()));
        if let Some(b) = rec.best() {
            chart
                .draw_series(std::iter::once(Circle::new(
                    (b.index, b.mean),
                    10,
                    C_MARK.stroke_width(2),
                )))?
                .label(format!("best: job #{} ({:.4})", b.index, b.mean))
                .legend(|(x, y)| Circle::new((x + 12, y), 7, C_MARK.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(C_ROUTINE)
            .label_font(font(15))
            .draw()?;
        Ok(())
    }
}

/// Each dimension's value over the study: one small panel per dimension, jobs on x,
/// probabilities on [0, 1], log dimensions (the learning rate) on a log axis.
struct StrategyPlot<'a>(&'a StudyRecord);

impl StrategyPlot<'_> {
    fn grid(&self) -> (usize, usize) {
        let k = self.0.dimensions().len().max(1);
        let cols = k.min(3);
        (k.div_ceil(cols), cols)
    }
}

impl Plot for StrategyPlot<'_> {
    fn size(&self) -> (u32, u32) {
        let (rows, _) = self.grid();
        (1200, 70 + 250 * rows as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> PlotResult
    where
        DB::ErrorType: 'static,
    {
        let rec = self.0;
        root.fill(&WHITE)?;
        let dims = rec.dimensions();
        let (rows, cols) = self.grid();
        let title = format!(
            "Strategy over the study — {}; ring: best job, dashed: routine strategy",
            rec.label()
        );
        let area = root.titled(&title, font(22))?;
        let n = rec.max_index();
        let best = rec.best();
        let panels = area.split_evenly((rows, cols));
        for (i, (d, panel)) in dims.iter().zip(panels.iter()).enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let series: Vec<(u32, f64)> = rec
                .rows
                .iter()
                .filter_map(|r| r.strategy.values.get(&d.name).map(|v| (r.index, *v)))
                .filter(|(_, v)| v.is_finite())
                .collect();
            let best_point =
                best.and_then(|b| b.strategy.values.get(&d.name).map(|v| (b.index, *v)));
            let bottom_row = i / cols == rows - 1 || i + cols >= dims.len();
            let x_desc = if bottom_row { "job (issue order)" } else { "" };
            let x_fmt = |x: &u32| {
                if *x == 0 || *x > n {
                    String::new()
                } else {
                    x.to_string()
                }
            };
            let mut builder = ChartBuilder::on(panel);
            builder
                .caption(d.name.as_str(), font(17))
                .margin(10)
                .x_label_area_size(if bottom_row { 42 } else { 26 })
                .y_label_area_size(62);
            let routine = if d.name == engine::LR_DIMENSION {
                Some(engine::ROUTINE_LR)
            } else if is_probability(d) {
                Some(0.5)
            } else {
                None
            };
            // The two axis kinds have different coordinate types, hence the macro.
            macro_rules! panel_body {
                ($chart:ident, $yfmt:expr) => {{
                    $chart
                        .configure_mesh()
                        .light_line_style(TRANSPARENT)
                        .bold_line_style(C_GRID)
                        .x_labels((n as usize + 1).min(13))
                        .x_label_formatter(&x_fmt)
                        .y_labels(6)
                        .y_label_formatter(&$yfmt)
                        .x_desc(x_desc)
                        .label_style(font(13))
                        .axis_desc_style(font(14))
                        .draw()?;
                    if let Some(r) = routine {
                        $chart.draw_series(DashedLineSeries::new(
                            vec![(0, r), (n + 1, r)],
                            6,
                            4,
                            C_ROUTINE.stroke_width(1),
                        ))?;
                    }
                    $chart.draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))?;
                    $chart.draw_series(
                        series
                            .iter()
                            .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
                    )?;
                    if let Some(p) = best_point {
                        $chart.draw_series(std::iter::once(Circle::new(
                            p,
                            7,
                            C_MARK.stroke_width(2),
                        )))?;
                    }
                }};
            }
            if d.scale == Scale::Log && d.min > 0.0 {
                let (lo, hi) = log_range(d);
                let mut chart = builder.build_cartesian_2d(0u32..n + 1, (lo..hi).log_scale())?;
                panel_body!(chart, |y: &f64| format!("{y:.0e}"));
            } else {
                let (lo, hi) = if d.max > d.min {
                    (d.min, d.max)
                } else {
                    (d.min - 0.5, d.min + 0.5)
                };
                let mut chart = builder.build_cartesian_2d(0u32..n + 1, lo..hi)?;
                panel_body!(chart, |y: &f64| format!("{y:.1}"));
            }
        }
        Ok(())
    }
}

/// The best strategy: a horizontal bar per probability (dashed line: the routine 0.5), and
/// each other dimension (the learning rate, on a log axis) as a marker on its range.
struct BestPlot<'a>(&'a StudyRecord);

impl BestPlot<'_> {
    fn split(&self) -> (Vec<Dimension>, Vec<Dimension>) {
        self.0.dimensions().into_iter().partition(is_probability)
    }
}

const BAR_ROW: u32 = 44;
const OTHER_PANEL: u32 = 130;

impl Plot for BestPlot<'_> {
    fn size(&self) -> (u32, u32) {
        let (probs, others) = self.split();
        (
            1000,
            60 + 90 + BAR_ROW * probs.len() as u32 + OTHER_PANEL * others.len() as u32,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> PlotResult
    where
        DB::ErrorType: 'static,
    {
        let rec = self.0;
        root.fill(&WHITE)?;
        let Some(best) = rec.best() else {
            return Ok(());
        };
        let (probs, others) = self.split();
        let title = format!(
            "Best strategy — study {}: job #{}, mean Dice {:.4}",
            rec.study, best.index, best.mean
        );
        let area = root.titled(&title, font(22))?;
        let bars_height = 90 + BAR_ROW * probs.len() as u32;
        let (bars, rest) = area.split_vertically(if others.is_empty() {
            area.dim_in_pixel().1
        } else {
            bars_height
        });
        const LABEL_AREA: u32 = 150;
        if !probs.is_empty() {
            let k = probs.len() as i32;
            let mut chart = ChartBuilder::on(&bars)
                .margin(14)
                .margin_right(40)
                .x_label_area_size(48)
                .y_label_area_size(LABEL_AREA)
                .build_cartesian_2d(0f64..1.08f64, (0..k - 1).into_segmented())?;
            // Segment i (counted from the bottom) shows dimension k-1-i: the study's order
            // reads top to bottom.
            let names: Vec<String> = probs.iter().map(|d| d.name.clone()).collect();
            chart
                .configure_mesh()
                .disable_y_mesh()
                .light_line_style(TRANSPARENT)
                .bold_line_style(C_GRID)
                .x_labels(11)
                .x_label_formatter(&|x| {
                    if *x > 1.0 + 1e-9 {
                        String::new()
                    } else {
                        format!("{x:.1}")
                    }
                })
                .y_labels(k as usize)
                .y_label_formatter(&|v| match v {
                    SegmentValue::CenterOf(i) if *i >= 0 && *i < k => {
                        names[(k - 1 - *i) as usize].clone()
                    }
                    _ => String::new(),
                })
                .x_desc("probability of applying the augmentation (dashed: routine strategy, 0.5)")
                .label_style(font(15))
                .axis_desc_style(font(16))
                .draw()?;
            // Under the bars: the line shows only where a probability is below routine.
            chart.draw_series(DashedLineSeries::new(
                vec![(0.5, SegmentValue::Exact(0)), (0.5, SegmentValue::Last)],
                8,
                5,
                C_ROUTINE.stroke_width(2),
            ))?;
            for (j, d) in probs.iter().enumerate() {
                let i = k - 1 - j as i32;
                let v = best
                    .strategy
                    .values
                    .get(&d.name)
                    .copied()
                    .unwrap_or(f64::NAN);
                if !v.is_finite() {
                    continue;
                }
                let color = PALETTE[j % PALETTE.len()];
                let top = if i + 1 == k {
                    SegmentValue::Last
                } else {
                    SegmentValue::Exact(i + 1)
                };
                let mut bar = Rectangle::new(
                    [(0.0, SegmentValue::Exact(i)), (v, top.clone())],
                    color.mix(0.85).filled(),
                );
                bar.set_margin(7, 7, 0, 0);
                chart.draw_series(std::iter::once(bar))?;
                // The value on a white ground, so a label next to the routine line (a value
                // just under 0.5) stays readable.
                let mut ground = Rectangle::new(
                    [(v + 0.004, SegmentValue::Exact(i)), (v + 0.058, top)],
                    WHITE.filled(),
                );
                ground.set_margin(12, 12, 0, 0);
                chart.draw_series(std::iter::once(ground))?;
                chart.draw_series(std::iter::once(Text::new(
                    format!("{v:.3}"),
                    (v + 0.008, SegmentValue::CenterOf(i)),
                    font(15).pos(Pos::new(HPos::Left, VPos::Center)),
                )))?;
            }
        }
        let panels = if others.is_empty() {
            Vec::new()
        } else {
            rest.split_evenly((others.len(), 1))
        };
        for (d, panel) in others.iter().zip(panels.iter()) {
            let Some(&v) = best.strategy.values.get(&d.name) else {
                continue;
            };
            let log = d.scale == Scale::Log && d.min > 0.0;
            let desc = if log {
                format!("{} (log scale; shaded: the searched range)", d.name)
            } else {
                format!("{} (shaded: the searched range)", d.name)
            };
            let routine = (d.name == engine::LR_DIMENSION).then_some(engine::ROUTINE_LR);
            // Where the marker sits along the axis decides which way its label extends, so
            // that the label stays inside the panel.
            let (lo, hi) = if log {
                log_range(d)
            } else if d.max > d.min {
                (d.min, d.max)
            } else {
                (d.min - 0.5, d.min + 0.5)
            };
            let at = if log {
                (v.ln() - lo.ln()) / (hi.ln() - lo.ln())
            } else {
                (v - lo) / (hi - lo)
            };
            let anchor = if at > 0.7 {
                HPos::Right
            } else if at < 0.3 {
                HPos::Left
            } else {
                HPos::Center
            };
            macro_rules! marker_body {
                ($chart:ident, $xfmt:expr) => {{
                    $chart
                        .configure_mesh()
                        .disable_y_mesh()
                        .disable_y_axis()
                        .light_line_style(TRANSPARENT)
                        .bold_line_style(C_GRID)
                        .x_label_formatter(&$xfmt)
                        .x_desc(desc.as_str())
                        .label_style(font(15))
                        .axis_desc_style(font(16))
                        .draw()?;
                    $chart.draw_series(std::iter::once(Rectangle::new(
                        [(d.min, 0.0), (d.max, 1.0)],
                        C_RANGE.filled(),
                    )))?;
                    if let Some(r) = routine {
                        $chart.draw_series(DashedLineSeries::new(
                            vec![(r, 0.0), (r, 1.0)],
                            8,
                            5,
                            C_ROUTINE.stroke_width(2),
                        ))?;
                        $chart.draw_series(std::iter::once(Text::new(
                            format!(" routine {}", format_value(&d.name, r)),
                            (r, 0.2),
                            font(14).pos(Pos::new(HPos::Left, VPos::Center)),
                        )))?;
                    }
                    $chart.draw_series(LineSeries::new(
                        vec![(v, 0.0), (v, 0.7)],
                        C_MARK.stroke_width(3),
                    ))?;
                    $chart.draw_series(std::iter::once(TriangleMarker::new(
                        (v, 0.7),
                        9,
                        C_MARK.filled(),
                    )))?;
                    $chart.draw_series(std::iter::once(Text::new(
                        format!("best {} = {}", d.name, format_value(&d.name, v)),
                        (v, 0.88),
                        font(15).pos(Pos::new(anchor, VPos::Center)),
                    )))?;
                }};
            }
            let mut builder = ChartBuilder::on(panel);
            builder
                .margin(14)
                .margin_right(40)
                .x_label_area_size(48)
                .y_label_area_size(LABEL_AREA);
            if log {
                let mut chart = builder.build_cartesian_2d((lo..hi).log_scale(), 0f64..1f64)?;
                marker_body!(chart, |x: &f64| format!("{x:.0e}"));
            } else {
                let mut chart = builder.build_cartesian_2d(lo..hi, 0f64..1f64)?;
                marker_body!(chart, |x: &f64| format!("{x:.2}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{CaseDice, SCHEMA_VERSION};

    const PROBS: [&str; 8] = [
        "p_sharpen",
        "p_smooth",
        "p_noise",
        "p_contrast",
        "p_shift",
        "p_scale",
        "p_flip",
        "p_rotate90",
    ];

    /// A deterministic pseudo-random number in [0, 1) (splitmix-like), for fixture values.
    fn u(i: u64, j: u64) -> f64 {
        let mut z = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ j.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z ^= z >> 31;
        z = z.wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 29;
        (z % 10_000) as f64 / 10_000.0
    }

    fn spec(max_jobs: u32) -> StudySpec {
        let mut space: Vec<Dimension> = PROBS
            .iter()
            .map(|n| Dimension {
                name: n.to_string(),
                min: 0.0,
                max: 1.0,
                scale: Scale::Linear,
            })
            .collect();
        space.push(Dimension {
            name: "learning_rate".into(),
            min: 1e-4,
            max: 1e-2,
            scale: Scale::Log,
        });
        StudySpec {
            schema: SCHEMA_VERSION,
            study: "demo".into(),
            dataset: protocol::DatasetRef::Id { id: "ds1".into() },
            space,
            searcher: "ppo-rnn".into(),
            searcher_settings: BTreeMap::new(),
            max_jobs,
            parallel: 2,
            max_failures: 10,
            training: protocol::TrainingConfig::default(),
            seed: 0,
        }
    }

    pub(crate) fn strategy(i: u32) -> Strategy {
        let mut values: BTreeMap<String, f64> = PROBS
            .iter()
            .enumerate()
            .map(|(j, n)| (n.to_string(), u(i as u64 + 1, j as u64)))
            .collect();
        values.insert(
            "learning_rate".into(),
            10f64.powf(-4.0 + 2.0 * u(i as u64 + 1, 99)),
        );
        Strategy {
            values,
            unit: BTreeMap::new(),
        }
    }

    fn reward(i: u32, mean: f64) -> Reward {
        Reward {
            schema: SCHEMA_VERSION,
            study: "demo".into(),
            job_id: format!("demo-{i:04}"),
            index: i,
            strategy: strategy(i),
            per_case: vec![CaseDice {
                case: "case_0".into(),
                per_class: vec![mean],
                mean,
            }],
            per_class: vec![mean],
            mean,
            checkpoint_key: format!("studies/demo/jobs/demo-{i:04}/model.safetensors"),
            trainer: format!("trainer-{}", i % 2 + 1),
            // Job 5 was handed over to another replica.
            attempt: if i == 5 { 2 } else { 1 },
            train_seconds: 10.0 + i as f64 / 4.0,
            final_loss: 0.5 - mean / 2.0,
            eval_seconds: 2.125,
        }
    }

    fn event(t: f64, event: StudyEventKind) -> StudyEvent {
        StudyEvent {
            schema: SCHEMA_VERSION,
            study: "demo".into(),
            time_unix: t,
            event,
        }
    }

    /// 12 jobs of a 12-job study; job 9 is the best; rewards arrive out of issue order.
    fn record() -> StudyRecord {
        let means = [
            0.41, 0.35, 0.48, 0.44, 0.52, 0.39, 0.55, 0.50, 0.612, 0.58, 0.47, 0.60,
        ];
        let mut rewards: Vec<Reward> = means
            .iter()
            .enumerate()
            .map(|(i, m)| reward(i as u32 + 1, *m))
            .collect();
        rewards.swap(0, 1);
        // A redelivered evaluation of job 3 past the dedup window: counted once.
        rewards.push(reward(3, 0.9));
        let mut events = vec![event(
            0.0,
            StudyEventKind::Started {
                spec: Box::new(spec(12)),
                dataset_id: "ds1".into(),
            },
        )];
        for i in 1..=12u32 {
            events.push(event(
                i as f64 * 10.0,
                StudyEventKind::Issued {
                    job_id: format!("demo-{i:04}"),
                    index: i,
                    strategy: strategy(i),
                },
            ));
            events.push(event(
                i as f64 * 10.0 + 18.5,
                StudyEventKind::Reward {
                    job_id: format!("demo-{i:04}"),
                    index: i,
                    mean: means[i as usize - 1],
                    rewards_so_far: i,
                },
            ));
        }
        events.push(event(
            50.0,
            StudyEventKind::JobFailed {
                job_id: "demo-0013".into(),
                reason: "diverged: loss is NaN".into(),
            },
        ));
        events.push(event(
            200.0,
            StudyEventKind::Done {
                best_job_id: "demo-0009".into(),
                best_mean: 0.612,
                best_strategy: strategy(9),
                rewards: 12,
            },
        ));
        StudyRecord::from_messages("demo", &rewards, &events)
    }

    #[test]
    fn record_orders_by_issue_dedups_and_times_jobs() {
        let rec = record();
        assert_eq!(rec.rows.len(), 12);
        let idx: Vec<u32> = rec.rows.iter().map(|r| r.index).collect();
        assert_eq!(idx, (1..=12).collect::<Vec<_>>());
        assert_eq!(rec.rows[2].mean, 0.48, "the first reward of a job id wins");
        assert_eq!(rec.rows[0].seconds, Some(18.5));
        assert_eq!(rec.best().unwrap().job_id, "demo-0009");
        assert_eq!(rec.status, StudyStatus::Done);
        assert_eq!(rec.failed_jobs.len(), 1);
        assert_eq!(rec.dimensions().len(), 9);
    }

    #[test]
    fn dimensions_are_inferred_without_a_started_event() {
        let rec = StudyRecord::from_messages("demo", &[reward(1, 0.5), reward(2, 0.6)], &[]);
        let dims = rec.dimensions();
        assert_eq!(dims.len(), 9);
        let lr = dims.iter().find(|d| d.name == "learning_rate").unwrap();
        assert_eq!(lr.scale, Scale::Log);
        assert!(lr.min <= 1e-4 && lr.max >= 1e-2);
        assert!(dims.iter().filter(|d| is_probability(d)).count() == 8);
        assert_eq!(rec.status, StudyStatus::Running);
    }

    #[test]
    fn best_skips_non_finite_rewards_and_keeps_the_first_of_a_tie() {
        let rec = StudyRecord::from_messages(
            "demo",
            &[reward(1, f64::NAN), reward(2, 0.5), reward(3, 0.5)],
            &[],
        );
        assert_eq!(rec.best().unwrap().index, 2);
    }

    #[test]
    fn csv_has_one_row_per_job_with_every_dimension() {
        let rec = record();
        let csv = jobs_csv(&rec);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 13);
        let header: Vec<&str> = lines[0].split(',').collect();
        assert_eq!(header[0], "index");
        assert_eq!(header[1], "job_id");
        assert_eq!(&header[2..10], &PROBS);
        assert_eq!(header[10], "learning_rate");
        assert_eq!(
            &header[11..],
            &[
                "dice_class_1",
                "mean",
                "seconds",
                "trainer",
                "attempt",
                "train_seconds",
                "eval_seconds",
                "final_loss"
            ]
        );
        for (line, row) in lines[1..].iter().zip(&rec.rows) {
            let cells: Vec<&str> = line.split(',').collect();
            assert_eq!(cells.len(), header.len());
            assert_eq!(cells[1], row.job_id);
            assert_eq!(cells[12].parse::<f64>().unwrap(), row.mean);
            let lr: f64 = cells[10].parse().unwrap();
            assert_eq!(lr, row.strategy.values["learning_rate"], "full precision");
            let i = row.index;
            assert_eq!(cells[14], format!("trainer-{}", i % 2 + 1));
            assert_eq!(cells[15], if i == 5 { "2" } else { "1" });
            assert_eq!(cells[16], format!("{:.3}", 10.0 + i as f64 / 4.0));
            assert_eq!(cells[17], "2.125");
            assert_eq!(cells[18].parse::<f64>().unwrap(), 0.5 - row.mean / 2.0);
        }
    }

    #[test]
    fn rewards_without_the_training_run_leave_its_cells_empty() {
        // An evaluator older than `trainer`/`attempt`/...: the fields decode as empty / 0.
        let mut old = reward(1, 0.5);
        old.trainer = String::new();
        old.attempt = 0;
        old.train_seconds = 0.0;
        old.final_loss = 0.0;
        old.eval_seconds = 0.0;
        let rec = StudyRecord::from_messages("demo", &[old, reward(2, 0.6)], &[]);
        assert_eq!(rec.rows[0].run, None);
        assert_eq!(rec.rows[1].run.as_ref().unwrap().trainer, "trainer-1");
        let csv = jobs_csv(&rec);
        let lines: Vec<&str> = csv.lines().collect();
        assert!(lines[1].ends_with(",,,,,"), "{}", lines[1]);
        assert!(
            lines[2].ends_with(",trainer-1,1,10.500,2.125,0.2"),
            "{}",
            lines[2]
        );
        let md = summary_markdown(&rec);
        assert!(md.contains("| - | - | - |"), "{md}");
    }

    #[test]
    fn csv_quotes_a_trainer_name_with_a_comma() {
        let mut r = reward(1, 0.5);
        r.trainer = "gpu \"a\",1".into();
        let csv = jobs_csv(&StudyRecord::from_messages("demo", &[r], &[]));
        assert!(
            csv.lines()
                .nth(1)
                .unwrap()
                .contains(",\"gpu \"\"a\"\",1\",1,"),
            "{csv}"
        );
    }

    #[test]
    fn best_toml_reads_back_as_the_best_strategy() {
        let rec = record();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("best.toml");
        std::fs::write(&p, best_toml(&rec).unwrap()).unwrap();
        let s = crate::job::load_strategy(&p).unwrap();
        assert_eq!(s.values, strategy(9).values);
    }

    #[test]
    fn summaries_name_the_study_best_job_and_every_job() {
        let rec = record();
        let md = summary_markdown(&rec);
        assert!(md.contains("# Study `demo`"));
        assert!(md.contains("ppo-rnn"));
        assert!(md.contains("12 rewarded of max_jobs 12 (2 in parallel); 1 failed"));
        assert!(md.contains("mean Dice **0.6120**"));
        assert!(md.contains("| 9 ★ | `demo-0009` | 0.6120 |"));
        // Trainer and training time at the end of each job's row, before issue-to-reward.
        assert!(md.contains("| trainer | train s | s |"), "{md}");
        assert!(md.contains("| trainer-2 | 12.2 | 18 |"), "{md}");
        assert!(md.contains("| trainer-2 (attempt 2) | 11.2 | 18 |"), "{md}");
        assert!(md.contains("diverged: loss is NaN"));
        let svgs: Vec<(&str, &str, String)> = ["rewards", "strategy", "best"]
            .iter()
            .map(|w| (*w, *w, plot_svg(&rec, w).unwrap()))
            .collect();
        let html = summary_html(&rec, &svgs);
        assert_eq!(html.matches("<svg").count(), 3);
        assert_eq!(html.matches("<tr").count(), 5 + 10 + 13 + 2);
        assert!(html.contains("class=\"best\""));
        assert!(html.contains("<th>trainer</th><th>train seconds</th><th>seconds</th>"));
        assert!(
            html.contains("<td style=\"text-align:left\">trainer-2</td><td>12.2</td><td>18</td>"),
            "{html}"
        );
    }

    #[test]
    fn plots_render_with_the_embedded_font() {
        let rec = record();
        let dir = tempfile::tempdir().unwrap();
        let summary = write_files(&rec, dir.path()).unwrap();
        assert_eq!(summary.jobs, 12);
        assert_eq!(summary.best_job_id, "demo-0009");
        assert_eq!(summary.files.len(), 10);
        for f in &summary.files {
            assert!(std::fs::metadata(f).unwrap().len() > 100, "{}", f.display());
        }
        let svg = std::fs::read_to_string(dir.path().join("rewards.svg")).unwrap();
        assert!(svg.contains("best so far"));
        let best = std::fs::read_to_string(dir.path().join("best.svg")).unwrap();
        for p in PROBS {
            assert!(best.contains(p), "{p} missing from best.svg");
        }
        if let Ok(keep) = std::env::var("SEGTUNE_KEEP_REPORT") {
            for f in &summary.files {
                std::fs::copy(f, Path::new(&keep).join(f.file_name().unwrap())).unwrap();
            }
        }
    }

    #[test]
    fn no_rewards_is_an_error_not_a_panic() {
        let rec = StudyRecord::from_messages("demo", &[], &[]);
        let dir = tempfile::tempdir().unwrap();
        let e = write_files(&rec, dir.path()).unwrap_err();
        assert!(e.to_string().contains("no rewarded job"), "{e}");
    }
}
