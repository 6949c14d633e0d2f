//! Differentiable 3D ops as candle [`CustomOp1`]/[`CustomOp2`]/[`CustomOp3`]s.
//!
//! Each op validates shapes when it is built, runs the kernel from [`crate::cpu`] on the CPU,
//! and returns a "no CUDA kernel yet" error on CUDA. Backward passes are themselves custom
//! ops (without backward), so a CUDA port only has to fill in `cuda_fwd` everywhere.
//! All ops take and return `f32` tensors; inputs are made contiguous first.

mod act;
mod conv;
mod loss;
mod norm;
mod pool;
mod up;

pub use act::{leaky_relu, relu};
pub use conv::conv3d;
pub use loss::soft_dice_loss;
pub(crate) use loss::soft_dice_scores;
pub use norm::{Activation, instance_norm3d};
pub use pool::max_pool3d_2x;
pub use up::conv_transpose3d_2x;

use crate::cpu;
use candle_core::{
    CpuStorage, CustomOp1, DType, Error, Layout, Result, Shape, Tensor, backend::BackendStorage,
    bail,
};
use std::borrow::Cow;

/// The error every op returns on a device without a kernel.
pub(crate) fn unsupported_device(op: &str, device: &str) -> Error {
    Error::Msg(format!(
        "segmodel: `{op}` has no {device} kernel yet (CPU only for now)"
    ))
    .bt()
}

/// Implements `cuda_fwd`/`metal_fwd` of a custom op as "unsupported" errors.
macro_rules! no_gpu_fwd {
    (1) => {
        fn cuda_fwd(
            &self,
            _: &candle_core::CudaStorage,
            _: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
            Err($crate::ops::unsupported_device(
                <Self as candle_core::CustomOp1>::name(self),
                "CUDA",
            ))
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
            _: &candle_core::CudaStorage,
            _: &candle_core::Layout,
            _: &candle_core::CudaStorage,
            _: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
            Err($crate::ops::unsupported_device(
                <Self as candle_core::CustomOp2>::name(self),
                "CUDA",
            ))
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
            _: &candle_core::CudaStorage,
            _: &candle_core::Layout,
            _: &candle_core::CudaStorage,
            _: &candle_core::Layout,
            _: &candle_core::CudaStorage,
            _: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
            Err($crate::ops::unsupported_device(
                <Self as candle_core::CustomOp3>::name(self),
                "CUDA",
            ))
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
