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
//!
//! `… -- --generic [steps]`: the training step on the generic ops tier (what CUDA runs), on
//! the CPU, at 2×1×96³ (`SEGMODEL_BENCH_PATCH` changes the edge): the bytes the autograd
//! graph holds for the backward pass, per layer (see `Held` for how they are counted), the
//! seconds per step (median of `steps`, default 1) and the peak RSS (`VmHWM`), against the
//! issue's target of one step within 16 GB (the paper's V100s).

// The crate's clippy.toml routes its own host reads through a counter; benches read freely.
#![allow(clippy::disallowed_methods)]

use candle_core::{CpuStorage, DType, Device, Module, Result, Storage, Tensor, Var};
use segmodel::infer::{SlidingWindow, sliding_window_predict};
use segmodel::{SegTrainer, TrainConfig, UNetConfig, init_compute_threads, ops};
use std::collections::HashSet;
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

/// `SEGMODEL_BENCH_PATCH`, or `default`: the edge of the cubic training patch.
fn bench_patch(default: usize) -> Result<usize> {
    match std::env::var("SEGMODEL_BENCH_PATCH") {
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|&p| p >= 8 && p.is_multiple_of(8))
            .ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "SEGMODEL_BENCH_PATCH={v:?}: expected a multiple of 8"
                ))
            }),
        Err(_) => Ok(default),
    }
}

/// Bytes of a CPU storage buffer (the whole allocation, whatever view of it a tensor is).
fn cpu_bytes(c: &CpuStorage) -> usize {
    match c {
        CpuStorage::U8(v) => v.len(),
        CpuStorage::U32(v) => 4 * v.len(),
        CpuStorage::I16(v) => 2 * v.len(),
        CpuStorage::I32(v) => 4 * v.len(),
        CpuStorage::I64(v) => 8 * v.len(),
        CpuStorage::BF16(v) => 2 * v.len(),
        CpuStorage::F16(v) => 2 * v.len(),
        CpuStorage::F32(v) => 4 * v.len(),
        CpuStorage::F64(v) => 8 * v.len(),
        CpuStorage::F8E4M3(v) => v.len(),
        CpuStorage::F6E2M3(v)
        | CpuStorage::F6E3M2(v)
        | CpuStorage::F4(v)
        | CpuStorage::F8E8M0(v) => v.len(),
    }
}

/// The memory an autograd graph holds for the backward pass, attributed to the layer whose
/// output first reaches it.
///
/// How it is counted: after each layer, `Tensor::sorted_nodes` lists every tracked tensor the
/// layer's output depends on (candle keeps each op's operands alive until the graph is
/// dropped, so all of them are held until the backward pass ends). Each storage buffer is
/// counted once, whole (views such as `narrow`, `reshape` or `permute` share their buffer),
/// in the first layer whose output reaches it. Not counted: the variables (the weights,
/// held anyway) and the untracked operands of ops (the input batch, the one-hot target,
/// zero padding blocks), which candle's public API does not list; the RSS growth over the
/// forward pass, printed next to the total, includes them.
#[derive(Default)]
struct Held {
    seen: HashSet<usize>,
    /// (layer, output dims, bytes first reached from it, buffers)
    rows: Vec<(String, Vec<usize>, usize, usize)>,
}

impl Held {
    fn add(&mut self, layer: &str, out: &Tensor) -> Result<()> {
        let (mut bytes, mut buffers) = (0, 0);
        for node in out.sorted_nodes() {
            if node.is_variable() {
                continue;
            }
            let (storage, layout) = node.storage_and_layout();
            let key = std::ptr::from_ref::<Storage>(&*storage).addr();
            if self.seen.insert(key) {
                bytes += match &*storage {
                    Storage::Cpu(c) => cpu_bytes(c),
                    _ => layout.shape().elem_count() * node.dtype().size_in_bytes(),
                };
                buffers += 1;
            }
        }
        self.rows
            .push((layer.to_string(), out.dims().to_vec(), bytes, buffers));
        Ok(())
    }

    fn total(&self) -> usize {
        self.rows.iter().map(|r| r.2).sum()
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The target for one training step at 2×1×96³: the 16 GB of the paper's V100s.
const TARGET_GB: f64 = 16.0;

/// `--generic`: the training step on the generic ops, on the CPU (see the module docs).
fn generic_train(steps: usize) -> Result<()> {
    let s = bench_patch(96)?;
    let batch = 2;
    let dev = Device::Cpu;
    let unet = UNetConfig {
        ops: ops::OpsPath::Generic,
        ..unet_config()
    };
    let mut t = SegTrainer::new(&unet, TrainConfig::default(), 0, &dev)?;
    let x = Tensor::randn(0f32, 1.0, (batch, 1, s, s, s), &dev)?;
    let y = (Tensor::rand(0f32, 1.0, (batch, s, s, s), &dev)?.ge(0.8)?).to_dtype(DType::U8)?;
    println!(
        "generic ops on the CPU: U-Net {:?}, batch [{batch},1,{s},{s},{s}], {} threads",
        unet.channels,
        rayon::current_num_threads()
    );

    // 1. One forward pass + loss, walking the graph after every layer, then its backward.
    let rss0 = status_mib("VmRSS");
    let start = Instant::now();
    let mut held = Held::default();
    let logits = t
        .model()
        .forward_tapped(&x, &mut |name, out| held.add(name, out))?;
    let loss = ops::OpsPath::Generic.soft_dice_loss(&logits, &y, &t.config().loss)?;
    held.add("loss", &loss)?;
    let forward_s = start.elapsed().as_secs_f64();
    let rss_graph = status_mib("VmRSS");
    let start = Instant::now();
    let grads = loss.backward()?;
    let backward_s = start.elapsed().as_secs_f64();
    drop((grads, loss, logits));

    println!(
        "memory held for the backward pass, per layer: the buffers of the tensors the autograd \
         graph keeps alive, each counted once, in the first layer whose output reaches it \
         (Tensor::sorted_nodes after each layer; the weights and untracked operands not \
         counted):"
    );
    println!("| layer        | output                 | held MiB | buffers | cumulative MiB |");
    println!("|--------------|------------------------|---------:|--------:|---------------:|");
    let mut cumulative = 0;
    for (name, dims, bytes, n) in &held.rows {
        cumulative += bytes;
        println!(
            "| {name:<12} | {:<22} | {:>8.0} | {n:>7} | {:>14.0} |",
            format!("{dims:?}"),
            mib(*bytes),
            mib(cumulative)
        );
    }
    let largest = held
        .rows
        .iter()
        .max_by_key(|r| r.2)
        .expect("at least one layer");
    println!(
        "largest: {} {:.0} MiB; total held {:.0} MiB by the graph walk; VmRSS grew {:.0} MiB \
         over the forward pass and loss (measured: includes the untracked operands and freed \
         temporaries the allocator kept)",
        largest.0,
        mib(largest.2),
        mib(held.total()),
        rss_graph - rss0
    );
    println!(
        "untimed analysis pass: forward + loss {forward_s:.1} s (graph walks included), \
         backward {backward_s:.1} s"
    );

    // 2. Timed training steps (forward, loss, backward, Adam).
    let step = median_ms(steps, 0, || {
        t.step(&x, &y)?;
        Ok(())
    })?;
    let peak = status_mib("VmHWM");
    let peak_gb = peak * 1024.0 * 1024.0 / 1e9;
    println!(
        "train step [{batch},1,{s},{s},{s}] (fwd+Dice+bwd+Adam), generic ops on the cpu: \
         {:.1} s, median of {steps} (cpu {:.1} s per step)",
        step.wall / 1e3,
        step.cpu / 1e3
    );
    println!(
        "peak RSS (VmHWM of the process, analysis pass included): {peak:.0} MiB = \
         {peak_gb:.2} GB; target one step <= {TARGET_GB} GB: {}",
        if peak_gb <= TARGET_GB {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "RESULT {{\"impl\": \"segtune\", \"device\": \"cpu\", \"ops\": \"generic\", \
         \"bench\": \"train\", \"median_ms\": {:.1}, \"cpu_ms\": {:.1}, \"voxels\": {}, \
         \"reps\": {steps}, \"threads\": {}, \"peak_rss_mib\": {peak:.0}, \
         \"held_mib\": {:.0}, \"largest_layer\": \"{}\", \"largest_mib\": {:.0}}}",
        step.wall,
        step.cpu,
        batch * s * s * s,
        rayon::current_num_threads(),
        mib(held.total()),
        largest.0,
        mib(largest.2),
    );
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
    let s = bench_patch(64)?;
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
         \"threads\": {}, \"peak_rss_mib\": {:.0}, \"baseline_rss_mib\": {:.0}, \"simd\": \"{}\"}}",
        device_name(dev),
        t.wall,
        t.cpu,
        rayon::current_num_threads(),
        status_mib("VmHWM"),
        BASELINE_RSS_MIB.get().copied().unwrap_or(0.0),
        simd::level(),
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
    match simd::configure_from_env() {
        Ok(sel) => eprintln!("bench_unet: {sel}"),
        Err(e) => {
            eprintln!("bench_unet: {e}");
            std::process::exit(64);
        }
    }
    let generic = std::env::args().any(|a| a == "--generic");
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if generic {
        // `--generic [steps]` (or `train --generic [steps]`).
        let rest = match args.first().map(String::as_str) {
            Some("train") => &args[1..],
            _ => &args[..],
        };
        let steps = match rest.first() {
            None => 1,
            Some(n) => n.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "usage: bench_unet --generic [steps]; got {n:?} for steps"
                ))
            })?,
        };
        return generic_train(steps);
    }
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
