//! Softmax multi-class soft Dice loss, optionally plus cross-entropy.
//!
//! `loss = 1 − mean_{c ∈ classes} (2·Σ p_c t_c + smooth) / (Σ p_c + Σ t_c + smooth)
//!        + ce_weight · mean_voxels(−log p_label)`
//!
//! with `p = softmax(logits)` over the class axis and `t` the one-hot labels. The sums run
//! over the whole batch and all voxels ("batch Dice", as nnU-Net's `batch_dice` and MONAI's
//! `DiceLoss(batch=True)`): a class absent from one patch does not produce a 0/0 term.
//! The background class 0 is excluded from the mean by default (nnU-Net's `do_bg=False`):
//! it dominates the voxel count and would make the loss look good for an all-background
//! prediction. A class absent from both labels and prediction scores `smooth/smooth = 1`.

use candle_core::{Result, Tensor};

pub use crate::ops::soft_dice_loss;

/// Parameters of [`soft_dice_loss`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DiceLossConfig {
    /// Include class 0 in the class mean (default false).
    pub include_background: bool,
    /// Added to numerator and denominator of every class (default 1e-5, MONAI's default).
    pub smooth: f64,
    /// Weight of the mean voxel cross-entropy added to the Dice loss (default 0: Dice only;
    /// nnU-Net uses 1).
    pub ce_weight: f64,
}

impl Default for DiceLossConfig {
    fn default() -> Self {
        Self {
            include_background: false,
            smooth: 1e-5,
            ce_weight: 0.0,
        }
    }
}

/// Per-class soft Dice of `softmax(logits)` against `labels` as a `[K]` f32 tensor
/// (background included, whatever `cfg.include_background`; no gradient). A cheap training
/// metric; the evaluator's hard Dice on argmax is a different quantity.
pub fn soft_dice_scores(logits: &Tensor, labels: &Tensor, cfg: &DiceLossConfig) -> Result<Tensor> {
    crate::ops::OpsPath::Auto.soft_dice_scores(logits, labels, cfg)
}
