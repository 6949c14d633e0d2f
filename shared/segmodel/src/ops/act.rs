use super::{f32s, no_gpu_fwd};
use crate::cpu;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};

struct LeakyRelu {
    slope: f32,
}

impl CustomOp1 for LeakyRelu {
    fn name(&self) -> &'static str {
        "leaky-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, self.name())?;
        Ok((
            CpuStorage::F32(cpu::act::forward(x, self.slope)),
            l.shape().clone(),
        ))
    }

    no_gpu_fwd!(1);

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        Ok(Some(res.apply_op2_no_bwd(
            &g,
            &LeakyReluGrad { slope: self.slope },
        )?))
    }
}

struct LeakyReluGrad {
    slope: f32,
}

impl CustomOp2 for LeakyReluGrad {
    fn name(&self) -> &'static str {
        "leaky-relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = f32s(s1, l1, self.name())?;
        let g = f32s(s2, l2, self.name())?;
        Ok((
            CpuStorage::F32(cpu::act::backward(y, g, self.slope)),
            l1.shape().clone(),
        ))
    }

    no_gpu_fwd!(2);
}

/// The kernel tier of [`super::leaky_relu`].
pub(super) fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    check(x, slope)?;
    x.contiguous()?.apply_op1(LeakyRelu {
        slope: slope as f32,
    })
}

/// Validates the arguments of a leaky ReLU (both tiers).
pub(super) fn check(x: &Tensor, slope: f64) -> Result<()> {
    if x.dtype() != DType::F32 {
        bail!(
            "segmodel: leaky_relu input must be f32, got {:?}",
            x.dtype()
        )
    }
    if !(slope >= 0.0 && slope.is_finite()) {
        bail!("segmodel: leaky_relu slope must be finite and >= 0, got {slope}")
    }
    Ok(())
}
