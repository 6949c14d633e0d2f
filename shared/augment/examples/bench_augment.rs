//! Milliseconds per augmentation on one core, per patch size, plus patch sampling, the full
//! pipeline (every p = 1) and the producer's throughput.
//!
//! ```text
//! cargo run --release -p augment --example bench_augment [-- REPS]
//! cargo run --release -p augment --example bench_augment -- producer [BATCHES]
//! ```
//!
//! `producer` runs only the last part: the producer pool with 1 and 2 workers, batches of
//! 2 × 96³ patches cut from a 200 × 200 × 160 CT-sized case with the routine strategy (every
//! augmentation probability 0.5, as `segtune train` without `--strategy`), and prints
//! augmented patches per second of wall time and per CPU-second (user + system time of the
//! process, from /proc: the per-core rate, steadier than the wall time on a shared machine).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use augment::{
    Case, CaseIndex, DIMENSIONS, Magnitudes, Patch, PatchSampler, Pipeline, ProducerOptions,
    Transform, spawn_producer_with,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::num::NonZeroUsize;
use volume::{Geometry, Volume};

fn noise_patch(n: usize, rng: &mut ChaCha8Rng) -> Patch {
    let v = n * n * n;
    let image = (0..v).map(|_| rng.random::<f32>()).collect();
    let label = (0..v).map(|_| rng.random_range(0..3u8)).collect();
    Patch::new(image, label, [n; 3], 1)
}

/// (min, median) of `reps` timed runs of `f` on fresh copies of `base`, in ms (the copy is
/// not timed). The min is the figure to trust on a busy machine.
fn time(reps: usize, base: &Patch, mut f: impl FnMut(&mut Patch)) -> (f64, f64) {
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let mut p = base.clone();
            let start = Instant::now();
            f(&mut p);
            std::hint::black_box(&p);
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[0], t[t.len() / 2])
}

/// User + system CPU time of this process in seconds (Linux /proc; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: f64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    ticks / 100.0 // USER_HZ = 100 on Linux
}

/// A 200 × 200 × 160 case (a resampled abdominal CT's order of size) with a ball of label 1.
fn ct_sized_case() -> (Volume<f32>, Volume<u8>) {
    let dims = [200, 200, 160];
    let v = dims[0] * dims[1] * dims[2];
    let g = Geometry::identity([1.0; 3]);
    let image = Volume::new(
        (0..v).map(|i| (i % 251) as f32 / 251.0).collect(),
        dims,
        1,
        g,
    );
    let label: Vec<u8> = (0..v)
        .map(|i| {
            let (x, y, z) = (i % 200, (i / 200) % 200, i / 40_000);
            ((x as i64 - 120).pow(2) + (y as i64 - 90).pow(2) + (z as i64 - 70).pow(2) < 900) as u8
        })
        .collect();
    (image, Volume::new(label, dims, 1, g))
}

/// The routine strategy's pipeline: every augmentation with probability 0.5.
fn routine() -> Pipeline {
    let half: BTreeMap<String, f64> = DIMENSIONS.iter().map(|d| (d.to_string(), 0.5)).collect();
    Pipeline::from_strategy(&half, Magnitudes::default()).unwrap()
}

/// The producer pool with 1 and 2 workers: `batches` batches of 2 × 96³, routine strategy.
fn producer(cases: Arc<Vec<Case>>, batches: usize) {
    let s = PatchSampler::new([96; 3], 1.0 / 3.0).unwrap();
    println!(
        "producer: {batches} batches of 2 x 96^3 patches, routine strategy (every p = 0.5), \
         from one 200x200x160 case; {} cores available",
        augment::default_workers()
    );
    for workers in [1, 2] {
        let options = ProducerOptions {
            workers: NonZeroUsize::new(workers).unwrap(),
            ..ProducerOptions::default()
        };
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let rx = spawn_producer_with(cases.clone(), s, routine(), 2, batches, 7, options).unwrap();
        let patches: usize = rx.iter().map(|b| b.batch).sum();
        let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - c0);
        println!(
            "  {workers} worker(s): {patches} patches in {wall:.2} s wall, {cpu:.2} s CPU: \
             {:.2} patches/s, {:.2} patches/s per worker, {:.2} patches per CPU-second",
            patches as f64 / wall,
            patches as f64 / wall / workers as f64,
            patches as f64 / cpu,
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("producer") {
        let batches = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20);
        let (image, label) = ct_sized_case();
        let index = CaseIndex::new(&label);
        producer(Arc::new(vec![(image, label, index)]), batches);
        return;
    }
    let reps: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(15);
    let m = Magnitudes::default();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    println!("augment bench: {reps} runs, one thread, ms per call (min / median)");
    println!("{:<28} {:>15} {:>15}", "", "64^3", "96^3");
    let patches = [noise_patch(64, &mut rng), noise_patch(96, &mut rng)];

    let row = |name: &str, f: &mut dyn FnMut(&mut Patch, &mut ChaCha8Rng)| {
        let mut cells = Vec::new();
        for base in &patches {
            let mut r = ChaCha8Rng::seed_from_u64(1);
            cells.push(time(reps, base, |p| f(p, &mut r)));
        }
        let cell = |(min, med): (f64, f64)| format!("{min:.2} / {med:.2}");
        println!("{name:<28} {:>15} {:>15}", cell(cells[0]), cell(cells[1]));
    };

    for d in DIMENSIONS {
        let t = Transform::for_dimension(d, &m).unwrap();
        row(d, &mut |p, r| {
            let params = t.randomize(r, p.dims);
            t.apply(&params, p);
        });
    }
    // Blur at the top of the smoothing range, for the worst case of one pass set.
    let smooth_max = Transform::Smooth(augment::smooth::Smooth { sigma: [1.5, 1.5] });
    row("smooth sigma=1.5 (worst)", &mut |p, r| {
        let params = smooth_max.randomize(r, p.dims);
        smooth_max.apply(&params, p);
    });
    for (axis, sigma) in [
        ("x", [1.5, 0.0, 0.0]),
        ("y", [0.0, 1.5, 0.0]),
        ("z", [0.0, 0.0, 1.5]),
    ] {
        row(&format!("blur one pass {axis}, sigma=1.5"), &mut |p, _| {
            augment::gaussian_blur(&mut p.image, p.dims, sigma);
        });
    }
    let all: BTreeMap<String, f64> = DIMENSIONS.iter().map(|d| (d.to_string(), 1.0)).collect();
    let full = Pipeline::from_strategy(&all, m).unwrap();
    row("pipeline, every p = 1", &mut |p, r| {
        full.apply(p, r);
    });
    let half = routine();
    row("pipeline, every p = 0.5", &mut |p, r| {
        half.apply(p, r);
    });

    // Patch sampling from a CT-sized case.
    let (image, label) = ct_sized_case();
    let t0 = Instant::now();
    let index = CaseIndex::new(&label);
    let index_ms = t0.elapsed().as_secs_f64() * 1e3;
    println!("CaseIndex::new on 200x200x160: {index_ms:.1} ms");
    for n in [64, 96] {
        let s = PatchSampler::new([n; 3], 1.0 / 3.0).unwrap();
        let mut r = ChaCha8Rng::seed_from_u64(2);
        let t0 = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(s.sample(&image, &label, &index, &mut r));
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3 / reps as f64;
        println!("PatchSampler::sample {n}^3: {ms:.2} ms");
    }
    producer(Arc::new(vec![(image, label, index)]), 10);
}
