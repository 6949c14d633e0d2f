//! How the [`View`] is drawn: plain lines, the live frame redrawn in place, the summary.

use std::{fmt::Write as _, io::Write as _};

use protocol::Strategy;

use super::{
    super::format::short_name,
    Outcome, Output,
    state::{JobView, Stage, View, now_unix},
};

impl View {
    pub(super) fn line(&mut self, at_unix: f64, text: &str) {
        if self.output == Output::Plain {
            let t = at_unix - self.t0.unwrap_or(at_unix);
            let _ = writeln!(self.out, "[{t:7.1}s] {text}");
            let _ = self.out.flush();
        }
    }

    pub(super) fn note(&mut self, text: &str) {
        if self.output != Output::Quiet {
            self.clear();
            eprintln!("{text}");
        }
    }

    pub(super) fn done_text(&self) -> String {
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
        let (pruned, saved) = self.pruning_savings();
        if pruned > 0 {
            let _ = write!(s, ", {pruned} pruned (~{saved:.0} trainer-s saved)");
        }
        s
    }

    /// The strategy as `name=value` pairs, short names.
    pub(super) fn compact(&self, s: &Strategy) -> String {
        self.dims()
            .iter()
            .filter_map(|(name, log)| {
                s.values
                    .get(name)
                    .map(|v| format!("{}={}", short_name(name), value(*v, *log)))
            })
            .collect::<Vec<_>>()
            .join(" ")
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
            let (column, w) = column(&name);
            let _ = write!(s, " {column:>w$}");
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
            let (_, w) = column(&name);
            match j.strategy.values.get(&name) {
                Some(v) => {
                    let _ = write!(s, " {:>w$}", value(*v, log));
                }
                None => {
                    let _ = write!(s, " {:>w$}", "-");
                }
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
                if let (Some(epoch), true) = (j.pruned_at, j.rewarded) {
                    let _ = write!(s, "  pruned@{epoch}");
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

    pub(super) fn redraw(&mut self) {
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
    pub(super) fn clear(&mut self) {
        if self.output == Output::Live && self.drawn > 0 {
            let _ = write!(self.out, "\x1b[{}F\x1b[J", self.drawn);
            let _ = self.out.flush();
            self.drawn = 0;
        }
    }

    /// The final table and the best strategy.
    pub(super) fn summary(&mut self, outcome: Option<&Outcome>) {
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

/// A dimension's column in the table: its short name, and a width that fits the name and a
/// value (`1.0e-3`).
fn column(name: &str) -> (String, usize) {
    let short = short_name(name);
    let width = short.chars().count().max(7);
    (short, width)
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

pub(super) fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Columns of the terminal on stdout (lines are clipped to it so a redraw never wraps);
/// `COLUMNS`, else 120, when stdout is not a terminal.
fn terminal_width() -> usize {
    match terminal_size::terminal_size_of(std::io::stdout()) {
        Some((terminal_size::Width(w), _)) => w as usize,
        _ => std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(120),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use protocol::{Progress, Reward, StudyEvent, StudyEventKind};

    use super::{super::state::Finish, *};

    #[test]
    fn values_bars_and_durations() {
        assert_eq!(value(0.5, false), "0.50");
        assert_eq!(value(1e-4, true), "1.0e-4");
        assert_eq!(bar(2, 4, 8), "[####----]");
        assert_eq!(bar(9, 4, 4), "[####]");
        assert_eq!(duration(75.0), "1m15s");
        assert_eq!(duration(3.2), "3s");
    }

    #[test]
    fn a_long_dimension_name_widens_its_column() {
        let mut view = View::new("s", Output::Quiet);
        let strategy = Strategy {
            values: [
                ("p_flip".to_string(), 0.5),
                ("p_rotate90".to_string(), 0.25),
            ]
            .into_iter()
            .collect(),
            unit: BTreeMap::new(),
        };
        view.event(at(
            1.0,
            StudyEventKind::Issued {
                job_id: "s-0001".into(),
                index: 1,
                strategy,
            },
        ));
        view.event(rewarded_at(2.0, 1, 0.5, 1));
        // The same column name as `segtune study rewards` and the report give it, whole.
        let header = view.table_header();
        assert!(
            header.starts_with("   job    flip rotate90    Dice"),
            "{header}"
        );
        let row = view.table_row(1, &view.jobs[&1]);
        assert!(row.starts_with("     1    0.50     0.25  0.5000"), "{row}");
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
            pruned: false,
            epoch_reached: 4,
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

    #[test]
    fn pruned_jobs_show_their_epoch_and_the_seconds_saved() {
        let mut view = View::new("s", Output::Quiet);
        view.event(issued("s-0001", 1));
        view.reward(reward("s-0001", 1, 0.5, "trainer-1"));
        view.event(rewarded("s-0001", 1, 0.5));
        view.event(issued("s-0002", 2));
        view.event(StudyEvent {
            event: StudyEventKind::Pruned {
                job_id: "s-0002".into(),
                index: 2,
                epoch: 1,
                dice: 0.125,
                reason: "asha".into(),
            },
            ..issued("s-0002", 2)
        });
        let mut stopped = reward("s-0002", 2, 0.125, "trainer-2");
        stopped.pruned = true;
        stopped.epoch_reached = 1;
        stopped.train_seconds = 1.0;
        stopped.per_class = Vec::new();
        view.reward(stopped);
        view.event(rewarded("s-0002", 2, 0.125));
        // Stopped, but it had finished: its complete reward counts, it is not pruned.
        view.event(issued("s-0003", 3));
        view.event(StudyEvent {
            event: StudyEventKind::Pruned {
                job_id: "s-0003".into(),
                index: 3,
                epoch: 1,
                dice: 0.1,
                reason: "asha".into(),
            },
            ..issued("s-0003", 3)
        });
        view.reward(reward("s-0003", 3, 0.25, "trainer-1"));
        view.event(rewarded("s-0003", 3, 0.25));

        let row = view.table_row(2, &view.jobs[&2]);
        assert!(row.ends_with("pruned@1"), "{row}");
        assert!(!view.table_row(3, &view.jobs[&3]).contains("pruned"));
        // Complete jobs trained 3 s each, the pruned one 1 s: 2 s saved.
        assert_eq!(view.pruning_savings(), (1, 2.0));
        assert!(
            view.done_text().ends_with("1 pruned (~2 trainer-s saved)"),
            "{}",
            view.done_text()
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
        let spec = ::study::testing::StudySpecBuilder::new("s")
            .dataset_id("ds-1")
            .space_of(&["p_flip", "learning_rate"])
            .max_jobs(4)
            .parallel(2)
            .build();
        at(
            0.0,
            StudyEventKind::Started {
                spec: Box::new(spec),
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
            data_wait_fraction: 0.0,
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
}
