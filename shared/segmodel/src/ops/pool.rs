use super::{dims5, f32s, no_gpu_fwd};
use crate::cpu::pool as kernel;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

fn planes_dims(l: &Layout) -> (usize, [usize; 3]) {
    let d = l.dims();
    (d[0] * d[1], [d[2], d[3], d[4]])
}

struct MaxPool2;

impl CustomOp1 for MaxPool2 {
    fn name(&self) -> &'static str {
        "max-pool3d-2x"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, self.name())?;
        let (planes, dims) = planes_dims(l);
        let [d, h, w] = kernel::out_dims(dims);
        let y = kernel::forward(x, planes, dims);
        Ok((
            CpuStorage::F32(y),
            Shape::from((l.dims()[0], l.dims()[1], d, h, w)),
        ))
    }

    no_gpu_fwd!(1);

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            arg.apply_op2_no_bwd(&grad.contiguous()?, &MaxPool2Grad)?,
        ))
    }
}

/// `dx` from `(x, dy)`.
struct MaxPool2Grad;

impl CustomOp2 for MaxPool2Grad {
    fn name(&self) -> &'static str {
        "max-pool3d-2x-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, self.name())?;
        let dy = f32s(s2, l2, self.name())?;
        let (planes, dims) = planes_dims(l1);
        Ok((
            CpuStorage::F32(kernel::backward(x, dy, planes, dims)),
            l1.shape().clone(),
        ))
    }

    no_gpu_fwd!(2);
}

/// The kernel tier of [`super::max_pool3d_2x`].
pub(super) fn max_pool3d_2x(x: &Tensor) -> Result<Tensor> {
    dims5(x, "max_pool3d input")?;
    x.contiguous()?.apply_op1(MaxPool2)
}
