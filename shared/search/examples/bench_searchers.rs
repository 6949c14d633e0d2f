//! segtune's side of `scripts/bench-searchers` (see there and the crate README): writes the
//! benchmark objectives to `OUT/objectives.json` (what the Optuna side reads), runs every
//! searcher on them and writes `OUT/segtune.json`.
//!
//! ```text
//! cargo run --release -p search --example bench_searchers -- --out DIR [--seeds 10]
//!     [--jobs 200] [--parallel 4] [--kinds tpe,cmaes,...]
//! ```
//!
//! Objectives over [0, 1]^8, all in a Dice-like range, each drawn anew per seed:
//! - `quadratic`: 1 − mean_k (u_k − c_k)², c in [0.1, 0.9]^8 (the learning test's).
//! - `ellipsoid`: 1 − (1/K) Σ_i λ_i z_i², z = R (u − c), R a random rotation, λ log-spaced
//!   from 0.1 to 10 (condition 100, every dimension coupled), c in [0.2, 0.8]^8.
//! - `bumps`: 0.3 + max_j h_j exp(−‖u − c_j‖² / (2 w_j²)), four Gaussian bumps (local
//!   optima), heights 0.65, 0.55, 0.5, 0.45, widths 0.25 (the highest, narrowest) and 0.35,
//!   centres in [0.15, 0.85]^8; the best is 0.95 at c_0.
//! - `plateau`: 0.6 + 0.05 (1 − ‖u − c‖²/K) + 0.3 max(0, 1 − ‖u − c‖²/r²)², r = 0.55: a
//!   nearly flat plateau (it falls by 0.05 over the whole cube, about the noise) with a
//!   narrow good region around c in [0.2, 0.8]^8 (about 3 % of the cube's volume, the top
//!   0.1 of it in 0.004 %); the best is 0.95 at c.
//!
//! Each run: `jobs` rewards, `parallel` jobs in flight, a random one of them finishing next
//! (seeded), reward = value + N(0, noise²). Per run the noise-free value of the final
//! incumbent (`best()`); per searcher the time of observe + propose per finished job
//! ("ask+tell") and of observe + save + propose + save (what the controller does per reward,
//! its store writes aside). Times are the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`, as
//! Python's `time.thread_time_ns` on the Optuna side), so a loaded machine's waits for a core
//! do not count; each reading costs a system call (~0.1–0.3 µs), included.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use protocol::{Dimension, Scale};
use search::{KINDS, Proposal, Rng, SearchSpace, build};

const DIMS: usize = 8;
const NOISES: [f64; 2] = [0.01, 0.03];

enum Objective {
    Quadratic {
        center: Vec<f64>,
    },
    Ellipsoid {
        center: Vec<f64>,
        rotation: Vec<Vec<f64>>,
        scales: Vec<f64>,
    },
    Bumps {
        base: f64,
        centers: Vec<Vec<f64>>,
        heights: Vec<f64>,
        widths: Vec<f64>,
    },
    Plateau {
        center: Vec<f64>,
        base: f64,
        tilt: f64,
        height: f64,
        radius: f64,
    },
}

const NAMES: [&str; 4] = ["quadratic", "ellipsoid", "bumps", "plateau"];

fn point(rng: &mut Rng, lo: f64, hi: f64) -> Vec<f64> {
    (0..DIMS).map(|_| lo + (hi - lo) * rng.uniform()).collect()
}

fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

impl Objective {
    /// Objective `index` of [`NAMES`] for `seed`.
    fn draw(index: usize, seed: u64) -> Self {
        let mut rng = Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9) ^ (index as u64 + 1));
        match index {
            0 => Objective::Quadratic {
                center: point(&mut rng, 0.1, 0.9),
            },
            1 => {
                // Gram–Schmidt on a Gaussian matrix: a uniformly random rotation.
                let mut rotation: Vec<Vec<f64>> = vec![];
                while rotation.len() < DIMS {
                    let mut v: Vec<f64> = (0..DIMS).map(|_| rng.normal()).collect();
                    for r in &rotation {
                        let dot: f64 = v.iter().zip(r).map(|(a, b)| a * b).sum();
                        v.iter_mut().zip(r).for_each(|(a, b)| *a -= dot * b);
                    }
                    let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
                    if norm > 1e-6 {
                        rotation.push(v.into_iter().map(|a| a / norm).collect());
                    }
                }
                let scales = (0..DIMS)
                    .map(|i| 10f64.powf(2.0 * i as f64 / (DIMS - 1) as f64 - 1.0))
                    .collect();
                Objective::Ellipsoid {
                    center: point(&mut rng, 0.2, 0.8),
                    rotation,
                    scales,
                }
            }
            2 => Objective::Bumps {
                base: 0.3,
                centers: (0..4).map(|_| point(&mut rng, 0.15, 0.85)).collect(),
                heights: vec![0.65, 0.55, 0.5, 0.45],
                widths: vec![0.25, 0.35, 0.35, 0.35],
            },
            _ => Objective::Plateau {
                center: point(&mut rng, 0.2, 0.8),
                base: 0.6,
                tilt: 0.05,
                height: 0.3,
                radius: 0.55,
            },
        }
    }

    fn value(&self, u: &[f64]) -> f64 {
        let k = u.len() as f64;
        match self {
            Objective::Quadratic { center } => 1.0 - sq_dist(u, center) / k,
            Objective::Ellipsoid {
                center,
                rotation,
                scales,
            } => {
                let d: Vec<f64> = u.iter().zip(center).map(|(a, b)| a - b).collect();
                let s: f64 = rotation
                    .iter()
                    .zip(scales)
                    .map(|(row, l)| {
                        let z: f64 = row.iter().zip(&d).map(|(a, b)| a * b).sum();
                        l * z * z
                    })
                    .sum();
                1.0 - s / k
            }
            Objective::Bumps {
                base,
                centers,
                heights,
                widths,
            } => {
                let mut top = 0.0f64;
                for ((c, h), w) in centers.iter().zip(heights).zip(widths) {
                    top = top.max(h * (-sq_dist(u, c) / (2.0 * w * w)).exp());
                }
                base + top
            }
            Objective::Plateau {
                center,
                base,
                tilt,
                height,
                radius,
            } => {
                let d2 = sq_dist(u, center);
                let inside = (1.0 - d2 / (radius * radius)).max(0.0);
                base + tilt * (1.0 - d2 / k) + height * inside * inside
            }
        }
    }

    /// The point where the value is highest.
    fn optimum(&self) -> &[f64] {
        match self {
            Objective::Quadratic { center }
            | Objective::Ellipsoid { center, .. }
            | Objective::Plateau { center, .. } => center,
            Objective::Bumps { centers, .. } => &centers[0],
        }
    }

    fn json(&self) -> String {
        match self {
            Objective::Quadratic { center } => {
                format!(r#""kind": "quadratic", "center": {}"#, arr(center))
            }
            Objective::Ellipsoid {
                center,
                rotation,
                scales,
            } => format!(
                r#""kind": "ellipsoid", "center": {}, "rotation": [{}], "scales": {}"#,
                arr(center),
                rotation
                    .iter()
                    .map(|r| arr(r))
                    .collect::<Vec<_>>()
                    .join(", "),
                arr(scales)
            ),
            Objective::Bumps {
                base,
                centers,
                heights,
                widths,
            } => format!(
                r#""kind": "bumps", "base": {base:?}, "centers": [{}], "heights": {}, "widths": {}"#,
                centers
                    .iter()
                    .map(|r| arr(r))
                    .collect::<Vec<_>>()
                    .join(", "),
                arr(heights),
                arr(widths)
            ),
            Objective::Plateau {
                center,
                base,
                tilt,
                height,
                radius,
            } => format!(
                r#""kind": "plateau", "center": {}, "base": {base:?}, "tilt": {tilt:?}, "height": {height:?}, "radius": {radius:?}"#,
                arr(center)
            ),
        }
    }
}

/// A JSON array of f64 (`{:?}` prints the shortest representation that reads back exactly).
fn arr(xs: &[f64]) -> String {
    let items: Vec<String> = xs.iter().map(|x| format!("{x:?}")).collect();
    format!("[{}]", items.join(", "))
}

fn space() -> SearchSpace {
    SearchSpace::new(
        (0..DIMS)
            .map(|i| Dimension {
                name: format!("x{i}"),
                min: 0.0,
                max: 1.0,
                scale: Scale::Linear,
            })
            .collect(),
    )
    .expect("a valid space")
}

/// The thread's CPU time in µs.
#[cfg(target_os = "linux")]
fn cpu_us() -> f64 {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    unsafe extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: glibc's clock_gettime writes one timespec (two i64 on 64-bit Linux) to `ts`.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 * 1e-3
}

/// Elsewhere: wall time since the first call.
#[cfg(not(target_os = "linux"))]
fn cpu_us() -> f64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1e6
}

struct Timings {
    ask_tell: Vec<f64>,
    with_save: Vec<f64>,
}

/// One study; returns the noise-free value of the final incumbent.
fn run(
    kind: &str,
    objective: &Objective,
    noise: f64,
    seed: u64,
    jobs: usize,
    parallel: usize,
    timings: &mut Timings,
) -> f64 {
    let mut s = build(kind, &space(), &BTreeMap::new(), seed).expect("a known searcher");
    let salt = (noise * 1000.0).round() as u64;
    let mut noise_rng = Rng::seed_from_u64(seed ^ (salt << 32) ^ 0x0B1E_C71F);
    let mut order = Rng::seed_from_u64(seed ^ (salt << 32) ^ 0x0D0E_0D0E);
    let mut out: Vec<Proposal> = (0..parallel.min(jobs)).map(|_| s.propose()).collect();
    let mut issued = out.len();
    for _ in 0..jobs {
        let p = out.swap_remove(order.below(out.len()));
        let reward = objective.value(&p.unit) + noise * noise_rng.normal();
        if issued < jobs {
            let t0 = cpu_us();
            s.observe(&p, reward).expect("observe");
            let t1 = cpu_us();
            let saved = s.save();
            let t2 = cpu_us();
            let next = s.propose();
            let t3 = cpu_us();
            let saved_again = s.save();
            let t4 = cpu_us();
            std::hint::black_box((saved, saved_again));
            timings.ask_tell.push((t1 - t0) + (t3 - t2));
            timings.with_save.push(t4 - t0);
            out.push(next);
            issued += 1;
        } else {
            s.observe(&p, reward).expect("observe");
        }
    }
    let (best, _) = s.best().expect("rewards observed");
    objective.value(&best)
}

fn percentile(xs: &mut [f64], q: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    let i = ((xs.len() - 1) as f64 * q).round() as usize;
    xs[i]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut out_dir = None;
    let (mut seeds, mut jobs, mut parallel) = (10u64, 200usize, 4usize);
    let mut kinds: Vec<String> = KINDS.iter().map(|k| k.to_string()).collect();
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--out" => out_dir = Some(std::path::PathBuf::from(value())),
            "--seeds" => seeds = value().parse().expect("--seeds N"),
            "--jobs" => jobs = value().parse().expect("--jobs N"),
            "--parallel" => parallel = value().parse().expect("--parallel N"),
            "--kinds" => kinds = value().split(',').map(str::to_owned).collect(),
            _ => panic!("unknown argument {a} (see the example's doc comment)"),
        }
    }
    let out_dir = out_dir.expect("--out DIR");
    std::fs::create_dir_all(&out_dir).expect("create --out");

    // The objectives, with probe points the Python side checks its evaluation against.
    let mut defs = String::new();
    let mut probe_rng = Rng::seed_from_u64(7);
    for seed in 0..seeds {
        for (i, name) in NAMES.iter().enumerate() {
            let o = Objective::draw(i, seed);
            let mut probes = vec![o.optimum().to_vec()];
            probes.extend((0..3).map(|_| point(&mut probe_rng, 0.0, 1.0)));
            let probes: Vec<String> = probes
                .iter()
                .map(|u| format!(r#"{{"u": {}, "value": {:?}}}"#, arr(u), o.value(u)))
                .collect();
            let sep = if defs.is_empty() { "" } else { ",\n" };
            write!(
                defs,
                r#"{sep}  {{"name": "{name}", "seed": {seed}, {}, "probes": [{}]}}"#,
                o.json(),
                probes.join(", ")
            )
            .expect("write to a String");
        }
    }
    let objectives_json = format!(
        "{{\"dims\": {DIMS}, \"jobs\": {jobs}, \"parallel\": {parallel}, \"seeds\": {seeds}, \
         \"noises\": {}, \"objectives\": [\n{defs}\n]}}\n",
        arr(&NOISES)
    );
    std::fs::write(out_dir.join("objectives.json"), objectives_json).expect("write objectives");

    let mut runs = vec![];
    let mut timing_rows = vec![];
    for kind in &kinds {
        let started = Instant::now();
        let mut timings = Timings {
            ask_tell: vec![],
            with_save: vec![],
        };
        for (i, name) in NAMES.iter().enumerate() {
            for seed in 0..seeds {
                let o = Objective::draw(i, seed);
                for noise in NOISES {
                    let v = run(kind, &o, noise, seed, jobs, parallel, &mut timings);
                    runs.push(format!(
                        r#"{{"searcher": "{kind}", "objective": "{name}", "noise": {noise:?}, "seed": {seed}, "value": {v:?}}}"#
                    ));
                }
            }
        }
        let (a50, a99) = (
            percentile(&mut timings.ask_tell, 0.5),
            percentile(&mut timings.ask_tell, 0.99),
        );
        let (s50, s99) = (
            percentile(&mut timings.with_save, 0.5),
            percentile(&mut timings.with_save, 0.99),
        );
        eprintln!(
            "{kind}: {:.1}s; ask+tell p50 {a50:.1} µs, p99 {a99:.1} µs; with save p50 {s50:.1} µs, p99 {s99:.1} µs",
            started.elapsed().as_secs_f64()
        );
        timing_rows.push(format!(
            r#""{kind}": {{"ask_tell_us": [{a50:?}, {a99:?}], "with_save_us": [{s50:?}, {s99:?}]}}"#
        ));
    }
    let results = format!(
        "{{\"runs\": [\n  {}\n], \"timings\": {{{}}}}}\n",
        runs.join(",\n  "),
        timing_rows.join(", ")
    );
    std::fs::write(out_dir.join("segtune.json"), results).expect("write results");
}
