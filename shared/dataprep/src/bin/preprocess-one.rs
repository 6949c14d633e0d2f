//! Benchmark driver: read → resample → normalize → write for one image/label pair, the same
//! code path as the preprocessor, timed per phase. Used by `scripts/bench-preprocess`.
//!
//! Usage: preprocess-one IMAGE LABEL OUT_DIR ct|mr [REPEATS [--in-memory|--store]]
//! Without a mode the output goes to files in OUT_DIR; `--in-memory` encodes into buffers
//! first; `--store` streams into a file store at OUT_DIR/store through the preprocessor's
//! upload path (`process_volumes_to_store`, multipart uploads on a small tokio runtime).
//! (`SEGTUNE_SIMD` lowers the SIMD level; each line names the one used.)
//! Prints one JSON line per repeat, then the peak RSS.

use std::{error::Error, fs::File, io::BufWriter, path::Path, process::ExitCode, time::Instant};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("preprocess-one: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Its errors name their file already (NIfTI errors start with the path).
fn run() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    const USAGE: &str =
        "usage: preprocess-one IMAGE LABEL OUT_DIR ct|mr [REPEATS [--in-memory|--store]]";
    if args.len() < 5 {
        return Err(USAGE.into());
    }
    let (image, label, out) = (
        Path::new(&args[1]),
        Path::new(&args[2]),
        Path::new(&args[3]),
    );
    let mr = match args[4].as_str() {
        "ct" => false,
        "mr" => true,
        m => return Err(format!("modality {m:?}: expected ct or mr").into()),
    };
    let repeats: usize = args.get(5).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let mode = match args.get(6).map(String::as_str) {
        None => Mode::Files,
        Some("--in-memory") => Mode::InMemory,
        Some("--store") => Mode::Store,
        Some(a) => return Err(format!("unknown argument {a:?}; {USAGE}").into()),
    };
    simd::configure_from_env()?;
    std::fs::create_dir_all(out)?;
    // The store path's runtime: one worker for the part uploads (the local store writes
    // them on its blocking pool); this thread blocks on it as a spawn_blocking thread would.
    let (runtime, store) = if mode == Mode::Store {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let store = storage::open(out.join("store").to_str().ok_or("OUT_DIR is not UTF-8")?)?;
        (Some(rt), Some(store))
    } else {
        (None, None)
    };
    let limits = volume::ReadLimits::default();
    for _ in 0..repeats {
        let t0 = Instant::now();
        let img = volume::read_nifti(image, &limits)?.volume;
        let lab = volume::nifti::read_nifti_labels(label, &limits)?.volume;
        let t_read = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let window = if mr { None } else { Some([-1000.0, 1000.0]) };
        let channels = img.channels;
        let windows = vec![window; channels];
        // Files are written as the slabs are computed (the inputs are freed on the way), so
        // resample + normalize + write are one phase here; `--in-memory` encodes into
        // buffers first, as the preprocessor did before it streamed; `--store` streams into
        // the store as the preprocessor does.
        let shape = if mode == Mode::InMemory {
            let p = dataprep::process_volumes(img, lab, [1.0; 3], &windows, [5.0, 95.0], 256)?;
            std::fs::write(out.join("image.nii"), &p.image_nii)?;
            std::fs::write(out.join("label.nii"), &p.label_nii)?;
            p.shape
        } else if let (Some(rt), Some(store)) = (&runtime, &store) {
            let stored = dataprep::process_volumes_to_store(
                img,
                lab,
                [1.0; 3],
                &windows,
                [5.0, 95.0],
                256,
                store,
                ["case/image.nii", "case/label.nii"],
                rt.handle().clone(),
            )?;
            stored.info.shape
        } else {
            let file = |name: &str| -> Result<_, Box<dyn Error>> {
                Ok(BufWriter::with_capacity(
                    1 << 20,
                    File::create(out.join(name))?,
                ))
            };
            let (info, image_w, label_w) = dataprep::process_volumes_into(
                img,
                lab,
                [1.0; 3],
                &windows,
                [5.0, 95.0],
                256,
                file("image.nii")?,
                file("label.nii")?,
            )?;
            for w in [image_w, label_w] {
                w.into_inner().map_err(|e| e.into_error())?;
            }
            info.shape
        };
        let t_process = t1.elapsed().as_secs_f64();
        println!(
            "{{\"read\": {t_read:.4}, \"process\": {t_process:.4}, \"write\": 0, \
             \"total\": {:.4}, \"out_shape\": {shape:?}, \"simd\": \"{}\"}}",
            t0.elapsed().as_secs_f64(),
            simd::level()
        );
    }
    drop(runtime);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("0");
    println!("{{\"peak_rss_kb\": {hwm}}}");
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Files,
    InMemory,
    Store,
}
