//! The report's text files: `jobs.csv`, `best.toml` and `summary.md`.

use std::fmt::Write as _;

use super::{
    super::format::{format_value, short_name},
    record::{JobRow, StudyRecord, StudyStatus},
};

/// mean, seconds from issue to reward, then the training run: trainer, attempt,
/// train_seconds, eval_seconds, final_loss; then `pruned` (true when the pruner stopped the job
/// and `mean` is its last intermediate Dice) and `epoch_reached`. Unknown cells are empty.
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
            "pruned",
            "epoch_reached",
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
        cells.push(r.pruned_at.is_some().to_string());
        cells.push(match r.epoch_reached {
            0 => String::new(),
            e => e.to_string(),
        });
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

pub(super) fn status_text(rec: &StudyRecord) -> String {
    match &rec.status {
        StudyStatus::Running => "running (or stopped before it was done)".into(),
        StudyStatus::Done => "done".into(),
        StudyStatus::Failed(r) => format!("failed: {r}"),
    }
}

pub(super) fn jobs_text(rec: &StudyRecord) -> String {
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
    let (pruned, saved) = rec.pruning_savings();
    if pruned > 0 {
        let _ = write!(
            s,
            "; {pruned} pruned, about {saved:.0} trainer-seconds saved of {:.0} spent",
            rec.trainer_seconds()
        );
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
    if let Some(f) = &rec.final_model {
        let bundle = rec.final_bundle();
        let _ = write!(
            s,
            "\n## Final model\n\nThe best strategy trained as the model to keep \
             (`segtune study finalize`): job `{}`, validation mean Dice **{:.4}** (by the \
             evaluator; not held out if it was trained on every case), trained in {:.0} s. \
             Bundle: `{bundle}`; segment new scans with \
             `segtune predict --model {bundle} --input SCANS --output MASKS`.\n",
            f.job_id, f.mean, f.train_seconds
        );
    }
    if let Some(c) = rec.confirmations.last() {
        let _ = write!(
            s,
            "\n## Confirmation\n\nThe study's top strategies retrained with fresh seeds, next \
             to the same strategies without augmentation and the routine strategy \
             (`segtune study confirm`):\n\n```text\n{}```\n\n![Confirmation](confirm.png)\n",
            crate::study::confirm::render(c)
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
        let dice = match r.pruned_at {
            Some(epoch) => format!("{:.4} (pruned at epoch {epoch})", r.mean),
            None => format!("{:.4}", r.mean),
        };
        let mut cells = vec![
            format!("{}{mark}", r.index),
            format!("`{}`", r.job_id),
            dice,
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
pub(super) fn trainer_text(r: &JobRow) -> String {
    match &r.run {
        Some(run) if run.trainer.is_empty() => "-".into(),
        Some(run) if run.attempt > 1 => format!("{} (attempt {})", run.trainer, run.attempt),
        Some(run) => run.trainer.clone(),
        None => "-".into(),
    }
}

pub(super) fn train_seconds_text(r: &JobRow) -> String {
    r.run
        .as_ref()
        .map_or("-".into(), |run| format!("{:.1}", run.train_seconds))
}

#[cfg(test)]
mod tests {
    use super::{super::record::fixtures::*, *};

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
                "final_loss",
                "pruned",
                "epoch_reached"
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
            assert_eq!((cells[19], cells[20]), ("false", "4"));
        }
    }

    #[test]
    fn a_pruned_job_is_marked_and_never_the_best() {
        // Job 2 was stopped at epoch 2 with an intermediate Dice above job 1's final one.
        let mut pruned = reward(2, 0.7);
        pruned.pruned = true;
        pruned.epoch_reached = 2;
        pruned.train_seconds = 4.0;
        let mut complete = reward(1, 0.5);
        complete.train_seconds = 10.0;
        let rec = StudyRecord::from_messages("demo", &[complete, pruned], &[]);
        assert_eq!(rec.best().unwrap().index, 1);
        assert_eq!(rec.pruning_savings(), (1, 6.0));
        let csv = jobs_csv(&rec);
        assert!(csv.lines().nth(2).unwrap().ends_with(",true,2"), "{csv}");
        let md = summary_markdown(&rec);
        assert!(md.contains("0.7000 (pruned at epoch 2)"), "{md}");
        assert!(
            md.contains("1 pruned, about 6 trainer-seconds saved of 14 spent"),
            "{md}"
        );
        assert!(best_toml(&rec).unwrap().contains("demo-0001"));
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
        old.epoch_reached = 0;
        let rec = StudyRecord::from_messages("demo", &[old, reward(2, 0.6)], &[]);
        assert_eq!(rec.rows[0].run, None);
        assert_eq!(rec.rows[1].run.as_ref().unwrap().trainer, "trainer-1");
        let csv = jobs_csv(&rec);
        let lines: Vec<&str> = csv.lines().collect();
        assert!(lines[1].ends_with(",,,,,,false,"), "{}", lines[1]);
        assert!(
            lines[2].ends_with(",trainer-1,1,10.500,2.125,0.2,false,4"),
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
    fn markdown_summary_names_the_study_best_job_and_every_job() {
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
    }
}
