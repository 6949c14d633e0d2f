//! Sliding-window inference and Dice, the evaluator's half of the engine.
//!
//! Windows of the training patch size scan the volume with a configurable overlap (the
//! paper: a quarter of the window). Each window's softmax probabilities are blended with a
//! Gaussian importance map (σ = window/8 per axis, as nnU-Net does), so the centre of a
//! window counts more than its border; the blended probabilities are normalized by the
//! summed weights and argmaxed. A volume smaller than a window is zero-padded (images are
//! normalized to [0, 1], so 0 is "air") and the prediction cropped back.
//!
//! Two blends, chosen like the ops by [`SlidingWindow::ops`]: on the CPU each batch of window
//! probabilities is read into host arrays and blended by loops; on any other device (or with
//! [`OpsPath::Generic`]) the image is uploaded once, the windows are cut from it, and the
//! weighted probabilities and weights are accumulated in a device tensor, so nothing comes
//! back to the host but the final label map (or probabilities).

use crate::ops::OpsPath;
use candle_core::{DType, Device, Module, Result, Tensor};
use volume::Volume;

/// Window start offsets along one axis of length `n` for windows of `w` voxels overlapping
/// by the fraction `overlap` (MONAI's `sliding_window_inference` grid): step
/// `max(1, round(w·(1−overlap)))`, and the last window flush with the end.
pub fn window_starts(n: usize, w: usize, overlap: f64) -> Vec<usize> {
    if n <= w {
        return vec![0];
    }
    let step = ((w as f64 * (1.0 - overlap)).round() as usize).max(1);
    let mut starts: Vec<usize> = (0..).map(|i| i * step).take_while(|&s| s + w < n).collect();
    starts.push(n - w);
    starts
}

/// Gaussian importance map of a window, `[wz, wy, wx]` row-major (x fastest), max 1.
pub fn gaussian_importance(window: [usize; 3]) -> Vec<f32> {
    let axis = |w: usize| -> Vec<f32> {
        let sigma = w as f64 / 8.0;
        let c = (w as f64 - 1.0) / 2.0;
        (0..w)
            .map(|i| (-((i as f64 - c).powi(2)) / (2.0 * sigma * sigma)).exp() as f32)
            .collect()
    };
    let (gx, gy, gz) = (axis(window[0]), axis(window[1]), axis(window[2]));
    let mut out = Vec::with_capacity(window[0] * window[1] * window[2]);
    for z in &gz {
        for y in &gy {
            for x in &gx {
                // Floor keeps every voxel's weight positive (no division by ~0 at corners).
                out.push((z * y * x).max(1e-3));
            }
        }
    }
    out
}

/// Sliding-window settings.
#[derive(Debug, Clone, Copy)]
pub struct SlidingWindow {
    /// Window (x, y, z) in voxels; must suit the network (multiple of its size multiple).
    pub window: [usize; 3],
    pub overlap: f64,
    /// Windows per forward pass.
    pub batch: usize,
    /// Where the blend runs: host loops when this picks the kernels for the device (the
    /// CPU with [`OpsPath::Auto`]), device tensors otherwise. Use the model's own
    /// [`crate::UNetConfig::ops`].
    pub ops: OpsPath,
}

/// Predicts a label map for `image` (all channels) with `model`, returning class indices on
/// the image's grid. `model` maps `[B, C, wz, wy, wx]` to logits `[B, K, wz, wy, wx]`.
pub fn sliding_window_predict(
    model: &impl Module,
    image: &Volume<f32>,
    sw: &SlidingWindow,
    device: &Device,
) -> Result<Volume<u8>> {
    if !sw.ops.uses_kernels(device) {
        let labels = device_probs(model, image, sw, device)?
            .argmax(0)?
            .to_dtype(DType::U8)?;
        let labels = crate::host::result_vec::<u8>(&labels)?;
        return Ok(Volume::new(labels, image.dims, 1, image.geometry));
    }
    let probs = host_probs(model, image, sw, device)?;
    let (k, n) = (probs.len() / image.voxels(), image.voxels());
    let mut labels = vec![0u8; n];
    for (i, l) in labels.iter_mut().enumerate() {
        let mut best = 0;
        let mut bv = f32::MIN;
        for c in 0..k {
            let v = probs[c * n + i];
            if v > bv {
                bv = v;
                best = c;
            }
        }
        *l = best as u8;
    }
    Ok(Volume::new(labels, image.dims, 1, image.geometry))
}

/// Blended class probabilities `[K, Z, Y, X]` (x fastest) on the image's grid.
pub fn sliding_window_probs(
    model: &impl Module,
    image: &Volume<f32>,
    sw: &SlidingWindow,
    device: &Device,
) -> Result<Vec<f32>> {
    if sw.ops.uses_kernels(device) {
        host_probs(model, image, sw, device)
    } else {
        crate::host::result_vec(&device_probs(model, image, sw, device)?)
    }
}

/// The padded grid (at least one window along every axis, `[x, y, z]`) and the window
/// starts in scan order (z outermost, x fastest).
fn grid(image: &Volume<f32>, sw: &SlidingWindow) -> ([usize; 3], Vec<[usize; 3]>) {
    let [nx, ny, nz] = image.dims;
    let [wx, wy, wz] = sw.window;
    let (px, py, pz) = (nx.max(wx), ny.max(wy), nz.max(wz));
    let (sx, sy, sz) = (
        window_starts(px, wx, sw.overlap),
        window_starts(py, wy, sw.overlap),
        window_starts(pz, wz, sw.overlap),
    );
    let mut starts = Vec::new();
    for &z in &sz {
        for &y in &sy {
            for &x in &sx {
                starts.push([x, y, z]);
            }
        }
    }
    ([px, py, pz], starts)
}

/// The blend on the device: `[K, Z, Y, X]` probabilities as a tensor on `device`.
///
/// The image is uploaded once and zero-padded to the grid; each batch of windows is cut
/// from it by `narrow`s. The accumulator is `[Zp, Yp, K + 1, Xp]`: the weighted
/// probabilities of the K classes and, as channel K, the summed weights. With z outermost a
/// window's z-range is one contiguous slab, so each window is padded to its slab in y and x,
/// added, and written back in place (`slice_set`): per window, work in proportion to the
/// slab, not the volume. The windows are added in scan order, as the host blend does.
fn device_probs(
    model: &impl Module,
    image: &Volume<f32>,
    sw: &SlidingWindow,
    device: &Device,
) -> Result<Tensor> {
    let [nx, ny, nz] = image.dims;
    let [wx, wy, wz] = sw.window;
    let ([px, py, pz], starts) = grid(image, sw);
    let c_in = image.channels;
    let n = nx * ny * nz;
    let img = Tensor::from_slice(&image.data[..c_in * n], (c_in, nz, ny, nx), device)?
        .pad_with_zeros(1, 0, pz - nz)?
        .pad_with_zeros(2, 0, py - ny)?
        .pad_with_zeros(3, 0, px - nx)?;
    let weight = Tensor::from_vec(gaussian_importance(sw.window), (1, wz, wy, wx), device)?;
    let mut acc: Option<Tensor> = None;
    for chunk in starts.chunks(sw.batch.max(1)) {
        let windows = chunk
            .iter()
            .map(|&[x, y, z]| img.narrow(1, z, wz)?.narrow(2, y, wy)?.narrow(3, x, wx))
            .collect::<Result<Vec<_>>>()?;
        let logits = model.forward(&Tensor::stack(&windows, 0)?)?.detach();
        let p = candle_nn::ops::softmax(&logits, 1)?;
        let k = p.dim(1)?;
        let b = chunk.len();
        // [B, K + 1, wz, wy, wx] -> [B, wz, wy, K + 1, wx]
        let weighted = Tensor::cat(
            &[
                p.broadcast_mul(&weight.unsqueeze(0)?)?,
                weight.unsqueeze(0)?.broadcast_as((b, 1, wz, wy, wx))?,
            ],
            1,
        )?
        .permute((0, 2, 3, 1, 4))?;
        let acc = match &acc {
            Some(a) => a,
            None => acc.insert(Tensor::zeros((pz, py, k + 1, px), DType::F32, device)?),
        };
        for (i, &[x, y, z]) in chunk.iter().enumerate() {
            let win = weighted
                .get(i)?
                .pad_with_zeros(1, y, py - y - wy)?
                .pad_with_zeros(3, x, px - x - wx)?;
            let slab = (acc.narrow(0, z, wz)? + win)?;
            acc.slice_set(&slab, 0, z)?;
        }
    }
    let Some(acc) = acc else {
        candle_core::bail!("segmodel: sliding window over an empty grid")
    };
    let k = acc.dim(2)? - 1;
    let acc = acc.narrow(0, 0, nz)?.narrow(1, 0, ny)?.narrow(3, 0, nx)?;
    acc.narrow(2, 0, k)?
        .broadcast_div(&acc.narrow(2, k, 1)?)?
        .permute((2, 0, 1, 3))?
        .contiguous()
}

/// The blend on the host: each batch of window probabilities read back and added by loops.
fn host_probs(
    model: &impl Module,
    image: &Volume<f32>,
    sw: &SlidingWindow,
    device: &Device,
) -> Result<Vec<f32>> {
    let [nx, ny, nz] = image.dims;
    let [wx, wy, wz] = sw.window;
    let ([px, py, pz], starts) = grid(image, sw);
    let c_in = image.channels;
    let weight = gaussian_importance(sw.window);
    let wvox = wx * wy * wz;
    let pvox = px * py * pz;
    let mut acc: Vec<f32> = Vec::new();
    let mut wsum = vec![0f32; pvox];
    let mut k = 0;
    for chunk in starts.chunks(sw.batch.max(1)) {
        let mut buf = vec![0f32; chunk.len() * c_in * wvox];
        for (b, s) in chunk.iter().enumerate() {
            for c in 0..c_in {
                let src = image.channel(c);
                let dst = &mut buf[(b * c_in + c) * wvox..(b * c_in + c + 1) * wvox];
                for z in 0..wz {
                    let gz = s[2] + z;
                    if gz >= nz {
                        continue;
                    }
                    for y in 0..wy {
                        let gy = s[1] + y;
                        if gy >= ny {
                            continue;
                        }
                        let x_end = wx.min(nx.saturating_sub(s[0]));
                        let so = s[0] + nx * (gy + ny * gz);
                        let d = wx * (y + wy * z);
                        dst[d..d + x_end].copy_from_slice(&src[so..so + x_end]);
                    }
                }
            }
        }
        let x = Tensor::from_vec(buf, (chunk.len(), c_in, wz, wy, wx), device)?;
        let logits = model.forward(&x)?;
        let p = candle_nn::ops::softmax(&logits, 1)?;
        let kk = p.dim(1)?;
        let p: Vec<f32> = crate::host::intermediate_vec(&p)?;
        if acc.is_empty() {
            k = kk;
            acc = vec![0f32; k * pvox];
        }
        for (b, s) in chunk.iter().enumerate() {
            for z in 0..wz {
                for y in 0..wy {
                    let row = wx * (y + wy * z);
                    let go = s[0] + px * (s[1] + y + py * (s[2] + z));
                    for x in 0..wx {
                        wsum[go + x] += weight[row + x];
                    }
                    for c in 0..k {
                        let pb = &p[(b * k + c) * wvox + row..(b * k + c) * wvox + row + wx];
                        let a = &mut acc[c * pvox + go..c * pvox + go + wx];
                        for x in 0..wx {
                            a[x] += pb[x] * weight[row + x];
                        }
                    }
                }
            }
        }
    }
    // Normalize and crop the padding away.
    let n = nx * ny * nz;
    let mut out = vec![0f32; k * n];
    for c in 0..k {
        for z in 0..nz {
            for y in 0..ny {
                for x in 0..nx {
                    let g = x + px * (y + py * z);
                    out[c * n + x + nx * (y + ny * z)] = acc[c * pvox + g] / wsum[g];
                }
            }
        }
    }
    Ok(out)
}

/// Dice of one case per foreground class `1..num_classes`:
/// `2·TP / (2·TP + FP + FN)`. A class absent from both reference and prediction scores
/// **1.0** (nothing to find, nothing wrongly found); so no NaN ever reaches a reward.
pub fn dice_per_class(pred: &[u8], reference: &[u8], num_classes: usize) -> Vec<f64> {
    assert_eq!(
        pred.len(),
        reference.len(),
        "prediction and reference sizes differ"
    );
    let mut tp = vec![0u64; num_classes];
    let mut fp = vec![0u64; num_classes];
    let mut fneg = vec![0u64; num_classes];
    for (&p, &r) in pred.iter().zip(reference) {
        let (p, r) = (p as usize, r as usize);
        if p == r {
            if p < num_classes {
                tp[p] += 1;
            }
        } else {
            if p < num_classes {
                fp[p] += 1;
            }
            if r < num_classes {
                fneg[r] += 1;
            }
        }
    }
    (1..num_classes)
        .map(|c| {
            let denom = 2 * tp[c] + fp[c] + fneg[c];
            if denom == 0 {
                1.0
            } else {
                2.0 * tp[c] as f64 / denom as f64
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_every_voxel_and_end_flush() {
        for (n, w, o) in [
            (100, 32, 0.25),
            (33, 32, 0.25),
            (32, 32, 0.25),
            (10, 32, 0.5),
            (97, 16, 0.0),
        ] {
            let s = window_starts(n, w, o);
            let mut covered = vec![false; n.max(w)];
            for &st in &s {
                for c in covered.iter_mut().skip(st).take(w) {
                    *c = true;
                }
            }
            assert!(covered.iter().all(|&c| c), "n={n} w={w}: {s:?}");
            assert_eq!(*s.last().unwrap(), n.saturating_sub(w));
            assert!(s.windows(2).all(|p| p[0] < p[1]));
        }
        // Overlap 1/4 of 96 → step 72 (MONAI's grid).
        assert_eq!(window_starts(300, 96, 0.25), vec![0, 72, 144, 204]);
    }

    #[test]
    fn dice_counts_and_the_empty_case() {
        let reference = [0, 1, 1, 1, 2, 0];
        let pred = [0, 1, 1, 0, 0, 2];
        let d = dice_per_class(&pred, &reference, 4);
        assert!((d[0] - 2.0 * 2.0 / (4.0 + 0.0 + 1.0)).abs() < 1e-12);
        assert_eq!(d[1], 0.0);
        assert_eq!(d[2], 1.0, "class 3 absent from both: 1.0, never NaN");
    }
}
