//! The broker as compose runs it (deploy/nats.conf) refuses what a role must not do and
//! strangers; with TLS on, plaintext clients; and a service refused by the broker reports it
//! without ever logging the secret it was given.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::jetstream;
use protocol::subjects::{self, stream};
use test_support::{NatsServer, Pki};

const ROLES: &[&str] = &[
    "controller",
    "preprocessor",
    "trainer",
    "evaluator",
    "admin",
];

fn deploy_conf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats.conf")
}

fn password(role: &str) -> String {
    format!("pw-{role}-{}", std::process::id())
}

/// A server from deploy/nats.conf with every role's password, plus `extra` config.
fn compose_broker(extra: Option<String>) -> NatsServer {
    let mut b = NatsServer::builder().arg("-m").arg("0").log();
    b = match extra {
        None => b.config_file(deploy_conf()),
        // Its text, not an `include` (nats-server resolves those relative to the config).
        Some(extra) => b.config(format!(
            "{}\n{extra}",
            std::fs::read_to_string(deploy_conf()).unwrap()
        )),
    };
    for role in ROLES {
        b = b.env(
            format!("SEGTUNE_NATS_{}_PASSWORD", role.to_uppercase()),
            password(role),
        );
    }
    b.start()
}

/// Connects as `role` the way every service does (runtime's options: its inbox prefix),
/// collecting the errors the server sends (permission violations).
async fn connect_as(
    server: &NatsServer,
    role: &str,
) -> (
    async_nats::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let url = format!("nats://{role}:{}@127.0.0.1:{}", password(role), server.port);
    let settings = runtime::NatsSettings::from_env(&url, |_| None).unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = settings
        .connect_options()
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = e {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(&settings.url)
        .await
        .unwrap_or_else(|e| panic!("{role} cannot log in: {e}"));
    (client, rx)
}

/// The first server error mentioning `subject` within 2 s, and how long it took.
async fn violation(
    errors: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    subject: &str,
    since: Instant,
) -> Duration {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        match tokio::time::timeout_at(deadline, errors.recv()).await {
            Ok(Some(e)) if e.to_lowercase().contains(&subject.to_lowercase()) => {
                assert!(e.to_lowercase().contains("permissions violation"), "{e}");
                return since.elapsed();
            }
            Ok(Some(_)) => {}
            _ => panic!("no permission violation for {subject} within 2 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_broker_refuses_a_trainer_admin_work_and_strangers() {
    let server = compose_broker(None);
    let plain = server.url();

    // Strangers: no login, a wrong password, an unknown user.
    for (what, options) in [
        ("anonymous", async_nats::ConnectOptions::new()),
        (
            "a wrong password",
            async_nats::ConnectOptions::with_user_and_password("trainer".into(), "x".into()),
        ),
        (
            "an unknown user",
            async_nats::ConnectOptions::with_user_and_password("root".into(), "root".into()),
        ),
        (
            "another role's password",
            async_nats::ConnectOptions::with_user_and_password("trainer".into(), password("admin")),
        ),
    ] {
        let e = options
            .connect(&plain)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: login accepted"));
        assert_eq!(
            e.kind(),
            async_nats::ConnectErrorKind::AuthorizationViolation,
            "{what}: {e}"
        );
    }

    // The operator's role provisions the topology, as `segtune` does.
    let (admin, _) = connect_as(&server, "admin").await;
    let admin_js = jetstream::new(admin);
    runtime::provision(&admin_js, None).await.unwrap();

    let (trainer, mut errors) = connect_as(&server, "trainer").await;
    let mut js = jetstream::new(trainer.clone());
    js.set_timeout(Duration::from_secs(2));
    // It may do its job: read the topology.
    js.get_stream(stream::JOBS)
        .await
        .expect("the trainer reads stream info");

    // Create a stream: the JetStream API request is refused by the broker. (The client
    // hears it as an error event; the request itself times out, as nobody answers.)
    let t = Instant::now();
    let (created, create_refused) = tokio::join!(
        js.create_stream(jetstream::stream::Config {
            name: "FORGED".into(),
            subjects: vec!["forged.>".into()],
            ..Default::default()
        }),
        violation(&mut errors, "$JS.API.STREAM.CREATE.FORGED", t)
    );
    assert!(created.is_err(), "the trainer created a stream");
    // Delete one: the same.
    let t = Instant::now();
    let (deleted, delete_refused) = tokio::join!(
        js.delete_stream(stream::JOBS),
        violation(&mut errors, "$JS.API.STREAM.DELETE.JOBS", t)
    );
    assert!(deleted.is_err(), "the trainer deleted a stream");

    // Publish a job (it would spend every trainer's time on a strategy of its choosing):
    // refused, nothing stored. (A trainer does publish rewards: those of the jobs a study's
    // pruner stops, which no evaluator scores.)
    let study = "study-sec";
    let t = Instant::now();
    let forged = async {
        js.publish(subjects::jobs(study), "forged".into())
            .await?
            .await
            .map_err(async_nats::Error::from)
    };
    let job_subject = subjects::jobs(study);
    let (forged, job_refused) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(3), forged),
        violation(&mut errors, &job_subject, t)
    );
    assert!(!matches!(forged, Ok(Ok(_))), "a trainer published a job");

    let mut jobs = admin_js.get_stream(stream::JOBS).await.unwrap();
    assert_eq!(jobs.info().await.unwrap().state.messages, 0);
    assert!(admin_js.get_stream("FORGED").await.is_err());
    assert!(admin_js.get_stream(stream::JOBS).await.is_ok());

    let log = server.log();
    for subject in [
        "$JS.API.STREAM.CREATE.FORGED".to_string(),
        "$JS.API.STREAM.DELETE.JOBS".to_string(),
        subjects::jobs(study),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("Publish Violation") && l.contains(&subject)),
            "the broker's log has no violation for {subject}:\n{log}"
        );
    }
    eprintln!(
        "refused in: stream create {create_refused:?}, stream delete {delete_refused:?}, \
         job {job_refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_on_the_compose_broker_a_plaintext_client_cannot_connect() {
    let pki = Pki::new();
    let server = compose_broker(Some(pki.server_block(false)));
    let ca = pki.path("ca.pem").display().to_string();
    let url = format!(
        "nats://trainer:{}@127.0.0.1:{}",
        password("trainer"),
        server.port
    );
    let connect = |env: Vec<(&'static str, String)>| {
        let url = url.clone();
        async move {
            let settings = runtime::NatsSettings::from_env(&url, |k| {
                env.iter().find(|(v, _)| *v == k).map(|(_, x)| x.clone())
            })
            .unwrap();
            settings
                .connect_options()
                .connection_timeout(Duration::from_secs(3))
                .connect(&settings.url)
                .await
        }
    };
    // The trainer with the CA logs in over TLS and does its job.
    let client = connect(vec![(runtime::ENV_NATS_TLS_CA, ca)])
        .await
        .expect("the trainer connects over TLS with the CA");
    // The JetStream API answers it (no stream yet: "not found" is an answer; a refused or
    // unreadable request would time out).
    match jetstream::new(client).get_stream(stream::JOBS).await {
        Ok(_) => {}
        Err(e) => assert!(
            matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(_)
            ),
            "a JetStream request over TLS: {e}"
        ),
    }
    // Its right password over plaintext: the server hangs up before any CONNECT is read.
    let (got, closed) = test_support::plaintext_exchange(server.port);
    assert!(got.contains("\"tls_required\":true"), "{got}");
    assert!(
        !got.contains("PONG") && closed,
        "a plaintext client was served:\n{got}"
    );
    // Without the CA the handshake fails: the client does not trust the server.
    let e = connect(Vec::new())
        .await
        .expect_err("connected without trusting the CA");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
}

// ---- a service refused by the broker never logs its secret ----------------------------------

/// Environment variables of a service process.
type Env = Vec<(&'static str, String)>;

/// A `segtune-trainer` process with its stderr collected; SIGKILLed on drop.
struct Service {
    name: &'static str,
    child: Child,
    log: Arc<Mutex<String>>,
    _store: tempfile::TempDir,
}

impl Service {
    fn start(name: &'static str, level: &str, env: &[(&str, String)]) -> Self {
        let store = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(crate::support::build_binaries().join("segtune-trainer"));
        for var in runtime::ENV_VARS {
            cmd.env_remove(var);
        }
        let mut child = cmd
            .env("SEGTUNE_STORE", store.path().join("store"))
            .env("SEGTUNE_DEVICE", "cpu")
            .env("SEGTUNE_LOG", level)
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start segtune-trainer");
        let log: Arc<Mutex<String>> = Arc::default();
        let sink = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Self {
            name,
            child,
            log,
            _store: store,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_service_reports_it_and_never_logs_its_secret() {
    let users = NatsServer::builder()
        .config("authorization { users: [ { user: trainer, password: \"pw-right-5d1\" } ] }")
        .start();
    let tokens = NatsServer::builder()
        .config("authorization { token: \"tok-right-8e2\" }")
        .start();
    let known = nkeys::KeyPair::new_user();
    let nkeys_server = NatsServer::builder()
        .config(format!(
            "authorization {{ users: [ {{ nkey: {} }} ] }}",
            known.public_key()
        ))
        .start();
    let stranger = nkeys::KeyPair::new_user();
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };

    let pw = "pw-Wrong-Secret-71c";
    let pw_file = "pw-Wrong-FileSecret-39a";
    let tok = "tok-Wrong-Secret-06f";
    let tok_file = "tok-Wrong-FileSecret-c4d";
    let url_pw = "pw-Wrong-UrlSecret-52b";
    let seed = stranger.seed().unwrap();
    let secrets = [pw, pw_file, tok, tok_file, url_pw, seed.as_str()];

    let nats = |s: &NatsServer| ("SEGTUNE_NATS", s.url());
    let user = ("SEGTUNE_NATS_USER", "trainer".to_string());
    let cases: Vec<(&'static str, &str, Env)> = vec![
        (
            "password",
            "debug",
            vec![
                nats(&users),
                user.clone(),
                ("SEGTUNE_NATS_PASSWORD", pw.into()),
            ],
        ),
        (
            "password at trace",
            "trace",
            vec![
                nats(&users),
                user.clone(),
                ("SEGTUNE_NATS_PASSWORD", pw.into()),
            ],
        ),
        (
            "password file",
            "debug",
            vec![
                nats(&users),
                user.clone(),
                (
                    "SEGTUNE_NATS_PASSWORD_FILE",
                    file("pw", &format!("{pw_file}\n")),
                ),
            ],
        ),
        (
            "password in the URL",
            "debug",
            vec![(
                "SEGTUNE_NATS",
                format!("nats://trainer:{url_pw}@127.0.0.1:{}", users.port),
            )],
        ),
        (
            "token",
            "debug",
            vec![nats(&tokens), ("SEGTUNE_NATS_TOKEN", tok.into())],
        ),
        (
            "token file",
            "debug",
            vec![
                nats(&tokens),
                ("SEGTUNE_NATS_TOKEN_FILE", file("tok", tok_file)),
            ],
        ),
        (
            "nkey",
            "debug",
            vec![
                nats(&nkeys_server),
                ("SEGTUNE_NATS_NKEY_FILE", file("seed", &seed)),
            ],
        ),
    ];
    let services: Vec<Service> = cases
        .iter()
        .map(|(name, level, env)| Service::start(name, level, env))
        .collect();
    // Two methods at once: refused before connecting, naming the variables.
    let mut conflict = Service::start(
        "two methods",
        "debug",
        &[
            nats(&users),
            user.clone(),
            ("SEGTUNE_NATS_PASSWORD", pw.into()),
            ("SEGTUNE_NATS_TOKEN", tok.into()),
        ],
    );

    // Each is refused at its first attempt and retries (a service outlives a broker that is
    // misconfigured for a moment); give every one a few attempts.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let status = conflict.child.wait().unwrap();
    assert_eq!(status.code(), Some(69), "{}", conflict.log());
    let log = conflict.log();
    assert!(
        log.contains("SEGTUNE_NATS_USER") && log.contains("SEGTUNE_NATS_TOKEN"),
        "{log}"
    );
    let mut failures = Vec::new();
    for s in services.iter().chain([&conflict]) {
        let log = s.log();
        for secret in secrets {
            if log.contains(secret) {
                failures.push(format!("{}: logged a secret:\n{log}", s.name));
            }
        }
        if log.contains("panicked") {
            failures.push(format!("{}: panicked:\n{log}", s.name));
        }
    }
    for mut s in services {
        let log = s.log();
        if !log.to_lowercase().contains("authorization violation") {
            failures.push(format!("{}: the refusal is not reported:\n{log}", s.name));
        }
        if let Ok(Some(status)) = s.child.try_wait() {
            failures.push(format!("{}: exited ({status}):\n{log}", s.name));
        }
        if std::env::var_os("TEST_LOG").is_some() {
            eprintln!("---- {} ----\n{log}", s.name);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
