use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use futures::StreamExt;
use protocol::{DatasetEvent, DatasetSource, PreprocessParams, PreprocessRequest};
use test_support::NatsServer;

/// A broker, a file store and a running preprocessor service.
pub struct Stack {
    _nats: NatsServer,
    _store_dir: tempfile::TempDir,
    pub store_url: String,
    pub client: async_nats::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Stack {
    pub async fn start() -> Self {
        test_support::init_test_tracing();
        let nats = NatsServer::start();
        let store_dir = tempfile::tempdir().unwrap();
        let store_url = store_dir.path().join("store").display().to_string();
        let settings = preprocessor::Settings {
            nats: nats.url(),
            store: store_url.clone(),
            parallel_cases: 2,
            max_voxels: 4_000_000,
        };
        let app = preprocessor::App::connect(&settings).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(preprocessor::run(app, async move {
            let _ = rx.await;
        }));
        let client = nats.client().await;
        Self {
            _nats: nats,
            _store_dir: store_dir,
            store_url,
            client,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Sends a request and waits for the dataset event answering it.
    pub async fn request(&self, dir: &Path) -> DatasetEvent {
        let mut sub = self.client.subscribe("segtune.datasets.*").await.unwrap();
        self.client.flush().await.unwrap();
        let request_id = format!("req-{}", rand_id());
        let req = PreprocessRequest {
            schema: protocol::SCHEMA_VERSION,
            request_id: request_id.clone(),
            source: DatasetSource::Local {
                path: dir.display().to_string(),
            },
            params: PreprocessParams::default(),
        };
        let js = async_nats::jetstream::new(self.client.clone());
        runtime::publish(
            &js,
            protocol::subjects::PREPROCESS_REQUESTS.into(),
            Some(&request_id),
            protocol::encode(&req).unwrap(),
        )
        .await
        .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let msg = tokio::time::timeout_at(deadline, sub.next())
                .await
                .expect("no dataset event within 30 s")
                .expect("subscription open");
            let ev: DatasetEvent = protocol::decode(&msg.payload).unwrap();
            let rid = match &ev {
                DatasetEvent::Ready(r) => &r.request_id,
                DatasetEvent::Failed(f) => &f.request_id,
            };
            if *rid == request_id {
                return ev;
            }
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("service stops on shutdown")
                .unwrap()
                .unwrap();
        }
    }
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    (std::process::id() as u64) << 20 | N.fetch_add(1, Ordering::Relaxed)
}

/// Writes a tiny synthetic CT task.
pub fn synth_task(dir: &Path, seed: u64) -> PathBuf {
    let spec = volume::synth::SynthSpec::new(volume::synth::SynthKind::CtOrgan, 4, 24, seed);
    volume::synth::write_task(&spec, dir).unwrap();
    dir.to_path_buf()
}

/// Every file under `root` with its bytes.
pub fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// The manifest with its timestamp zeroed, for comparisons.
pub fn manifest_without_time(bytes: &[u8]) -> protocol::Manifest {
    let mut m: protocol::Manifest = protocol::decode(bytes).unwrap();
    m.created_unix = 0;
    m
}

/// Follows a study's event stream (an ordered consumer's messages) to its end: the number of
/// rewards on `Done`, the reason on `Failed`. Stream errors (a broker failing over) are
/// skipped; panics with `what` if the study does not end within `timeout`.
pub async fn study_outcome<S, E>(
    events: &mut S,
    timeout: Duration,
    what: &str,
) -> Result<u32, String>
where
    S: futures::Stream<Item = Result<async_nats::jetstream::Message, E>> + Unpin,
    E: std::fmt::Display,
{
    tokio::time::timeout(timeout, async {
        while let Some(m) = events.next().await {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("event stream: {e}");
                    continue;
                }
            };
            let ev: protocol::StudyEvent = protocol::decode(&m.payload).unwrap();
            match ev.event {
                protocol::StudyEventKind::Done { rewards, .. } => return Ok(rewards),
                protocol::StudyEventKind::Failed { reason } => return Err(reason),
                _ => {}
            }
        }
        Err("event stream ended".to_string())
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: the study did not end within {timeout:?}"))
}

/// The five services (controller, preprocessor, two trainers, evaluator) as tasks of the test,
/// each connected with its own URL (`nats(i)` for the i-th: 0 controller, 1 preprocessor,
/// 2 and 3 trainers, 4 evaluator), sharing the store at `store`.
pub struct Services {
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Services {
    pub async fn start(
        nats: impl Fn(usize) -> String,
        store: &str,
        job_ack_wait_secs: f64,
        stream_replicas: u8,
    ) -> Self {
        let mut s = Self {
            stops: Vec::new(),
            tasks: Vec::new(),
        };
        let controller = controller::App::connect(&controller::Settings {
            nats: nats(0),
            store: store.to_string(),
            ack_wait_secs: 30.0,
            job_ack_wait_secs,
            stream_replicas,
        })
        .await
        .unwrap();
        let stop = s.stop();
        s.tasks
            .push(tokio::spawn(controller::run(controller, stop)));
        let pre = preprocessor::App::connect(&preprocessor::Settings {
            nats: nats(1),
            store: store.to_string(),
            parallel_cases: 2,
            max_voxels: 4_000_000,
        })
        .await
        .unwrap();
        let stop = s.stop();
        s.tasks.push(tokio::spawn(preprocessor::run(pre, stop)));
        for i in [2, 3] {
            let trainer = trainer::App::connect(&trainer::Settings {
                nats: nats(i),
                store: store.to_string(),
                device: "cpu".into(),
                augment_workers: None,
                cache: Default::default(),
            })
            .await
            .unwrap();
            let stop = s.stop();
            s.tasks.push(tokio::spawn(trainer::run(trainer, stop)));
        }
        let eval = evaluator::App::connect(&evaluator::Settings {
            nats: nats(4),
            store: store.to_string(),
            device: "cpu".into(),
            cache: Default::default(),
        })
        .await
        .unwrap();
        let stop = s.stop();
        s.tasks.push(tokio::spawn(evaluator::run(eval, stop)));
        s
    }

    fn stop(&mut self) -> impl std::future::Future<Output = ()> + use<> {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        self.stops.push(tx);
        async move {
            let _ = rx.await;
        }
    }

    /// True while no service has ended (none gives up on its own).
    pub fn all_running(&self) -> bool {
        self.tasks.iter().all(|t| !t.is_finished())
    }

    /// Shuts every service down and asserts each stops cleanly within 30 s.
    pub async fn stop_all(self) {
        for tx in self.stops {
            let _ = tx.send(());
        }
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("services stop on shutdown")
                .unwrap()
                .unwrap();
        }
    }
}

/// Removes from `cmd` the variables cargo sets for a running test (`CARGO_PKG_NAME`,
/// `CARGO_MANIFEST_DIR`, ...). A `cargo build` run from a test inherits them otherwise, and
/// build scripts that watch them (ring's `rerun-if-env-changed=CARGO_PKG_NAME`) rerun: ring,
/// rustls, async-nats and every service were rebuilt by the test's build, and again by the
/// next `cargo test` (about 4 minutes each way on 2 cores).
pub(crate) fn without_test_env(cmd: &mut std::process::Command) -> &mut std::process::Command {
    for (key, _) in std::env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_EXE_")
            || matches!(
                k,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_MANIFEST_LINKS"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "OUT_DIR"
            )
        {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A PPO-RNN study file of studies/demo.toml's shape on the task at `task`, shrunk for tests:
/// U-Net 4-8, patches of 16³, `epochs` × `patches` per job. Written as `dir/tiny.toml`.
pub fn tiny_ppo_study(
    dir: &std::path::Path,
    task: &std::path::Path,
    max_jobs: usize,
    parallel: usize,
    epochs: usize,
    patches: usize,
) -> std::path::PathBuf {
    let path = dir.join("tiny.toml");
    std::fs::write(
        &path,
        format!(
            r#"[dataset]
path = "{}"

[search]
searcher = "ppo-rnn"
max_jobs = {max_jobs}
parallel = {parallel}
seed = 0

[space]
preset = "paper"

[training]
channels = [4, 8]
patch = 16
epochs = {epochs}
patches_per_epoch = {patches}
batch_size = 2
"#,
            task.display()
        ),
    )
    .unwrap();
    path
}

/// A random-search study of `max_jobs` tiny jobs, 2 at a time (U-Net 4-8, `epochs` of 2
/// patches of 16³, batch 1), on the task at `task`, parsed as the controller parses
/// `dir/<name>.toml` (the study is named `name`).
pub fn random_study(
    dir: &Path,
    task: &Path,
    name: &str,
    max_jobs: u32,
    epochs: u32,
) -> protocol::StudySpec {
    let text = format!(
        "[dataset]\npath = \"{}\"\n[search]\nsearcher = \"random\"\nmax_jobs = {max_jobs}\n\
         parallel = 2\n[space]\npreset = \"paper\"\n[training]\nchannels = [4, 8]\npatch = 16\n\
         epochs = {epochs}\npatches_per_epoch = 2\nbatch_size = 1\n",
        task.display()
    );
    study::parse_study_file(&text, &dir.join(format!("{name}.toml"))).unwrap()
}

/// Hands `spec` to the controller, as `segtune study submit` does.
pub async fn submit(js: &async_nats::jetstream::Context, spec: &protocol::StudySpec) {
    runtime::publish(
        js,
        protocol::subjects::SUBMISSIONS.to_string(),
        Some(&format!("submit-{}", spec.study)),
        protocol::encode(spec).unwrap(),
    )
    .await
    .unwrap();
}

/// The events of `study` from the start of the EVENTS stream (an ordered consumer), for
/// [`study_outcome`].
pub async fn study_events(
    js: &async_nats::jetstream::Context,
    study: &str,
) -> async_nats::jetstream::consumer::pull::Ordered {
    js.get_stream(protocol::subjects::stream::EVENTS)
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: protocol::subjects::study_events(study),
            ..Default::default()
        })
        .await
        .unwrap()
        .messages()
        .await
        .unwrap()
}

/// Where the binaries of this test's profile live: `target/<profile>/`, next to `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

/// Builds (or finds up to date) `segtune` and the four services with this test's profile,
/// once per test binary; returns their folder (`target/<profile>/`).
pub(crate) fn build_binaries() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_binaries_now).clone()
}

fn build_binaries_now() -> PathBuf {
    let dir = profile_dir();
    let profile = dir.file_name().unwrap().to_string_lossy().into_owned();
    let target_dir = dir.parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
    let mut cmd = std::process::Command::new(cargo);
    without_test_env(&mut cmd);
    cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["build", "--quiet", "--bins"])
        .args(["-p", "segtune", "-p", "preprocessor", "-p", "controller"])
        .args(["-p", "trainer", "-p", "evaluator"])
        .arg("--target-dir")
        .arg(target_dir);
    if profile != "debug" {
        cmd.args(["--profile", &profile]);
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build --bins failed: {status}");
    dir
}

/// Runs `cmd` (stdin closed) and returns its output; fails the test naming `what`, the exit
/// status and stderr unless it succeeded.
pub(crate) fn run_ok(cmd: &mut std::process::Command, what: &str) -> std::process::Output {
    let out = cmd.stdin(std::process::Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
