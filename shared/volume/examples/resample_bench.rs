//! Times resampling and normalization of a 512×512×120 volume at 0.7×0.7×2.5 mm → 1 mm
//! (358×358×300), the case benchmarked against SimpleITK.
//!
//! `RAYON_NUM_THREADS=2 cargo run --release -p volume --example resample_bench`
//!
//! Prints the best wall time of several runs and the process CPU time per run (user + system,
//! from /proc, Linux only), which stays meaningful on a loaded machine.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use volume::normalize::{normalize_window, percentiles};
use volume::resample::{resample_image, resample_label};
use volume::{Geometry, Volume};

/// User + system CPU time of this process so far, when /proc is there.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10)) // USER_HZ is 100 on Linux
}

fn bench<T>(name: &str, runs: u32, mut f: impl FnMut() -> T) {
    let mut best = Duration::MAX;
    let cpu0 = cpu_time();
    for _ in 0..runs {
        let t = Instant::now();
        std::hint::black_box(f());
        best = best.min(t.elapsed());
    }
    let cpu = match (cpu0, cpu_time()) {
        (Some(a), Some(b)) => format!("{:.0?} CPU/run", (b - a) / runs),
        _ => String::new(),
    };
    println!("{name:<28} best {best:>10.1?}   {cpu}");
}

fn main() {
    let dims = [512, 512, 120];
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let n = dims.iter().product::<usize>();
    let data: Vec<f32> = (0..n)
        .map(|_| rng.random_range(-1024.0f32..3000.0))
        .collect();
    let image = Volume::new(data, dims, 1, Geometry::identity([0.7, 0.7, 2.5]));
    let label = image.map(|v| (v > 1500.0) as u8 + (v > 2500.0) as u8);
    println!("rayon threads: {}", rayon::current_num_threads());
    let runs = 10;
    bench("resample_image → 1 mm", runs, || {
        resample_image(&image, [1.0; 3])
    });
    if std::env::var_os("BENCH_PARTS").is_some() {
        bench("  in-plane only", runs, || {
            resample_image(&image, [1.0, 1.0, 2.5])
        });
        bench("  z only", runs, || resample_image(&image, [0.7, 0.7, 1.0]));
        bench("  alloc 38 M zeroed", runs, || {
            let mut v = vec![0.0f32; 358 * 358 * 300];
            v.iter_mut().step_by(1024).for_each(|x| *x = 1.0);
            v
        });
    }
    bench("resample_label → 1 mm", runs, || {
        resample_label(&label, [1.0; 3])
    });
    let out = resample_image(&image, [1.0; 3]);
    assert_eq!(out.dims, [358, 358, 300]);
    bench("percentiles 5, 95 (38 M)", runs, || {
        percentiles(&out.data, &[5.0, 95.0])
    });
    if std::env::var_os("BENCH_PARTS").is_some() {
        use volume::normalize::PercentileSketch;
        let mut sketch = PercentileSketch::new();
        bench("  sketch pass 1", runs, || {
            let mut s = PercentileSketch::new();
            s.add(&out.data);
            sketch = s;
        });
        bench("  sketch pass 2", runs, || {
            let mut r = sketch.refine_plan(&[5.0, 95.0]);
            r.add(&out.data);
            r
        });
        bench("  sum (bandwidth)", runs, || out.data.iter().sum::<f32>());
    }
    let mut d = out.data.clone();
    bench("normalize_window (38 M)", runs, || {
        d.copy_from_slice(&out.data);
        normalize_window(&mut d, -1000.0, 1000.0)
    });
}
