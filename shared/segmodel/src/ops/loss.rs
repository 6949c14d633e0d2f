use super::{f32s, labels_u32, no_gpu_fwd};
use crate::cpu::loss::{self as kernel, LossParams};
use crate::loss::DiceLossConfig;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};

fn bks(l: &Layout) -> (usize, usize, usize) {
    let d = l.dims();
    (d[0], d[1], d[2..].iter().product())
}

fn params(cfg: &DiceLossConfig) -> LossParams {
    LossParams {
        include_background: cfg.include_background,
        smooth: cfg.smooth,
        ce_weight: cfg.ce_weight,
    }
}

struct SoftDice {
    params: LossParams,
}

impl CustomOp2 for SoftDice {
    fn name(&self) -> &'static str {
        "soft-dice-loss"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let logits = f32s(s1, l1, self.name())?;
        let (b, k, s) = bks(l1);
        let labels = labels_u32(s2, l2, k, self.name())?;
        let sums = kernel::sums(logits, &labels, b, k, s);
        let loss = kernel::loss(&sums, &self.params, b * s);
        Ok((CpuStorage::F32(vec![loss as f32]), Shape::from(())))
    }

    no_gpu_fwd!(2);

    fn bwd(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let op = SoftDiceGrad {
            params: self.params,
        };
        Ok((
            Some(logits.apply_op3_no_bwd(labels, &grad.contiguous()?, &op)?),
            None,
        ))
    }
}

/// `dL/dlogits` from `(logits, labels, upstream scalar)`.
struct SoftDiceGrad {
    params: LossParams,
}

impl CustomOp3 for SoftDiceGrad {
    fn name(&self) -> &'static str {
        "soft-dice-loss-grad"
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
        let logits = f32s(s1, l1, self.name())?;
        let (b, k, s) = bks(l1);
        let labels = labels_u32(s2, l2, k, self.name())?;
        let up = f32s(s3, l3, self.name())?;
        let Some(&up) = up.first() else {
            bail!("segmodel soft-dice-loss-grad: empty upstream gradient")
        };
        let dl = kernel::grad(logits, &labels, b, k, s, &self.params, up);
        Ok((CpuStorage::F32(dl), l1.shape().clone()))
    }

    no_gpu_fwd!(3);
}

/// Per-class soft Dice of softmax(logits) against the labels, no gradient.
struct SoftDiceScores {
    params: LossParams,
}

impl CustomOp2 for SoftDiceScores {
    fn name(&self) -> &'static str {
        "soft-dice-scores"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let logits = f32s(s1, l1, self.name())?;
        let (b, k, s) = bks(l1);
        let labels = labels_u32(s2, l2, k, self.name())?;
        let sums = kernel::sums(logits, &labels, b, k, s);
        let d: Vec<f32> = kernel::dice_per_class(&sums, &self.params)
            .into_iter()
            .map(|v| v as f32)
            .collect();
        Ok((CpuStorage::F32(d), Shape::from(k)))
    }

    no_gpu_fwd!(2);
}

/// Validates the arguments of the Dice loss (both tiers).
pub(super) fn check(logits: &Tensor, labels: &Tensor, cfg: &DiceLossConfig) -> Result<()> {
    if logits.dtype() != DType::F32 || logits.rank() < 3 {
        bail!(
            "segmodel: dice loss logits must be f32 [B, K, ...], got {:?} {:?}",
            logits.dtype(),
            logits.shape()
        )
    }
    let (b, k) = (logits.dims()[0], logits.dims()[1]);
    let want: Vec<usize> = std::iter::once(b)
        .chain(logits.dims()[2..].iter().copied())
        .collect();
    if labels.dims() != want.as_slice() {
        bail!(
            "segmodel: dice loss labels must be {want:?} to match logits {:?}, got {:?}",
            logits.shape(),
            labels.shape()
        )
    }
    if !matches!(labels.dtype(), DType::U8 | DType::U32 | DType::I64) {
        bail!(
            "segmodel: dice loss labels must be u8, u32 or i64, got {:?}",
            labels.dtype()
        )
    }
    if !cfg.include_background && k < 2 {
        bail!("segmodel: dice loss without background needs at least 2 classes, got {k}")
    }
    if !(cfg.smooth >= 0.0 && cfg.ce_weight >= 0.0) {
        bail!("segmodel: dice loss smooth and ce_weight must be >= 0")
    }
    Ok(())
}

/// The kernel tier of [`super::soft_dice_loss`].
pub(super) fn soft_dice_loss(
    logits: &Tensor,
    labels: &Tensor,
    cfg: &DiceLossConfig,
) -> Result<Tensor> {
    check(logits, labels, cfg)?;
    logits.contiguous()?.apply_op2(
        &labels.contiguous()?,
        SoftDice {
            params: params(cfg),
        },
    )
}

/// Per-class soft Dice `[K]` (background included), without gradient.
pub(super) fn soft_dice_scores(
    logits: &Tensor,
    labels: &Tensor,
    cfg: &DiceLossConfig,
) -> Result<Tensor> {
    check(logits, labels, cfg)?;
    logits.detach().contiguous()?.apply_op2_no_bwd(
        &labels.contiguous()?,
        &SoftDiceScores {
            params: params(cfg),
        },
    )
}
