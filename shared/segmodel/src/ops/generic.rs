//! The device-generic tier: every op of [`crate::ops`] built only from candle's stock tensor
//! ops (conv2d, matmul, narrow/cat/pad, reshape/permute/copy, reductions, broadcasting
//! arithmetic, comparisons), which candle runs on every backend with its own kernels (cuBLAS on CUDA) and
//! differentiates with its own autograd. They take the same arguments, validate them the
//! same way and compute the same function as the hand-written kernels; the tests prove each
//! one against its kernel on the CPU backend, so a CUDA device runs numerics that were
//! checked without a GPU.
//!
//! No op here reads a tensor back to the host. Where candle's autograd would differ from the
//! kernels' backward it is noted on the op (ties of a max, the derivative at exactly 0).

use super::{Activation, act, conv, dims5, loss as loss_op, norm, up};
use crate::loss::DiceLossConfig;
use candle_core::{DType, Result, Tensor};

/// 3D convolution, as [`super::conv3d`] (any cubic `k`, zero padding `< k`, any stride,
/// optional bias): `x [N, Cin, D, H, W]`, `w [Cout, Cin, k, k, k]` -> `[N, Cout, Do, Ho, Wo]`.
///
/// `k = 1`: one batched matmul `w [Cout, Cin] · x [N, Cin, DHW]`.
///
/// `k > 1`: a 2D convolution over depth slices (candle's `conv2d`, as candle-transformers
/// builds its video models' conv3d). The input is laid out depth-first and zero-padded in
/// depth, `[Dp, N, Cin, H, W]` (one copy), so its slices are a batch of `Dp·N` images; one
/// `conv2d` (in-plane padding `p`) with the weight as `[k·Cout, Cin, k, k]` computes the `k`
/// depth taps of every output as separate channel blocks, and those are summed at their
/// depth shifts: `y[d] = Σ_kd z[d + kd][kd-th block]`. Strides are taken from the stride-1
/// result.
///
/// Why this construction rather than the im2col + matmul one it replaced (whose every FLOP
/// ran in cuBLAS): memory. candle's autograd keeps every operand of a graph op until the
/// backward pass ends, so that construction's im2col matrix (9× the input), depth-tap row
/// blocks and padding copies were all held; `conv2d` builds its im2col inside the op and
/// frees it. Measured with `bench_unet --generic` on the U-Net 16-32-64-128 at 2×1×64³:
/// 2362 MiB held for backward and 3352 MiB peak RSS, against 4979 MiB and 8225 MiB; at the
/// issue's 2×1×96³, 10.9 GB peak, within its 16 GB target, which the old construction
/// (about 3.4× its 64³ figures) was far over. The cost: candle differentiates `conv2d` into a
/// `conv_transpose2d` for the input gradient, a direct kernel on CUDA and a direct loop on
/// the CPU (1.6× the CPU time per step there, where the trainer uses the kernels anyway).
/// Figures and commands: the crate README, "How the generic conv3d is built, and why".
pub fn conv3d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    stride: usize,
) -> Result<Tensor> {
    let g = conv::geometry(x, w, bias, padding, stride)?;
    let (n, cin, cout, k) = (g.n, g.cin, g.cout, g.k);
    let [d, h, wd] = g.in_dims;
    let y = if k == 1 {
        // padding < k, so 0: a pointwise product on the strided input.
        let x = subsample(x, stride)?;
        let [od, oh, ow] = g.out_dims;
        let xs = x.reshape((n, cin, od * oh * ow))?;
        let wm = w.reshape((cout, cin))?.broadcast_left(n)?;
        wm.matmul(&xs)?.reshape((n, cout, od, oh, ow))?
    } else {
        let p = padding;
        let dp = d + 2 * p;
        // [N, Cin, D, H, W] -> [Dp, N, Cin, H, W] in one copy: the depth pad concatenated
        // around a permuted view.
        let xt = x.permute((2, 0, 1, 3, 4))?;
        let xt = if p > 0 {
            let zeros = Tensor::zeros((p, n, cin, h, wd), x.dtype(), x.device())?;
            Tensor::cat(&[&zeros, &xt, &zeros], 0)?
        } else {
            xt.contiguous()?
        };
        // w[co, ci, kd, kh, kw] -> w2[kd·Cout + co, ci, kh, kw]
        let w2 = w.permute((2, 0, 1, 3, 4))?.reshape((k * cout, cin, k, k))?;
        let z = xt.reshape((dp * n, cin, h, wd))?.conv2d(&w2, p, 1, 1, 1)?;
        let (ho, wo) = (z.dim(2)?, z.dim(3)?);
        let z = z.reshape((dp, n, k * cout, ho, wo))?;
        // Depth taps: y[d] = Σ_kd z[d + kd][kd·Cout .. (kd + 1)·Cout].
        let full_d = dp - k + 1;
        let mut y = z.narrow(0, 0, full_d)?.narrow(2, 0, cout)?;
        for kd in 1..k {
            y = (y + z.narrow(0, kd, full_d)?.narrow(2, kd * cout, cout)?)?;
        }
        subsample(&y.permute((1, 2, 0, 3, 4))?, stride)?.contiguous()?
    };
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, cout, 1, 1, 1))?),
        None => Ok(y),
    }
}

/// Every `stride`-th position along the three spatial axes (the last three dims).
fn subsample(x: &Tensor, stride: usize) -> Result<Tensor> {
    if stride == 1 {
        return Ok(x.clone());
    }
    let rank = x.rank();
    let mut x = x.clone();
    for dim in rank - 3..rank {
        let len = x.dim(dim)? as u32;
        let idx = Tensor::arange_step(0u32, len, stride as u32, x.device())?;
        x = x.contiguous()?.index_select(&idx, dim)?;
    }
    Ok(x)
}

/// 2×2×2 max-pooling with stride 2, as [`super::max_pool3d_2x`] (odd remainders dropped):
/// a reshape to `(…, D/2, 2, H/2, 2, W/2, 2)` and a max over each pair.
///
/// candle's `max` backward sends the gradient to every element equal to the maximum, the
/// kernel to the first one only. They differ only on exact ties, which in the U-Net are the
/// zeros of a ReLU, whose gradient the ReLU's own backward discards anyway.
pub fn max_pool3d_2x(x: &Tensor) -> Result<Tensor> {
    let [n, c, d, h, w] = dims5(x, "max_pool3d input")?;
    let (d2, h2, w2) = (d / 2, h / 2, w / 2);
    let x = if d % 2 + h % 2 + w % 2 != 0 {
        x.narrow(2, 0, 2 * d2)?
            .narrow(3, 0, 2 * h2)?
            .narrow(4, 0, 2 * w2)?
    } else {
        x.clone()
    };
    x.reshape((n * c * d2, 2, h2, 2, w2, 2))?
        .max(5)?
        .max(3)?
        .max(1)?
        .reshape((n, c, d2, h2, w2))
}

/// 2× upsampling by a transposed convolution with kernel 2, stride 2, as
/// [`super::conv_transpose3d_2x`]: the blocks do not overlap, so one batched matmul to
/// `Cout·8` channels, then a permute that interleaves the 2×2×2 offsets into the grid.
/// `x [N, Cin, D, H, W]`, `w [Cin, Cout, 2, 2, 2]`, `bias [Cout]` -> `[N, Cout, 2D, 2H, 2W]`.
pub fn conv_transpose3d_2x(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let g = up::geometry(x, w, bias)?;
    let (n, cin, cout) = (g.n, g.cin, g.cout);
    let [d, h, wd] = g.dims;
    let wm = w
        .reshape((cin, cout * 8))?
        .t()?
        .contiguous()?
        .broadcast_left(n)?;
    let y = wm
        .matmul(&x.reshape((n, cin, d * h * wd))?)?
        .reshape(vec![n, cout, 2, 2, 2, d, h, wd])?
        .permute(vec![0, 1, 5, 2, 6, 3, 7, 4])?
        .reshape((n, cout, 2 * d, 2 * h, 2 * wd))?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, cout, 1, 1, 1))?),
        None => Ok(y),
    }
}

/// Instance normalization with affine parameters and an activation, as
/// [`super::instance_norm3d`]: mean and biased variance over the spatial axes per sample and
/// channel, then `act(γ·(x − mean)/sqrt(var + eps) + β)`. `x [N, C, ...]`, `gamma`, `beta`
/// `[C]` -> the shape of `x`.
pub fn instance_norm3d(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    act: Activation,
) -> Result<Tensor> {
    norm::check(x, gamma, beta, eps, act)?;
    let (n, c) = (x.dims()[0], x.dims()[1]);
    let s: usize = x.dims()[2..].iter().product();
    if s == 0 {
        return x.zeros_like();
    }
    let xs = x.reshape((n, c, s))?;
    let xc = xs.broadcast_sub(&xs.mean_keepdim(2)?)?;
    let rstd = (xc.sqr()?.mean_keepdim(2)? + eps)?.sqrt()?.recip()?;
    let scale = rstd.broadcast_mul(&gamma.reshape((1, c, 1))?)?;
    let z = xc
        .broadcast_mul(&scale)?
        .broadcast_add(&beta.reshape((1, c, 1))?)?;
    activate(&z, act)?.reshape(x.shape())
}

/// `act(z)` with candle's differentiable ops. Every operand is derived from `z`: an
/// untracked constant operand (a mask) would get a full-size gradient that candle's
/// autograd computes and keeps until the backward pass ends. The derivative at exactly 0
/// (measure zero) is 1 for `relu` where the kernel uses 0.
fn activate(z: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::Identity => Ok(z.clone()),
        Activation::Relu => z.relu(),
        Activation::LeakyRelu(s) => leaky(z, s),
    }
}

fn leaky(z: &Tensor, slope: f64) -> Result<Tensor> {
    if slope == 0.0 {
        z.relu()
    } else if slope <= 1.0 {
        z.maximum(&(z * slope)?)
    } else {
        z.relu()? - (z.neg()?.relu()? * slope)?
    }
}

/// Leaky ReLU, as [`super::leaky_relu`].
pub fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    act::check(x, slope)?;
    leaky(x, slope)
}

/// ReLU, as [`super::relu`].
pub fn relu(x: &Tensor) -> Result<Tensor> {
    leaky_relu(x, 0.0)
}

/// The per-class sums of the soft Dice loss over the batch and all voxels, and the
/// log-probabilities: `(Σ p·t, Σ p, Σ t)` each `[K]` f64, and `log p [B, K, S]` f32.
struct DiceSums {
    inter: Tensor,
    psum: Tensor,
    tsum: Tensor,
    log_p: Tensor,
    onehot: Tensor,
}

fn dice_sums(logits: &Tensor, labels: &Tensor) -> Result<DiceSums> {
    let (b, k) = (logits.dims()[0], logits.dims()[1]);
    let s: usize = logits.dims()[2..].iter().product();
    let lg = logits.reshape((b, k, s))?;
    // Softmax over the classes, shifted by the (constant) max for stability.
    let shifted = lg.broadcast_sub(&lg.max_keepdim(1)?.detach())?;
    let e = shifted.exp()?;
    let den = e.sum_keepdim(1)?;
    let p = e.broadcast_div(&den)?;
    let log_p = shifted.broadcast_sub(&den.log()?)?;
    let onehot = one_hot(labels, k, b, s)?;
    // Sums over up to millions of voxels: accumulated in f64, as the kernel does.
    let sum = |t: &Tensor| t.to_dtype(DType::F64)?.sum((0, 2));
    Ok(DiceSums {
        inter: sum(&(&p * &onehot)?)?,
        psum: sum(&p)?,
        tsum: sum(&onehot)?,
        log_p,
        onehot,
    })
}

/// `[B, K, S]` f32 one-hot of class-index labels `[B, ...]`, by comparison with `0..K`.
/// A label `>= K` matches no class (the kernel rejects it; checking here would need a read
/// back to the host).
fn one_hot(labels: &Tensor, k: usize, b: usize, s: usize) -> Result<Tensor> {
    let labels = labels.to_dtype(DType::U32)?.reshape((b, 1, s))?;
    let classes = Tensor::arange(0u32, k as u32, labels.device())?.reshape((1, k, 1))?;
    labels.broadcast_eq(&classes)?.to_dtype(DType::F32)
}

/// Per-class soft Dice `(2·Σpt + smooth) / (Σp + Σt + smooth)`, `[K]` f64.
fn dice(s: &DiceSums, cfg: &DiceLossConfig) -> Result<Tensor> {
    let num = ((&s.inter * 2.0)? + cfg.smooth)?;
    let den = ((&s.psum + &s.tsum)? + cfg.smooth)?;
    num / den
}

/// Softmax soft Dice loss (+ optional cross-entropy), as [`super::soft_dice_loss`]:
/// softmax over the classes, the one-hot target by comparison, sums over batch and voxels.
/// `logits [B, K, D, H, W]`, `labels [B, D, H, W]` -> scalar f32.
pub fn soft_dice_loss(logits: &Tensor, labels: &Tensor, cfg: &DiceLossConfig) -> Result<Tensor> {
    loss_op::check(logits, labels, cfg)?;
    let (b, k) = (logits.dims()[0], logits.dims()[1]);
    let voxels = b * logits.dims()[2..].iter().product::<usize>();
    let s = dice_sums(logits, labels)?;
    let first = usize::from(!cfg.include_background);
    let mean_dice = dice(&s, cfg)?.narrow(0, first, k - first)?.mean_all()?;
    let mut loss = mean_dice.affine(-1.0, 1.0)?;
    if cfg.ce_weight != 0.0 {
        let nll = (&s.log_p * &s.onehot)?.to_dtype(DType::F64)?.sum_all()?;
        loss = (loss - (nll * (cfg.ce_weight / voxels as f64))?)?;
    }
    loss.to_dtype(DType::F32)
}

/// Per-class soft Dice `[K]` f32 (background included), without gradient.
pub fn soft_dice_scores(logits: &Tensor, labels: &Tensor, cfg: &DiceLossConfig) -> Result<Tensor> {
    loss_op::check(logits, labels, cfg)?;
    let s = dice_sums(&logits.detach(), labels)?;
    dice(&s, cfg)?.to_dtype(DType::F32)
}
