//! candle-nn style layers over the [`crate::ops`]: a config (Copy + Default), the struct, a
//! constructor taking a `VarBuilder`, and `impl Module`.
//!
//! Parameter names: `weight` and `bias` under the builder's prefix, as candle-nn and PyTorch.
//! Every layer runs its op through an [`OpsPath`] (default [`OpsPath::Auto`]; `with_ops`
//! changes it).

use crate::ops::{Activation, OpsPath};
use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder, init};

/// Options of a [`Conv3d`] layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv3dConfig {
    pub padding: usize,
    pub stride: usize,
    pub bias: bool,
}

impl Default for Conv3dConfig {
    fn default() -> Self {
        Self {
            padding: 0,
            stride: 1,
            bias: true,
        }
    }
}

/// A 3D convolution with a `[Cout, Cin, k, k, k]` weight and optional `[Cout]` bias.
#[derive(Clone, Debug)]
pub struct Conv3d {
    weight: Tensor,
    bias: Option<Tensor>,
    cfg: Conv3dConfig,
    ops: OpsPath,
}

impl Conv3d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, cfg: Conv3dConfig) -> Self {
        Self {
            weight,
            bias,
            cfg,
            ops: OpsPath::Auto,
        }
    }

    /// The same layer running its op through `ops`.
    pub fn with_ops(self, ops: OpsPath) -> Self {
        Self { ops, ..self }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

/// Builds a [`Conv3d`]: weight Kaiming-normal (fan-in, ReLU gain), bias zero.
pub fn conv3d(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    cfg: Conv3dConfig,
    vb: VarBuilder,
) -> Result<Conv3d> {
    let weight = vb.get_with_hints(
        (out_channels, in_channels, kernel, kernel, kernel),
        "weight",
        init::DEFAULT_KAIMING_NORMAL,
    )?;
    let bias = match cfg.bias {
        true => Some(vb.get_with_hints(out_channels, "bias", init::ZERO)?),
        false => None,
    };
    Ok(Conv3d::new(weight, bias, cfg))
}

impl Module for Conv3d {
    /// `[B, Cin, D, H, W] -> [B, Cout, Do, Ho, Wo]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.ops.conv3d(
            x,
            &self.weight,
            self.bias.as_ref(),
            self.cfg.padding,
            self.cfg.stride,
        )
    }
}

/// 2× upsampling by a stride-2 2×2×2 transposed convolution, weight `[Cin, Cout, 2, 2, 2]`
/// (PyTorch `ConvTranspose3d` layout), bias `[Cout]`.
#[derive(Clone, Debug)]
pub struct ConvTranspose3d2x {
    weight: Tensor,
    bias: Option<Tensor>,
    ops: OpsPath,
}

impl ConvTranspose3d2x {
    /// The same layer running its op through `ops`.
    pub fn with_ops(self, ops: OpsPath) -> Self {
        Self { ops, ..self }
    }
}

/// Builds a [`ConvTranspose3d2x`]: weight normal with std `1/sqrt(Cin)` (each output voxel
/// sums `Cin` terms), bias zero.
pub fn conv_transpose3d_2x(
    in_channels: usize,
    out_channels: usize,
    bias: bool,
    vb: VarBuilder,
) -> Result<ConvTranspose3d2x> {
    let stdev = 1.0 / (in_channels.max(1) as f64).sqrt();
    let weight = vb.get_with_hints(
        (in_channels, out_channels, 2, 2, 2),
        "weight",
        Init::Randn { mean: 0.0, stdev },
    )?;
    let bias = match bias {
        true => Some(vb.get_with_hints(out_channels, "bias", init::ZERO)?),
        false => None,
    };
    Ok(ConvTranspose3d2x {
        weight,
        bias,
        ops: OpsPath::Auto,
    })
}

impl Module for ConvTranspose3d2x {
    /// `[B, Cin, D, H, W] -> [B, Cout, 2D, 2H, 2W]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.ops
            .conv_transpose3d_2x(x, &self.weight, self.bias.as_ref())
    }
}

/// Options of an [`InstanceNorm3d`] layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InstanceNormConfig {
    pub eps: f64,
    /// Activation fused after the affine transform.
    pub act: Activation,
}

impl Default for InstanceNormConfig {
    fn default() -> Self {
        Self {
            eps: 1e-5,
            act: Activation::Identity,
        }
    }
}

/// Instance normalization with affine `[C]` `weight` (γ, init 1) and `bias` (β, init 0),
/// and a fused activation.
#[derive(Clone, Debug)]
pub struct InstanceNorm3d {
    weight: Tensor,
    bias: Tensor,
    cfg: InstanceNormConfig,
    ops: OpsPath,
}

impl InstanceNorm3d {
    /// The same layer running its op through `ops`.
    pub fn with_ops(self, ops: OpsPath) -> Self {
        Self { ops, ..self }
    }
}

pub fn instance_norm3d(
    channels: usize,
    cfg: InstanceNormConfig,
    vb: VarBuilder,
) -> Result<InstanceNorm3d> {
    let weight = vb.get_with_hints(channels, "weight", init::ONE)?;
    let bias = vb.get_with_hints(channels, "bias", init::ZERO)?;
    Ok(InstanceNorm3d {
        weight,
        bias,
        cfg,
        ops: OpsPath::Auto,
    })
}

impl Module for InstanceNorm3d {
    /// `[B, C, D, H, W] -> [B, C, D, H, W]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.ops
            .instance_norm3d(x, &self.weight, &self.bias, self.cfg.eps, self.cfg.act)
    }
}
