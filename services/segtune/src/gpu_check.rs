//! `segtune gpu-check`: what a GPU host runs first. Three checks, each one line:
//! the device opens; the U-Net's logits on the device equal the CPU's for the same weights and
//! input (within `--tolerance`); `--steps` training steps on the device lower the Dice loss.
//! The training steps must also make no host round trip (counted by [`segmodel::host`]): on a
//! GPU every one would stall the device.
//!
//! The device runs the ops tier [`OpsPath::Auto`] picks for it: the generic tier (candle's
//! stock ops) on CUDA, the hand-written kernels on the CPU. `--generic` forces the generic
//! tier, so `--device cpu --generic` runs on the CPU exactly the code CUDA runs and compares
//! it with the kernels; that is how the tests and `scripts/device-check.sh` exercise the GPU
//! path without a GPU.

use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use segmodel::candle_core::{DType, Device, Tensor};
use segmodel::ops::OpsPath;
use segmodel::{SegTrainer, TrainConfig, UNetConfig};

#[derive(Args, Debug, Clone)]
pub struct GpuCheckArgs {
    /// Device to check: cuda, cuda:N, or cpu (checks the check itself)
    #[arg(long, env = "SEGTUNE_DEVICE", default_value = "cuda")]
    pub device: String,
    /// Training steps of the learning check
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Edge of the cubic test volume (a multiple of 2^(levels-1))
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// Feature channels per U-Net level, finest first
    #[arg(long, default_value = "8,16,32", value_delimiter = ',')]
    pub channels: Vec<usize>,
    /// Largest |device - CPU| logit difference accepted
    #[arg(long, default_value_t = 1e-3)]
    pub tolerance: f64,
    /// Run the generic ops tier (candle's stock ops, what CUDA runs) on the device even where
    /// the hand-written kernels would run (the CPU)
    #[arg(long)]
    pub generic: bool,
}

impl GpuCheckArgs {
    /// The ops tier the checks ask for on the device.
    pub fn ops(&self) -> OpsPath {
        if self.generic {
            OpsPath::Generic
        } else {
            OpsPath::Auto
        }
    }
}

/// What the checks measured.
#[derive(Debug, Clone)]
pub struct GpuCheck {
    pub device: String,
    /// Which tier ran on the device: `generic` (candle's stock ops) or `kernels`.
    pub path: &'static str,
    /// Largest |device - CPU| logit difference.
    pub max_abs_diff: f64,
    /// The loss before each training step on the device.
    pub losses: Vec<f32>,
    pub forward_ms: f64,
    pub train_seconds: f64,
    /// What crossed to the host during the training steps ([`segmodel::host`]).
    pub traffic: segmodel::host::HostTraffic,
}

impl GpuCheck {
    /// The loss of the last step against the first.
    pub fn learned(&self) -> bool {
        match (self.losses.first(), self.losses.last()) {
            (Some(a), Some(b)) => b.is_finite() && b < a,
            _ => false,
        }
    }
}

pub fn run(a: GpuCheckArgs) -> anyhow::Result<()> {
    let c = check(&a)?;
    println!(
        "ok     forward: device logits ({}) equal the CPU kernels', max |diff| {:.2e} <= {:.0e} \
         ({:.1} ms)",
        c.path, c.max_abs_diff, a.tolerance, c.forward_ms
    );
    let t = c.traffic;
    println!(
        "ok     host: {} round trips and {} kernel ops in {} training steps ({} result reads: \
         the losses)",
        t.round_trips, t.kernel_ops, a.steps, t.result_reads
    );
    let (first, last) = (c.losses[0], c.losses[c.losses.len() - 1]);
    if !c.learned() {
        anyhow::bail!(
            "training on {}: the Dice loss went from {first:.4} to {last:.4} in {} steps; \
             it should fall",
            c.device,
            a.steps
        );
    }
    println!(
        "ok     training: Dice loss {first:.4} -> {last:.4} in {} steps ({:.2} s)",
        a.steps, c.train_seconds
    );
    println!("gpu-check passed on {} (ops: {})", c.device, c.path);
    Ok(())
}

/// Runs the checks; an error names the one that failed. A forward mismatch and a host round
/// trip in the training steps (or, on the generic path, a hand-written kernel op) are errors;
/// whether training learned is left to the caller ([`GpuCheck::learned`]).
pub fn check(a: &GpuCheckArgs) -> anyhow::Result<GpuCheck> {
    anyhow::ensure!(a.steps >= 2, "--steps {}: at least 2", a.steps);
    let unet = UNetConfig {
        channels: a.channels.clone(),
        ..Default::default()
    };
    // The reference: the kernels on the CPU. The device: the tier asked for.
    let unet_dev = UNetConfig {
        ops: a.ops(),
        ..unet.clone()
    };
    unet.validate()
        .with_context(|| format!("--channels {:?}", a.channels))?;
    let m = unet.size_multiple();
    anyhow::ensure!(
        a.size >= m && a.size.is_multiple_of(m),
        "--size {}: a multiple of {m} for {} levels",
        a.size,
        unet.levels()
    );
    segmodel::init_compute_threads();
    let device = engine::device(&a.device)?;
    let generic = !a.ops().uses_kernels(&device);
    let path = if generic { "generic" } else { "kernels" };
    println!("ok     device: {} opens; ops: {path}", a.device);

    let (image, label) = phantom(a.size);
    let shape = (1, 1, a.size, a.size, a.size);
    let cfg = TrainConfig {
        lr: 3e-3,
        ..Default::default()
    };

    // The same weights on both devices: initialized on the CPU, copied as a checkpoint.
    let cpu = SegTrainer::new(&unet, cfg, 7, &Device::Cpu).context("building the CPU U-Net")?;
    let weights = cpu.save_checkpoint()?;
    let mut dev = SegTrainer::new(&unet_dev, cfg, 7, &device)
        .with_context(|| format!("building the U-Net on {}", a.device))?;
    dev.load_checkpoint(&weights)
        .with_context(|| format!("copying the weights to {}", a.device))?;

    let x_cpu = Tensor::from_vec(image.clone(), shape, &Device::Cpu)?;
    let x_dev = Tensor::from_vec(image, shape, &device)?;
    let want = cpu.predict(&x_cpu)?.flatten_all()?.to_vec1::<f32>()?;
    let start = Instant::now();
    let got = dev
        .predict(&x_dev)
        .with_context(|| format!("forward pass on {}", a.device))?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let forward_ms = start.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(got.len() == want.len(), "logit counts differ");
    let max_abs_diff = want
        .iter()
        .zip(&got)
        .map(|(w, g)| (*w as f64 - *g as f64).abs())
        .fold(
            0.0,
            |m: f64, d| if d.is_nan() { f64::INFINITY } else { m.max(d) },
        );
    anyhow::ensure!(
        max_abs_diff <= a.tolerance,
        "forward: logits on {} (ops: {path}) differ from the CPU kernels' by up to \
         {max_abs_diff:.3e} (> {:.0e})",
        a.device,
        a.tolerance
    );

    let y = Tensor::from_vec(label, (1, a.size, a.size, a.size), &device)?.to_dtype(DType::U32)?;
    let start = Instant::now();
    let before = segmodel::host::traffic(); // this thread's: the steps run on it
    let mut losses = Vec::with_capacity(a.steps);
    for step in 0..a.steps {
        let loss = dev
            .step(&x_dev, &y)
            .with_context(|| format!("training step {} on {}", step + 1, a.device))?;
        losses.push(loss);
    }
    let train_seconds = start.elapsed().as_secs_f64();
    let traffic = segmodel::host::traffic().since(before);
    anyhow::ensure!(
        traffic.round_trips == 0,
        "host: {} round trips to the host in {} training steps on {} (ops: {path}); \
         there must be none",
        traffic.round_trips,
        a.steps,
        a.device
    );
    anyhow::ensure!(
        !generic || traffic.kernel_ops == 0,
        "host: {} hand-written kernel ops ran in {} training steps on {} with the generic \
         ops; there must be none",
        traffic.kernel_ops,
        a.steps,
        a.device
    );
    Ok(GpuCheck {
        device: a.device.clone(),
        path,
        max_abs_diff,
        losses,
        forward_ms,
        train_seconds,
        traffic,
    })
}

/// A bright ball (label 1) on a darker, slightly noisy background: an easy target, so a few
/// steps show whether gradients flow.
fn phantom(n: usize) -> (Vec<f32>, Vec<u8>) {
    let c = (n as f32 - 1.0) / 2.0;
    let r = n as f32 / 4.0;
    let mut image = Vec::with_capacity(n * n * n);
    let mut label = Vec::with_capacity(n * n * n);
    let mut state = 0x9e37_79b9_u32;
    for z in 0..n {
        for y in 0..n {
            for x in 0..n {
                let d = ((z as f32 - c).powi(2) + (y as f32 - c).powi(2) + (x as f32 - c).powi(2))
                    .sqrt();
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let noise = (state as f32 / u32::MAX as f32 - 0.5) * 0.2;
                let inside = d <= r;
                image.push(if inside { 1.0 } else { -1.0 } + noise);
                label.push(inside as u8);
            }
        }
    }
    (image, label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> GpuCheckArgs {
        GpuCheckArgs {
            device: "cpu".into(),
            steps: 12,
            size: 16,
            channels: vec![4, 8],
            tolerance: 1e-3,
            generic: false,
        }
    }

    #[test]
    fn on_the_cpu_the_forward_agrees_exactly_and_training_lowers_the_loss() {
        let c = check(&args()).unwrap();
        assert_eq!(c.path, "kernels");
        assert_eq!(c.max_abs_diff, 0.0, "same device, same weights");
        assert_eq!(c.losses.len(), 12);
        assert!(c.learned(), "{:?}", c.losses);
        // The kernels ran, and the counters see them (what the generic test relies on).
        assert!(c.traffic.kernel_ops > 0, "{:?}", c.traffic);
        assert_eq!(c.traffic.round_trips, 0);
    }

    /// `--device cpu --generic`: what CUDA runs, on the CPU, against the kernels.
    #[test]
    fn the_generic_path_matches_the_kernels_learns_and_never_touches_the_host() {
        let c = check(&GpuCheckArgs {
            generic: true,
            ..args()
        })
        .unwrap();
        assert_eq!(c.path, "generic");
        assert!(c.max_abs_diff <= 1e-3, "{}", c.max_abs_diff);
        assert!(c.learned(), "{:?}", c.losses);
        assert_eq!(
            (c.traffic.round_trips, c.traffic.kernel_ops),
            (0, 0),
            "{:?}",
            c.traffic
        );
        // One read per step: the loss value.
        assert_eq!(c.traffic.result_reads, 12);
    }

    #[test]
    fn the_flag_parses() {
        use clap::Parser as _;
        let cli = crate::Cli::try_parse_from(["segtune", "gpu-check", "--device", "cpu"]).unwrap();
        let crate::Command::GpuCheck(a) = cli.command else {
            panic!("not gpu-check")
        };
        assert_eq!(a.ops(), OpsPath::Auto);
        let cli = crate::Cli::try_parse_from(["segtune", "gpu-check", "--generic"]).unwrap();
        let crate::Command::GpuCheck(a) = cli.command else {
            panic!("not gpu-check")
        };
        assert_eq!(a.ops(), OpsPath::Generic);
    }

    #[test]
    fn bad_settings_name_the_flag() {
        let e = check(&GpuCheckArgs { size: 15, ..args() }).unwrap_err();
        assert!(e.to_string().contains("--size 15"), "{e:#}");
        let e = check(&GpuCheckArgs {
            device: "tpu".into(),
            ..args()
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("tpu"), "{e:#}");
        let e = check(&GpuCheckArgs { steps: 1, ..args() }).unwrap_err();
        assert!(e.to_string().contains("--steps"), "{e:#}");
    }

    #[test]
    fn a_loss_that_does_not_fall_is_not_learning() {
        let mut c = GpuCheck {
            device: "cpu".into(),
            path: "kernels",
            max_abs_diff: 0.0,
            losses: vec![0.5, 0.6],
            forward_ms: 0.0,
            train_seconds: 0.0,
            traffic: Default::default(),
        };
        assert!(!c.learned());
        c.losses = vec![0.5, f32::NAN];
        assert!(!c.learned());
        c.losses = vec![0.5, 0.4];
        assert!(c.learned());
    }
}
