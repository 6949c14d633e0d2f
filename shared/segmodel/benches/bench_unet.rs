//! Prints median wall times of the hot paths, to compare with the PyTorch figures in
//! `notes/conv3d-cpu.md` (same shapes, f32, same machine).
//!
//! `cargo bench -p segmodel --bench bench_unet -- [conv|unet|ops|all] [reps]`
//! (set `RAYON_NUM_THREADS` to fix the thread count; glibc users may want the malloc
//! tunables from the note, or a binary with mimalloc).

use candle_core::{DType, Device, Module, Result, Tensor, Var};
use segmodel::{SegTrainer, TrainConfig, UNetConfig, init_compute_threads, ops};
use std::time::Instant;

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

fn unet(batch: usize, reps: usize) -> Result<()> {
    let dev = Device::Cpu;
    let cfg = UNetConfig {
        in_channels: 1,
        num_classes: 2,
        channels: vec![16, 32, 64, 128],
        ..Default::default()
    };
    let mut t = SegTrainer::new(&cfg, TrainConfig::default(), 0, &dev)?;
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

fn main() -> Result<()> {
    init_compute_threads();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let what = args.first().map_or("all", String::as_str);
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
    Ok(())
}
