//! One optimization step, and a small owner of model + optimizer for the trainer service.

use crate::checkpoint::{self, CheckpointError};
use crate::init::seeded_var_builder;
use crate::loss::DiceLossConfig;
use crate::unet::{UNet3d, UNetConfig, unet3d};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};

/// Runs forward, Dice loss, backward and one optimizer step; returns the loss before the
/// step (its one read back to the host, [`crate::host`]). The model's
/// [`UNetConfig::ops`](crate::UNetConfig::ops) picks the tier of the loss too. `images [B, Cin, D, H, W]` f32, `labels [B, D, H, W]` class indices.
pub fn train_step<O: Optimizer>(
    model: &UNet3d,
    opt: &mut O,
    images: &Tensor,
    labels: &Tensor,
    loss: &DiceLossConfig,
) -> Result<f32> {
    let logits = model.forward(images)?;
    let l = model.config().ops.soft_dice_loss(&logits, labels, loss)?;
    opt.backward_step(&l)?;
    crate::host::result_scalar::<f32>(&l)
}

/// Optimizer and loss settings of a [`SegTrainer`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainConfig {
    /// Adam learning rate (the paper searches [1e-4, 1e-2]).
    pub lr: f64,
    /// Decoupled weight decay; 0 makes AdamW plain Adam (the paper's optimizer).
    pub weight_decay: f64,
    pub loss: DiceLossConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            weight_decay: 0.0,
            loss: DiceLossConfig::default(),
        }
    }
}

/// A U-Net with its variables and an Adam(W) optimizer.
pub struct SegTrainer {
    varmap: VarMap,
    model: UNet3d,
    opt: AdamW,
    cfg: TrainConfig,
}

impl SegTrainer {
    /// A freshly initialized network (deterministic in `seed`) on `device`.
    pub fn new(unet: &UNetConfig, cfg: TrainConfig, seed: u64, device: &Device) -> Result<Self> {
        let varmap = VarMap::new();
        let model = unet3d(unet, seeded_var_builder(&varmap, seed, DType::F32, device))?;
        let params = ParamsAdamW {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        };
        let opt = AdamW::new(varmap.all_vars(), params)?;
        Ok(Self {
            varmap,
            model,
            opt,
            cfg,
        })
    }

    /// One training step on a batch; returns the loss before the update.
    pub fn step(&mut self, images: &Tensor, labels: &Tensor) -> Result<f32> {
        train_step(&self.model, &mut self.opt, images, labels, &self.cfg.loss)
    }

    /// Logits `[B, num_classes, D, H, W]` without building a gradient graph.
    pub fn predict(&self, images: &Tensor) -> Result<Tensor> {
        Ok(self.model.forward(&images.detach())?.detach())
    }

    pub fn set_learning_rate(&mut self, lr: f64) {
        self.opt.set_learning_rate(lr);
        self.cfg.lr = lr;
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    pub fn model(&self) -> &UNet3d {
        &self.model
    }

    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The parameters as safetensors bytes.
    pub fn save_checkpoint(&self) -> std::result::Result<Vec<u8>, CheckpointError> {
        checkpoint::save_checkpoint(&self.varmap)
    }

    /// Replaces the parameters from safetensors bytes (strict; see
    /// [`checkpoint::load_checkpoint`]). The optimizer moments are kept.
    pub fn load_checkpoint(&mut self, bytes: &[u8]) -> std::result::Result<(), CheckpointError> {
        checkpoint::load_checkpoint(&self.varmap, bytes)
    }
}
