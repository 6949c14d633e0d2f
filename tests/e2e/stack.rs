//! The product end to end, as a user runs it: `segtune up --trainers 2` starts the real
//! binaries (nats-server, preprocessor, controller, two trainers, evaluator) as processes,
//! `segtune study submit --wait` runs a PPO-RNN study on a tiny phantom task to the end,
//! `segtune study report` writes the plots, `segtune study watch` attached late replays the
//! study, examples/subscribe_rewards.py prints its rewards, and Ctrl-C (SIGINT) stops the
//! stack with every child it started; SIGTERM does the same on a one-trainer stack.
//!
//! The service binaries come from this workspace: the test runs `cargo build --bins` for the
//! five binary packages with the profile and target dir it was built with (a no-op when
//! `cargo test --workspace` already built them, a link step or two after a change), so a
//! stale binary is never tested.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::support::build_binaries;
use protocol::{Reward, subjects};

const STUDY: &str = "e2e-stack";

/// What `segtune up --trainers 2` starts, in start order (its log names).
const SERVICES: [&str; 6] = [
    "nats-server",
    "preprocessor",
    "controller",
    "trainer-1",
    "trainer-2",
    "evaluator",
];

/// `segtune up` as a child; SIGTERM (then SIGKILL) on drop, so a failed test leaves nothing.
struct Up {
    child: Child,
}

impl Up {
    /// Sends `sig` (SIGINT is what Ctrl-C sends) and waits for the exit.
    fn stop(&mut self, sig: libc::c_int) -> std::process::ExitStatus {
        signal(&self.child, sig);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "segtune up did not stop within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(&self.child, libc::SIGTERM);
            std::thread::sleep(Duration::from_secs(2));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

/// A process as /proc shows it: its pid and start time (clock ticks after boot), so a pid
/// reused by an unrelated process is not taken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Proc {
    pub pid: u32,
    start: u64,
}

/// State, parent pid and start time from /proc/<pid>/stat.
fn proc_stat(pid: u32) -> Option<(char, u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`: comm may hold spaces and parentheses, so split after the
    // last `)`; starttime is field 22 of the line, the 20th after comm.
    let rest: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some((
        rest.first()?.chars().next()?,
        rest.get(1)?.parse().ok()?,
        rest.get(19)?.parse().ok()?,
    ))
}

/// The live child processes of `parent` (a scan of /proc by parent pid).
pub(crate) fn children_of(parent: u32) -> Vec<Proc> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some((state, ppid, start)) = proc_stat(pid)
            && ppid == parent
            && state != 'Z'
        {
            out.push(Proc { pid, start });
        }
    }
    out.sort();
    out
}

/// Whether `p` still runs (a zombie has exited).
pub(crate) fn is_running(p: Proc) -> bool {
    proc_stat(p.pid).is_some_and(|(state, _, start)| start == p.start && state != 'Z')
}

/// The executable name of `p` (/proc/<pid>/comm, at most 15 bytes).
pub(crate) fn comm(p: Proc) -> String {
    std::fs::read_to_string(format!("/proc/{}/comm", p.pid))
        .map(|c| c.trim().to_string())
        .unwrap_or_default()
}

/// Panics naming every process of `procs` that still runs `within` after the call.
#[track_caller]
pub(crate) fn assert_all_exited(procs: &[(String, Proc)], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left: Vec<&(String, Proc)> = procs.iter().filter(|(_, p)| is_running(*p)).collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still running after the parent exited: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `pids` line of `segtune up`'s banner: `name pid` pairs, in start order.
fn banner_pids(banner: &[String]) -> Vec<(String, u32)> {
    let line = banner
        .iter()
        .find_map(|l| l.strip_prefix("  pids      "))
        .unwrap_or_else(|| panic!("no pids line in the banner:\n{}", banner.join("\n")));
    line.split(", ")
        .map(|pair| {
            let (name, pid) = pair.rsplit_once(' ').unwrap();
            (
                name.to_string(),
                pid.parse().unwrap_or_else(|_| panic!("{line}")),
            )
        })
        .collect()
}

/// The children `segtune up` reports in its banner, checked against /proc: exactly its
/// child processes, the broker and services by name.
fn started_children(up: &Up, banner: &[String], names: &[&str]) -> Vec<(String, Proc)> {
    let listed = banner_pids(banner);
    assert_eq!(
        listed.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        names,
        "{banner:?}"
    );
    let kids = children_of(up.child.id());
    let mut listed_pids: Vec<u32> = listed.iter().map(|(_, p)| *p).collect();
    listed_pids.sort();
    assert_eq!(
        kids.iter().map(|p| p.pid).collect::<Vec<_>>(),
        listed_pids,
        "the pids in the banner are not segtune up's children"
    );
    listed
        .into_iter()
        .map(|(name, pid)| {
            let p = *kids.iter().find(|k| k.pid == pid).unwrap();
            (name, p)
        })
        .collect()
}

/// Starts `segtune up` and reads its banner (up to "Ctrl-C stops the stack."); the rest of
/// its stdout is drained so it never blocks on a full pipe.
async fn start_up(segtune: &Path, trainers: u32, port: u16, data: &Path) -> (Up, Vec<String>) {
    let child = Command::new(segtune)
        .args([
            "up",
            "--trainers",
            &trainers.to_string(),
            "--nats-port",
            &port.to_string(),
            "--data-dir",
        ])
        .arg(data)
        .env_remove("SEGTUNE_NATS")
        .env_remove("SEGTUNE_STORE")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start segtune up");
    let mut up = Up { child };
    let stdout = up.child.stdout.take().unwrap();
    let banner = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut banner = Vec::new();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            let last = line == "Ctrl-C stops the stack.";
            banner.push(line);
            if last {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        banner
    });
    let banner = tokio::time::timeout(Duration::from_secs(90), banner)
        .await
        .expect("segtune up ready within 90 s")
        .unwrap();
    (up, banner)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segtune_up_runs_a_ppo_rnn_study_to_a_report() {
    let t0 = Instant::now();
    let bin = build_binaries();
    let built = t0.elapsed();
    let segtune = bin.join("segtune");

    let dir = tempfile::tempdir().unwrap();
    let task = dir.path().join("task");
    let spec = volume::synth::SynthSpec::new(volume::synth::SynthKind::CtOrgan, 6, 24, 5);
    volume::synth::write_task(&spec, &task).unwrap();
    let study = crate::support::tiny_ppo_study(dir.path(), &task, 6, 2, 2, 4);
    let data = dir.path().join("data");

    // The stack, as a user starts it.
    let t_up = Instant::now();
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let (mut up, banner) = start_up(&segtune, 2, port, &data).await;
    assert_eq!(banner[0], format!("segtune stack up: NATS {url}"));
    let ready = t_up.elapsed();
    let children = started_children(&up, &banner, &SERVICES);

    // Submit and follow to the end, exporting the best strategy.
    let t_study = Instant::now();
    let best = dir.path().join("best.toml");
    let out = tokio::time::timeout(
        Duration::from_secs(150),
        tokio::process::Command::new(&segtune)
            .args(["study", "submit"])
            .arg(&study)
            .args(["--id", STUDY, "--wait", "--nats", &url, "--best"])
            .arg(&best)
            .output(),
    )
    .await
    .expect("study done within 150 s")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "study submit --wait failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("study {STUDY} done: 6 rewards")),
        "{stdout}"
    );
    let studied = t_study.elapsed();

    // Six distinct jobs on the public reward stream, every reward a Dice.
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let rewards: Vec<Reward> =
        test_support::stream_payloads(&js, subjects::stream::REWARDS, &subjects::rewards(STUDY))
            .await
            .iter()
            .map(|p| protocol::decode(p).unwrap())
            .collect();
    let ids: BTreeSet<&str> = rewards.iter().map(|r| r.job_id.as_str()).collect();
    assert_eq!(
        ids.len(),
        6,
        "distinct job ids on the reward stream: {ids:?}"
    );
    assert!(rewards.iter().all(|r| (0.0..=1.0).contains(&r.mean)));
    // Every reward names the replica that trained it: `segtune up --trainers 2` starts
    // trainer-1 and trainer-2 (SEGTUNE_WORKER).
    const TRAINERS: [&str; 2] = ["trainer-1", "trainer-2"];
    for r in &rewards {
        assert!(
            TRAINERS.contains(&r.trainer.as_str()),
            "{}: trainer {:?}",
            r.job_id,
            r.trainer
        );
        assert!(r.attempt >= 1, "{}: attempt {}", r.job_id, r.attempt);
        assert!(
            r.train_seconds > 0.0 && r.eval_seconds > 0.0 && r.final_loss.is_finite(),
            "{}: train {} s, eval {} s, loss {}",
            r.job_id,
            r.train_seconds,
            r.eval_seconds,
            r.final_loss
        );
    }
    let top = rewards
        .iter()
        .max_by(|a, b| a.mean.total_cmp(&b.mean))
        .unwrap();

    // The exported best strategy is a strategy file `segtune train` reads, and it is the
    // strategy of the best reward.
    let exported = segtune::job::load_strategy(&best).expect("best.toml is a strategy file");
    assert_eq!(exported.values.len(), 9);
    for (k, v) in &top.strategy.values {
        assert!((exported.values[k] - v).abs() < 1e-12, "{k}");
    }

    // The report: valid PNG and SVG plots.
    let report = dir.path().join("report");
    let out = Command::new(&segtune)
        .args(["study", "report", STUDY, "--nats", &url, "--out"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "study report failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut pngs = 0;
    let mut svgs = 0;
    for entry in std::fs::read_dir(&report).unwrap() {
        let path = entry.unwrap().path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("png") => {
                let decoder = png::Decoder::new(std::fs::File::open(&path).unwrap());
                let mut reader = decoder.read_info().expect("a PNG header");
                let mut buf = vec![0; reader.output_buffer_size()];
                let frame = reader.next_frame(&mut buf).expect("PNG pixels decode");
                assert!(
                    frame.width >= 100 && frame.height >= 100,
                    "{}",
                    path.display()
                );
                pngs += 1;
            }
            Some("svg") => {
                let text = std::fs::read_to_string(&path).unwrap();
                let doc = roxmltree::Document::parse(&text).expect("SVG is XML");
                assert_eq!(doc.root_element().tag_name().name(), "svg");
                svgs += 1;
            }
            _ => {}
        }
    }
    assert!(
        pngs >= 3 && svgs >= 3,
        "{pngs} PNG, {svgs} SVG in {}",
        report.display()
    );
    // jobs.csv: one row per job, its trainer one of the two replicas, with its times.
    let csv = std::fs::read_to_string(report.join("jobs.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no {name} column in jobs.csv: {header:?}"))
    };
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 6, "{csv}");
    for row in &rows {
        assert!(TRAINERS.contains(&row[col("trainer")]), "{csv}");
        let train: f64 = row[col("train_seconds")].parse().unwrap();
        let eval: f64 = row[col("eval_seconds")].parse().unwrap();
        assert!(train > 0.0 && eval > 0.0, "{csv}");
        assert!(row[col("attempt")].parse::<u64>().unwrap() >= 1, "{csv}");
        let r = rewards
            .iter()
            .find(|r| r.job_id == row[col("job_id")])
            .unwrap();
        assert_eq!(row[col("trainer")], r.trainer, "{csv}");
    }
    let summary = std::fs::read_to_string(report.join("summary.md")).unwrap();
    assert!(summary.contains("| trainer | train s |"), "{summary}");

    // `segtune study watch` attached after the end (a fresh process, stdout a pipe: plain
    // lines) replays the whole study from the streams and exits 0 at its done event.
    let t_watch = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(&segtune)
            .args(["study", "watch", STUDY, "--nats", &url])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("study watch of a finished study ends within 60 s")
    .unwrap();
    let watched = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "study watch: {}\n{watched}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    check_late_watch(&watched, &rewards);
    let watch_secs = t_watch.elapsed();

    // examples/subscribe_rewards.py against the real stack: the six real rewards.
    let t_py = Instant::now();
    let py_url = url.clone();
    let py = tokio::task::spawn_blocking(move || {
        test_support::python_subscriber_lines(&py_url, STUDY, 6)
    })
    .await
    .unwrap();
    if let Some((lines, stderr)) = py {
        assert_eq!(lines.len(), 6, "got {lines:?}; stderr: {stderr}");
        // Stored in the order they were evaluated, as the reward stream replays them.
        for (line, r) in lines.iter().zip(&rewards) {
            let want = format!(
                "#{} {} dice={:.4} trainer={} ",
                r.index, r.job_id, r.mean, r.trainer
            );
            assert!(line.starts_with(&want), "{line:?} is not {want:?}...");
        }
    }
    let py_secs = t_py.elapsed();

    // `segtune study extend`: refused for too few jobs or an unknown study; continued to 8
    // jobs, followed to the second `done`; a late watch then follows past the first `done`.
    let t_extend = Instant::now();
    let extend = |args: &[&str]| {
        Command::new(&segtune)
            .args(["study", "extend"])
            .args(args)
            .args(["--nats", &url])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = extend(&[STUDY, "--max-jobs", "6"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "--max-jobs 6 must be more than study {STUDY}'s max_jobs 6"
        )),
        "{err}"
    );
    let out = extend(&["no-such-study", "--max-jobs", "9"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown study"),
        "{err}"
    );
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&segtune)
            .args([
                "study",
                "extend",
                STUDY,
                "--max-jobs",
                "8",
                "--wait",
                "--nats",
                &url,
            ])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("the extension is done within 120 s")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "study extend --wait: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("extended: 6 -> 8 jobs"), "{stdout}");
    assert!(
        stdout.contains(&format!("study {STUDY} done: 8 rewards")),
        "{stdout}"
    );
    let extended: Vec<Reward> =
        test_support::stream_payloads(&js, subjects::stream::REWARDS, &subjects::rewards(STUDY))
            .await
            .iter()
            .map(|p| protocol::decode(p).unwrap())
            .collect();
    let ids: BTreeSet<&str> = extended.iter().map(|r| r.job_id.as_str()).collect();
    assert_eq!(ids.len(), 8, "{ids:?}");
    // The first six are the same rewards as before the extension.
    assert_eq!(extended[..6], rewards[..]);
    let out = Command::new(&segtune)
        .args(["study", "watch", STUDY, "--nats", &url])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let watched = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{watched}");
    assert!(
        watched.contains(&format!("study {STUDY} done: 8 rewards")),
        "{watched}"
    );
    let extend_secs = t_extend.elapsed();

    // `segtune study finalize`: the best strategy trained as a job a trainer takes, scored by
    // the evaluator, stored as a bundle (and copied to a folder); then `segtune predict` on
    // the validation cases as the task folder has them (0.7 x 0.7 x 2.5 mm, flipped axes):
    // their Dice in the original space is close to the evaluator's at 1 mm for that model.
    let t_final = Instant::now();
    let bundle = dir.path().join("bundle");
    let out = Command::new(&segtune)
        .args([
            "study",
            "finalize",
            STUDY,
            "--timeout-secs",
            "120",
            "--nats",
            &url,
        ])
        .arg("--store")
        .arg(data.join("store"))
        .arg("--out")
        .arg(&bundle)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "study finalize: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), format!("store:studies/{STUDY}/final/bundle"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("bundle.json")).unwrap()).unwrap();
    assert_eq!(manifest["provenance"]["study"], STUDY);
    let finals: Vec<Reward> = test_support::stream_payloads(
        &js,
        subjects::stream::REWARDS,
        &subjects::rewards(&format!("{STUDY}-final")),
    )
    .await
    .iter()
    .map(|p| protocol::decode(p).unwrap())
    .collect();
    assert_eq!(finals.len(), 1, "one final reward");
    let at_1mm = &finals[0];
    // bundle.json holds the evaluator's Dice as JSON text; serde_json's default float parser
    // is best-effort and may read it back one ulp off (no `float_roundtrip` feature).
    let recorded = manifest["provenance"]["validation_dice"]
        .as_f64()
        .expect("bundle.json records the validation Dice");
    assert!(
        (recorded - at_1mm.mean).abs() <= 4.0 * f64::EPSILON * at_1mm.mean.abs(),
        "bundle.json validation_dice {recorded} vs the final reward {}",
        at_1mm.mean
    );
    // The study's own reward stream holds the search's jobs only.
    let after: Vec<Reward> =
        test_support::stream_payloads(&js, subjects::stream::REWARDS, &subjects::rewards(STUDY))
            .await
            .iter()
            .map(|p| protocol::decode(p).unwrap())
            .collect();
    assert_eq!(after.len(), 8);
    let inputs = dir.path().join("validation-images");
    std::fs::create_dir_all(&inputs).unwrap();
    for c in &at_1mm.per_case {
        let name = format!("{}.nii.gz", c.case);
        std::fs::copy(task.join("imagesTr").join(&name), inputs.join(&name)).unwrap();
    }
    let masks = dir.path().join("masks");
    let out = Command::new(&segtune)
        .args(["predict", "--model"])
        .arg(&bundle)
        .arg("--input")
        .arg(&inputs)
        .arg("--output")
        .arg(&masks)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "predict: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut dice = Vec::new();
    for c in &at_1mm.per_case {
        let name = format!("{}.nii.gz", c.case);
        let limits = volume::ReadLimits::default();
        let mask = volume::read_nifti(&masks.join(&name), &limits).unwrap();
        let label = volume::read_nifti(&task.join("labelsTr").join(&name), &limits).unwrap();
        assert_eq!(mask.volume.dims, label.volume.dims, "{name}");
        let image = volume::read_nifti(&inputs.join(&name), &limits).unwrap();
        assert_eq!(
            mask.spatial, image.spatial,
            "{name}: the mask overlays the image"
        );
        let to_u8 = |v: &[f32]| v.iter().map(|&x| x as u8).collect::<Vec<u8>>();
        let d = segmodel::infer::dice_per_class(
            &to_u8(&mask.volume.data),
            &to_u8(&label.volume.data),
            at_1mm.per_class.len() + 1,
        );
        dice.push(d.iter().sum::<f64>() / d.len() as f64);
    }
    let original = dice.iter().sum::<f64>() / dice.len() as f64;
    eprintln!(
        "final model: Dice {:.4} at 1 mm (evaluator), {original:.4} in the original space",
        at_1mm.mean
    );
    assert!(
        original >= 0.8 * at_1mm.mean,
        "Dice in the original space {original:.4} < 0.8 x {:.4} at 1 mm",
        at_1mm.mean
    );
    // The same segmentation over NATS: `predict --bus` uploads the scans, an evaluator of the
    // stack segments them and writes the masks to the store; they are the CLI's bytes. A
    // broken scan among them is answered with its error and gets no mask.
    std::fs::write(inputs.join("broken.nii.gz"), b"not a NIfTI file").unwrap();
    let bus_masks = dir.path().join("masks-bus");
    let out = Command::new(&segtune)
        .args(["predict", "--bus", "--request-id", "e2e-predict"])
        .arg("--model")
        .arg(format!("store:studies/{STUDY}/final/bundle"))
        .arg("--input")
        .arg(&inputs)
        .arg("--output")
        .arg(&bus_masks)
        .args(["--timeout-secs", "120", "--nats", &url])
        .arg("--store")
        .arg(data.join("store"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a broken input fails the command\n{stderr}"
    );
    assert!(
        stderr.contains("error: predictions/e2e-predict/inputs/broken.nii.gz:")
            && stderr.contains(&format!(
                "1 of {} input(s) could not be segmented",
                at_1mm.per_case.len() + 1
            )),
        "{stderr}"
    );
    assert!(!bus_masks.join("broken.nii.gz").exists());
    for c in &at_1mm.per_case {
        let name = format!("{}.nii.gz", c.case);
        assert!(
            std::fs::read(bus_masks.join(&name)).unwrap()
                == std::fs::read(masks.join(&name)).unwrap(),
            "{name}: the mask over NATS differs from the CLI's"
        );
    }
    let answers = test_support::stream_payloads(
        &js,
        subjects::stream::PREDICTIONS,
        &subjects::predictions("e2e-predict"),
    )
    .await;
    assert_eq!(answers.len(), 1, "one answer per request");
    let answer: protocol::Predicted = protocol::decode(&answers[0]).unwrap();
    assert_eq!(answer.outputs.len(), at_1mm.per_case.len());
    assert_eq!(answer.errors.len(), 1);
    assert_eq!(answer.errors[0].case, "broken");
    let final_secs = t_final.elapsed();

    // Ctrl-C (SIGINT) stops every child segtune up started and exits 0; every service logged
    // to its own file.
    let t_stop = Instant::now();
    let status = up.stop(libc::SIGINT);
    assert!(status.success(), "segtune up exited with {status}");
    let stopped = t_stop.elapsed();
    assert_all_exited(&children, Duration::ZERO);
    for name in SERVICES {
        let log = data.join("logs").join(format!("{name}.log"));
        assert!(log.is_file(), "{}", log.display());
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nats-server still listening after segtune up stopped"
    );

    let total = t0.elapsed();
    eprintln!(
        "e2e stack: cargo build check {:.1} s, stack up {:.1} s, 6-job study {:.1} s, \
         late watch {:.1} s, python subscriber {:.1} s, extension {:.1} s, finalize and \
         predict {:.1} s, stop {:.1} s, total {:.1} s",
        built.as_secs_f64(),
        ready.as_secs_f64(),
        studied.as_secs_f64(),
        watch_secs.as_secs_f64(),
        py_secs.as_secs_f64(),
        extend_secs.as_secs_f64(),
        final_secs.as_secs_f64(),
        stopped.as_secs_f64(),
        total.as_secs_f64()
    );
    assert!(
        total - built < Duration::from_secs(240),
        "took {total:?} beyond the build"
    );
}

/// The plain output of `segtune study watch` on the finished study: every job's reward line
/// (job id and Dice), the done line after all of them, then the summary table of six jobs.
#[track_caller]
fn check_late_watch(out: &str, rewards: &[Reward]) {
    let lines: Vec<&str> = out.lines().collect();
    let event_lines: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split_once("s] ").map(|(_, text)| text))
        .collect();
    assert!(
        event_lines
            .first()
            .is_some_and(|l| l.starts_with(&format!("study {STUDY} started: ppo-rnn, 6 jobs"))),
        "{out}"
    );
    for r in rewards {
        let want = format!("job {} ({}) Dice {:.4} (", r.index, r.job_id, r.mean);
        assert_eq!(
            event_lines.iter().filter(|l| l.starts_with(&want)).count(),
            1,
            "no single line {want:?}...:\n{out}"
        );
    }
    assert_eq!(
        event_lines
            .iter()
            .filter(|l| l.contains(" issued: "))
            .count(),
        6,
        "{out}"
    );
    assert_eq!(
        event_lines.last().copied(),
        Some(format!("study {STUDY} done: 6 rewards").as_str()),
        "the done line ends the replay:\n{out}"
    );
    let summary = lines
        .iter()
        .position(|l| l.starts_with(&format!("study {STUDY} done: 6 rewards in ")))
        .unwrap_or_else(|| panic!("no summary:\n{out}"));
    // After the summary line: the table header, one row per job, the best strategy.
    let rows: Vec<&str> = lines[summary + 2..]
        .iter()
        .take_while(|l| !l.starts_with("best strategy ("))
        .copied()
        .collect();
    assert_eq!(rows.len(), 6, "{out}");
    for r in rewards {
        assert!(
            rows.iter()
                .any(|row| row.trim_start().starts_with(&format!("{} ", r.index))
                    && row.contains(&format!(" {:.4} ", r.mean))
                    && row.contains(&r.trainer)),
            "no row for job {} with Dice {:.4} and {}:\n{out}",
            r.index,
            r.mean,
            r.trainer
        );
    }
}

/// SIGTERM (a service manager's stop) stops `segtune up` like Ctrl-C: exit 0, every child
/// it started gone. One trainer and no study keep it to the start-up and the stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segtune_up_stops_every_child_on_sigterm() {
    let t0 = Instant::now();
    let segtune = build_binaries().join("segtune");
    let built = t0.elapsed();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (mut up, banner) = start_up(&segtune, 1, port, &dir.path().join("data")).await;
    let children = started_children(
        &up,
        &banner,
        &[
            "nats-server",
            "preprocessor",
            "controller",
            "trainer-1",
            "evaluator",
        ],
    );
    let t_stop = Instant::now();
    let status = up.stop(libc::SIGTERM);
    assert!(status.success(), "segtune up exited with {status}");
    assert_all_exited(&children, Duration::ZERO);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nats-server still listening"
    );
    eprintln!(
        "segtune up SIGTERM: up {:.1} s, stop {:.1} s",
        (t_stop - t0 - built).as_secs_f64(),
        t_stop.elapsed().as_secs_f64()
    );
}
