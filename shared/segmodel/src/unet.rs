//! A 3D U-Net: per level two (3×3×3 conv → instance norm → ReLU), 2×2×2 max-pooling down,
//! stride-2 transposed convolution up, skip connections by concatenation, 1×1×1 head.
//!
//! Parameter names (stable, so safetensors checkpoints stay loadable), for level `i`:
//! `enc.{i}.conv1.weight`, `enc.{i}.norm1.{weight,bias}`, `enc.{i}.conv2.weight`,
//! `enc.{i}.norm2.{weight,bias}`; for the decoder levels `i < levels − 1`:
//! `up.{i}.{weight,bias}` (from level i+1 to level i) and `dec.{i}.…` as the encoder;
//! `head.{weight,bias}`. Block convolutions have no bias: the instance norm that follows
//! removes any per-channel constant.

use crate::nn::{
    self, Conv3d, Conv3dConfig, ConvTranspose3d2x, InstanceNorm3d, InstanceNormConfig,
};
use crate::ops::{Activation, OpsPath};
use candle_core::{Module, Result, Tensor, bail};
use candle_nn::VarBuilder;

/// Architecture of a [`UNet3d`].
#[derive(Clone, Debug, PartialEq)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub num_classes: usize,
    /// Feature channels per level, finest first; `len()` is the number of levels.
    /// E.g. `[8, 16, 32]` for CPU tests, `[16, 32, 64, 128]` (the default) for real runs.
    pub channels: Vec<usize>,
    /// Instance-norm epsilon.
    pub norm_eps: f64,
    /// Negative slope of the activations (0 = ReLU, nnU-Net uses 0.01).
    pub leaky_slope: f64,
    /// Which tier runs the ops (default: the kernels on the CPU, the generic ops elsewhere).
    /// Not part of the architecture: checkpoints load whatever it is.
    pub ops: OpsPath,
}

impl Default for UNetConfig {
    fn default() -> Self {
        Self {
            in_channels: 1,
            num_classes: 2,
            channels: vec![16, 32, 64, 128],
            norm_eps: 1e-5,
            leaky_slope: 0.0,
            ops: OpsPath::Auto,
        }
    }
}

impl UNetConfig {
    pub fn levels(&self) -> usize {
        self.channels.len()
    }

    /// Every input spatial size must be a multiple of this: `2^(levels − 1)`.
    pub fn size_multiple(&self) -> usize {
        1 << self.levels().saturating_sub(1)
    }

    pub fn validate(&self) -> Result<()> {
        if self.in_channels == 0 || self.num_classes == 0 {
            bail!("segmodel: U-Net needs in_channels and num_classes >= 1")
        }
        if self.channels.is_empty() || self.channels.contains(&0) {
            bail!(
                "segmodel: U-Net channels must be non-empty and positive, got {:?}",
                self.channels
            )
        }
        if self.levels() > 16 {
            bail!(
                "segmodel: U-Net with {} levels is not supported",
                self.levels()
            )
        }
        if !(self.leaky_slope >= 0.0 && self.norm_eps > 0.0) {
            bail!("segmodel: U-Net needs leaky_slope >= 0 and norm_eps > 0")
        }
        Ok(())
    }

    fn act(&self) -> Activation {
        if self.leaky_slope == 0.0 {
            Activation::Relu
        } else {
            Activation::LeakyRelu(self.leaky_slope)
        }
    }
}

/// Two (conv 3×3×3 → instance norm → activation).
#[derive(Clone, Debug)]
pub struct ConvBlock {
    conv1: Conv3d,
    norm1: InstanceNorm3d,
    conv2: Conv3d,
    norm2: InstanceNorm3d,
}

fn conv_block(cin: usize, cout: usize, cfg: &UNetConfig, vb: VarBuilder) -> Result<ConvBlock> {
    let conv_cfg = Conv3dConfig {
        padding: 1,
        stride: 1,
        bias: false,
    };
    let norm_cfg = InstanceNormConfig {
        eps: cfg.norm_eps,
        act: cfg.act(),
    };
    let ops = cfg.ops;
    Ok(ConvBlock {
        conv1: nn::conv3d(cin, cout, 3, conv_cfg, vb.pp("conv1"))?.with_ops(ops),
        norm1: nn::instance_norm3d(cout, norm_cfg, vb.pp("norm1"))?.with_ops(ops),
        conv2: nn::conv3d(cout, cout, 3, conv_cfg, vb.pp("conv2"))?.with_ops(ops),
        norm2: nn::instance_norm3d(cout, norm_cfg, vb.pp("norm2"))?.with_ops(ops),
    })
}

/// What [`UNet3d::forward_tapped`] calls after each layer: the layer's name and its output.
pub type Tap<'a> = dyn FnMut(&str, &Tensor) -> Result<()> + 'a;

impl ConvBlock {
    /// `[B, Cin, D, H, W] -> [B, Cout, D, H, W]`; `tap` sees `{name}.conv1`, `.norm1`, ….
    fn forward_tapped(&self, x: &Tensor, name: &str, tap: &mut Tap<'_>) -> Result<Tensor> {
        let h = self.conv1.forward(x)?;
        tap(&format!("{name}.conv1"), &h)?;
        let h = self.norm1.forward(&h)?;
        tap(&format!("{name}.norm1"), &h)?;
        let h = self.conv2.forward(&h)?;
        tap(&format!("{name}.conv2"), &h)?;
        let h = self.norm2.forward(&h)?;
        tap(&format!("{name}.norm2"), &h)?;
        Ok(h)
    }
}

impl Module for ConvBlock {
    /// `[B, Cin, D, H, W] -> [B, Cout, D, H, W]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_tapped(x, "", &mut |_, _| Ok(()))
    }
}

/// The 3D U-Net; see the module docs for its layout and parameter names.
#[derive(Clone, Debug)]
pub struct UNet3d {
    cfg: UNetConfig,
    enc: Vec<ConvBlock>,
    up: Vec<ConvTranspose3d2x>,
    dec: Vec<ConvBlock>,
    head: Conv3d,
}

/// Builds a [`UNet3d`], creating or fetching its parameters through `vb`.
pub fn unet3d(cfg: &UNetConfig, vb: VarBuilder) -> Result<UNet3d> {
    cfg.validate()?;
    let ch = &cfg.channels;
    let levels = ch.len();
    let mut enc = Vec::with_capacity(levels);
    for i in 0..levels {
        let cin = if i == 0 { cfg.in_channels } else { ch[i - 1] };
        enc.push(conv_block(cin, ch[i], cfg, vb.pp(format!("enc.{i}")))?);
    }
    let mut up = Vec::with_capacity(levels - 1);
    let mut dec = Vec::with_capacity(levels - 1);
    for i in 0..levels - 1 {
        up.push(
            nn::conv_transpose3d_2x(ch[i + 1], ch[i], true, vb.pp(format!("up.{i}")))?
                .with_ops(cfg.ops),
        );
        dec.push(conv_block(
            2 * ch[i],
            ch[i],
            cfg,
            vb.pp(format!("dec.{i}")),
        )?);
    }
    let head = nn::conv3d(
        ch[0],
        cfg.num_classes,
        1,
        Conv3dConfig::default(),
        vb.pp("head"),
    )?
    .with_ops(cfg.ops);
    Ok(UNet3d {
        cfg: cfg.clone(),
        enc,
        up,
        dec,
        head,
    })
}

impl UNet3d {
    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }

    /// Checks that `x` is `[B, in_channels, D, H, W]` with D, H, W multiples of
    /// [`UNetConfig::size_multiple`].
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        let m = self.cfg.size_multiple();
        match *x.dims() {
            [_, c, d, h, w] if c == self.cfg.in_channels => {
                if [d, h, w].iter().any(|&s| s == 0 || s % m != 0) {
                    bail!(
                        "segmodel: U-Net with {} levels needs spatial sizes that are positive \
                         multiples of {m}, got {d}×{h}×{w}",
                        self.cfg.levels()
                    )
                }
                Ok(())
            }
            _ => bail!(
                "segmodel: U-Net input must be [B, {}, D, H, W], got {:?}",
                self.cfg.in_channels,
                x.shape()
            ),
        }
    }
}

impl UNet3d {
    /// [`Module::forward`], calling `tap(layer, output)` after every layer, in order:
    /// `enc.{i}.conv1`, `enc.{i}.norm1`, `enc.{i}.conv2`, `enc.{i}.norm2` (with `pool.{i}`, the
    /// max-pooling into level `i > 0`, before them), then per decoder level from the coarsest
    /// `up.{i}`, `cat.{i}` (the skip concatenation) and the `dec.{i}.…` layers, and `head`.
    /// For profiling (`benches/bench_unet.rs --generic` attributes the memory the autograd
    /// graph holds to the layer that added it); an error from `tap` stops the forward pass.
    pub fn forward_tapped(&self, x: &Tensor, tap: &mut Tap<'_>) -> Result<Tensor> {
        self.check_input(x)?;
        let last = self.enc.len() - 1;
        let mut skips = Vec::with_capacity(last);
        let mut h = x.clone();
        for (i, block) in self.enc.iter().enumerate() {
            if i > 0 {
                h = self.cfg.ops.max_pool3d_2x(&h)?;
                tap(&format!("pool.{i}"), &h)?;
            }
            h = block.forward_tapped(&h, &format!("enc.{i}"), tap)?;
            if i < last {
                skips.push(h.clone());
            }
        }
        for i in (0..last).rev() {
            let u = self.up[i].forward(&h)?;
            tap(&format!("up.{i}"), &u)?;
            let c = Tensor::cat(&[&u, &skips[i]], 1)?;
            tap(&format!("cat.{i}"), &c)?;
            h = self.dec[i].forward_tapped(&c, &format!("dec.{i}"), tap)?;
        }
        let y = self.head.forward(&h)?;
        tap("head", &y)?;
        Ok(y)
    }
}

impl Module for UNet3d {
    /// `[B, in_channels, D, H, W] -> [B, num_classes, D, H, W]` logits (no softmax).
    /// D, H and W must be multiples of `2^(levels − 1)`; anything else is an error.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_tapped(x, &mut |_, _| Ok(()))
    }
}
