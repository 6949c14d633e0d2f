//! Differentiable 3D ops in two tiers.
//!
//! - The hand-written kernels: candle [`CustomOp1`]/[`CustomOp2`]/[`CustomOp3`]s whose CPU
//!   kernels live in [`crate::cpu`]; their backward passes are custom ops too.
//! - [`generic`]: the same ops from candle's stock tensor ops, which run on every device.
//!
//! [`OpsPath`] picks the tier per call: the kernels on the CPU, the generic ops on any other
//! device ([`OpsPath::Auto`], what the free functions here use). A kernel is never run on
//! host copies of GPU tensors unless asked for ([`OpsPath::HostKernels`], for debugging).
//! All ops take and return `f32` tensors; the kernels make their inputs contiguous first.

mod act;
mod conv;
pub mod generic;
mod loss;
mod norm;
mod pool;
mod up;

pub use norm::Activation;

use crate::cpu;
use crate::loss::DiceLossConfig;
use candle_core::{
    CpuStorage, CustomOp1, DType, Device, Error, Layout, Result, Shape, Tensor,
    backend::BackendStorage, bail,
};
use std::borrow::Cow;

/// Which tier runs the ops: a setting of the model ([`crate::UNetConfig::ops`]), of the
/// layers ([`crate::nn`]) and of the sliding window ([`crate::infer::SlidingWindow::ops`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OpsPath {
    /// The hand-written kernels for CPU tensors, the generic ops on any other device.
    #[default]
    Auto,
    /// The generic ops on every device: what a GPU runs, run on the CPU to check it.
    Generic,
    /// The hand-written CPU kernels on every device. On a GPU each op copies its inputs to
    /// the host and its result back (two transfers, CPU speed): for debugging only; the first
    /// such op of the process logs a warning.
    HostKernels,
}

impl OpsPath {
    /// Whether an op on `device` runs its hand-written kernel.
    pub fn uses_kernels(self, device: &Device) -> bool {
        match self {
            OpsPath::Auto => device.is_cpu(),
            OpsPath::Generic => false,
            OpsPath::HostKernels => true,
        }
    }

    fn kernels(self, device: &Device) -> bool {
        let k = self.uses_kernels(device);
        if k {
            crate::host::count_kernel_op();
        }
        k
    }

    /// See [`conv3d`].
    pub fn conv3d(
        self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        padding: usize,
        stride: usize,
    ) -> Result<Tensor> {
        match self.kernels(x.device()) {
            true => conv::conv3d(x, w, bias, padding, stride),
            false => generic::conv3d(x, w, bias, padding, stride),
        }
    }

    /// See [`max_pool3d_2x`].
    pub fn max_pool3d_2x(self, x: &Tensor) -> Result<Tensor> {
        match self.kernels(x.device()) {
            true => pool::max_pool3d_2x(x),
            false => generic::max_pool3d_2x(x),
        }
    }

    /// See [`conv_transpose3d_2x`].
    pub fn conv_transpose3d_2x(
        self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        match self.kernels(x.device()) {
            true => up::conv_transpose3d_2x(x, w, bias),
            false => generic::conv_transpose3d_2x(x, w, bias),
        }
    }

    /// See [`instance_norm3d`].
    pub fn instance_norm3d(
        self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
        act: Activation,
    ) -> Result<Tensor> {
        match self.kernels(x.device()) {
            true => norm::instance_norm3d(x, gamma, beta, eps, act),
            false => generic::instance_norm3d(x, gamma, beta, eps, act),
        }
    }

    /// See [`leaky_relu`].
    pub fn leaky_relu(self, x: &Tensor, slope: f64) -> Result<Tensor> {
        match self.kernels(x.device()) {
            true => act::leaky_relu(x, slope),
            false => generic::leaky_relu(x, slope),
        }
    }

    /// See [`soft_dice_loss`].
    pub fn soft_dice_loss(
        self,
        logits: &Tensor,
        labels: &Tensor,
        cfg: &DiceLossConfig,
    ) -> Result<Tensor> {
        match self.kernels(logits.device()) {
            true => loss::soft_dice_loss(logits, labels, cfg),
            false => generic::soft_dice_loss(logits, labels, cfg),
        }
    }

    /// See [`crate::loss::soft_dice_scores`].
    pub fn soft_dice_scores(
        self,
        logits: &Tensor,
        labels: &Tensor,
        cfg: &DiceLossConfig,
    ) -> Result<Tensor> {
        match self.kernels(logits.device()) {
            true => loss::soft_dice_scores(logits, labels, cfg),
            false => generic::soft_dice_scores(logits, labels, cfg),
        }
    }
}

impl std::str::FromStr for OpsPath {
    type Err = String;

    /// `auto`, `generic` or `host-kernels`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(OpsPath::Auto),
            "generic" => Ok(OpsPath::Generic),
            "host-kernels" => Ok(OpsPath::HostKernels),
            other => Err(format!(
                "unknown ops path {other:?} (expected auto, generic or host-kernels)"
            )),
        }
    }
}

/// 3D convolution (cross-correlation, as PyTorch `conv3d`) with zero padding.
///
/// Shapes: `x [N, Cin, D, H, W]`, `w [Cout, Cin, k, k, k]`, `bias [Cout]` ->
/// `[N, Cout, Do, Ho, Wo]` with `Do = (D + 2·padding − k) / stride + 1`. Any cubic `k` and
/// stride work; the U-Net uses k = 3 (padding 1) and k = 1. The CPU kernel fuses the bias
/// into the forward pass, computes the input gradient only when `x` is tracked, and for
/// stride 2 convolves the zero-dilated output gradient, which costs 8× the FLOPs it needs
/// (fine for now: the U-Net downsamples by max-pooling). [`OpsPath::Auto`].
pub fn conv3d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    stride: usize,
) -> Result<Tensor> {
    OpsPath::Auto.conv3d(x, w, bias, padding, stride)
}

/// 2×2×2 max-pooling with stride 2: `[N, C, D, H, W] -> [N, C, D/2, H/2, W/2]` (floor, odd
/// remainders dropped, as PyTorch `max_pool3d(x, 2)`). The kernel sends the gradient to the
/// first maximum of each window in (d, h, w) order, like PyTorch's argmax. [`OpsPath::Auto`].
pub fn max_pool3d_2x(x: &Tensor) -> Result<Tensor> {
    OpsPath::Auto.max_pool3d_2x(x)
}

/// 2× upsampling by a transposed convolution with kernel 2, stride 2 (PyTorch
/// `ConvTranspose3d(cin, cout, 2, stride=2)`): `x [N, Cin, D, H, W]`, `w [Cin, Cout, 2, 2, 2]`,
/// `bias [Cout]` -> `[N, Cout, 2D, 2H, 2W]`. [`OpsPath::Auto`].
pub fn conv_transpose3d_2x(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    OpsPath::Auto.conv_transpose3d_2x(x, w, bias)
}

/// Instance normalization with affine parameters and a fused activation:
/// `y = act(γ_c · (x − mean) / sqrt(var + eps) + β_c)`, statistics per sample and channel
/// over all spatial positions (biased variance, as PyTorch `InstanceNorm3d(affine=True)`).
///
/// Shapes: `x [N, C, ...]` (any rank ≥ 3, typically `[N, C, D, H, W]`), `gamma`, `beta` `[C]`
/// -> same shape as `x`. The kernel is one fused forward pass and one fused backward pass
/// that recomputes the activation mask from `x`. [`OpsPath::Auto`].
pub fn instance_norm3d(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    act: Activation,
) -> Result<Tensor> {
    OpsPath::Auto.instance_norm3d(x, gamma, beta, eps, act)
}

/// Leaky ReLU `x > 0 ? x : slope·x` (any shape, `f32`, `slope ≥ 0`). The kernel's backward
/// pass reads its mask from the output; at `x = 0` the derivative is `slope` (0 for ReLU, as
/// PyTorch). [`OpsPath::Auto`].
pub fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    OpsPath::Auto.leaky_relu(x, slope)
}

/// ReLU; the kernel's backward is one pass (candle's own takes five elementwise ops).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    leaky_relu(x, 0.0)
}

/// Softmax soft Dice loss (+ optional cross-entropy), see [`DiceLossConfig`].
/// `logits [B, K, D, H, W]`, `labels [B, D, H, W]` (u8/u32/i64 class indices < K) ->
/// scalar. No gradient flows to the labels. The kernel fuses it into one op.
/// [`OpsPath::Auto`].
pub fn soft_dice_loss(logits: &Tensor, labels: &Tensor, cfg: &DiceLossConfig) -> Result<Tensor> {
    OpsPath::Auto.soft_dice_loss(logits, labels, cfg)
}

/// The error every kernel op returns on a device it cannot run on (Metal).
pub(crate) fn unsupported_device(op: &str, device: &str) -> Error {
    Error::Msg(format!(
        "segmodel: the `{op}` kernel cannot run on {device} (use OpsPath::Auto or Generic)"
    ))
    .bt()
}

/// Runs a CPU kernel for tensors on a GPU device: copies the inputs to the host, runs
/// `cpu_fwd` there and copies the result back. Correct on any device, but every call pays
/// two host-device transfers and runs at CPU speed. Reached only through
/// [`OpsPath::HostKernels`] (a debugging setting): each call counts as a host round trip
/// ([`crate::host`]) and the first one of the process logs a warning.
pub(crate) mod via_host {
    use candle_core::{
        CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape,
        backend::{BackendDevice, BackendStorage},
    };

    static WARNED: std::sync::Once = std::sync::Once::new();

    fn note(op: &str) {
        crate::host::count_round_trip();
        WARNED.call_once(|| {
            tracing::warn!(
                op,
                "segmodel ops run their CPU kernels on host copies of device tensors \
                 (OpsPath::HostKernels): two transfers per op, CPU speed; for debugging only"
            )
        });
    }

    /// Storage whose device makes storage of the same type (every candle backend).
    pub(crate) trait Host: BackendStorage<Device: BackendDevice<Storage = Self>> {}
    impl<S: BackendStorage<Device: BackendDevice<Storage = S>>> Host for S {}

    fn back<S: Host>(like: &S, out: (CpuStorage, Shape)) -> Result<(S, Shape)> {
        Ok((like.device().storage_from_cpu_storage(&out.0)?, out.1))
    }

    #[allow(clippy::disallowed_methods)] // counted by `note`
    pub(crate) fn fwd1<O: CustomOp1, S: Host>(op: &O, s: &S, l: &Layout) -> Result<(S, Shape)> {
        note(op.name());
        back(s, op.cpu_fwd(&s.to_cpu_storage()?, l)?)
    }

    #[allow(clippy::disallowed_methods)] // counted by `note`
    pub(crate) fn fwd2<O: CustomOp2, S: Host>(
        op: &O,
        s1: &S,
        l1: &Layout,
        s2: &S,
        l2: &Layout,
    ) -> Result<(S, Shape)> {
        note(op.name());
        let out = op.cpu_fwd(&s1.to_cpu_storage()?, l1, &s2.to_cpu_storage()?, l2)?;
        back(s1, out)
    }

    #[allow(clippy::too_many_arguments, clippy::disallowed_methods)] // counted by `note`
    pub(crate) fn fwd3<O: CustomOp3, S: Host>(
        op: &O,
        s1: &S,
        l1: &Layout,
        s2: &S,
        l2: &Layout,
        s3: &S,
        l3: &Layout,
    ) -> Result<(S, Shape)> {
        note(op.name());
        let out = op.cpu_fwd(
            &s1.to_cpu_storage()?,
            l1,
            &s2.to_cpu_storage()?,
            l2,
            &s3.to_cpu_storage()?,
            l3,
        )?;
        back(s1, out)
    }
}

/// Implements `cuda_fwd` of a custom op by running its CPU kernel on host copies
/// ([`via_host`]), and `metal_fwd` as an "unsupported" error.
macro_rules! no_gpu_fwd {
    (1) => {
        fn cuda_fwd(
            &self,
            s: &candle_core::CudaStorage,
            l: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
            $crate::ops::via_host::fwd1(self, s, l)
        }
        fn metal_fwd(
            &self,
            _: &candle_core::MetalStorage,
            _: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::MetalStorage, candle_core::Shape)> {
            Err($crate::ops::unsupported_device(
                <Self as candle_core::CustomOp1>::name(self),
                "Metal",
            ))
        }
    };
    (2) => {
        fn cuda_fwd(
            &self,
            s1: &candle_core::CudaStorage,
            l1: &candle_core::Layout,
            s2: &candle_core::CudaStorage,
            l2: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
            $crate::ops::via_host::fwd2(self, s1, l1, s2, l2)
        }
        fn metal_fwd(
            &self,
            _: &candle_core::MetalStorage,
            _: &candle_core::Layout,
            _: &candle_core::MetalStorage,
            _: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::MetalStorage, candle_core::Shape)> {
            Err($crate::ops::unsupported_device(
                <Self as candle_core::CustomOp2>::name(self),
                "Metal",
            ))
        }
    };
    (3) => {
        fn cuda_fwd(
            &self,
            s1: &candle_core::CudaStorage,
            l1: &candle_core::Layout,
            s2: &candle_core::CudaStorage,
            l2: &candle_core::Layout,
            s3: &candle_core::CudaStorage,
            l3: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
            $crate::ops::via_host::fwd3(self, s1, l1, s2, l2, s3, l3)
        }
        fn metal_fwd(
            &self,
            _: &candle_core::MetalStorage,
            _: &candle_core::Layout,
            _: &candle_core::MetalStorage,
            _: &candle_core::Layout,
            _: &candle_core::MetalStorage,
            _: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::MetalStorage, candle_core::Shape)> {
            Err($crate::ops::unsupported_device(
                <Self as candle_core::CustomOp3>::name(self),
                "Metal",
            ))
        }
    };
}
pub(crate) use no_gpu_fwd;

/// The contiguous `f32` data of a storage/layout pair.
pub(crate) fn f32s<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("segmodel {op}: expected f32 data, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("segmodel {op}: input is not contiguous"),
    }
}

/// Class-index labels as `u32`, from u8, u32 or i64 storage; every value must be `< classes`.
pub(crate) fn labels_u32<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    classes: usize,
    op: &str,
) -> Result<Cow<'a, [u32]>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("segmodel {op}: labels are not contiguous")
    };
    let labels: Cow<'a, [u32]> = match s {
        CpuStorage::U32(v) => Cow::Borrowed(&v[a..b]),
        CpuStorage::U8(v) => Cow::Owned(v[a..b].iter().map(|&x| x as u32).collect()),
        CpuStorage::I64(v) => Cow::Owned(
            v[a..b]
                .iter()
                .map(|&x| u32::try_from(x).unwrap_or(u32::MAX))
                .collect(),
        ),
        other => bail!(
            "segmodel {op}: labels must be u8, u32 or i64, got {:?}",
            other.dtype()
        ),
    };
    if let Some(&bad) = labels.iter().find(|&&x| x as usize >= classes) {
        bail!("segmodel {op}: label {bad} out of range for {classes} classes")
    }
    Ok(labels)
}

/// Dims of a rank-5 `f32` tensor.
pub(crate) fn dims5(t: &Tensor, what: &str) -> Result<[usize; 5]> {
    if t.dtype() != DType::F32 {
        bail!("segmodel: {what} must be f32, got {:?}", t.dtype())
    }
    match *t.dims() {
        [a, b, c, d, e] => Ok([a, b, c, d, e]),
        _ => bail!(
            "segmodel: {what} must be [N, C, D, H, W], got {:?}",
            t.shape()
        ),
    }
}

/// Checks that `t` is an `f32` vector of length `len`.
pub(crate) fn check_vec(t: &Tensor, len: usize, what: &str) -> Result<()> {
    if t.dtype() != DType::F32 || t.dims() != [len] {
        bail!(
            "segmodel: {what} must be f32 [{len}], got {:?} {:?}",
            t.dtype(),
            t.shape()
        )
    }
    Ok(())
}

/// Per-channel sum of an `[N, C, ...]` tensor -> `[C]` (bias gradients).
pub(crate) struct ChannelSum;

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "channel-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, self.name())?;
        let dims = l.dims();
        if dims.len() < 2 {
            bail!("segmodel channel-sum: need [N, C, ...], got {dims:?}")
        }
        let (n, c) = (dims[0], dims[1]);
        let sp: usize = dims[2..].iter().product();
        Ok((
            CpuStorage::F32(cpu::reduce::channel_sum(x, n, c, sp)),
            Shape::from(c),
        ))
    }

    no_gpu_fwd!(1);
}

/// Splits a flat tensor into consecutive pieces of the given shapes (views, no copies).
pub(crate) fn split_flat(flat: &Tensor, shapes: &[&Shape]) -> Result<Vec<Tensor>> {
    let mut off = 0;
    shapes
        .iter()
        .map(|s| {
            let n = s.elem_count();
            let t = flat.narrow(0, off, n)?.reshape(*s)?;
            off += n;
            Ok(t)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{CustomOp2, CustomOp3, Device, Storage};

    /// `a - 2b (+ 3c)`: argument order matters, so a swapped input shows.
    struct Mix;

    fn mix(parts: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
        let xs: Vec<&[f32]> = parts
            .iter()
            .map(|(s, l)| f32s(s, l, "mix"))
            .collect::<Result<_>>()?;
        let out = (0..xs[0].len())
            .map(|i| xs.iter().zip([1.0, -2.0, 3.0]).map(|(x, k)| k * x[i]).sum())
            .collect();
        Ok((CpuStorage::F32(out), parts[0].1.shape().clone()))
    }

    impl CustomOp2 for Mix {
        fn name(&self) -> &'static str {
            "mix2"
        }
        fn cpu_fwd(
            &self,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            mix(&[(s1, l1), (s2, l2)])
        }
    }

    impl CustomOp3 for Mix {
        fn name(&self) -> &'static str {
            "mix3"
        }
        fn cpu_fwd(
            &self,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            s3: &CpuStorage,
            l3: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            mix(&[(s1, l1), (s2, l2), (s3, l3)])
        }
    }

    fn values(s: &CpuStorage) -> Vec<f32> {
        match s {
            CpuStorage::F32(v) => v.clone(),
            other => panic!("not f32: {:?}", other.dtype()),
        }
    }

    /// The GPU fallback's plumbing, checked with the CPU backend standing in for CUDA (both
    /// implement `BackendStorage`): host copies in, the CPU kernel, the result back, with
    /// the inputs in order and a narrowed (offset) input intact.
    #[test]
    fn ops_run_through_host_copies_like_on_the_cpu() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 24., &dev)?.reshape((2, 3, 4))?;
        let b = (Tensor::arange(0f32, 48., &dev)?.narrow(0, 24, 24)?).reshape((2, 3, 4))?;
        let c = Tensor::ones((2, 3, 4), DType::F32, &dev)?;
        let (sa, la) = a.storage_and_layout();
        let (sb, lb) = b.storage_and_layout();
        let (sc, lc) = c.storage_and_layout();
        let (Storage::Cpu(sa), Storage::Cpu(sb), Storage::Cpu(sc)) = (&*sa, &*sb, &*sc) else {
            panic!("cpu tensors")
        };
        assert_eq!(lb.start_offset(), 24);

        let before = crate::host::traffic();
        let (direct, shape) = ChannelSum.cpu_fwd(sa, la)?;
        let (hosted, hshape) = via_host::fwd1(&ChannelSum, sa, la)?;
        assert_eq!((values(&hosted), hshape), (values(&direct), shape));
        assert_eq!(values(&direct), vec![60., 92., 124.]);

        let (hosted, shape) = via_host::fwd2(&Mix, sa, la, sb, lb)?;
        assert_eq!(shape.dims(), [2, 3, 4]);
        let want: Vec<f32> = (0..24).map(|i| i as f32 - 2.0 * (24 + i) as f32).collect();
        assert_eq!(values(&hosted), want);

        let (hosted, _) = via_host::fwd3(&Mix, sa, la, sb, lb, sc, lc)?;
        let want: Vec<f32> = want.iter().map(|v| v + 3.0).collect();
        assert_eq!(values(&hosted), want);
        // Each call is one counted round trip (the direct cpu_fwd is none).
        assert_eq!(crate::host::traffic().since(before).round_trips, 3);
        Ok(())
    }
}
