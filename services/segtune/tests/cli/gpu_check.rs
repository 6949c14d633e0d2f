//! `segtune gpu-check --device cpu --generic` as `scripts/device-check.sh` runs it: on the
//! CPU, the generic ops tier CUDA runs, checked against the kernels, with its host traffic.

use crate::segtune;

#[test]
fn gpu_check_on_the_generic_path_passes_and_reports_no_host_round_trip() {
    let out = segtune()
        .args(["gpu-check", "--device", "cpu", "--generic"])
        .args(["--size", "16", "--channels", "4,8"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    assert_eq!(lines[0], "ok     device: cpu opens; ops: generic");
    assert!(
        lines[1].starts_with("ok     forward: device logits (generic) equal the CPU kernels'"),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with("ok     host: 0 round trips and 0 kernel ops in 20 training steps"),
        "{stdout}"
    );
    assert!(
        lines[3].starts_with("ok     training: Dice loss"),
        "{stdout}"
    );
    assert_eq!(lines[4], "gpu-check passed on cpu (ops: generic)");
}
