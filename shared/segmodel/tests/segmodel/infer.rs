//! Sliding-window inference through `sliding_window_probs` itself (the 1-D start grid has
//! its own unit test in `src/infer.rs`).

use crate::reference::assert_close;
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarMap;
use segmodel::infer::{SlidingWindow, sliding_window_predict, sliding_window_probs};
use segmodel::ops::OpsPath;
use segmodel::{UNetConfig, seeded_var_builder, test_device, unet3d};
use volume::{Geometry, Volume};

pub fn image(dims: [usize; 3], f: impl Fn(usize, usize, usize) -> f32) -> Volume<f32> {
    let [nx, ny, nz] = dims;
    let mut data = Vec::with_capacity(nx * ny * nz);
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                data.push(f(x, y, z));
            }
        }
    }
    Volume::new(data, dims, 1, Geometry::identity([1.0; 3]))
}

/// Distinct-looking values, so a window copied or blended at the wrong offset shows.
pub fn texture(x: usize, y: usize, z: usize) -> f32 {
    ((x * 7 + y * 13 + z * 29) % 53) as f32 / 10.0 - 2.6
}

/// Softmax over the classes of one forward pass of `model` on the whole `image`, zero-padded
/// (at the high end of each axis) to `window` and cropped back: `[K, Z, Y, X]`, x fastest.
fn single_pass(model: &impl Module, image: &Volume<f32>, window: [usize; 3]) -> Result<Vec<f32>> {
    let [nx, ny, nz] = image.dims;
    let [wx, wy, wz] = window;
    let mut padded = vec![0f32; wx * wy * wz];
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                padded[x + wx * (y + wy * z)] = image.data[x + nx * (y + ny * z)];
            }
        }
    }
    let t = Tensor::from_vec(padded, (1, 1, wz, wy, wx), &Device::Cpu)?;
    let p = candle_nn::ops::softmax(&model.forward(&t)?, 1)?;
    let k = p.dim(1)?;
    let p: Vec<f32> = p.flatten_all()?.to_vec1()?;
    let (wv, n) = (wx * wy * wz, nx * ny * nz);
    let mut out = vec![0f32; k * n];
    for c in 0..k {
        for z in 0..nz {
            for y in 0..ny {
                for x in 0..nx {
                    out[c * n + x + nx * (y + ny * z)] = p[c * wv + x + wx * (y + wy * z)];
                }
            }
        }
    }
    Ok(out)
}

fn as_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// A volume that fits in one window is one forward pass of the network: the Gaussian weight
/// cancels in the normalization. The window is not a cube (x ≠ y ≠ z), so a swapped axis
/// shows; the second volume is smaller than the window along every axis (zero padding,
/// cropping).
fn one_window_is_one_forward_pass(dev: &Device) -> Result<()> {
    let varmap = VarMap::new();
    let cfg = UNetConfig {
        in_channels: 1,
        num_classes: 3,
        channels: vec![4, 8],
        ..Default::default()
    };
    let net = unet3d(&cfg, seeded_var_builder(&varmap, 7, DType::F32, dev))?;
    let window = [16, 12, 8];
    let sw = SlidingWindow {
        window,
        overlap: 0.25,
        batch: 2,
        ops: OpsPath::Auto,
    };
    for dims in [window, [13, 9, 7]] {
        let img = image(dims, texture);
        let got = sliding_window_probs(&net, &img, &sw, dev)?;
        let want = single_pass(&net, &img, window)?;
        assert_eq!(got.len(), 3 * img.voxels());
        assert_close(&as_f64(&got), &as_f64(&want), 1e-5, "one window");
        // The network is not trivially uniform: the comparison above can fail.
        let spread = want.iter().fold(0f32, |m, &p| m.max((p - 1.0 / 3.0).abs()));
        assert!(spread > 1e-3, "probabilities all about 1/3: {spread}");
    }
    Ok(())
}
test_device!(one_window_is_one_forward_pass);

/// Class-1 logit = the input voxel, class-0 logit = 0: every window that covers a voxel
/// predicts `sigmoid(image[voxel])` there, so the blend equals it exactly where the voxel was
/// covered at the right offset, and is NaN (0/0 weights) where no window covered it.
struct Probe;

impl Module for Probe {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Tensor::cat(&[&x.zeros_like()?, x], 1)
    }
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

#[test]
fn every_voxel_is_covered_at_its_own_offset() -> Result<()> {
    let dev = &Device::Cpu;
    // Odd sizes, none a multiple of the window or its step (12); one axis shorter than the
    // window (padded); batch 4 leaves a partial last chunk (3·2·2 = 12 windows for the first
    // volume, 3·1·2 = 6 for the second).
    for dims in [[37, 29, 23], [37, 11, 19]] {
        let img = image(dims, texture);
        let sw = SlidingWindow {
            window: [16; 3],
            overlap: 0.25,
            batch: 4,
            ops: OpsPath::Auto,
        };
        let probs = sliding_window_probs(&Probe, &img, &sw, dev)?;
        let n = img.voxels();
        assert_eq!(probs.len(), 2 * n);
        let mut bad = Vec::new();
        for (i, &v) in img.data.iter().enumerate() {
            let (p0, p1) = (probs[i], probs[n + i]);
            let ok = p0.is_finite()
                && p1.is_finite()
                && (p1 - sigmoid(v)).abs() < 1e-5
                && (p0 + p1 - 1.0).abs() < 1e-5;
            if !ok {
                bad.push((
                    i % dims[0],
                    i / dims[0] % dims[1],
                    i / (dims[0] * dims[1]),
                    p1,
                ));
            }
        }
        assert!(
            bad.is_empty(),
            "{dims:?}: {} voxels wrong, first (x, y, z, p1): {:?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        );
        // And the label map argmaxes it: class 1 exactly where the image is positive.
        let labels = sliding_window_predict(&Probe, &img, &sw, dev)?;
        assert_eq!(labels.dims, dims);
        for (&l, &v) in labels.data.iter().zip(&img.data) {
            assert_eq!(l, u8::from(v > 0.0), "image value {v}");
        }
    }
    Ok(())
}

/// The real network on an odd-sized volume spanning many windows: a probability
/// distribution at every voxel (finite, in [0, 1], summing to 1).
#[test]
fn unet_probabilities_are_finite_and_normalized_everywhere() -> Result<()> {
    let dev = &Device::Cpu;
    let varmap = VarMap::new();
    let cfg = UNetConfig {
        in_channels: 1,
        num_classes: 3,
        channels: vec![4, 8],
        ..Default::default()
    };
    let net = unet3d(&cfg, seeded_var_builder(&varmap, 3, DType::F32, dev))?;
    let img = image([27, 21, 19], texture);
    let sw = SlidingWindow {
        window: [16; 3],
        overlap: 0.25,
        batch: 3,
        ops: OpsPath::Auto,
    };
    let probs = sliding_window_probs(&net, &img, &sw, dev)?;
    let n = img.voxels();
    assert_eq!(probs.len(), 3 * n);
    for i in 0..n {
        let p = [probs[i], probs[n + i], probs[2 * n + i]];
        assert!(
            p.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)),
            "voxel {i}: {p:?}"
        );
        assert!(
            (p.iter().sum::<f32>() - 1.0).abs() < 1e-4,
            "voxel {i}: {p:?}"
        );
    }
    Ok(())
}
