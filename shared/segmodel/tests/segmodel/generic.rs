//! The device-generic ops (`segmodel::ops::generic`, built from candle's stock ops) against
//! the hand-written CPU kernels, on the CPU backend: the forward pass within 1e-5 and every
//! input's gradient within 1e-4 (relative to the largest expected magnitude), on odd shapes
//! and on the shapes of the U-Net 8-16-32 at 2×1×32³. The kernels themselves are proven
//! against naive f64 loops in the other modules, so this chains the generic tier to them.
//!
//! `cargo test -p segmodel generic` runs every test of the generic tier.

use crate::reference::{Rng, assert_close, tensor, values};
use candle_core::{DType, Device, Result, Tensor, Var};
use segmodel::DiceLossConfig;
use segmodel::ops::{self, Activation, generic};

const FWD_TOL: f64 = 1e-5;
const GRAD_TOL: f64 = 1e-4;

/// Random inputs of the given shapes as tracked variables, values in [-1, 1) shifted by
/// `offset` per input (so a norm's γ can sit around 1).
fn vars(shapes: &[&[usize]], offsets: &[f64], seed: u64) -> Result<Vec<Var>> {
    let mut rng = Rng::new(seed);
    shapes
        .iter()
        .zip(offsets)
        .map(|(s, &o)| {
            let n: usize = s.iter().product();
            let v: Vec<f64> = rng.vec(n).into_iter().map(|x| x + o).collect();
            Var::from_tensor(&tensor(&v, s, &Device::Cpu)?)
        })
        .collect()
}

/// Runs `kernel` and `generic` on the same variables, compares their outputs, then the
/// gradients of `Σ y·g` (g random, the same for both) with respect to every variable.
fn compare(
    what: &str,
    inputs: &[Var],
    seed: u64,
    kernel: impl Fn(&[Tensor]) -> Result<Tensor>,
    generic: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<()> {
    let xs: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let yk = kernel(&xs)?;
    let yg = generic(&xs)?;
    assert_eq!(yk.dims(), yg.dims(), "{what}: output shape");
    let want = values(&yk)?;
    assert_close(&values(&yg)?, &want, FWD_TOL, &format!("{what}: forward"));
    let g = tensor(
        &Rng::new(seed ^ 0x5eed).vec(yk.elem_count()),
        yk.dims(),
        &Device::Cpu,
    )?;
    let gk = (&yk * &g)?.sum_all()?.backward()?;
    let gg = (&yg * &g)?.sum_all()?.backward()?;
    for (i, x) in xs.iter().enumerate() {
        let want = gk.get(x).expect("kernel gradient");
        let got = gg.get(x).expect("generic gradient");
        assert_close(
            &values(got)?,
            &values(want)?,
            GRAD_TOL,
            &format!("{what}: gradient of input {i}"),
        );
    }
    Ok(())
}

/// (name, N, Cin, Cout, k, [D, H, W], padding, stride, bias)
type ConvCase = (
    &'static str,
    usize,
    usize,
    usize,
    usize,
    [usize; 3],
    usize,
    usize,
    bool,
);

fn conv_cases() -> Vec<ConvCase> {
    vec![
        ("odd k3 p1", 2, 3, 4, 3, [7, 9, 11], 1, 1, true),
        ("odd k3 p1 no bias", 2, 3, 4, 3, [7, 9, 11], 1, 1, false),
        ("odd k3 p0", 2, 3, 4, 3, [7, 9, 11], 0, 1, true),
        ("odd k3 p1 stride 2", 2, 3, 4, 3, [7, 9, 11], 1, 2, true),
        ("odd k1", 2, 3, 4, 1, [7, 9, 11], 0, 1, true),
        ("odd k1 stride 2", 2, 3, 4, 1, [7, 9, 11], 0, 2, false),
        ("odd k5 p2", 1, 2, 3, 5, [6, 7, 9], 2, 1, true),
        // The U-Net 8-16-32 on 2×1×32³: first conv, a decoder conv after the skip
        // concatenation, the deepest level, and the 1×1×1 head.
        ("unet enc.0.conv1", 2, 1, 8, 3, [32; 3], 1, 1, false),
        ("unet dec.0.conv1", 2, 16, 8, 3, [32; 3], 1, 1, false),
        ("unet enc.2.conv2", 2, 32, 32, 3, [8; 3], 1, 1, false),
        ("unet head", 2, 8, 2, 1, [32; 3], 0, 1, true),
    ]
}

#[test]
fn generic_conv3d_matches_the_kernel() -> Result<()> {
    for (i, (name, n, cin, cout, k, [d, h, w], pad, stride, bias)) in
        conv_cases().into_iter().enumerate()
    {
        let seed = 10 + i as u64;
        let (xshape, wshape, bshape) = ([n, cin, d, h, w], [cout, cin, k, k, k], [cout]);
        let mut shapes: Vec<&[usize]> = vec![&xshape, &wshape];
        if bias {
            shapes.push(&bshape);
        }
        let v = vars(&shapes, &[0.0; 3], seed)?;
        compare(
            &format!("conv3d {name}"),
            &v,
            seed,
            |t| ops::conv3d(&t[0], &t[1], t.get(2), pad, stride),
            |t| generic::conv3d(&t[0], &t[1], t.get(2), pad, stride),
        )?;
    }
    Ok(())
}

#[test]
fn generic_max_pool_matches_the_kernel() -> Result<()> {
    for (i, shape) in [[2, 3, 7, 9, 11], [2, 8, 32, 32, 32], [1, 16, 16, 16, 16]]
        .into_iter()
        .enumerate()
    {
        let v = vars(&[&shape], &[0.0], 30 + i as u64)?;
        compare(
            &format!("max_pool {shape:?}"),
            &v,
            30 + i as u64,
            |t| ops::max_pool3d_2x(&t[0]),
            |t| generic::max_pool3d_2x(&t[0]),
        )?;
    }
    Ok(())
}

#[test]
fn generic_conv_transpose_matches_the_kernel() -> Result<()> {
    // (N, Cin, Cout, [D, H, W], bias): odd shapes, then the U-Net's two upsamplings.
    let cases = [
        (2, 3, 4, [7, 9, 11], true),
        (2, 3, 4, [3, 4, 5], false),
        (2, 32, 16, [8, 8, 8], true),
        (2, 16, 8, [16, 16, 16], true),
    ];
    for (i, (n, cin, cout, [d, h, w], bias)) in cases.into_iter().enumerate() {
        let seed = 40 + i as u64;
        let (xshape, wshape, bshape) = ([n, cin, d, h, w], [cin, cout, 2, 2, 2], [cout]);
        let mut shapes: Vec<&[usize]> = vec![&xshape, &wshape];
        if bias {
            shapes.push(&bshape);
        }
        let v = vars(&shapes, &[0.0; 3], seed)?;
        compare(
            &format!("conv_transpose {:?}", (n, cin, cout, [d, h, w], bias)),
            &v,
            seed,
            |t| ops::conv_transpose3d_2x(&t[0], &t[1], t.get(2)),
            |t| generic::conv_transpose3d_2x(&t[0], &t[1], t.get(2)),
        )?;
    }
    Ok(())
}

#[test]
fn generic_instance_norm_matches_the_kernel() -> Result<()> {
    let acts = [
        Activation::Identity,
        Activation::Relu,
        Activation::LeakyRelu(0.01),
        Activation::LeakyRelu(1.5),
    ];
    let shapes = [[2, 3, 7, 9, 11], [2, 8, 32, 32, 32]];
    for (i, (act, shape)) in acts
        .iter()
        .flat_map(|a| shapes.iter().map(move |s| (*a, *s)))
        .enumerate()
    {
        let seed = 50 + i as u64;
        let c = shape[1];
        // γ around 1, β around 0, and an input with a per-channel offset (via β of a prior
        // layer) does not matter: the statistics remove it.
        let v = vars(&[&shape, &[c], &[c]], &[0.3, 1.0, 0.0], seed)?;
        compare(
            &format!("instance_norm {act:?} {shape:?}"),
            &v,
            seed,
            |t| ops::instance_norm3d(&t[0], &t[1], &t[2], 1e-5, act),
            |t| generic::instance_norm3d(&t[0], &t[1], &t[2], 1e-5, act),
        )?;
    }
    Ok(())
}

#[test]
fn generic_leaky_relu_matches_the_kernel() -> Result<()> {
    for (i, slope) in [0.0, 0.01, 0.5, 2.0].into_iter().enumerate() {
        let v = vars(&[&[2, 3, 7, 9, 11]], &[0.0], 60 + i as u64)?;
        compare(
            &format!("leaky_relu {slope}"),
            &v,
            60 + i as u64,
            |t| ops::leaky_relu(&t[0], slope),
            |t| generic::leaky_relu(&t[0], slope),
        )?;
    }
    Ok(())
}

fn labels(shape: &[usize], k: usize, dtype: DType, seed: u64) -> Result<Tensor> {
    let mut rng = Rng::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<u32> = (0..n).map(|_| rng.below(k) as u32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)
}

#[test]
fn generic_dice_loss_matches_the_kernel() -> Result<()> {
    let cfgs = [
        DiceLossConfig::default(),
        DiceLossConfig {
            include_background: true,
            ..Default::default()
        },
        DiceLossConfig {
            ce_weight: 1.0,
            smooth: 1.0,
            ..Default::default()
        },
    ];
    // (logits shape, labels dtype): odd, then the U-Net's head output at 2×1×32³.
    let cases = [
        (vec![2, 3, 7, 9, 11], DType::U8),
        (vec![2, 3, 7, 9, 11], DType::I64),
        (vec![2, 2, 32, 32, 32], DType::U32),
    ];
    let mut i = 0;
    for cfg in cfgs {
        for (shape, dtype) in &cases {
            i += 1;
            let seed = 70 + i;
            let k = shape[1];
            let mut lshape = shape.clone();
            lshape.remove(1);
            let lab = labels(&lshape, k, *dtype, seed)?;
            // Logits scaled up so the softmax is far from uniform.
            let v = vars(&[shape], &[0.0], seed)?;
            let scaled = Var::from_tensor(&(v[0].as_tensor() * 3.0)?)?;
            compare(
                &format!("dice {cfg:?} {shape:?} {dtype:?}"),
                &[scaled],
                seed,
                |t| ops::soft_dice_loss(&t[0], &lab, &cfg),
                |t| generic::soft_dice_loss(&t[0], &lab, &cfg),
            )?;
            let want = values(&segmodel::soft_dice_scores(v[0].as_tensor(), &lab, &cfg)?)?;
            let got = values(&generic::soft_dice_scores(v[0].as_tensor(), &lab, &cfg)?)?;
            assert_close(
                &got,
                &want,
                FWD_TOL,
                &format!("dice scores {cfg:?} {shape:?}"),
            );
        }
    }
    Ok(())
}

/// The generic ops refuse what the kernels refuse, with the same messages.
#[test]
fn generic_ops_validate_like_the_kernels() -> Result<()> {
    let dev = &Device::Cpu;
    let x = Tensor::zeros((1, 2, 4, 4, 4), DType::F32, dev)?;
    let w_bad = Tensor::zeros((3, 5, 3, 3, 3), DType::F32, dev)?;
    // First lines only: the rest is a backtrace when RUST_BACKTRACE is set.
    let first = |e: candle_core::Error| e.to_string().lines().next().map(str::to_string);
    let e1 = first(ops::conv3d(&x, &w_bad, None, 1, 1).unwrap_err()).unwrap();
    let e2 = first(generic::conv3d(&x, &w_bad, None, 1, 1).unwrap_err()).unwrap();
    assert_eq!(e1, e2);
    assert!(e1.contains("input channels"), "{e1}");
    let w = Tensor::zeros((3, 2, 3, 3, 3), DType::F32, dev)?;
    assert!(generic::conv3d(&x, &w, None, 3, 1).is_err(), "padding >= k");
    let g = Tensor::ones(3, DType::F32, dev)?;
    assert!(generic::instance_norm3d(&x, &g, &g, 1e-5, Activation::Relu).is_err());
    let logits = Tensor::zeros((1, 1, 4, 4, 4), DType::F32, dev)?;
    let lab = Tensor::zeros((1, 4, 4, 4), DType::U8, dev)?;
    assert!(generic::soft_dice_loss(&logits, &lab, &DiceLossConfig::default()).is_err());
    assert!(generic::leaky_relu(&x, -1.0).is_err());
    Ok(())
}

#[test]
fn generic_ops_path_picks_the_tier_by_device() {
    use segmodel::ops::OpsPath;
    let cpu = Device::Cpu;
    assert!(OpsPath::Auto.uses_kernels(&cpu));
    assert!(!OpsPath::Generic.uses_kernels(&cpu));
    assert!(OpsPath::HostKernels.uses_kernels(&cpu));
    assert_eq!(OpsPath::default(), OpsPath::Auto);
    for (s, p) in [
        ("auto", OpsPath::Auto),
        ("generic", OpsPath::Generic),
        ("host-kernels", OpsPath::HostKernels),
    ] {
        assert_eq!(s.parse::<OpsPath>(), Ok(p));
    }
    assert!("cuda".parse::<OpsPath>().unwrap_err().contains("generic"));
}

/// A U-Net step (forward, loss, backward) with `ops: Generic` runs no hand-written kernel and
/// makes no host round trip; `Auto` and `HostKernels` on the CPU run the kernels (directly:
/// no host copies on the CPU either).
#[test]
fn generic_unet_runs_no_kernel_op() -> Result<()> {
    use segmodel::ops::OpsPath;
    use segmodel::{UNetConfig, seeded_var_builder, unet3d};
    let dev = Device::Cpu;
    let x = tensor(
        &Rng::new(1).vec(2 * 16 * 16 * 16),
        &[2, 1, 16, 16, 16],
        &dev,
    )?;
    let y = labels(&[2, 16, 16, 16], 2, DType::U8, 2)?;
    for (ops, kernels) in [
        (OpsPath::Generic, false),
        (OpsPath::Auto, true),
        (OpsPath::HostKernels, true),
    ] {
        let cfg = UNetConfig {
            channels: vec![4, 8],
            ops,
            ..Default::default()
        };
        let varmap = candle_nn::VarMap::new();
        let net = unet3d(&cfg, seeded_var_builder(&varmap, 3, DType::F32, &dev))?;
        let before = segmodel::traffic();
        let logits = candle_core::Module::forward(&net, &x)?;
        let loss = ops.soft_dice_loss(&logits, &y, &DiceLossConfig::default())?;
        loss.backward()?;
        let t = segmodel::traffic().since(before);
        assert_eq!(t.round_trips, 0, "{ops:?}");
        // 2 levels = 3 blocks: 6 convs + 6 norms, 1 pool, 1 upsampling, the head, the loss.
        let want = if kernels { 16 } else { 0 };
        assert_eq!(t.kernel_ops, want, "{ops:?}");
    }
    Ok(())
}

/// (name, value) of every variable, sorted by name.
fn params(varmap: &candle_nn::VarMap) -> Vec<(String, Var)> {
    let mut v: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The root mean square of `got − want`, over the scale `assert_close` uses: `1 + max |want|`.
fn rms_diff(got: &[f64], want: &[f64]) -> f64 {
    let d: f64 = got.iter().zip(want).map(|(g, w)| (g - w).powi(2)).sum();
    let scale = 1.0 + want.iter().fold(0f64, |m, w| m.max(w.abs()));
    (d / want.len().max(1) as f64).sqrt() / scale
}

/// A whole training step of the U-Net 8-16-32 (forward, Dice loss, backward, Adam) on a
/// 2×1×32³ batch through the generic tier equals the kernel tier's for 3 steps: the loss
/// and every parameter's gradient within 1e-4 (elementwise, relative to the tensor's
/// largest value), every parameter after each update within 1e-4 (root mean square of the
/// difference, same scale), and the loss after the third update within 1e-4.
///
/// The parameters are compared by their RMS difference, not elementwise: Adam divides each element's
/// update by the root of its own squared-gradient average, so an element whose gradients
/// nearly cancel moves by a large fraction of the learning rate on a tiny gradient
/// difference (seen: one weight of `enc.1.conv2` 1.6e-4 apart after 3 steps, 5 % of its
/// 3·lr travel, while all the gradients agreed within 1e-4 of their scale).
#[test]
fn generic_training_step_equals_the_kernel_step() -> Result<()> {
    use candle_nn::{AdamW, Optimizer, ParamsAdamW};
    use segmodel::ops::OpsPath;
    use segmodel::{UNetConfig, seeded_var_builder, unet3d};
    segmodel::init_compute_threads();
    let dev = Device::Cpu;
    let (x, y) = crate::learn::spheres(32, &[[14.0, 16.0, 17.0], [18.0, 15.0, 13.0]], 8.0, &dev)?;
    let build = |ops| -> Result<_> {
        let cfg = UNetConfig {
            channels: vec![8, 16, 32],
            ops,
            ..Default::default()
        };
        let varmap = candle_nn::VarMap::new();
        let net = unet3d(&cfg, seeded_var_builder(&varmap, 42, DType::F32, &dev))?;
        let opt = AdamW::new(
            varmap.all_vars(),
            ParamsAdamW {
                lr: 1e-3,
                weight_decay: 0.0,
                ..Default::default()
            },
        )?;
        Ok((varmap, net, opt))
    };
    let (kvars, knet, mut kopt) = build(OpsPath::Auto)?;
    let (gvars, gnet, mut gopt) = build(OpsPath::Generic)?;
    let (kp, gp) = (params(&kvars), params(&gvars));
    assert_eq!(kp.len(), gp.len());
    let cfg = DiceLossConfig::default();
    for step in 1..=3 {
        let kl =
            OpsPath::Auto.soft_dice_loss(&candle_core::Module::forward(&knet, &x)?, &y, &cfg)?;
        let gl =
            OpsPath::Generic.soft_dice_loss(&candle_core::Module::forward(&gnet, &x)?, &y, &cfg)?;
        assert_close(
            &values(&gl)?,
            &values(&kl)?,
            1e-4,
            &format!("step {step}: loss"),
        );
        let (kg, gg) = (kl.backward()?, gl.backward()?);
        for ((name, kv), (_, gv)) in kp.iter().zip(&gp) {
            assert_close(
                &values(gg.get(gv).expect("generic gradient"))?,
                &values(kg.get(kv).expect("kernel gradient"))?,
                1e-4,
                &format!("step {step}: gradient of {name}"),
            );
        }
        kopt.step(&kg)?;
        gopt.step(&gg)?;
        for ((name, kv), (_, gv)) in kp.iter().zip(&gp) {
            let d = rms_diff(&values(gv.as_tensor())?, &values(kv.as_tensor())?);
            assert!(
                d <= 1e-4,
                "step {step}: {name} after the update: RMS diff {d:.2e}"
            );
        }
    }
    let kl = OpsPath::Auto.soft_dice_loss(&candle_core::Module::forward(&knet, &x)?, &y, &cfg)?;
    let gl =
        OpsPath::Generic.soft_dice_loss(&candle_core::Module::forward(&gnet, &x)?, &y, &cfg)?;
    assert_close(&values(&gl)?, &values(&kl)?, 1e-4, "loss after 3 updates");
    Ok(())
}

/// 20 steps of the generic tier lower the loss, and a step makes no host round trip: its
/// one read back to the host is the loss value it returns.
#[test]
fn generic_training_learns_without_host_round_trips() -> Result<()> {
    use segmodel::ops::OpsPath;
    use segmodel::{SegTrainer, TrainConfig, UNetConfig};
    segmodel::init_compute_threads();
    let dev = Device::Cpu;
    let (x, y) = crate::learn::spheres(32, &[[14.0, 16.0, 17.0], [18.0, 15.0, 13.0]], 8.0, &dev)?;
    let unet = UNetConfig {
        channels: vec![8, 16, 32],
        ops: OpsPath::Generic,
        ..Default::default()
    };
    let train = TrainConfig {
        lr: 3e-3,
        ..Default::default()
    };
    let mut t = SegTrainer::new(&unet, train, 7, &dev)?;
    let mut losses = Vec::new();
    for _ in 0..20 {
        let before = segmodel::traffic();
        losses.push(t.step(&x, &y)?);
        let traffic = segmodel::traffic().since(before);
        assert_eq!(
            traffic,
            segmodel::HostTraffic {
                round_trips: 0,
                result_reads: 1,
                kernel_ops: 0,
            }
        );
    }
    let (first, last) = (losses[0], losses[19]);
    assert!(
        last.is_finite() && last < 0.8 * first,
        "the loss did not fall: {losses:?}"
    );
    Ok(())
}

/// Class-1 logit = the input, class-0 logit = 0 (the probe of the sliding-window tests).
struct Probe;

impl candle_core::Module for Probe {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Tensor::cat(&[&x.zeros_like()?, x], 1)
    }
}

/// The device blend (`ops: Generic`) equals the host blend (`Auto` on the CPU) for the same
/// model: the probe and a real U-Net, on odd volumes spanning several windows, one of them
/// shorter than the window along an axis, with a partial last batch. The device blend reads
/// nothing back but its result; the host blend reads every batch of windows.
#[test]
fn generic_sliding_window_blends_like_the_host() -> Result<()> {
    use crate::infer::{image, texture};
    use segmodel::infer::{SlidingWindow, sliding_window_predict, sliding_window_probs};
    use segmodel::ops::OpsPath;
    use segmodel::{UNetConfig, seeded_var_builder, unet3d};
    let dev = Device::Cpu;
    let varmap = candle_nn::VarMap::new();
    let cfg = UNetConfig {
        num_classes: 3,
        channels: vec![4, 8],
        ..Default::default()
    };
    let net = unet3d(&cfg, seeded_var_builder(&varmap, 5, DType::F32, &dev))?;
    for dims in [[37, 29, 23], [37, 11, 19]] {
        let img = image(dims, texture);
        let sw = |ops| SlidingWindow {
            window: [16; 3],
            overlap: 0.25,
            batch: 4,
            ops,
        };
        let windows = {
            let n = |i: usize| segmodel::infer::window_starts(dims[i].max(16), 16, 0.25).len();
            n(0) * n(1) * n(2)
        };
        type Probs<'a> = &'a dyn Fn(&SlidingWindow) -> Result<Vec<f32>>;
        let models: [(&str, Probs); 2] = [
            ("probe", &|s| sliding_window_probs(&Probe, &img, s, &dev)),
            ("unet", &|s| sliding_window_probs(&net, &img, s, &dev)),
        ];
        for (name, probs) in models {
            let before = segmodel::traffic();
            let host = probs(&sw(OpsPath::Auto))?;
            let t = segmodel::traffic().since(before);
            assert_eq!(
                t.round_trips as usize,
                windows.div_ceil(4),
                "{name}: host reads"
            );
            let before = segmodel::traffic();
            let device = probs(&sw(OpsPath::Generic))?;
            let t = segmodel::traffic().since(before);
            assert_eq!((t.round_trips, t.result_reads), (0, 1), "{name} {dims:?}");
            let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
            assert_close(&f(&device), &f(&host), 1e-6, &format!("{name} {dims:?}"));
        }
        let host = sliding_window_predict(&net, &img, &sw(OpsPath::Auto), &dev)?;
        let device = sliding_window_predict(&net, &img, &sw(OpsPath::Generic), &dev)?;
        assert_eq!(device.dims, dims);
        assert_eq!(device.data, host.data, "{dims:?}: label maps");
    }
    Ok(())
}

/// A sliding-window evaluation entirely on the generic path (the U-Net's ops and the blend)
/// makes no host round trip and runs no kernel: one read, the label map. Its probabilities
/// equal those of the kernel path within 1e-4.
#[test]
fn generic_sliding_window_evaluation_makes_no_round_trip() -> Result<()> {
    use crate::infer::{image, texture};
    use segmodel::infer::{SlidingWindow, sliding_window_predict, sliding_window_probs};
    use segmodel::ops::OpsPath;
    use segmodel::{UNetConfig, seeded_var_builder, unet3d};
    let dev = Device::Cpu;
    let build = |ops| -> Result<_> {
        let varmap = candle_nn::VarMap::new();
        let cfg = UNetConfig {
            num_classes: 2,
            channels: vec![4, 8],
            ops,
            ..Default::default()
        };
        unet3d(&cfg, seeded_var_builder(&varmap, 9, DType::F32, &dev))
    };
    let (knet, gnet) = (build(OpsPath::Auto)?, build(OpsPath::Generic)?);
    let img = image([30, 27, 21], texture);
    let sw = |ops| SlidingWindow {
        window: [16; 3],
        overlap: 0.25,
        batch: 2,
        ops,
    };
    let before = segmodel::traffic();
    let labels = sliding_window_predict(&gnet, &img, &sw(OpsPath::Generic), &dev)?;
    let t = segmodel::traffic().since(before);
    assert_eq!(
        t,
        segmodel::HostTraffic {
            round_trips: 0,
            result_reads: 1,
            kernel_ops: 0,
        }
    );
    assert_eq!(labels.dims, img.dims);
    let f = |v: Vec<f32>| v.into_iter().map(|x| x as f64).collect::<Vec<_>>();
    let want = f(sliding_window_probs(&knet, &img, &sw(OpsPath::Auto), &dev)?);
    let got = f(sliding_window_probs(
        &gnet,
        &img,
        &sw(OpsPath::Generic),
        &dev,
    )?);
    assert_close(&got, &want, 1e-4, "generic vs kernel probabilities");
    // The label map is the argmax of those probabilities (where the top two are not tied).
    let n = img.voxels();
    for (i, &l) in labels.data.iter().enumerate() {
        let (p0, p1) = (got[i], got[n + i]);
        if (p0 - p1).abs() > 1e-6 {
            assert_eq!(l, u8::from(p1 > p0), "voxel {i}: {p0} {p1}");
        }
    }
    Ok(())
}
