//! Differentiable 3D ops as candle [`CustomOp1`]/[`CustomOp2`]/[`CustomOp3`]s.
//!
//! Each op validates shapes when it is built and runs the kernel from [`crate::cpu`] on the
//! CPU; on CUDA it runs the same kernel on host copies of its inputs ([`via_host`]: correct,
//! not fast) until CUDA kernels exist. Backward passes are themselves custom
//! ops (without backward), so a CUDA port only has to fill in `cuda_fwd` everywhere.
//! All ops take and return `f32` tensors; inputs are made contiguous first.

mod act;
mod conv;
pub mod generic;
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

/// Runs a CPU kernel for tensors on a GPU device: copies the inputs to the host, runs
/// `cpu_fwd` there and copies the result back. Correct on any device, but every call pays
/// two host-device transfers and runs at CPU speed: it makes a CUDA trainer work (the
/// standard candle ops around these run on the GPU) until `segmodel` has CUDA kernels.
pub(crate) mod via_host {
    use candle_core::{
        CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape,
        backend::{BackendDevice, BackendStorage},
    };

    /// Storage whose device makes storage of the same type (every candle backend).
    pub(crate) trait Host: BackendStorage<Device: BackendDevice<Storage = Self>> {}
    impl<S: BackendStorage<Device: BackendDevice<Storage = S>>> Host for S {}

    fn back<S: Host>(like: &S, out: (CpuStorage, Shape)) -> Result<(S, Shape)> {
        Ok((like.device().storage_from_cpu_storage(&out.0)?, out.1))
    }

    pub(crate) fn fwd1<O: CustomOp1, S: Host>(op: &O, s: &S, l: &Layout) -> Result<(S, Shape)> {
        back(s, op.cpu_fwd(&s.to_cpu_storage()?, l)?)
    }

    pub(crate) fn fwd2<O: CustomOp2, S: Host>(
        op: &O,
        s1: &S,
        l1: &Layout,
        s2: &S,
        l2: &Layout,
    ) -> Result<(S, Shape)> {
        let out = op.cpu_fwd(&s1.to_cpu_storage()?, l1, &s2.to_cpu_storage()?, l2)?;
        back(s1, out)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fwd3<O: CustomOp3, S: Host>(
        op: &O,
        s1: &S,
        l1: &Layout,
        s2: &S,
        l2: &Layout,
        s3: &S,
        l3: &Layout,
    ) -> Result<(S, Shape)> {
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
        Ok(())
    }
}
