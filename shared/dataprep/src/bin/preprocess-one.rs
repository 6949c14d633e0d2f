//! Benchmark driver: read → resample → normalize → write for one image/label pair, the same
//! code path as the preprocessor, timed per phase. Used by `scripts/bench-preprocess`.
//!
//! Usage: preprocess-one IMAGE LABEL OUT_DIR ct|mr [REPEATS]
//! Prints one JSON line per repeat, then the peak RSS.

use std::{error::Error, path::Path, process::ExitCode, time::Instant};

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
    if args.len() < 5 {
        return Err("usage: preprocess-one IMAGE LABEL OUT_DIR ct|mr [REPEATS]".into());
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
    std::fs::create_dir_all(out)?;
    let limits = volume::ReadLimits::default();
    for _ in 0..repeats {
        let t0 = Instant::now();
        let img = volume::read_nifti(image, &limits)?.volume;
        let lab = volume::read_nifti(label, &limits)?.volume.map(|v| v as u8);
        let t_read = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let window = if mr { None } else { Some([-1000.0, 1000.0]) };
        let channels = img.channels;
        let p = dataprep::process_volumes(
            img,
            lab,
            [1.0; 3],
            &vec![window; channels],
            [5.0, 95.0],
            256,
        )?;
        let t_process = t1.elapsed().as_secs_f64();
        let t2 = Instant::now();
        std::fs::write(out.join("image.nii"), &p.image_nii)?;
        std::fs::write(out.join("label.nii"), &p.label_nii)?;
        let t_write = t2.elapsed().as_secs_f64();
        println!(
            "{{\"read\": {t_read:.4}, \"process\": {t_process:.4}, \"write\": {t_write:.4}, \
             \"total\": {:.4}, \"out_shape\": {:?}}}",
            t0.elapsed().as_secs_f64(),
            p.shape
        );
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("0");
    println!("{{\"peak_rss_kb\": {hwm}}}");
    Ok(())
}
