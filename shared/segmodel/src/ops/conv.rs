use super::{ChannelSum, check_vec, dims5, f32s, no_gpu_fwd};
use crate::cpu::conv::{self as kernel, ConvGeom};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};

/// Forward op on `(x, w[, bias])`.
struct Conv3d {
    geom: ConvGeom,
}

impl Conv3d {
    fn out_shape(&self) -> Shape {
        let g = &self.geom;
        let [d, h, w] = g.out_dims;
        Shape::from((g.n, g.cout, d, h, w))
    }

    fn run(&self, x: &[f32], w: &[f32], b: Option<&[f32]>) -> (CpuStorage, Shape) {
        let g = &self.geom;
        let mut y = vec![0f32; g.n * g.cout * g.out_size()];
        kernel::forward(g, x, w, b, &mut y);
        (CpuStorage::F32(y), self.out_shape())
    }

    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let geom = self.geom;
        // Skipping dx for an untracked input saves a whole transposed convolution on the
        // first layer (candle's autograd would compute it and throw it away).
        let dx = match x.track_op() {
            true => Some(g.apply_op2_no_bwd(w, &Conv3dInputGrad { geom })?),
            false => None,
        };
        let dw = match w.track_op() {
            true => Some(x.apply_op2_no_bwd(&g, &Conv3dWeightGrad { geom })?),
            false => None,
        };
        let db = match b {
            Some(b) if b.track_op() => Some(g.apply_op1_no_bwd(&ChannelSum)?),
            _ => None,
        };
        Ok((dx, dw, db))
    }
}

impl CustomOp2 for Conv3d {
    fn name(&self) -> &'static str {
        "conv3d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, "conv3d")?;
        let w = f32s(s2, l2, "conv3d")?;
        Ok(self.run(x, w, None))
    }

    no_gpu_fwd!(2);

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.grads(x, w, None, grad)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for Conv3d {
    fn name(&self) -> &'static str {
        "conv3d"
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
        let x = f32s(s1, l1, "conv3d")?;
        let w = f32s(s2, l2, "conv3d")?;
        let b = f32s(s3, l3, "conv3d")?;
        Ok(self.run(x, w, Some(b)))
    }

    no_gpu_fwd!(3);

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.grads(x, w, Some(b), grad)
    }
}

/// `dx` from `(dy, w)`.
struct Conv3dInputGrad {
    geom: ConvGeom,
}

impl CustomOp2 for Conv3dInputGrad {
    fn name(&self) -> &'static str {
        "conv3d-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geom;
        let dy = f32s(s1, l1, "conv3d")?;
        let w = f32s(s2, l2, "conv3d")?;
        let mut dx = vec![0f32; g.n * g.cin * g.in_size()];
        kernel::input_grad(g, w, dy, &mut dx);
        let [d, h, wd] = g.in_dims;
        Ok((CpuStorage::F32(dx), Shape::from((g.n, g.cin, d, h, wd))))
    }

    no_gpu_fwd!(2);
}

/// `dw` from `(x, dy)`.
struct Conv3dWeightGrad {
    geom: ConvGeom,
}

impl CustomOp2 for Conv3dWeightGrad {
    fn name(&self) -> &'static str {
        "conv3d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geom;
        let x = f32s(s1, l1, "conv3d")?;
        let dy = f32s(s2, l2, "conv3d")?;
        let dw = kernel::weight_grad(g, x, dy);
        Ok((
            CpuStorage::F32(dw),
            Shape::from((g.cout, g.cin, g.k, g.k, g.k)),
        ))
    }

    no_gpu_fwd!(2);
}

/// The kernel tier of [`super::conv3d`].
pub(super) fn conv3d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    stride: usize,
) -> Result<Tensor> {
    let geom = geometry(x, w, bias, padding, stride)?;
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let op = Conv3d { geom };
    match bias {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}

/// Validates the arguments of a 3D convolution (both tiers) and returns its geometry.
pub(super) fn geometry(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    stride: usize,
) -> Result<ConvGeom> {
    let [n, cin, d, h, wd] = dims5(x, "conv3d input")?;
    let [cout, wcin, k, k2, k3] = dims5(w, "conv3d weight")?;
    if wcin != cin {
        bail!("segmodel: conv3d weight expects {wcin} input channels, input has {cin}")
    }
    if k == 0 || k != k2 || k != k3 {
        bail!(
            "segmodel: conv3d kernel must be cubic and non-empty, got {:?}",
            w.shape()
        )
    }
    if stride == 0 {
        bail!("segmodel: conv3d stride must be >= 1")
    }
    if padding >= k {
        bail!("segmodel: conv3d padding {padding} must be smaller than the kernel size {k}")
    }
    if let Some(b) = bias {
        check_vec(b, cout, "conv3d bias")?;
    }
    match ConvGeom::forward(n, cin, cout, k, [d, h, wd], padding, stride) {
        Some(geom) => Ok(geom),
        None => bail!(
            "segmodel: conv3d input {:?} is smaller than the kernel {k} with padding {padding}",
            x.shape()
        ),
    }
}
