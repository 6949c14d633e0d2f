use super::{ChannelSum, check_vec, dims5, f32s, no_gpu_fwd, split_flat};
use crate::cpu::up::{self as kernel, UpGeom};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};

struct Up2 {
    geom: UpGeom,
}

impl Up2 {
    fn run(&self, x: &[f32], w: &[f32], b: Option<&[f32]>) -> (CpuStorage, Shape) {
        let g = &self.geom;
        let [d, h, wd] = g.out_dims();
        let y = kernel::forward(g, x, w, b);
        (CpuStorage::F32(y), Shape::from((g.n, g.cout, d, h, wd)))
    }

    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let want_dx = x.track_op();
        let (dx, dw) = if want_dx || w.track_op() {
            let flat = x.apply_op3_no_bwd(
                w,
                &g,
                &Up2Grad {
                    geom: self.geom,
                    want_dx,
                },
            )?;
            if want_dx {
                let mut v = split_flat(&flat, &[x.shape(), w.shape()])?.into_iter();
                (v.next(), v.next())
            } else {
                (None, Some(flat.reshape(w.shape())?))
            }
        } else {
            (None, None)
        };
        let dw = if w.track_op() { dw } else { None };
        let db = match b {
            Some(b) if b.track_op() => Some(g.apply_op1_no_bwd(&ChannelSum)?),
            _ => None,
        };
        Ok((dx, dw, db))
    }
}

impl CustomOp2 for Up2 {
    fn name(&self) -> &'static str {
        "conv-transpose3d-2x"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, "conv-transpose3d-2x")?;
        let w = f32s(s2, l2, "conv-transpose3d-2x")?;
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

impl CustomOp3 for Up2 {
    fn name(&self) -> &'static str {
        "conv-transpose3d-2x"
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
        let x = f32s(s1, l1, "conv-transpose3d-2x")?;
        let w = f32s(s2, l2, "conv-transpose3d-2x")?;
        let b = f32s(s3, l3, "conv-transpose3d-2x")?;
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

/// `[dx (if wanted) | dw]` flattened, from `(x, w, dy)`.
struct Up2Grad {
    geom: UpGeom,
    want_dx: bool,
}

impl CustomOp3 for Up2Grad {
    fn name(&self) -> &'static str {
        "conv-transpose3d-2x-grad"
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
        let x = f32s(s1, l1, "conv-transpose3d-2x")?;
        let w = f32s(s2, l2, "conv-transpose3d-2x")?;
        let dy = f32s(s3, l3, "conv-transpose3d-2x")?;
        let (dx, dw) = kernel::backward(&self.geom, x, w, dy, self.want_dx);
        let mut flat = dx.unwrap_or_default();
        flat.extend_from_slice(&dw);
        let n = flat.len();
        Ok((CpuStorage::F32(flat), Shape::from(n)))
    }

    no_gpu_fwd!(3);
}

/// The kernel tier of [`super::conv_transpose3d_2x`].
pub(super) fn conv_transpose3d_2x(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let op = Up2 {
        geom: geometry(x, w, bias)?,
    };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match bias {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}

/// Validates the arguments of a 2× transposed convolution (both tiers).
pub(super) fn geometry(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<UpGeom> {
    let [n, cin, d, h, wd] = dims5(x, "conv_transpose3d_2x input")?;
    let [wcin, cout, k1, k2, k3] = dims5(w, "conv_transpose3d_2x weight")?;
    if wcin != cin || [k1, k2, k3] != [2, 2, 2] {
        bail!(
            "segmodel: conv_transpose3d_2x weight must be [{cin}, Cout, 2, 2, 2], got {:?}",
            w.shape()
        )
    }
    if let Some(b) = bias {
        check_vec(b, cout, "conv_transpose3d_2x bias")?;
    }
    Ok(UpGeom {
        n,
        cin,
        cout,
        dims: [d, h, wd],
    })
}
