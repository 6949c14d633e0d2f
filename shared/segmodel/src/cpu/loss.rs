//! Fused softmax + soft Dice (+ cross-entropy) loss over `[B, K, S]` logits and `[B, S]`
//! class-index labels; the one-hot target is never materialized.

use rayon::prelude::*;

/// Loss parameters (see [`crate::loss::DiceLossConfig`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct LossParams {
    pub include_background: bool,
    pub smooth: f64,
    pub ce_weight: f64,
}

/// Batch-global sums: per class Σ p·t, Σ p, Σ t, and Σ −log p_label.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LossSums {
    pub inter: Vec<f64>,
    pub psum: Vec<f64>,
    pub tsum: Vec<f64>,
    pub nll: f64,
}

const CHUNK: usize = 4096;

simd::dispatch! {
    /// Softmax of one chunk of voxels: `e[k·len + i] = p_k(i)`; returns log Σ exp − (−max), i.e.
    /// `lse[i] = max + ln Σ exp(l − max)` in `lse`.
    fn softmax_chunk(
        logits: &[f32],
        k: usize,
        s: usize,
        i0: usize,
        len: usize,
        e: &mut [f32],
        lse: &mut [f32],
    ) {
        let m = &mut lse[..len];
        m.copy_from_slice(&logits[i0..i0 + len]);
        for c in 1..k {
            for (m, &v) in m.iter_mut().zip(&logits[c * s + i0..][..len]) {
                *m = m.max(v);
            }
        }
        let mut sum = vec![0f32; len];
        for c in 0..k {
            let row = &mut e[c * len..(c + 1) * len];
            for (((r, &v), &mx), sm) in row
                .iter_mut()
                .zip(&logits[c * s + i0..][..len])
                .zip(m.iter())
                .zip(sum.iter_mut())
            {
                *r = (v - mx).exp();
                *sm += *r;
            }
        }
        for c in 0..k {
            for (r, &sm) in e[c * len..(c + 1) * len].iter_mut().zip(&sum) {
                *r /= sm;
            }
        }
        for (m, &sm) in m.iter_mut().zip(&sum) {
            *m += sm.ln();
        }
    }
}

fn chunks(b: usize, s: usize) -> Vec<(usize, usize, usize)> {
    (0..b)
        .flat_map(|bi| super::ranges(s, CHUNK).map(move |(a, z)| (bi, a, z)))
        .collect()
}

/// `logits: [b, k, s]`, `labels: [b, s]` (values < k, checked by the caller).
pub(crate) fn sums(logits: &[f32], labels: &[u32], b: usize, k: usize, s: usize) -> LossSums {
    assert_eq!(logits.len(), b * k * s);
    assert_eq!(labels.len(), b * s);
    let parts: Vec<LossSums> = chunks(b, s)
        .into_par_iter()
        .map(|(bi, i0, i1)| {
            let len = i1 - i0;
            let lg = &logits[bi * k * s..(bi + 1) * k * s];
            let lb = &labels[bi * s + i0..bi * s + i1];
            let mut e = vec![0f32; k * len];
            let mut lse = vec![0f32; len];
            softmax_chunk(lg, k, s, i0, len, &mut e, &mut lse);
            let mut out = LossSums {
                inter: vec![0.0; k],
                psum: vec![0.0; k],
                tsum: vec![0.0; k],
                nll: 0.0,
            };
            for c in 0..k {
                out.psum[c] = super::sum_f64(&e[c * len..(c + 1) * len]);
            }
            for (i, &t) in lb.iter().enumerate() {
                let t = t as usize;
                out.inter[t] += e[t * len + i] as f64;
                out.tsum[t] += 1.0;
                out.nll += (lse[i] - lg[t * s + i0 + i]) as f64;
            }
            out
        })
        .collect();
    let mut total = LossSums {
        inter: vec![0.0; k],
        psum: vec![0.0; k],
        tsum: vec![0.0; k],
        nll: 0.0,
    };
    for p in parts {
        for c in 0..k {
            total.inter[c] += p.inter[c];
            total.psum[c] += p.psum[c];
            total.tsum[c] += p.tsum[c];
        }
        total.nll += p.nll;
    }
    total
}

fn classes(k: usize, p: &LossParams) -> std::ops::Range<usize> {
    if p.include_background { 0..k } else { 1..k }
}

/// Per-class soft Dice `(2 Σpt + smooth) / (Σp + Σt + smooth)`.
pub(crate) fn dice_per_class(sums: &LossSums, p: &LossParams) -> Vec<f64> {
    (0..sums.inter.len())
        .map(|c| (2.0 * sums.inter[c] + p.smooth) / (sums.psum[c] + sums.tsum[c] + p.smooth))
        .collect()
}

/// `1 − mean_{c ∈ classes} dice_c + ce_weight · mean_voxels(−log p_label)`.
pub(crate) fn loss(sums: &LossSums, p: &LossParams, voxels: usize) -> f64 {
    let k = sums.inter.len();
    let dice = dice_per_class(sums, p);
    let cls = classes(k, p);
    let n = cls.len() as f64;
    let mean_dice: f64 = cls.map(|c| dice[c]).sum::<f64>() / n;
    let mut l = 1.0 - mean_dice;
    if p.ce_weight != 0.0 {
        l += p.ce_weight * sums.nll / voxels as f64;
    }
    l
}

/// Gradient of [`loss`] w.r.t. the logits, scaled by `upstream`.
pub(crate) fn grad(
    logits: &[f32],
    labels: &[u32],
    b: usize,
    k: usize,
    s: usize,
    p: &LossParams,
    upstream: f32,
) -> Vec<f32> {
    let sm = sums(logits, labels, b, k, s);
    // dL/dp_c(i) = A_c · t_c(i) + B_c for the Dice part.
    let cls = classes(k, p);
    let ncls = cls.len() as f64;
    let mut ca = vec![0f32; k];
    let mut cb = vec![0f32; k];
    for c in cls {
        let u = sm.psum[c] + sm.tsum[c] + p.smooth;
        ca[c] = (-2.0 / (ncls * u)) as f32;
        cb[c] = ((2.0 * sm.inter[c] + p.smooth) / (ncls * u * u)) as f32;
    }
    let wce = (p.ce_weight / (b * s) as f64) as f32;
    let mut dl = vec![0f32; logits.len()];
    let dlp = super::SyncPtr(dl.as_mut_ptr());
    chunks(b, s).into_par_iter().for_each(|(bi, i0, i1)| {
        let len = i1 - i0;
        let lg = &logits[bi * k * s..(bi + 1) * k * s];
        let lb = &labels[bi * s + i0..bi * s + i1];
        let mut e = vec![0f32; k * len];
        let mut lse = vec![0f32; len];
        softmax_chunk(lg, k, s, i0, len, &mut e, &mut lse);
        // gp_c(i) = ca_c·[t_i = c] + cb_c;  dot(i) = Σ_c p_c(i)·gp_c(i)
        let mut dot = vec![0f32; len];
        for c in 0..k {
            for (d, &pc) in dot.iter_mut().zip(&e[c * len..(c + 1) * len]) {
                *d += pc * cb[c];
            }
        }
        for (i, &t) in lb.iter().enumerate() {
            let t = t as usize;
            dot[i] += e[t * len + i] * ca[t];
        }
        for c in 0..k {
            // SAFETY: chunks are disjoint voxel ranges of sample bi.
            let out = unsafe { dlp.slice((bi * k + c) * s + i0, len) };
            let pc = &e[c * len..(c + 1) * len];
            for (i, (o, &pv)) in out.iter_mut().zip(pc).enumerate() {
                let is_t = (lb[i] as usize == c) as u8 as f32;
                let gp = ca[c] * is_t + cb[c];
                *o = upstream * (pv * (gp - dot[i]) + wce * (pv - is_t));
            }
        }
    });
    dl
}
