//! A real S3-compatible server for tests: pip's moto (`moto[server]`, installed by
//! `scripts/test`), on a free loopback port, killed on drop and restartable on the same port
//! (the endpoint-down tests). It also exits when the test process does, however that ends:
//! it watches its stdin, a pipe held by this process.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

/// The version `scripts/test` installs; named in the messages.
pub const MOTO: &str = "moto[server]==5.2.5";

/// Starts moto's server on the port in argv[1] (over TLS with a self-signed certificate when
/// argv[2] is `tls`) and exits when stdin closes.
const LAUNCHER: &str = r#"
import os, sys, threading
def watch():
    sys.stdin.buffer.read()
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
from moto.server import main
main(["-H", "127.0.0.1", "-p", sys.argv[1]] + (["--ssl"] if sys.argv[2:] == ["tls"] else []))
"#;

/// Creates the bucket argv[2] on the TLS server at port argv[1] (self-signed: not verified).
const CREATE_BUCKET_TLS: &str = r#"
import ssl, sys, urllib.request
req = urllib.request.Request(f"https://127.0.0.1:{sys.argv[1]}/{sys.argv[2]}", method="PUT")
print(urllib.request.urlopen(req, context=ssl._create_unverified_context()).status)
"#;

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

pub struct S3Server {
    child: Option<(Child, ChildStdin)>,
    pub port: u16,
    tls: bool,
    dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts a server and waits until it accepts connections. `None`, with a message on
    /// stderr, only when python3 itself is missing; panics (saying how to install it) when
    /// moto is.
    pub fn start() -> Option<Self> {
        Self::start_with(false)
    }

    /// [`Self::start`], serving HTTPS with a self-signed certificate: [`Self::options`] then
    /// turn certificate checks off, so the test exercises the client's TLS stack, not a CA.
    pub fn start_tls() -> Option<Self> {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Option<Self> {
        if Command::new(python())
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            eprintln!(
                "SKIPPED: the S3 tests need python3 (and `python3 -m pip install '{MOTO}'`); \
                 {} is not on PATH",
                python()
            );
            return None;
        }
        let mut s = Self {
            child: None,
            port: 0,
            tls,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        // A probed port can be taken before moto binds it: try a few.
        for attempt in 1..=5 {
            s.port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("probe a free port")
                .port();
            match s.spawn() {
                Ok(()) => return Some(s),
                Err(e) if attempt < 5 && e.contains("in use") => continue,
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!()
    }

    /// `http://127.0.0.1:PORT` (`https://` for [`Self::start_tls`])
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Options for `storage::open_with` (object_store's S3 config keys) that point a store at
    /// this server, whatever the process environment says.
    pub fn options(&self) -> Vec<(&'static str, String)> {
        let mut options = vec![
            ("aws_endpoint", self.endpoint()),
            ("aws_access_key_id", "test".into()),
            ("aws_secret_access_key", "test".into()),
            ("aws_region", "us-east-1".into()),
            ("aws_virtual_hosted_style_request", "false".into()),
        ];
        if self.tls {
            options.push(("allow_invalid_certificates", "true".into()));
        } else {
            options.push(("aws_allow_http", "true".into()));
        }
        options
    }

    /// Creates `bucket` (object_store cannot) with a plain HTTP PUT; returns `s3://bucket`.
    pub fn create_bucket(&self, bucket: &str) -> String {
        if self.tls {
            let out = Command::new(python())
                .args(["-c", CREATE_BUCKET_TLS, &self.port.to_string(), bucket])
                .output()
                .expect("run python3 to create the bucket");
            assert!(
                out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "200",
                "creating bucket {bucket} over TLS: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return format!("s3://{bucket}");
        }
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto");
        write!(
            conn,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.port
        )
        .expect("send the bucket request");
        let mut reply = String::new();
        conn.read_to_string(&mut reply).expect("read the reply");
        let status = reply.lines().next().unwrap_or("");
        assert!(
            status.contains(" 200"),
            "creating bucket {bucket}: {status}"
        );
        format!("s3://{bucket}")
    }

    /// Whether the process is running (not killed by the test).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (the endpoint goes down; objects are lost, moto keeps them in memory).
    pub fn kill(&mut self) {
        if let Some((mut child, stdin)) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            drop(stdin);
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        // The old socket may linger a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if e.contains("in use") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log_path = self.dir.path().join("moto.log");
        let log = std::fs::File::create(&log_path).expect("moto log file");
        let mut child = Command::new(python())
            .args(["-c", LAUNCHER, &self.port.to_string()])
            .args(self.tls.then_some("tls"))
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", python()))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let out = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: String = out.lines().rev().take(8).collect::<Vec<_>>().join("\n");
                let hint = if out.contains("No module named") {
                    format!(
                        "; install it with `python3 -m pip install '{MOTO}'` (scripts/test does)"
                    )
                } else {
                    String::new()
                };
                return Err(format!(
                    "moto server on port {} exited at start ({status}){hint}: {tail}",
                    self.port
                ));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err("moto server did not accept connections within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if std::env::var_os("TEST_LOG").is_some() {
            eprintln!("moto server on {}", self.endpoint());
        }
        self.child = Some((child, stdin));
        Ok(())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}
