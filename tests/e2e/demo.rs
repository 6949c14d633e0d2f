//! `segtune demo`, the README's first command, run as a user runs it (the real binary, with
//! a tiny study so it fits the test budget): it prints the searched strategy's Dice next to
//! the routine one's, writes the report and the logs under its data dir, and leaves no
//! process behind.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::stack::{Proc, assert_all_exited, children_of, comm};
use crate::support::build_binaries;

/// Reads a pipe to the end on a thread (the demo must never block on a full pipe).
fn read_all(mut pipe: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    })
}

#[test]
fn segtune_demo_compares_the_best_strategy_with_the_routine_one() {
    let t0 = Instant::now();
    let segtune = build_binaries().join("segtune");
    let built = t0.elapsed();

    let dir = tempfile::tempdir().unwrap();
    let task = dir.path().join("task");
    let spec = volume::synth::SynthSpec::new(volume::synth::SynthKind::CtOrgan, 6, 24, 5);
    volume::synth::write_task(&spec, &task).unwrap();
    // 2 PPO-RNN jobs one at a time, 1 epoch of 2 patches (the routine study copies these
    // training settings: a third job; the confirmation of the best strategy with 2 seeds, 6
    // more of the same size).
    let study = crate::support::tiny_ppo_study(dir.path(), &task, 2, 1, 1, 2);
    let data = dir.path().join("data");

    let t_demo = Instant::now();
    let mut child = Command::new(&segtune)
        .args(["demo", "--trainers", "1", "--data-dir"])
        .arg(&data)
        .arg("--study")
        .arg(&study)
        .env_remove("SEGTUNE_NATS")
        .env_remove("SEGTUNE_STORE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start segtune demo");
    let stdout = read_all(child.stdout.take().unwrap());
    let stderr = read_all(child.stderr.take().unwrap());

    // Every process the demo starts, seen while it runs (they live for the whole demo).
    let demo_pid = child.id();
    // Named while it runs (/proc forgets a process once it is reaped), by its latest name: a
    // launcher script (pyenv's nats-server shim) execs the real binary under the same pid.
    let mut seen: BTreeMap<Proc, String> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        for p in children_of(demo_pid) {
            let name = comm(p);
            if !name.is_empty() {
                seen.insert(p, name);
            }
        }
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("segtune demo did not finish within 240 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let demo_secs = t_demo.elapsed();
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert!(
        status.success(),
        "segtune demo: {status}\n{stdout}\n{stderr}"
    );

    // No leftover: the broker and the four services were its children, and none runs now.
    let names: Vec<(String, Proc)> = seen.iter().map(|(p, n)| (n.clone(), *p)).collect();
    let comms: BTreeSet<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "nats-server",
        "segtune-preproc",
        "segtune-control",
        "segtune-trainer",
        "segtune-evaluat",
    ] {
        assert!(comms.contains(want), "{want} never seen among {names:?}");
    }
    assert_all_exited(&names, Duration::ZERO);
    let url = stderr
        .lines()
        .find_map(|l| l.strip_prefix("stack up on nats://"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no `stack up on` line:\n{stderr}"));
    assert!(
        std::net::TcpStream::connect(url).is_err(),
        "nats-server still listening on {url} after the demo"
    );

    // The comparison: both Dice values on the `validation Dice` line.
    let dice_line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("validation Dice"))
        .unwrap_or_else(|| panic!("no comparison in the output:\n{stdout}\n{stderr}"));
    let numbers: Vec<&str> = dice_line.split_whitespace().skip(2).take(2).collect();
    for n in &numbers {
        let d: f64 = n
            .parse()
            .unwrap_or_else(|_| panic!("{n:?} is not a Dice in {dice_line:?}"));
        assert!((0.0..=1.0).contains(&d), "{dice_line}");
    }
    assert_eq!(numbers.len(), 2, "{dice_line}");
    assert!(dice_line.contains("(searched - routine: "), "{dice_line}");
    assert!(stdout.contains("== tiny-"), "{stdout}");
    assert!(stdout.contains("demo finished in "), "{stdout}");

    // The confirmation: three arms with two seeds each, their paired differences, a verdict.
    for arm in ["top1 ", "top1-noaug ", "routine "] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(arm))
            .unwrap_or_else(|| panic!("no confirmation arm {arm:?}:\n{stdout}\n{stderr}"));
        let dice: Vec<f64> = line
            .split_whitespace()
            .skip(4)
            .map(|d| d.parse().unwrap_or_else(|_| panic!("{d:?} in {line:?}")))
            .collect();
        assert_eq!(dice.len(), 2, "{line}");
        assert!(dice.iter().all(|d| (0.0..=1.0).contains(d)), "{line}");
    }
    assert!(stdout.contains("top1 - top1-noaug"), "{stdout}");
    assert!(stdout.contains("top1 - routine"), "{stdout}");
    assert!(stdout.contains("top1: "), "no verdict:\n{stdout}");

    // The report of the searched study: DIR/reports/tiny-<timestamp>/.
    let reports: Vec<_> = std::fs::read_dir(data.join("reports"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let report = &reports[0];
    let study_id = report.file_name().unwrap().to_string_lossy().into_owned();
    assert!(study_id.starts_with("tiny-"), "{study_id}");
    assert!(
        stdout.contains(&format!("report: {}", report.display())),
        "{stdout}"
    );
    for name in ["rewards", "strategy", "best", "confirm"] {
        let png = std::fs::read(report.join(format!("{name}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{name}.png");
        let svg = std::fs::read_to_string(report.join(format!("{name}.svg"))).unwrap();
        let doc = roxmltree::Document::parse(&svg).expect("SVG is XML");
        assert_eq!(doc.root_element().tag_name().name(), "svg");
    }
    let csv = std::fs::read_to_string(report.join("jobs.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2, "2 jobs:\n{csv}");
    segtune::job::load_strategy(&report.join("best.toml")).expect("best.toml");

    // Every service logged to DIR/logs.
    for name in [
        "nats-server",
        "preprocessor",
        "controller",
        "trainer-1",
        "evaluator",
    ] {
        let log = data.join("logs").join(format!("{name}.log"));
        assert!(log.is_file(), "{}", log.display());
    }

    eprintln!(
        "segtune demo: cargo build check {:.1} s, demo {:.1} s (3 jobs + 6 of the confirmation)",
        built.as_secs_f64(),
        demo_secs.as_secs_f64()
    );
}
