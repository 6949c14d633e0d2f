use super::{check_vec, f32s, no_gpu_fwd, split_flat};
use crate::cpu::norm as kernel;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};

/// The activation fused into [`instance_norm3d`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Activation {
    Identity,
    #[default]
    Relu,
    /// Leaky ReLU with this negative slope (≥ 0).
    LeakyRelu(f64),
}

impl Activation {
    /// The kernel's negative slope: 1 is the identity, 0 ReLU.
    pub(super) fn slope(self) -> Result<f32> {
        Ok(match self {
            Self::Identity => 1.0,
            Self::Relu => 0.0,
            Self::LeakyRelu(s) if s >= 0.0 && s.is_finite() => s as f32,
            Self::LeakyRelu(s) => bail!("segmodel: leaky ReLU slope must be >= 0, got {s}"),
        })
    }
}

fn ncs(l: &Layout) -> (usize, usize, usize) {
    let d = l.dims();
    (d[0], d[1], d[2..].iter().product())
}

struct InstanceNorm {
    eps: f64,
    slope: f32,
}

impl CustomOp3 for InstanceNorm {
    fn name(&self) -> &'static str {
        "instance-norm"
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
        let x = f32s(s1, l1, self.name())?;
        let gamma = f32s(s2, l2, self.name())?;
        let beta = f32s(s3, l3, self.name())?;
        let (n, c, s) = ncs(l1);
        let y = kernel::forward(x, gamma, beta, n, c, s, self.eps, self.slope);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    no_gpu_fwd!(3);

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let gb = Tensor::cat(&[gamma, beta], 0)?;
        let flat = x.apply_op3_no_bwd(
            &g,
            &gb,
            &InstanceNormGrad {
                eps: self.eps,
                slope: self.slope,
            },
        )?;
        let mut v = split_flat(&flat, &[x.shape(), gamma.shape(), beta.shape()])?.into_iter();
        let (dx, dg, db) = (v.next(), v.next(), v.next());
        Ok((
            dx.filter(|_| x.track_op()),
            dg.filter(|_| gamma.track_op()),
            db.filter(|_| beta.track_op()),
        ))
    }
}

/// `[dx | dγ | dβ]` flattened, from `(x, dy, [γ | β])`.
struct InstanceNormGrad {
    eps: f64,
    slope: f32,
}

impl CustomOp3 for InstanceNormGrad {
    fn name(&self) -> &'static str {
        "instance-norm-grad"
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
        let x = f32s(s1, l1, self.name())?;
        let dy = f32s(s2, l2, self.name())?;
        let gb = f32s(s3, l3, self.name())?;
        let (n, c, s) = ncs(l1);
        let (gamma, beta) = gb.split_at(c);
        let (mut dx, dg, db) = kernel::backward(x, dy, gamma, beta, n, c, s, self.eps, self.slope);
        dx.extend_from_slice(&dg);
        dx.extend_from_slice(&db);
        let len = dx.len();
        Ok((CpuStorage::F32(dx), Shape::from(len)))
    }

    no_gpu_fwd!(3);
}

/// The kernel tier of [`super::instance_norm3d`].
pub(super) fn instance_norm3d(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    act: Activation,
) -> Result<Tensor> {
    let op = InstanceNorm {
        eps,
        slope: check(x, gamma, beta, eps, act)?,
    };
    x.contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)
}

/// Validates the arguments of an instance norm (both tiers); returns the activation's slope.
pub(super) fn check(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    act: Activation,
) -> Result<f32> {
    if x.dtype() != DType::F32 || x.rank() < 3 {
        bail!(
            "segmodel: instance_norm input must be f32 [N, C, ...], got {:?} {:?}",
            x.dtype(),
            x.shape()
        )
    }
    let c = x.dims()[1];
    check_vec(gamma, c, "instance_norm weight")?;
    check_vec(beta, c, "instance_norm bias")?;
    if eps.is_nan() || eps <= 0.0 {
        bail!("segmodel: instance_norm eps must be > 0, got {eps}")
    }
    act.slope()
}
