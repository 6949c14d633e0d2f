//! compose.yaml + compose.cpu.yaml under a real Docker engine, as a user runs them:
//!
//! - the Dockerfile's `cpu` stage builds `segtune:cpu`'s content (from this test's binaries:
//!   scripts/docker-cpu-image, `CPU_BINARIES=prebuilt`), on the base images of
//!   scripts/docker-bases (made locally: this machine has no registry);
//! - `docker compose up -d` starts the broker, preprocessor, controller, one trainer and the
//!   evaluator, and the `demo` service runs the demo study (a shrunk studies/demo.toml
//!   mounted over the image's) to done; examples/subscribe_rewards.py reads its rewards from
//!   the host through the published broker port;
//! - `--scale trainer=3` while a study runs: all three replicas train jobs (progress
//!   stream, per container); `docker kill` of one mid-job: the job is redelivered after the
//!   AckWait and rewarded once;
//! - a partition (`docker network disconnect`) of a trainer mid-job: the job is redelivered
//!   after the AckWait; the trainer, reconnected, drops its late result and the study's
//!   ledger is exact (one reward per job);
//! - `docker compose down` then `up`: the study state, the dataset and the checkpoints are
//!   still in the volumes, the demo finds its study done, and a new study reuses the
//!   preprocessed dataset;
//! - every segtune container runs as the image's non-root user (PID 1's uid, read from the
//!   host's /proc), and `docker compose stop` (SIGTERM to PID 1, a trainer mid-job) ends every
//!   service, the broker too, with exit code 0 within the grace period.
//!
//! The only test-only settings (a compose override written by the test): a 10 s job AckWait
//! on the controller, the image tag, the shrunk demo study and the broker's host port.
//!
//! Needs a Docker engine (`docker info`) and root (scripts/docker-bases). Without an engine
//! the tests say SKIPPED, unless `SEGTUNE_REQUIRE_DOCKER=1` (.ci/run sets it): then they fail.
//! `docker compose config` also resolves the GPU file (it cannot start here: no GPU) and the
//! test checks it against what tests/e2e/compose.rs reads.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use futures::StreamExt;
use protocol::{DatasetEvent, Progress, Reward, StudyEvent, StudyEventKind, subjects};
use serde_yaml::Value;

/// The controller's job AckWait in the engine test (the default is 60 s).
const ACK_WAIT_SECS: u64 = 10;
/// Where the `demo` service writes the phantom task (compose.yaml); every study here uses it.
const TASK: &str = "/data/segtune-data/synth-ct";
/// The compose service credentials of the CLI (compose.yaml's dev default).
const ADMIN_PASSWORD: &str = "segtune-dev-admin";
/// The non-root user of the Dockerfile's images.
const SEGTUNE_UID: u32 = 10001;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

// ---- the engine ---------------------------------------------------------------------------

/// Whether the Docker tests run: an engine answers `docker info`, and scripts/docker-bases
/// (once per test binary) has the Compose v2 and buildx plugins and the base images in
/// place. No engine: false after saying SKIPPED, or a failure with SEGTUNE_REQUIRE_DOCKER=1.
fn docker_ready() -> bool {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let info = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output();
        match info {
            Ok(o) if o.status.success() => {}
            Ok(o) => return Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => return Err(format!("cannot run docker: {e}")),
        }
        // The engine is there: from here on a failure is the test's, not a skip.
        let out = Command::new(root().join("scripts/docker-bases"))
            .output()
            .expect("run scripts/docker-bases");
        assert!(
            out.status.success(),
            "scripts/docker-bases failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    });
    match ready {
        Ok(()) => true,
        Err(why) => {
            assert!(
                std::env::var("SEGTUNE_REQUIRE_DOCKER").as_deref() != Ok("1"),
                "SEGTUNE_REQUIRE_DOCKER=1 but no Docker engine answers: {why}"
            );
            eprintln!("SKIPPED the Docker engine tests: no engine answers `docker info` ({why})");
            false
        }
    }
}

/// `docker ARGS`, its output whatever the status.
fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("docker {}: {e}", args.join(" ")))
}

/// `docker ARGS`, which must succeed: its stdout.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    checked(&format!("docker {}", args.join(" ")), out)
}

fn checked(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `docker compose` in the repository root with the given files and no `SEGTUNE_*` / `AWS_*`
/// variable of this process (compose would substitute them: the files' defaults apply).
fn compose_command(files: &[&Path]) -> Command {
    let mut cmd = Command::new("docker");
    cmd.current_dir(root()).arg("compose");
    for f in files {
        cmd.arg("-f").arg(f);
    }
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("SEGTUNE_") || k.starts_with("AWS_") || k == "CUDA_COMPUTE_CAP" {
            cmd.env_remove(&*k);
        }
    }
    cmd
}

/// A compose project of this test: a unique name, the broker on a free host port, and the
/// test's override file. Dropping it runs `down -v` (containers, network and volumes), so a
/// failed run leaves nothing behind; on a panic the services' logs are printed first.
struct Project {
    name: String,
    image: String,
    port: u16,
    dir: tempfile::TempDir,
}

impl Project {
    fn new(image: &str, demo_study: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let name = format!(
            "segtune-e2e-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
                % 1_000_000
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let demo = dir.path().join("demo.toml");
        std::fs::write(&demo, demo_study).unwrap();
        // The daemon reads the bind mount's source as root; the container reads it as the
        // image's user.
        std::fs::set_permissions(&demo, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let image_of = |svc: &str| format!("  {svc}:\n    image: {image}\n");
        let override_yaml = format!(
            "services:\n{}    environment:\n      SEGTUNE_JOB_ACK_WAIT: \"{ACK_WAIT_SECS}\"\n{}{}{}{}    volumes:\n      - {}:/opt/segtune/studies/demo.toml:ro\n",
            image_of("controller"),
            image_of("preprocessor"),
            image_of("trainer"),
            image_of("evaluator"),
            image_of("demo"),
            demo.display()
        );
        std::fs::write(dir.path().join("compose.test.yaml"), override_yaml).unwrap();
        Self {
            name,
            image: image.to_string(),
            port,
            dir,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let over = self.dir.path().join("compose.test.yaml");
        let mut cmd = compose_command(&[
            Path::new("compose.yaml"),
            Path::new("compose.cpu.yaml"),
            &over,
        ]);
        cmd.args(["-p", &self.name])
            .args(args)
            .env("SEGTUNE_NATS_PORT", self.port.to_string());
        cmd
    }

    /// `docker compose ARGS`, which must succeed: its stdout.
    fn run(&self, args: &[&str]) -> String {
        let out = self
            .command(args)
            .output()
            .unwrap_or_else(|e| panic!("docker compose {}: {e}", args.join(" ")));
        checked(&format!("docker compose {}", args.join(" ")), out)
    }

    /// The ids of the service's containers (`all`: stopped ones too).
    fn containers(&self, service: &str, all: bool) -> Vec<String> {
        let mut args = vec!["ps", "-q"];
        if all {
            args.push("-a");
        }
        args.push(service);
        self.run(&args).lines().map(str::to_string).collect()
    }

    /// Every container of the project (stopped ones too): id -> service.
    fn all_containers(&self) -> BTreeMap<String, String> {
        let ids = docker_ok(&[
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.name),
        ]);
        ids.lines()
            .map(|id| {
                let service = inspect(
                    id,
                    "{{index .Config.Labels \"com.docker.compose.service\"}}",
                );
                (id.to_string(), service)
            })
            .collect()
    }

    fn network(&self) -> String {
        format!("{}_default", self.name)
    }

    fn nats_url(&self) -> String {
        format!("nats://admin:{ADMIN_PASSWORD}@127.0.0.1:{}", self.port)
    }

    /// Waits for the one-shot `demo` to exit and returns its exit code.
    fn wait_demo(&self, timeout: Duration) -> i64 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(id) = self.containers("demo", true).first() {
                let state = inspect(
                    id,
                    "{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}",
                );
                let mut parts = state.split_whitespace();
                let (status, code, restarts) = (
                    parts.next().unwrap_or_default().to_string(),
                    parts.next().unwrap_or("0").parse::<i64>().unwrap(),
                    parts.next().unwrap_or("0").to_string(),
                );
                if status == "exited" {
                    return code;
                }
                assert!(
                    Instant::now() < deadline,
                    "demo still {status} (restarts {restarts}) after {timeout:?}:\n{}",
                    self.run(&["logs", "--no-color", "--tail", "60", "demo"])
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(out) = self
                .command(&["logs", "--no-color", "--timestamps", "--tail", "150"])
                .output()
        {
            eprintln!(
                "---- logs of compose project {} ----\n{}{}",
                self.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = self
            .command(&["down", "-v", "--remove-orphans", "-t", "5"])
            .output();
        let _ = Command::new("docker")
            .args(["image", "rm", "-f", &self.image])
            .output();
    }
}

fn inspect(id: &str, format: &str) -> String {
    docker_ok(&["inspect", "-f", format, id]).trim().to_string()
}

/// The trainer's worker name in a container: `trainer-<hostname>-<pid>`, the hostname being
/// the container id's first 12 characters and the pid 1.
fn container_of(worker: &str, ids: &[String]) -> Option<String> {
    let host = worker.strip_prefix("trainer-")?.rsplit_once('-')?.0;
    ids.iter().find(|id| id.starts_with(host)).cloned()
}

// ---- the bus, from the host ------------------------------------------------------------------

async fn admin_client(url_port: u16) -> async_nats::Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = async_nats::ConnectOptions::with_user_and_password(
            "admin".into(),
            ADMIN_PASSWORD.into(),
        )
        .custom_inbox_prefix("_INBOX_admin")
        .connect(format!("127.0.0.1:{url_port}"))
        .await;
        match r {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("broker not reachable yet: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => panic!("the broker's published port {url_port}: {e}"),
        }
    }
}

/// Every progress report seen on `segtune.progress.>`, with when it arrived.
type ProgressLog = Arc<Mutex<Vec<(Instant, Progress)>>>;

async fn record_progress(client: &async_nats::Client) -> ProgressLog {
    let log: ProgressLog = Arc::default();
    let mut sub = client.subscribe("segtune.progress.>").await.unwrap();
    client.flush().await.unwrap();
    let sink = log.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Ok(p) = protocol::decode::<Progress>(&m.payload) {
                sink.lock().unwrap().push((Instant::now(), p));
            }
        }
    });
    log
}

fn progress_of(log: &ProgressLog, study: &str) -> Vec<(Instant, Progress)> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(_, p)| p.study == study)
        .cloned()
        .collect()
}

/// A random-search study on the demo's task, `epochs` of 8 patches of 16³ per job (U-Net
/// 4-8; measured here: 60 epochs, three jobs at once on 2 cores, about 18 s a job): long
/// enough to act on a trainer mid-job.
fn study(name: &str, max_jobs: u32, parallel: u32, epochs: u32) -> protocol::StudySpec {
    let text = format!(
        "[dataset]\npath = \"{TASK}\"\n[search]\nsearcher = \"random\"\nmax_jobs = {max_jobs}\n\
         parallel = {parallel}\nseed = 7\n[space]\npreset = \"paper\"\n[training]\n\
         channels = [4, 8]\npatch = 16\nepochs = {epochs}\npatches_per_epoch = 8\nbatch_size = 2\n"
    );
    study::parse_study_file(&text, Path::new(&format!("/data/studies/{name}.toml"))).unwrap()
}

async fn events(js: &async_nats::jetstream::Context, study: &str) -> Vec<StudyEvent> {
    test_support::stream_payloads(js, subjects::stream::EVENTS, &subjects::study_events(study))
        .await
        .iter()
        .map(|b| protocol::decode(b).unwrap())
        .collect()
}

async fn rewards(js: &async_nats::jetstream::Context, study: &str) -> Vec<Reward> {
    test_support::stream_payloads(js, subjects::stream::REWARDS, &subjects::rewards(study))
        .await
        .iter()
        .map(|b| protocol::decode(b).unwrap())
        .collect()
}

async fn dataset_events(js: &async_nats::jetstream::Context) -> Vec<DatasetEvent> {
    test_support::stream_payloads(js, subjects::stream::DATASETS, "segtune.datasets.>")
        .await
        .iter()
        .map(|b| protocol::decode(b).unwrap())
        .collect()
}

/// Exactly one reward per job, `max_jobs` of them, and the study's `Done` counting as many.
async fn assert_ledger_exact(js: &async_nats::jetstream::Context, study: &str, max_jobs: u32) {
    let rewards = rewards(js, study).await;
    let mut per_job: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &rewards {
        *per_job.entry(r.job_id.as_str()).or_default() += 1;
    }
    assert_eq!(
        per_job.len(),
        max_jobs as usize,
        "{study}: rewarded jobs {per_job:?}"
    );
    assert!(
        per_job.values().all(|n| *n == 1),
        "{study}: a job rewarded twice: {per_job:?}"
    );
    let counted: Vec<u32> = events(js, study)
        .await
        .iter()
        .filter_map(|e| match &e.event {
            StudyEventKind::Done { rewards, .. } => Some(*rewards),
            _ => None,
        })
        .collect();
    assert_eq!(counted, [max_jobs], "{study}: Done events");
}

/// Follows `study` to its end; panics unless it is done.
async fn wait_done(js: &async_nats::jetstream::Context, study: &str, timeout: Duration) {
    let mut ev = crate::support::study_events(js, study).await;
    let outcome = crate::support::study_outcome(&mut ev, timeout, study).await;
    assert!(outcome.is_ok(), "{study} failed: {outcome:?}");
}

/// Waits until `pred` holds for the progress of `study`.
fn wait_progress<T>(
    log: &ProgressLog,
    study: &str,
    timeout: Duration,
    what: &str,
    mut pred: impl FnMut(&[(Instant, Progress)]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = progress_of(log, study);
        if let Some(t) = pred(&seen) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{study}: {what} not seen within {timeout:?}; progress: {:?}",
            seen.iter()
                .map(|(_, p)| (&p.worker, &p.job_id, p.epoch, p.attempt))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A job that `worker` reports mid-way (an epoch done, more to go) in the last 5 s, and
/// that no other worker has reported: (worker, job).
fn mid_job(seen: &[(Instant, Progress)], among: &[String]) -> Option<(String, String)> {
    let recent = Instant::now() - Duration::from_secs(5);
    seen.iter().rev().find_map(|(t, p)| {
        let alone = seen
            .iter()
            .all(|(_, q)| q.job_id != p.job_id || q.worker == p.worker);
        (*t > recent
            && p.epoch + 2 <= p.epochs
            && alone
            && container_of(&p.worker, among).is_some())
        .then(|| (p.worker.clone(), p.job_id.clone()))
    })
}

/// The uid of a running container's PID 1, as the host's /proc sees it.
fn pid1_uid(id: &str) -> u32 {
    let pid = inspect(id, "{{.State.Pid}}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid line");
    // Real, effective, saved, filesystem: all must be the user's.
    let all: BTreeSet<u32> = uids
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect();
    assert_eq!(all.len(), 1, "{id}: uids {uids}");
    all.into_iter().next().unwrap()
}

/// studies/demo.toml with a test budget: 3 jobs of 2 epochs × 4 patches of 16³, U-Net 4-8.
fn shrunk_demo() -> String {
    let text = std::fs::read_to_string(root().join("studies/demo.toml")).unwrap();
    let mut replaced = BTreeSet::new();
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            let key = l.split('=').next().unwrap_or_default().trim();
            let value = match key {
                "max_jobs" => "3",
                "channels" => "[4, 8]",
                "patch" => "16",
                "epochs" => "2",
                "patches_per_epoch" => "4",
                _ => return l.to_string(),
            };
            replaced.insert(key);
            format!("{key} = {value}")
        })
        .collect();
    assert_eq!(replaced.len(), 5, "studies/demo.toml lacks a budget key");
    out.join("\n") + "\n"
}

fn files_under(project: &Project, dir: &str) -> BTreeSet<String> {
    project
        .run(&["exec", "-T", "controller", "find", dir, "-type", "f"])
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_compose_stack_runs_scales_and_survives_under_a_docker_engine() {
    if !docker_ready() {
        return;
    }
    let started = Instant::now();
    let step = |what: &str| eprintln!("[{:>4} s] {what}", started.elapsed().as_secs());

    // ---- the image: the Dockerfile's cpu stage with this build's binaries ----
    let bins = crate::support::build_binaries();
    let image = "segtune-e2e:cpu";
    let out = Command::new(root().join("scripts/docker-cpu-image"))
        .arg(&bins)
        .arg(image)
        .output()
        .unwrap();
    checked("scripts/docker-cpu-image", out);
    assert_eq!(inspect(image, "{{.Config.User}}"), "segtune");
    step("image built");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // async-nats spawns tasks of its own (the JetStream context's) where it is created.
    let _rt = rt.enter();
    let project = Project::new(image, &shrunk_demo());

    // ---- up: broker, services, one trainer, the demo study to done ----
    project.run(&["up", "-d"]);
    step("up -d");
    let client = rt.block_on(admin_client(project.port));
    let js = async_nats::jetstream::new(client.clone());
    let progress = rt.block_on(record_progress(&client));
    let code = project.wait_demo(Duration::from_secs(300));
    assert_eq!(
        code,
        0,
        "the demo service failed:\n{}",
        project.run(&["logs", "--no-color", "--tail", "60", "demo"])
    );
    step("demo done");
    rt.block_on(assert_ledger_exact(&js, "demo", 3));
    let demo_rewards = rt.block_on(rewards(&js, "demo"));
    let (lines, stderr) = test_support::python_subscriber_lines(&project.nats_url(), "demo", 3)
        .expect("python3 with nats-py and msgpack (scripts/test installs them)");
    assert_eq!(
        lines.len(),
        3,
        "examples/subscribe_rewards.py through the published port printed {lines:?}; stderr:\n{stderr}"
    );
    for r in &demo_rewards {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&r.job_id) && l.contains(&format!("dice={:.4}", r.mean))),
            "reward {} (dice {:.4}) missing from the subscriber's {lines:?}",
            r.job_id,
            r.mean
        );
    }
    step("rewards read from the host by examples/subscribe_rewards.py");

    // ---- --scale trainer=3 while a study runs; one trainer killed mid-job ----
    let scale = study("scale", 6, 3, 60);
    rt.block_on(crate::support::submit(&js, &scale));
    project.run(&["up", "-d", "--scale", "trainer=3", "--no-recreate"]);
    let trainers = project.containers("trainer", false);
    assert_eq!(trainers.len(), 3, "trainers after --scale trainer=3");
    let per_container = wait_progress(
        &progress,
        "scale",
        Duration::from_secs(180),
        "jobs on all three trainers",
        |seen| {
            let mut jobs: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
            for (_, p) in seen {
                let c = container_of(&p.worker, &trainers).expect("a trainer of this project");
                jobs.entry(c).or_default().insert(&p.job_id);
            }
            (jobs.len() == 3).then(|| {
                jobs.into_iter()
                    .map(|(c, j)| (c[..12].to_string(), j.len()))
                    .collect::<BTreeMap<_, _>>()
            })
        },
    );
    step(&format!("three trainers took jobs: {per_container:?}"));
    let (victim, killed_job) = wait_progress(
        &progress,
        "scale",
        Duration::from_secs(120),
        "a trainer mid-job",
        |seen| mid_job(seen, &trainers),
    );
    let killed = container_of(&victim, &trainers).unwrap();
    docker_ok(&["kill", &killed]);
    step(&format!("killed {victim} holding {killed_job}"));
    rt.block_on(wait_done(&js, "scale", Duration::from_secs(300)));
    rt.block_on(assert_ledger_exact(&js, "scale", 6));
    let scale_rewards = rt.block_on(rewards(&js, "scale"));
    let redone = scale_rewards
        .iter()
        .find(|r| r.job_id == killed_job)
        .unwrap();
    assert!(
        redone.attempt >= 2 && redone.trainer != victim,
        "{killed_job}, killed with {victim}, was rewarded from attempt {} by {}",
        redone.attempt,
        redone.trainer
    );
    assert_eq!(
        inspect(&killed, "{{.State.Status}}"),
        "exited",
        "docker kill stops a container for good (restart: unless-stopped)"
    );
    step(&format!(
        "scale done: {killed_job} redelivered to {} (attempt {})",
        redone.trainer, redone.attempt
    ));

    // ---- a partition: a trainer cut off the network mid-job ----
    let alive: Vec<String> = project.containers("trainer", false);
    assert_eq!(alive.len(), 2);
    let part = study("partition", 4, 2, 60);
    rt.block_on(crate::support::submit(&js, &part));
    let (cut_worker, cut_job) = wait_progress(
        &progress,
        "partition",
        Duration::from_secs(180),
        "a trainer mid-job",
        |seen| mid_job(seen, &alive),
    );
    let cut = container_of(&cut_worker, &alive).unwrap();
    let network = project.network();
    docker_ok(&["network", "disconnect", &network, &cut]);
    let cut_at = Instant::now();
    step(&format!("disconnected {cut_worker} holding {cut_job}"));
    let (taker, attempt, after) = wait_progress(
        &progress,
        "partition",
        Duration::from_secs(180),
        "the cut-off job redelivered",
        |seen| {
            seen.iter().find_map(|(t, p)| {
                (p.job_id == cut_job && p.worker != cut_worker)
                    .then(|| (p.worker.clone(), p.attempt, t.duration_since(cut_at)))
            })
        },
    );
    // AckWait runs from the last in-progress ack, sent every AckWait/3.
    assert!(
        attempt >= 2 && after >= Duration::from_secs(ACK_WAIT_SECS * 2 / 3 - 1),
        "{cut_job} went to {taker} (attempt {attempt}) {after:?} after the partition"
    );
    docker_ok(&["network", "connect", &network, &cut]);
    step(&format!(
        "{cut_job} redelivered to {taker} {after:?} after the cut; reconnected"
    ));
    rt.block_on(wait_done(&js, "partition", Duration::from_secs(300)));
    rt.block_on(assert_ledger_exact(&js, "partition", 4));
    // One of the job's two attempts dropped its result: the cut-off trainer found the job
    // taken (its fence: the later delivery recorded in the store) and abandoned it, or one
    // result reached the broker second and was dropped as a duplicate (same msg-id).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let dropped = project.containers("trainer", true).iter().any(|id| {
            let logs = docker(&["logs", id]);
            let text = String::from_utf8_lossy(&logs.stdout).to_string()
                + &String::from_utf8_lossy(&logs.stderr);
            text.lines().any(|l| {
                l.contains(&cut_job)
                    && (l.contains("job superseded") || l.contains("accepted first"))
            })
        });
        if dropped {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no trainer dropped a late result of {cut_job}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let partition_rewards = rt.block_on(rewards(&js, "partition"));
    let late = partition_rewards
        .iter()
        .find(|r| r.job_id == cut_job)
        .unwrap();
    step(&format!(
        "partition done; {cut_job} rewarded once, trained by {} (attempt {})",
        late.trainer, late.attempt
    ));

    // ---- down, then up: the volumes keep the state, the dataset and the checkpoints ----
    let store_before = files_under(&project, "/data/store");
    let demo_checkpoints: Vec<&String> = store_before
        .iter()
        .filter(|f| f.starts_with("/data/store/studies/demo/") && f.ends_with(".safetensors"))
        .collect();
    assert_eq!(
        demo_checkpoints.len(),
        3,
        "demo checkpoints: {demo_checkpoints:?}"
    );
    let fresh_datasets = |evs: &[DatasetEvent]| -> BTreeSet<String> {
        evs.iter()
            .filter_map(|e| match e {
                DatasetEvent::Ready(r) if !r.reused => Some(r.dataset_id.clone()),
                _ => None,
            })
            .collect()
    };
    let reused_count = |evs: &[DatasetEvent]| {
        evs.iter()
            .filter(|e| matches!(e, DatasetEvent::Ready(r) if r.reused))
            .count()
    };
    let datasets_before = rt.block_on(dataset_events(&js));
    let dataset_id = {
        let fresh = fresh_datasets(&datasets_before);
        assert_eq!(fresh.len(), 1, "preprocessed: {fresh:?}");
        fresh.into_iter().next().unwrap()
    };
    drop(client);
    project.run(&["down"]);
    step("down");
    project.run(&["up", "-d"]);
    step("up -d again");
    let client = rt.block_on(admin_client(project.port));
    let js = async_nats::jetstream::new(client.clone());
    let progress = rt.block_on(record_progress(&client));
    let store_after = files_under(&project, "/data/store");
    let lost: Vec<&String> = store_before.difference(&store_after).collect();
    assert!(lost.is_empty(), "lost in down/up: {lost:?}");
    // The demo runs again: it finds its study done (state in the store, events in the
    // broker's volume) and issues nothing.
    assert_eq!(project.wait_demo(Duration::from_secs(120)), 0);
    rt.block_on(assert_ledger_exact(&js, "demo", 3));
    // A new study on the same task: the preprocessed dataset is reused.
    let again = study("again", 2, 1, 200);
    rt.block_on(crate::support::submit(&js, &again));
    let started_on = wait_started(&rt, &js, "again");
    assert_eq!(started_on, dataset_id, "the new study's dataset");
    let datasets_after = rt.block_on(dataset_events(&js));
    assert_eq!(
        fresh_datasets(&datasets_after),
        BTreeSet::from([dataset_id.clone()]),
        "preprocessed again after down/up"
    );
    assert!(
        reused_count(&datasets_after) > reused_count(&datasets_before),
        "no DatasetReady {{ reused: true }} for the new study"
    );
    step("after down/up: state, dataset and checkpoints kept; the new study reuses the dataset");

    // ---- non-root, and `docker compose stop` with a trainer mid-job ----
    let trainers = project.containers("trainer", false);
    wait_progress(
        &progress,
        "again",
        Duration::from_secs(120),
        "the new study training",
        |seen| (!seen.is_empty()).then_some(()),
    );
    let containers = project.all_containers();
    // The broker's image is NATS's own (here its stand-in), which runs as root as upstream's.
    for (id, service) in containers.iter().filter(|(_, s)| *s != "nats") {
        assert_eq!(
            inspect(id, "{{.Config.User}}"),
            "segtune",
            "{service}: configured user"
        );
        if inspect(id, "{{.State.Status}}") == "running" {
            assert_eq!(pid1_uid(id), SEGTUNE_UID, "{service}: PID 1's uid");
        }
    }
    assert_eq!(trainers.len(), 1);
    let t = Instant::now();
    project.run(&["stop"]);
    let stop_took = t.elapsed();
    let mut codes = BTreeMap::new();
    for (id, service) in &containers {
        let code: i64 = inspect(id, "{{.State.ExitCode}}").parse().unwrap();
        codes.insert(format!("{service} {}", &id[..12]), code);
    }
    step(&format!(
        "compose stop took {stop_took:?}; exit codes {codes:?}"
    ));
    // Past its grace period (compose's default, 10 s) a container is SIGKILLed: exit 137.
    for (c, code) in &codes {
        assert_eq!(*code, 0, "{c}: exit code after docker compose stop");
    }
    let trainer_log = String::from_utf8_lossy(&docker(&["logs", &trainers[0]]).stdout).to_string()
        + &String::from_utf8_lossy(&docker(&["logs", &trainers[0]]).stderr);
    assert!(
        trainer_log.contains("the job in hand is naked"),
        "the trainer stopped mid-job without handing its job back:\n{trainer_log}"
    );
    step("every segtune container ran as uid 10001 and stopped with exit code 0");
}

/// The dataset id of `study`'s Started event, waiting for it.
fn wait_started(
    rt: &tokio::runtime::Runtime,
    js: &async_nats::jetstream::Context,
    study: &str,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let evs = rt.block_on(events(js, study));
        if let Some(id) = evs.iter().find_map(|e| match &e.event {
            StudyEventKind::Started { dataset_id, .. } => Some(dataset_id.clone()),
            _ => None,
        }) {
            return id;
        }
        assert!(Instant::now() < deadline, "{study} not started: {evs:?}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

// ---- docker compose config ---------------------------------------------------------------

/// `docker compose config` of the files, as YAML.
fn compose_config(files: &[&str]) -> Value {
    let paths: Vec<&Path> = files.iter().map(Path::new).collect();
    let out = compose_command(&paths)
        .args(["config"])
        .output()
        .expect("docker compose config");
    serde_yaml::from_str(&checked("docker compose config", out)).unwrap()
}

/// Compose's own reading of compose.yaml (the GPU stack, which cannot start here) and of the
/// CPU override agrees with what tests/e2e/compose.rs checks: the same services, commands,
/// environments and images, GPU reservations on the CUDA services only.
#[test]
fn docker_compose_config_resolves_the_files_as_the_static_checks_read_them() {
    if !docker_ready() {
        return;
    }
    for (files, cpu) in [
        (vec!["compose.yaml"], false),
        (vec!["compose.yaml", "compose.cpu.yaml"], true),
    ] {
        let resolved = compose_config(&files);
        let ours = crate::compose::compose(cpu);
        let services = resolved["services"].as_mapping().expect("services");
        let names: BTreeSet<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
        // Profiles (minio) are left out by compose unless asked for.
        let expected: BTreeSet<&str> = ours
            .iter()
            .filter(|(_, s)| s.get("profiles").is_none())
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(names, expected, "{files:?}: services");
        for name in names {
            let theirs = &resolved["services"][name];
            let mine = &ours[name];
            let ctx = format!("{files:?} {name}");
            assert_eq!(theirs["image"], mine["image"], "{ctx}: image");
            assert_eq!(theirs["command"], mine["command"], "{ctx}: command");
            let env = |v: &Value| -> BTreeMap<String, String> {
                v.get("environment")
                    .and_then(Value::as_mapping)
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| {
                                let v = match v {
                                    Value::String(s) => s.clone(),
                                    other => serde_yaml::to_string(other).unwrap().trim().into(),
                                };
                                (k.as_str().unwrap().to_string(), v)
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            assert_eq!(env(theirs), env(mine), "{ctx}: environment");
            let devices = |v: &Value| -> Vec<(String, u64, Vec<String>)> {
                v["deploy"]["resources"]["reservations"]["devices"]
                    .as_sequence()
                    .map(|ds| {
                        ds.iter()
                            .map(|d| {
                                (
                                    d["driver"].as_str().unwrap_or_default().to_string(),
                                    d["count"].as_u64().unwrap_or_default(),
                                    d["capabilities"]
                                        .as_sequence()
                                        .unwrap()
                                        .iter()
                                        .map(|c| c.as_str().unwrap().to_string())
                                        .collect(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            assert_eq!(devices(theirs), devices(mine), "{ctx}: GPU reservation");
            let gpu = !devices(theirs).is_empty();
            assert_eq!(
                gpu,
                !cpu && matches!(name, "trainer" | "evaluator"),
                "{ctx}: GPU reservation"
            );
            if let Some(target) = mine["build"]["target"].as_str() {
                assert_eq!(
                    theirs["build"]["target"].as_str(),
                    Some(target),
                    "{ctx}: target"
                );
            }
        }
    }
}
