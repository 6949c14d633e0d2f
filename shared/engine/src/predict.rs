//! Segmenting a new image with a model bundle, in the image's own voxel grid.
//!
//! [`Predictor::predict`] repeats the bundle's preprocessing (per-channel intensity window,
//! trilinear resampling onto the target spacing on SimpleITK's grid), runs the evaluator's
//! sliding window with Gaussian blending (optionally averaged over the 8 mirrorings of the
//! image, nnU-Net's test-time augmentation), resamples the class probabilities trilinearly
//! back onto the source image's voxels, takes the argmax there and applies the evaluator's
//! post-processing with its minimum component sizes converted to the source voxel size (the
//! same physical volume). The result has the source image's dimensions and geometry.

use std::time::Instant;

use segmodel::{
    UNet3d,
    candle_core::Device,
    infer::{SlidingWindow, sliding_window_probs},
};
use volume::{
    Volume,
    normalize::{normalize_window, percentiles},
    resample::{resample_image, resample_image_to},
};

use crate::bundle::{Bundle, BundleManifest, Window};

/// How to predict.
#[derive(Debug, Clone, Copy)]
pub struct PredictOptions {
    /// Sliding-window overlap (default: the bundle's, the one validation used).
    pub overlap: Option<f64>,
    /// Average over the 8 mirrorings of the image (8× the work); None: as the bundle's
    /// validation did (`network.tta`).
    pub tta: Option<bool>,
    /// Windows per forward pass.
    pub batch: usize,
    /// Keep the class probabilities on the source grid.
    pub probabilities: bool,
}

impl Default for PredictOptions {
    fn default() -> Self {
        Self {
            overlap: None,
            tta: None,
            batch: 2,
            probabilities: false,
        }
    }
}

/// The case name of a scan's file name: the name without `.nii` / `.nii.gz` (any case); None
/// for another file or an empty stem. The CLI and the evaluators name their masks by it.
pub fn case_name(file_name: &str) -> Option<&str> {
    let lower = file_name.to_ascii_lowercase();
    let stem_len = if lower.ends_with(".nii.gz") {
        file_name.len() - 7
    } else if lower.ends_with(".nii") {
        file_name.len() - 4
    } else {
        return None;
    };
    (stem_len > 0).then(|| &file_name[..stem_len])
}

/// A segmentation on the source image's grid.
pub struct Prediction {
    /// Class values (0 = background), the source image's dims and geometry.
    pub mask: Volume<u8>,
    /// `[K, Z, Y, X]` class probabilities on the same grid, when asked for.
    pub probabilities: Option<Volume<f32>>,
    /// The grid the model saw (x, y, z).
    pub model_grid: [usize; 3],
    pub seconds: f64,
}

/// A loaded model, ready to segment images.
pub struct Predictor {
    manifest: BundleManifest,
    model: UNet3d,
    ops: segmodel::ops::OpsPath,
    device: Device,
}

impl Predictor {
    /// Builds the network of `bundle` on `device` and loads its weights.
    pub fn new(bundle: &Bundle, device: &Device) -> Result<Predictor, String> {
        let unet = bundle.unet();
        let model = segmodel::inference_unet(&unet, &bundle.weights, device)
            .map_err(|e| format!("{}: {e}", crate::bundle::WEIGHTS_FILE))?;
        Ok(Predictor {
            manifest: bundle.manifest.clone(),
            model,
            ops: unet.ops,
            device: device.clone(),
        })
    }

    pub fn manifest(&self) -> &BundleManifest {
        &self.manifest
    }

    /// Checks that `image` suits the model: its channel count and finite values.
    pub fn check(&self, image: &Volume<f32>) -> Result<(), String> {
        let want = self.manifest.network.in_channels;
        if image.channels != want {
            return Err(format!(
                "has {} channel(s), the model takes {want} ({})",
                image.channels,
                modalities(&self.manifest)
            ));
        }
        let bad = volume::nifti::count_non_finite(&image.data);
        if bad > 0 {
            return Err(format!(
                "{bad} voxel(s) are NaN or infinite, expected finite intensities"
            ));
        }
        Ok(())
    }

    /// Segments `image`; `progress(done, total)` is called after each sliding-window pass
    /// over the image (one, or eight with test-time augmentation).
    pub fn predict(
        &self,
        image: &Volume<f32>,
        opts: &PredictOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Prediction, String> {
        let started = Instant::now();
        self.check(image)?;
        let m = &self.manifest;
        let overlap = opts.overlap.unwrap_or(m.network.overlap);
        if !(0.0..1.0).contains(&overlap) {
            return Err(format!("overlap {overlap}, expected a value in [0, 1)"));
        }
        let x = preprocess(m, image)?;
        let sw = SlidingWindow {
            window: m.network.patch,
            overlap,
            batch: opts.batch.max(1),
            ops: self.ops,
        };
        let tta = opts.tta.unwrap_or(m.network.tta);
        let probs = mirrored_probs(&self.model, &x, &sw, &self.device, tta, progress)
            .map_err(|e| format!("inference: {e}"))?;
        let k = m.network.num_classes;
        let model_grid = x.dims;
        let on_model_grid = Volume::new(probs, x.dims, k, x.geometry);
        drop(x);
        let (mask, probabilities) = to_source_grid(
            m,
            on_model_grid,
            image.dims,
            image.geometry,
            opts.probabilities,
        );
        Ok(Prediction {
            mask,
            probabilities,
            model_grid,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// The bundle's preprocessing of a source image: per-channel window (percentiles from the
/// voxels as stored, before resampling, as in preprocessing), trilinear resampling onto the
/// target spacing, mapping to [0, 1].
pub fn preprocess(m: &BundleManifest, image: &Volume<f32>) -> Result<Volume<f32>, String> {
    let mut windows = Vec::with_capacity(image.channels);
    for (c, ch) in m.preprocessing.channels.iter().enumerate() {
        windows.push(match ch.window {
            Window::Fixed { low, high } => (low, high),
            Window::PerImagePercentiles { low, high } => {
                let p = percentiles(image.channel(c), &[low, high])
                    .ok_or_else(|| format!("channel {c} has no finite voxel"))?;
                (p[0], p[1])
            }
        });
    }
    let mut x = resample_image(image, m.preprocessing.target_spacing);
    for (c, (lo, hi)) in windows.into_iter().enumerate() {
        normalize_window(x.channel_mut(c), lo, hi);
    }
    Ok(x)
}

/// Class probabilities on the model grid (`K` channels, the grid [`preprocess`] made from a
/// source image of `dims` voxels with `geometry`) back onto the source grid: trilinear
/// resampling of each class, argmax, and the bundle's post-processing with its minimum
/// component volumes in source voxels. Returns the mask and, if `keep`, the probabilities.
pub fn to_source_grid(
    m: &BundleManifest,
    probs: Volume<f32>,
    dims: [usize; 3],
    geometry: volume::Geometry,
    keep: bool,
) -> (Volume<u8>, Option<Volume<f32>>) {
    let k = probs.channels;
    let back = resample_image_to(&probs, geometry.spacing, dims);
    drop(probs);
    let mut labels = argmax(&back.data, back.voxels(), k);
    let source_voxel_mm3: f64 = geometry.spacing.iter().product();
    let min_sizes: Vec<usize> = m
        .postprocessing
        .min_component_mm3
        .iter()
        .map(|mm3| (mm3 / source_voxel_mm3).round() as usize)
        .collect();
    segmodel::postprocess::remove_small_components(&mut labels, dims, &min_sizes);
    let probabilities = keep.then(|| Volume::new(back.data, dims, k, geometry));
    (Volume::new(labels, dims, 1, geometry), probabilities)
}

fn modalities(m: &BundleManifest) -> String {
    let names: Vec<&str> = m
        .preprocessing
        .channels
        .iter()
        .map(|c| match c.modality {
            protocol::Modality::Ct => "CT",
            protocol::Modality::Mr => "MR",
        })
        .collect();
    names.join(", ")
}

/// The 8 mirrorings of an image (x, y, z flags), the identity first: nnU-Net's test-time
/// augmentation.
pub const MIRRORINGS: [[bool; 3]; 8] = {
    let mut m = [[false; 3]; 8];
    let mut f = 0;
    while f < 8 {
        m[f] = [f & 1 != 0, f & 2 != 0, f & 4 != 0];
        f += 1;
    }
    m
};

/// Blended class probabilities `[K, Z, Y, X]` of `x` by the sliding window `sw`; with `tta`
/// the mean over the 8 [`MIRRORINGS`] (each prediction mirrored back before it is added).
/// `progress(done, total)` is called after each pass. The same code scores validation cases
/// and segments new scans, so a bundle's validation Dice and its predictions agree.
pub fn mirrored_probs(
    model: &UNet3d,
    x: &Volume<f32>,
    sw: &SlidingWindow,
    device: &Device,
    tta: bool,
    progress: &mut dyn FnMut(usize, usize),
) -> segmodel::candle_core::Result<Vec<f32>> {
    let flips: &[[bool; 3]] = if tta { &MIRRORINGS } else { &MIRRORINGS[..1] };
    let passes = flips.len();
    let mut sum: Option<Vec<f32>> = None;
    for (i, &axes) in flips.iter().enumerate() {
        let probs = if axes == [false; 3] {
            sliding_window_probs(model, x, sw, device)?
        } else {
            let flipped = Volume::new(
                flip(&x.data, x.dims, x.channels, axes),
                x.dims,
                x.channels,
                x.geometry,
            );
            let p = sliding_window_probs(model, &flipped, sw, device)?;
            let k = p.len() / x.voxels();
            flip(&p, x.dims, k, axes)
        };
        match &mut sum {
            None => sum = Some(probs),
            Some(s) => s.iter_mut().zip(&probs).for_each(|(a, b)| *a += b),
        }
        progress(i + 1, passes);
    }
    let mut probs = sum.expect("at least one pass");
    if passes > 1 {
        let inv = 1.0 / passes as f32;
        probs.iter_mut().for_each(|p| *p *= inv);
    }
    Ok(probs)
}

/// Per voxel, the class with the largest probability (`probs` is `[K, N]`); ties go to the
/// lower class.
pub fn argmax(probs: &[f32], n: usize, k: usize) -> Vec<u8> {
    let mut best = vec![0u8; n];
    let mut best_p = probs[..n].to_vec();
    for c in 1..k {
        for ((b, bp), &p) in best
            .iter_mut()
            .zip(&mut best_p)
            .zip(&probs[c * n..(c + 1) * n])
        {
            if p > *bp {
                *bp = p;
                *b = c as u8;
            }
        }
    }
    best
}

/// Mirrors a `[C, Z, Y, X]` buffer (x fastest) along the axes set in `axes` (x, y, z). Its
/// own inverse.
pub fn flip(data: &[f32], dims: [usize; 3], channels: usize, axes: [bool; 3]) -> Vec<f32> {
    let [nx, ny, nz] = dims;
    let n = nx * ny * nz;
    let mut out = vec![0.0f32; data.len()];
    for c in 0..channels {
        for z in 0..nz {
            let sz = if axes[2] { nz - 1 - z } else { z };
            for y in 0..ny {
                let sy = if axes[1] { ny - 1 - y } else { y };
                let src = &data[c * n + (sz * ny + sy) * nx..][..nx];
                let dst = &mut out[c * n + (z * ny + y) * nx..][..nx];
                if axes[0] {
                    dst.iter_mut()
                        .zip(src.iter().rev())
                        .for_each(|(d, s)| *d = *s);
                } else {
                    dst.copy_from_slice(src);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flipping_twice_is_the_identity_and_moves_voxels_to_their_mirror() {
        let dims = [3, 4, 5];
        let data: Vec<f32> = (0..2 * 60).map(|i| i as f32).collect();
        for f in 0..8 {
            let axes = [f & 1 != 0, f & 2 != 0, f & 4 != 0];
            let once = flip(&data, dims, 2, axes);
            assert_eq!(flip(&once, dims, 2, axes), data);
            // Voxel (0, 0, 0) of channel 1 lands on its mirror.
            let (x, y, z) = (
                if axes[0] { 2 } else { 0 },
                if axes[1] { 3 } else { 0 },
                if axes[2] { 4 } else { 0 },
            );
            assert_eq!(once[60 + (z * 4 + y) * 3 + x], data[60]);
        }
    }

    #[test]
    fn argmax_takes_the_largest_class_and_the_lower_on_ties() {
        let probs = [0.6, 0.2, 0.3, 0.3, 0.7, 0.3, 0.1, 0.1, 0.4];
        assert_eq!(argmax(&probs, 3, 3), vec![0, 1, 2]);
        assert_eq!(argmax(&[0.5, 0.5], 1, 2), vec![0]);
    }
}
