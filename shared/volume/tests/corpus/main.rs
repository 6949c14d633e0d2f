//! The malformed-NIfTI corpus: `tests/nifti-corpus/generate.py` writes
//! it into a temp dir, and every file goes through the reader with the default limits, from
//! the path (streaming) and from bytes (as the preprocessor reads object-store data).
//!
//! Per file and mode: a typed, non-I/O error naming the file and the broken field (or, for
//! the one deliberate `ok-` case, a successful read), no panic, under 1 s, and a process
//! peak RSS below the file's size + 64 MiB. The peak is reset before each read through
//! `/proc/self/clear_refs` and read back from `VmHWM`, which is why this binary holds one
//! test only: another test running alongside would move the peak.
//!
//! `cargo test -p volume --test corpus -- --nocapture` prints the figures per file.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use volume::{NiftiError, ReadLimits, read_nifti, read_nifti_bytes};

/// Every file the script writes, and a piece of the message it must produce (`None`: it
/// must read).
const EXPECTED: &[(&str, Option<&str>)] = &[
    (
        "header-short.nii",
        Some("expected 348 bytes of header, found 200"),
    ),
    (
        "header-short.nii.gz",
        Some("expected 348 bytes of header, found 200"),
    ),
    ("empty.nii", Some("expected 348 bytes of header, found 0")),
    ("sizeof_hdr.nii", Some("sizeof_hdr = 1234, expected 348")),
    ("sizeof_hdr-zero.nii", Some("sizeof_hdr = 0, expected 348")),
    (
        "magic.nii",
        Some("magic = \"abc\\x01\", expected \"n+1\\0\""),
    ),
    ("magic-pair.nii", Some("(magic \"ni1\")")),
    (
        "nifti2.nii",
        Some("NIfTI-2 is not supported (sizeof_hdr = 540)"),
    ),
    (
        "nifti2-be.nii",
        Some("NIfTI-2 is not supported (sizeof_hdr = 540)"),
    ),
    ("dim0-zero.nii", Some("dim[0] = 0, expected 1..7")),
    ("dim0-eight.nii", Some("dim[0] = 8, expected 1..7")),
    ("dim0-negative.nii", Some("dim[0] = -1, expected 1..7")),
    (
        "dim-negative.nii",
        Some("dim[2] = -4, expected a positive extent"),
    ),
    (
        "dim-negative-min.nii",
        Some("dim[1] = -32768, expected a positive extent"),
    ),
    (
        "dim-zero.nii",
        Some("dim[3] = 0, expected a positive extent"),
    ),
    (
        "be-dim-negative.nii",
        Some("dim[1] = -4, expected a positive extent"),
    ),
    (
        "dims-overflow.nii",
        Some("dim[1..4] = 32767×32767×32767×32767: volume of 1152780773560811521 voxels"),
    ),
    (
        "dims-over-cap.nii",
        Some("dim[1..4] = 2048×2048×257×1: volume of 1077936128 voxels exceeds the limit"),
    ),
    (
        "dims-over-cap.nii.gz",
        Some("dim[1..4] = 2048×2048×257×1: volume of 1077936128 voxels exceeds the limit"),
    ),
    (
        "dims-over-file.nii",
        Some("truncated: expected 536870912 bytes of voxel data, found 64"),
    ),
    (
        "dims-over-file.nii.gz",
        Some("118 bytes of gzip inflate to at most 121776 bytes, the header claims 536871264"),
    ),
    (
        "dim5.nii",
        Some("5-D data with dim[5] = 2 is not supported"),
    ),
    (
        "data-short.nii",
        Some("truncated: expected 64 bytes of voxel data, found 40"),
    ),
    (
        "bitpix.nii",
        Some("bitpix = 8, expected 16 for datatype 4 (int16)"),
    ),
    (
        "bitpix-zero.nii",
        Some("bitpix = 0, expected 8 for datatype 2 (uint8)"),
    ),
    (
        "datatype-unknown.nii",
        Some("datatype = 999 (unknown code), expected one of"),
    ),
    (
        "datatype-complex.nii",
        Some("datatype = 32 (complex64), expected one of"),
    ),
    (
        "vox_offset-nan.nii",
        Some("vox_offset = NaN, expected a whole number of bytes"),
    ),
    (
        "vox_offset-inf.nii",
        Some("vox_offset = inf, expected a whole number of bytes"),
    ),
    (
        "vox_offset-small.nii",
        Some("vox_offset = 348, expected a whole number of bytes"),
    ),
    (
        "vox_offset-negative.nii",
        Some("vox_offset = -1, expected a whole number of bytes"),
    ),
    (
        "vox_offset-fraction.nii",
        Some("vox_offset = 352.5, expected a whole number"),
    ),
    (
        "vox_offset-past-end.nii",
        Some("vox_offset = 100000, expected an offset within the data (416 bytes)"),
    ),
    (
        "vox_offset-past-end.nii.gz",
        Some("vox_offset = 100000, expected an offset within the data (416 bytes)"),
    ),
    (
        "vox_offset-huge.nii",
        Some("vox_offset = 1000000000000, expected a whole number"),
    ),
    (
        "ext-esize-odd.nii",
        Some("extension[0].esize = 20, expected a multiple of 16"),
    ),
    (
        "ext-esize-odd.nii.gz",
        Some("extension[0].esize = 20, expected a multiple of 16"),
    ),
    (
        "ext-esize-negative.nii",
        Some("extension[0].esize = -16, expected a multiple"),
    ),
    (
        "ext-esize-negative.nii.gz",
        Some("extension[0].esize = -16, expected a multiple"),
    ),
    (
        "ext-esize-past-offset.nii",
        Some(
            "extension[0].esize = 4096, expected a multiple of 16, at least 16 and at most the 32 bytes left before vox_offset = 384",
        ),
    ),
    (
        "ext-esize-past-offset.nii.gz",
        Some(
            "extension[0].esize = 4096, expected a multiple of 16, at least 16 and at most the 32 bytes left before vox_offset = 384",
        ),
    ),
    (
        "ext-esize-max.nii",
        Some("extension[1].esize = 2147483632, expected"),
    ),
    (
        "ext-esize-max.nii.gz",
        Some("extension[1].esize = 2147483632, expected"),
    ),
    (
        "pixdim-zero.nii",
        Some("pixdim[1] = 0, expected a positive spacing"),
    ),
    (
        "pixdim-negative.nii",
        Some("pixdim[2] = -1.5, expected a positive spacing"),
    ),
    (
        "pixdim-nan.nii",
        Some("pixdim[3] = NaN, expected a positive spacing"),
    ),
    (
        "pixdim-inf.nii",
        Some("pixdim[1] = inf, expected a positive spacing"),
    ),
    (
        "qfac-half.nii",
        Some("pixdim[0] (qfac) = 0.5, expected -1 or 1"),
    ),
    (
        "qfac-minus-two.nii",
        Some("pixdim[0] (qfac) = -2, expected -1 or 1"),
    ),
    (
        "qfac-nan.nii",
        Some("pixdim[0] (qfac) = NaN, expected -1 or 1"),
    ),
    ("qform_code.nii", Some("qform_code = 9, expected 0..5")),
    (
        "sform-nan.nii",
        Some("srow_x[0] = NaN, expected a finite value"),
    ),
    (
        "sform-singular.nii",
        Some("the sform (srow_x/y/z) is degenerate"),
    ),
    (
        "scl_slope-inf.nii",
        Some("scl_slope = inf, expected a finite slope"),
    ),
    (
        "scl_slope-neg-inf.nii",
        Some("scl_slope = -inf, expected a finite slope"),
    ),
    (
        "scl_inter-inf.nii",
        Some("scl_inter = inf, expected a finite intercept"),
    ),
    ("ok-scl_slope-nan.nii", None),
    ("gzip-crc.nii.gz", Some("corrupt gzip stream")),
    ("gzip-isize.nii.gz", Some("corrupt gzip stream")),
    (
        "gzip-truncated.nii.gz",
        Some("truncated: expected 64 bytes of voxel data"),
    ),
    ("gzip-no-trailer.nii.gz", Some("gzip trailer is missing")),
    ("gzip-garbage.nii.gz", Some("corrupt gzip stream")),
    (
        "not-gzip.nii.gz",
        Some("not gzip data, although the name ends in .gz"),
    ),
    (
        "gzip-bomb.nii.gz",
        Some("gzip stream continues past the voxel data: more than 16 MiB after vox_offset"),
    ),
    (
        "gzip-bomb-dims.nii.gz",
        Some("dim[1..4] = 2048×2048×2560×1: volume of 10737418240 voxels exceeds the limit"),
    ),
];

const MIB: u64 = 1 << 20;
const TIME_LIMIT: Duration = Duration::from_secs(1);

fn proc_status_kib(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/self/status"))
}

/// Resets the process's peak RSS to its current RSS.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("write /proc/self/clear_refs");
}

#[test]
fn malformed_corpus_is_refused_with_typed_errors_in_bounded_time_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/nifti-corpus/generate.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(dir.path())
        .output()
        .expect("python3 runs tests/nifti-corpus/generate.py (python3 is required)");
    assert!(
        out.status.success(),
        "generate.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let manifest = std::fs::read_to_string(dir.path().join("MANIFEST.tsv")).unwrap();
    let mut written: Vec<&str> = manifest
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    let mut expected: Vec<&str> = EXPECTED.iter().map(|(n, _)| *n).collect();
    written.sort_unstable();
    expected.sort_unstable();
    assert_eq!(
        written, expected,
        "the script and this table must list the same files"
    );

    // The peak-reset mechanism itself: a 64 MiB touched buffer shows up, then resets.
    reset_peak();
    let before = proc_status_kib("VmHWM:");
    let buf = vec![1u8; 64 << 20];
    assert!(
        proc_status_kib("VmHWM:") >= before + 60 * 1024,
        "VmHWM does not track"
    );
    drop(std::hint::black_box(buf));
    reset_peak();
    assert!(
        proc_status_kib("VmHWM:") < before + 32 * 1024,
        "clear_refs does not reset"
    );

    let limits = ReadLimits::default();
    let mut failures = Vec::new();
    println!(
        "{:<30} {:>9} {:>6} {:>9} {:>9}",
        "file", "bytes", "mode", "ms", "peak MiB"
    );
    for &(name, needle) in EXPECTED {
        let path = dir.path().join(name);
        let size = std::fs::metadata(&path).unwrap().len();
        for mode in ["path", "bytes"] {
            let bytes = (mode == "bytes").then(|| std::fs::read(&path).unwrap());
            reset_peak();
            let start = Instant::now();
            let result = std::panic::catch_unwind(|| match &bytes {
                Some(b) => read_nifti_bytes(b, name, &limits),
                None => read_nifti(&path, &limits),
            });
            let elapsed = start.elapsed();
            let peak = proc_status_kib("VmHWM:") * 1024;
            drop(bytes);
            println!(
                "{name:<30} {size:>9} {mode:>6} {:>9.2} {:>9.1}",
                elapsed.as_secs_f64() * 1e3,
                peak as f64 / MIB as f64
            );
            let label = format!("{name} ({mode})");
            if elapsed > TIME_LIMIT {
                failures.push(format!("{label}: took {elapsed:?}"));
            }
            if peak >= size + 64 * MIB {
                failures.push(format!("{label}: peak RSS {} MiB", peak / MIB));
            }
            match (result, needle) {
                (Err(_), _) => failures.push(format!("{label}: panicked")),
                (Ok(Ok(_)), None) => {}
                (Ok(Ok(img)), Some(n)) => failures.push(format!(
                    "{label}: read {:?}, expected an error with {n:?}",
                    img.volume.dims
                )),
                (Ok(Err(e)), None) => failures.push(format!("{label}: expected to read: {e}")),
                (Ok(Err(e)), Some(n)) => check_error(&e, &label, n, &path, name, &mut failures),
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

fn check_error(
    e: &NiftiError,
    label: &str,
    needle: &str,
    path: &Path,
    name: &str,
    failures: &mut Vec<String>,
) {
    let msg = e.to_string();
    let file = e.file();
    if file != name && Path::new(file) != path {
        failures.push(format!("{label}: error names {file:?}: {msg}"));
    }
    if !msg.starts_with(&format!("{file}: ")) {
        failures.push(format!(
            "{label}: message does not start with the file: {msg}"
        ));
    }
    if e.is_io() {
        failures.push(format!("{label}: an I/O error (would be retried): {msg}"));
    }
    if !msg.contains(needle) {
        failures.push(format!("{label}: expected {needle:?} in {msg:?}"));
    }
}
