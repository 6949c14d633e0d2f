//! Prints median wall times of the hot paths, to compare with the PyTorch twin
//! `benches/torch_reference.py` (same shapes, same network, f32, same machine).
//!
//! `cargo bench -p segmodel --bench bench_unet -- [conv|unet|ops|all] [reps]`
//! `… -- train [reps]`: the batch-2 training step alone;
//! `… -- sliding DxHxW [reps]`: sliding-window inference over a synthetic CT-like volume.
//! `train` and `sliding` end with one `RESULT {json}` line (median, voxels, peak RSS) that
//! `scripts/bench-train` collects; run each in its own process so the peak RSS is its own.
//! Set `RAYON_NUM_THREADS` to fix the thread count. `train` and `sliding` run on
//! `SEGMODEL_BENCH_DEVICE` (`cpu`, the default, or `cuda` in a `--features cuda` build, as
//! `scripts/device-check.sh` runs it); `SEGMODEL_BENCH_PATCH` sets the training patch edge
//! (default 64; the GPU comparison `scripts/device-check.sh` runs uses 96).

// The crate's clippy.toml routes its own host reads through a counter; benches read freely.
#![allow(clippy::disallowed_methods)]

use candle_core::{DType, Device, Module, Result, Tensor, Var};
use segmodel::infer::{SlidingWindow, sliding_window_predict};
use segmodel::{SegTrainer, TrainConfig, UNetConfig, init_compute_threads, ops};
use std::time::Instant;
use volume::{Geometry, Volume};

// As the services: candle allocates a fresh buffer per op, and glibc's mmap/munmap of the
// large ones halves conv fwd+bwd speed (`docs/conv3d-cpu.md`, pitfall 6).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A `/proc/self/status` memory field in MiB (`VmHWM`: peak RSS, `VmRSS`: now; 0 where
/// /proc is missing).
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// User + system CPU time of this process in ms (Linux; 0 elsewhere), from /proc.
fn cpu_ms() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<f64>() * 10.0 // USER_HZ = 100 on Linux
}

/// Median wall time in ms over `reps` runs after `warmup` runs, and the mean CPU time
/// per run (all threads; on a busy machine it moves less than the wall time).
fn median_ms(reps: usize, warmup: usize, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
    for _ in 0..warmup {
        f()?;
    }
    let mut t = Vec::with_capacity(reps);
    let cpu0 = cpu_ms();
    for _ in 0..reps {
        let start = Instant::now();
        f()?;
        t.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let cpu = (cpu_ms() - cpu0) / reps as f64;
    t.sort_by(f64::total_cmp);
    Ok(Timing {
        wall: t[t.len() / 2],
        cpu,
    })
}

struct Timing {
    wall: f64,
    cpu: f64,
}

impl std::fmt::Display for Timing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:7.1} ms (cpu {:7.1} ms)", self.wall, self.cpu)
    }
}

fn conv(n: usize, reps: usize) -> Result<()> {
    let dev = Device::Cpu;
    let (c, s) = (16, 64);
    let x = Var::randn(0f32, 1.0, (n, c, s, s, s), &dev)?;
    let w = Var::randn(0f32, 0.1, (c, c, 3, 3, 3), &dev)?;
    let b = Var::zeros(c, DType::F32, &dev)?;
    let g = Tensor::randn(0f32, 1.0, (n, c, s, s, s), &dev)?;
    let xd = x.as_tensor().detach();
    let fwd = median_ms(reps, 1, || {
        ops::conv3d(&xd, &w, Some(&b), 1, 1)?;
        Ok(())
    })?;
    let fb = median_ms(reps, 1, || {
        let y = ops::conv3d(&x, &w, Some(&b), 1, 1)?;
        (y * &g)?.sum_all()?.backward()?;
        Ok(())
    })?;
    println!("conv3d [{n},16,64,64,64] -> 16, k3 p1 + bias: fwd {fwd}   fwd+bwd (dx, dW, db) {fb}");
    Ok(())
}

/// The benchmarked network: 1 input channel, 2 classes, 16-32-64-128 (3 downsamplings).
fn unet_config() -> UNetConfig {
    UNetConfig {
        in_channels: 1,
        num_classes: 2,
        channels: vec![16, 32, 64, 128],
        ..Default::default()
    }
}

fn unet(batch: usize, reps: usize) -> Result<()> {
    let dev = Device::Cpu;
    let mut t = SegTrainer::new(&unet_config(), TrainConfig::default(), 0, &dev)?;
    let x = Tensor::randn(0f32, 1.0, (batch, 1, 64, 64, 64), &dev)?;
    let y = (Tensor::rand(0f32, 1.0, (batch, 64, 64, 64), &dev)?.ge(0.8)?).to_dtype(DType::U8)?;
    let fwd = median_ms(reps, 1, || {
        t.model().forward(&x)?;
        Ok(())
    })?;
    let step = median_ms(reps, 2, || {
        t.step(&x, &y)?;
        Ok(())
    })?;
    println!(
        "U-Net 16-32-64-128, input [{batch},1,64,64,64]: forward {fwd}   train step (fwd+Dice+bwd+Adam) {step}"
    );
    Ok(())
}

/// The non-conv ops at the U-Net's finest level (batch 2, 16 channels, 64³).
fn op_costs(reps: usize) -> Result<()> {
    let dev = Device::Cpu;
    let shape = (2, 16, 64, 64, 64);
    let x = Var::randn(0f32, 1.0, shape, &dev)?;
    let gamma = Var::ones(16, DType::F32, &dev)?;
    let beta = Var::zeros(16, DType::F32, &dev)?;
    let fb = |name: &str, f: &dyn Fn() -> Result<Tensor>| -> Result<()> {
        let fwd = median_ms(reps, 1, || f().map(|_| ()))?;
        let both = median_ms(reps, 1, || {
            f()?.sum_all()?.backward()?;
            Ok(())
        })?;
        println!("{name:<44} fwd {fwd}   fwd+bwd {both}");
        Ok(())
    };
    fb("identity (sum_all + backward baseline)", &|| {
        Ok(x.as_tensor().clone())
    })?;
    fb("instance norm + ReLU [2,16,64³]", &|| {
        ops::instance_norm3d(&x, &gamma, &beta, 1e-5, ops::Activation::Relu)
    })?;
    fb("max-pool 2x [2,16,64³]", &|| ops::max_pool3d_2x(&x))?;
    let xs = Var::randn(0f32, 1.0, (2, 32, 32, 32, 32), &dev)?;
    let wu = Var::randn(0f32, 0.1, (32, 16, 2, 2, 2), &dev)?;
    let bu = Var::zeros(16, DType::F32, &dev)?;
    fb("transposed conv 2x [2,32,32³] -> 16", &|| {
        ops::conv_transpose3d_2x(&xs, &wu, Some(&bu))
    })?;
    fb("cat [2,16,64³] x2 (skip concat)", &|| {
        Tensor::cat(&[x.as_tensor(), x.as_tensor()], 1)
    })?;
    let wh = Var::randn(0f32, 0.1, (2, 16, 1, 1, 1), &dev)?;
    let bh = Var::zeros(2, DType::F32, &dev)?;
    fb("head conv 1x1 [2,16,64³] -> 2", &|| {
        ops::conv3d(&x, &wh, Some(&bh), 0, 1)
    })?;
    let logits = Var::randn(0f32, 1.0, (2, 2, 64, 64, 64), &dev)?;
    let labels = Tensor::rand(0f32, 1.0, (2, 64, 64, 64), &dev)?
        .ge(0.8)?
        .to_dtype(DType::U8)?;
    let cfg = segmodel::DiceLossConfig::default();
    fb("soft Dice loss [2,2,64³]", &|| {
        segmodel::soft_dice_loss(&logits, &labels, &cfg)
    })?;
    Ok(())
}

/// The device of `train` and `sliding`: `SEGMODEL_BENCH_DEVICE` (cpu or cuda).
fn bench_device() -> Result<Device> {
    match std::env::var("SEGMODEL_BENCH_DEVICE").as_deref() {
        Err(_) | Ok("cpu") => Ok(Device::Cpu),
        Ok("cuda") => Device::new_cuda(0),
        Ok(other) => candle_core::bail!("SEGMODEL_BENCH_DEVICE={other:?}: expected cpu or cuda"),
    }
}

fn device_name(dev: &Device) -> &'static str {
    if dev.is_cuda() { "cuda" } else { "cpu" }
}

/// The batch-2 training step (forward, soft Dice, backward, Adam) on 2×1×64³
/// (`SEGMODEL_BENCH_PATCH` changes the edge).
fn train(reps: usize) -> Result<()> {
    let dev = bench_device()?;
    let s = match std::env::var("SEGMODEL_BENCH_PATCH") {
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|&p| p >= 8 && p.is_multiple_of(8))
            .ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "SEGMODEL_BENCH_PATCH={v:?}: expected a multiple of 8"
                ))
            })?,
        Err(_) => 64,
    };
    let batch = 2;
    let mut t = SegTrainer::new(&unet_config(), TrainConfig::default(), 0, &dev)?;
    let x = Tensor::randn(0f32, 1.0, (batch, 1, s, s, s), &dev)?;
    let y = (Tensor::rand(0f32, 1.0, (batch, s, s, s), &dev)?.ge(0.8)?).to_dtype(DType::U8)?;
    let step = median_ms(reps, 2, || {
        t.step(&x, &y)?;
        Ok(())
    })?;
    println!(
        "train step [{batch},1,{s},{s},{s}] (fwd+Dice+bwd+Adam) on {}: {step}",
        device_name(&dev)
    );
    result("train", &step, batch * s * s * s, reps, 0, &dev);
    Ok(())
}

/// A 1 mm CT-like volume normalized to [0, 1], `[d, h, w]` = (z, y, x): air, a body
/// ellipse, an organ, a spine, and a deterministic ripple. `torch_reference.py` builds the
/// same one.
fn ct_like(d: usize, h: usize, w: usize) -> Volume<f32> {
    let mut data = Vec::with_capacity(d * h * w);
    let (df, hf, wf) = (d as f32, h as f32, w as f32);
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                let (xf, yf, zf) = (x as f32, y as f32, z as f32);
                let sq = |v: f32| v * v;
                let body = sq((xf - 0.5 * wf) / (0.42 * wf)) + sq((yf - 0.5 * hf) / (0.36 * hf));
                let organ = sq((xf - 0.58 * wf) / (0.12 * wf))
                    + sq((yf - 0.47 * hf) / (0.10 * hf))
                    + sq((zf - 0.5 * df) / (0.2 * df));
                let spine = sq((xf - 0.5 * wf) / (0.04 * wf)) + sq((yf - 0.74 * hf) / (0.04 * wf));
                let v = if spine < 1.0 {
                    0.9
                } else if organ < 1.0 {
                    0.55
                } else if body < 1.0 {
                    0.45
                } else {
                    0.0
                };
                data.push(v + 0.02 * (0.7 * xf + 1.3 * yf + 0.9 * zf).sin());
            }
        }
    }
    Volume::new(data, [w, h, d], 1, Geometry::identity([1.0; 3]))
}

/// Sliding-window prediction (96³ windows, overlap 0.25, Gaussian blending, 2 windows per
/// forward as the evaluator) over a `[d, h, w]` CT-like volume with an untrained network.
fn sliding(d: usize, h: usize, w: usize, reps: usize) -> Result<()> {
    let dev = bench_device()?;
    // As the evaluator builds it: frozen weights from a checkpoint, no autograd graph.
    let varmap = candle_nn::VarMap::new();
    segmodel::unet3d(
        &unet_config(),
        segmodel::seeded_var_builder(&varmap, 0, DType::F32, &dev),
    )?;
    let ckpt = segmodel::save_checkpoint(&varmap).map_err(candle_core::Error::wrap)?;
    let model =
        segmodel::inference_unet(&unet_config(), &ckpt, &dev).map_err(candle_core::Error::wrap)?;
    let image = ct_like(d, h, w);
    let sw = SlidingWindow {
        window: [96; 3],
        overlap: 0.25,
        batch: 2,
        ops: segmodel::ops::OpsPath::Auto,
    };
    let windows: usize = [w, h, d]
        .iter()
        .map(|&n| segmodel::infer::window_starts(n, 96, sw.overlap).len())
        .product();
    // Warm-up: one forward of a window pair (allocator, caches), not a whole volume.
    model.forward(&Tensor::zeros((sw.batch, 1, 96, 96, 96), DType::F32, &dev)?)?;
    let mut fg = 0;
    let t = median_ms(reps, 0, || {
        let pred = sliding_window_predict(&model, &image, &sw, &dev)?;
        fg = pred.data.iter().filter(|&&l| l == 1).count();
        Ok(())
    })?;
    println!("sliding window {d}x{h}x{w}, {windows} windows of 96³: {t} ({fg} voxels labelled 1)");
    result("sliding", &t, d * h * w, reps, windows, &dev);
    Ok(())
}

/// RSS at the start of `main`, before any tensor exists.
static BASELINE_RSS_MIB: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

/// The line `scripts/bench-train` parses.
fn result(bench: &str, t: &Timing, voxels: usize, reps: usize, windows: usize, dev: &Device) {
    println!(
        "RESULT {{\"impl\": \"segtune\", \"device\": \"{}\", \"bench\": \"{bench}\", \"median_ms\": {:.1}, \
         \"cpu_ms\": {:.1}, \"voxels\": {voxels}, \"reps\": {reps}, \"windows\": {windows}, \
         \"threads\": {}, \"peak_rss_mib\": {:.0}, \"baseline_rss_mib\": {:.0}}}",
        device_name(dev),
        t.wall,
        t.cpu,
        rayon::current_num_threads(),
        status_mib("VmHWM"),
        BASELINE_RSS_MIB.get().copied().unwrap_or(0.0),
    );
}

/// Parses `DxHxW`.
fn parse_size(s: &str) -> Option<(usize, usize, usize)> {
    let v: Vec<usize> = s
        .split('x')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    match v[..] {
        [d, h, w] if d > 0 && h > 0 && w > 0 => Some((d, h, w)),
        _ => None,
    }
}

fn main() -> Result<()> {
    BASELINE_RSS_MIB.get_or_init(|| status_mib("VmRSS"));
    init_compute_threads();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let what = args.first().map_or("all", String::as_str);
    if what == "sliding" {
        let Some((d, h, w)) = args.get(1).and_then(|s| parse_size(s)) else {
            candle_core::bail!("usage: bench_unet sliding DxHxW [reps]")
        };
        let reps = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(3);
        println!("threads: {}, reps: {reps}", rayon::current_num_threads());
        return sliding(d, h, w, reps);
    }
    let reps = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(5);
    println!(
        "threads: {}, reps: {reps} (median after warm-up)",
        rayon::current_num_threads()
    );
    if matches!(what, "conv" | "all") {
        conv(1, reps)?;
        conv(2, reps)?;
    }
    if what == "ops" {
        op_costs(reps)?;
    }
    if matches!(what, "unet" | "all") {
        unet(1, reps)?;
        unet(2, reps)?;
    }
    if what == "train" {
        train(reps)?;
    }
    Ok(())
}
