//! Instance normalization over `[N, C, S]` with per-channel affine parameters, fused with
//! an optional (leaky) ReLU: `y = act(γ_c · (x − μ_nc) / sqrt(σ²_nc + eps) + β_c)` with the
//! biased variance, as PyTorch's `InstanceNorm3d(affine=True)`.
//!
//! The activation is a leaky ReLU with slope `s`: `s = 1` is the identity, `s = 0` ReLU.
//! Every loop is branch-free over 16-float blocks so that it vectorizes; the per-plane
//! loops are compiled once per SIMD level (`simd::dispatch!`).

use rayon::prelude::*;

const LANES: usize = 16;
const BLOCK: usize = 4096;

// Written without branches (max/min and a mask) so that LLVM vectorizes the loops.
#[inline(always)]
fn act(z: f32, slope: f32) -> f32 {
    z.max(0.0) + slope * z.min(0.0)
}

#[inline(always)]
fn act_grad(z: f32, slope: f32) -> f32 {
    let pos = (z > 0.0) as u32 as f32;
    slope + pos * (1.0 - slope)
}

/// `Σ f(x_i)` with 16 f32 lanes per block of 4096, blocks combined in f64.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut total = 0f64;
    for block in x.chunks(BLOCK) {
        let mut acc = [0f32; LANES];
        let mut it = block.chunks_exact(LANES);
        for c in &mut it {
            for l in 0..LANES {
                acc[l] += f(c[l]);
            }
        }
        let tail: f32 = it.remainder().iter().map(|&v| f(v)).sum();
        total += acc.iter().map(|&v| v as f64).sum::<f64>() + tail as f64;
    }
    total
}

/// `(Σ f(x_i, g_i).0, Σ f(x_i, g_i).1)` as [`lane_sum`].
#[inline(always)]
fn lane_sum2(x: &[f32], g: &[f32], f: impl Fn(f32, f32) -> (f32, f32)) -> (f64, f64) {
    let (mut t1, mut t2) = (0f64, 0f64);
    for (xb, gb) in x.chunks(BLOCK).zip(g.chunks(BLOCK)) {
        let (mut a1, mut a2) = ([0f32; LANES], [0f32; LANES]);
        let mut xi = xb.chunks_exact(LANES);
        let mut gi = gb.chunks_exact(LANES);
        for (xc, gc) in (&mut xi).zip(&mut gi) {
            for l in 0..LANES {
                let (u, v) = f(xc[l], gc[l]);
                a1[l] += u;
                a2[l] += v;
            }
        }
        for (&xv, &gv) in xi.remainder().iter().zip(gi.remainder()) {
            let (u, v) = f(xv, gv);
            t1 += u as f64;
            t2 += v as f64;
        }
        t1 += a1.iter().map(|&v| v as f64).sum::<f64>();
        t2 += a2.iter().map(|&v| v as f64).sum::<f64>();
    }
    (t1, t2)
}

/// Mean and 1/sqrt(var + eps) of one plane (two passes).
#[inline(always)]
fn stats(x: &[f32], eps: f64) -> (f32, f32) {
    let n = x.len().max(1) as f64;
    let m = (lane_sum(x, |v| v) / n) as f32;
    let var = lane_sum(x, |v| (v - m) * (v - m)) / n;
    (m, (1.0 / (var + eps).sqrt()) as f32)
}

/// Per-plane scale and shift so that `z = a·x + b`; identical in both passes so the
/// activation mask recomputed in the backward pass matches the forward one bit for bit.
#[inline(always)]
fn affine(mean: f32, rstd: f32, gamma: f32, beta: f32) -> (f32, f32) {
    let a = gamma * rstd;
    (a, beta - mean * a)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    n: usize,
    c: usize,
    s: usize,
    eps: f64,
    slope: f32,
) -> Vec<f32> {
    assert_eq!(x.len(), n * c * s);
    let mut y = vec![0f32; x.len()];
    if s == 0 {
        return y;
    }
    y.par_chunks_mut(s)
        .zip(x.par_chunks(s))
        .enumerate()
        .for_each(|(p, (yp, xp))| {
            let ch = p % c;
            forward_plane(xp, yp, gamma[ch], beta[ch], eps, slope);
        });
    y
}

simd::dispatch! {
    /// One plane of [`forward`].
    fn forward_plane(xp: &[f32], yp: &mut [f32], gamma: f32, beta: f32, eps: f64, slope: f32) {
        let (mean, rstd) = stats(xp, eps);
        let (a, b) = affine(mean, rstd, gamma, beta);
        for (y, &x) in yp.iter_mut().zip(xp) {
            *y = act(a * x + b, slope);
        }
    }
}

simd::dispatch! {
    /// One plane of [`backward`]: writes `dx`, returns `(Σ dz, Σ dz·x̂)`.
    fn backward_plane(
        xp: &[f32],
        gp: &[f32],
        dxp: &mut [f32],
        gamma: f32,
        beta: f32,
        eps: f64,
        slope: f32,
    ) -> (f64, f64) {
        let s = xp.len();
        let (mean, rstd) = stats(xp, eps);
        let (a, b) = affine(mean, rstd, gamma, beta);
        let (s1, s2) = lane_sum2(xp, gp, |xv, gv| {
            let dz = gv * act_grad(a * xv + b, slope);
            (dz, dz * (xv - mean))
        });
        let s2 = s2 * rstd as f64; // Σ dz·x̂
        let m1 = (s1 / s as f64) as f32;
        let m2 = (s2 / s as f64) as f32;
        // dx = γ·rstd·(dz − m1 − x̂·m2), x̂ = (x − mean)·rstd
        let k = gamma * rstd;
        let (kr, c0) = (k * rstd * m2, k * m1);
        for ((d, &xv), &gv) in dxp.iter_mut().zip(xp).zip(gp) {
            let dz = gv * act_grad(a * xv + b, slope);
            *d = k * dz - c0 - kr * (xv - mean);
        }
        (s1, s2)
    }
}

/// Returns `(dx, dγ, dβ)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    beta: &[f32],
    n: usize,
    c: usize,
    s: usize,
    eps: f64,
    slope: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert_eq!(x.len(), n * c * s);
    assert_eq!(dy.len(), n * c * s);
    let mut dx = vec![0f32; x.len()];
    if s == 0 {
        return (dx, vec![0.0; c], vec![0.0; c]);
    }
    // Per plane: (Σ dz, Σ dz·x̂) with dz = dy · act'(z).
    let sums: Vec<(f64, f64)> = dx
        .par_chunks_mut(s)
        .zip(x.par_chunks(s).zip(dy.par_chunks(s)))
        .enumerate()
        .map(|(p, (dxp, (xp, gp)))| {
            let ch = p % c;
            backward_plane(xp, gp, dxp, gamma[ch], beta[ch], eps, slope)
        })
        .collect();
    let mut dgamma = vec![0f64; c];
    let mut dbeta = vec![0f64; c];
    for (p, (s1, s2)) in sums.into_iter().enumerate() {
        dbeta[p % c] += s1;
        dgamma[p % c] += s2;
    }
    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    (dx, f(dgamma), f(dbeta))
}
