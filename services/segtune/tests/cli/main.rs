//! The `segtune` binary as a user runs it (one test binary for the crate; a module per area).

mod bad_input;
mod gpu_check;
mod predict;
mod train_eval;

use std::process::{Command, Output};

/// The built `segtune` with a clean environment for what it reads from env vars.
pub fn segtune() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_segtune"));
    c.env_remove("SEGTUNE_NATS")
        .env_remove("SEGTUNE_STORE")
        .env_remove("SEGTUNE_SIMD")
        .env("SEGTUNE_LOG", "warn");
    c
}

/// A failure a person can act on: non-zero exit, nothing on stdout, exactly one line on
/// stderr (`error: ...`, no panic or backtrace) containing every `needle`.
#[track_caller]
pub fn assert_one_line_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "expected a failure, got {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr, got:\n{stderr}"
    );
    let line = lines[0];
    assert!(line.starts_with("error: "), "{line}");
    assert!(
        !line.contains("panicked") && !line.contains("backtrace"),
        "{line}"
    );
    for n in needles {
        assert!(line.contains(n), "{n:?} not in: {line}");
    }
    assert!(stdout.trim().is_empty(), "unexpected stdout: {stdout}");
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
