//! 3D segmentation on candle: the 3D ops candle lacks (conv3d, 2× max-pool, 2× transposed
//! conv, instance norm, fused activations) as custom ops with CPU kernels, a 3D U-Net, the
//! softmax Dice loss, a training step and safetensors checkpoints.
//!
//! Tensors are `f32`, channels-first: `[B, C, D, H, W]`. Call
//! [`init_compute_threads`] once at process start (flush-to-zero, rayon pool).
//!
//! - [`ops`]: differentiable functional ops ([`ops::conv3d`], [`ops::max_pool3d_2x`],
//!   [`ops::conv_transpose3d_2x`], [`ops::instance_norm3d`], [`ops::relu`], …)
//! - [`nn`]: candle-nn style layers over them
//! - [`unet`]: [`UNet3d`] and [`UNetConfig`]
//! - [`loss`]: [`soft_dice_loss`] and [`DiceLossConfig`]
//! - [`train`]: [`train_step`] and [`SegTrainer`]
//! - [`checkpoint`]: [`save_checkpoint`] / [`load_checkpoint`]
//! - [`init`]: seeded parameter initialization

pub(crate) mod cpu;

pub mod checkpoint;
pub mod host;
pub mod infer;
pub mod init;
pub mod loss;
pub mod nn;
pub mod ops;
pub mod postprocess;
pub mod setup;
pub mod testing;
pub mod train;
pub mod unet;

pub use candle_core;
pub use candle_nn;
#[doc(hidden)]
pub use simd;

pub use checkpoint::{CheckpointError, inference_unet, load_checkpoint, save_checkpoint};
pub use host::{HostTraffic, traffic};
pub use init::seeded_var_builder;
pub use loss::{DiceLossConfig, soft_dice_loss, soft_dice_scores};
pub use setup::{
    enable_flush_denormals, flush_denormals_enabled, init_compute_threads, keep_freed_pages,
    purge_delay_ms,
};
pub use train::{SegTrainer, TrainConfig, train_step};
pub use unet::{UNet3d, UNetConfig, unet3d};
