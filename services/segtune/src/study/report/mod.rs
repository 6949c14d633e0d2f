//! `segtune study report ID --out DIR`: plots (PNG + SVG), a CSV of the jobs, the best
//! strategy as a strategy file, and a Markdown/HTML summary, all from what the bus keeps
//! about a study (its rewards and its events). [`write_report`] reads the streams; the rest
//! is pure (a [`StudyRecord`] in, text or files out), so it is tested without NATS:
//! `record` folds the messages into the record, `tables` writes jobs.csv, best.toml and
//! summary.md, `html` summary.html, `plots` the plots.

mod html;
mod plots;
mod record;
mod tables;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use async_nats::jetstream;
use clap::Args;
use protocol::Strategy;

pub use self::{
    html::summary_html,
    plots::plot_svg,
    record::{JobRow, JobRun, StudyRecord, StudyStatus},
    tables::{best_toml, jobs_csv, summary_markdown},
};

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

/// Reads the study from the bus and writes the report into `out` (created).
pub async fn write_report(
    js: &jetstream::Context,
    study: &str,
    out: &Path,
) -> anyhow::Result<ReportSummary> {
    let (rewards, events) = crate::study::bus::replay_study(js, study).await?;
    let mut record = StudyRecord::from_messages(study, &rewards, &events);
    record.confirmations = crate::study::bus::replay(
        js,
        protocol::subjects::stream::CONFIRMATIONS,
        &protocol::subjects::confirmations(study),
    )
    .await
    .unwrap_or_else(|e| {
        // A broker provisioned before confirmations existed has no such stream.
        eprintln!("note: no confirmations read for study {study}: {e:#}");
        Vec::new()
    });
    // The final model runs under its own study id; its latest reward is the model kept.
    record.final_model = crate::study::bus::replay::<protocol::Reward>(
        js,
        protocol::subjects::stream::REWARDS,
        &protocol::subjects::rewards(&crate::study::finalize::final_study_id(study)),
    )
    .await?
    .into_iter()
    .last();
    write_files(&record, out)
}

pub async fn run(a: ReportArgs) -> anyhow::Result<()> {
    protocol::subjects::check_token("study id", &a.study)?;
    let out = if a.out.as_os_str() == "reports/<STUDY>" {
        Path::new("reports").join(&a.study)
    } else {
        a.out
    };
    let (_, js) = crate::study::bus::connect(&a.nats, "segtune-report").await?;
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
    for (stem, title, plot) in plots::plots(rec) {
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

#[cfg(test)]
mod tests {
    use super::{record::fixtures::*, *};

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

    /// A confirmed study's report has the confirmation plot (its arms and seeds) and the
    /// confirmation's table in the summary.
    #[test]
    fn a_confirmation_gets_its_plot_and_summary_section() {
        let mut rec = record();
        rec.confirmations.push(confirmation());
        let dir = tempfile::tempdir().unwrap();
        let summary = write_files(&rec, dir.path()).unwrap();
        assert_eq!(summary.files.len(), 12);
        let svg = std::fs::read_to_string(dir.path().join("confirm.svg")).unwrap();
        for arm in ["top1", "top1-noaug", "routine", "seed 1", "seed 3"] {
            assert!(svg.contains(arm), "{arm} missing from confirm.svg");
        }
        let md = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
        assert!(md.contains("## Confirmation"), "{md}");
        assert!(md.contains("top1 - top1-noaug"), "{md}");
        assert!(md.contains("![Confirmation](confirm.png)"), "{md}");
        let html = std::fs::read_to_string(dir.path().join("summary.html")).unwrap();
        assert_eq!(html.matches("<svg").count(), 4);
    }

    /// A finalized study: the summaries say where the final model is, its Dice, and how to
    /// use it.
    #[test]
    fn a_final_model_gets_its_summary_section() {
        let mut rec = record();
        let mut r = reward(9, 0.0);
        r.study = "demo-final".into();
        r.job_id = "demo-final-1700000000".into();
        r.mean = 0.8123;
        rec.final_model = Some(r);
        let dir = tempfile::tempdir().unwrap();
        write_files(&rec, dir.path()).unwrap();
        let md = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
        assert!(md.contains("## Final model"), "{md}");
        assert!(
            md.contains("0.8123") && md.contains("demo-final-1700000000"),
            "{md}"
        );
        assert!(
            md.contains("segtune predict --model store:studies/demo/final/bundle"),
            "{md}"
        );
        let html = std::fs::read_to_string(dir.path().join("summary.html")).unwrap();
        assert!(
            html.contains("<h2>Final model</h2>") && html.contains("0.8123"),
            "{html}"
        );
        // Without one, no section.
        let dir = tempfile::tempdir().unwrap();
        write_files(&record(), dir.path()).unwrap();
        let md = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
        assert!(!md.contains("## Final model"));
    }

    /// A `paper+magnitudes` study: the strategy plot has a panel per dimension (15), the
    /// magnitudes are markers on their ranges in the best-strategy plot, not probability bars.
    #[test]
    fn the_magnitude_dimensions_get_their_own_panels() {
        let rec = magnitudes_record();
        assert_eq!(rec.dimensions().len(), 15);
        let dir = tempfile::tempdir().unwrap();
        write_files(&rec, dir.path()).unwrap();
        let strategy = std::fs::read_to_string(dir.path().join("strategy.svg")).unwrap();
        let best = std::fs::read_to_string(dir.path().join("best.svg")).unwrap();
        for m in protocol::strategy::MAGNITUDES {
            assert!(
                strategy.contains(m.name),
                "{} missing from strategy.svg",
                m.name
            );
            assert!(
                best.contains(&format!("best {} = ", m.name)),
                "{} is not a marker in best.svg",
                m.name
            );
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
