//! Per-channel reductions over `[N, C, S]` (the bias gradient).

use super::sum_f64;
use rayon::prelude::*;

/// `out[c] = Σ_n Σ_s x[n, c, s]`, accumulated in f64 per channel.
pub(crate) fn channel_sum(x: &[f32], n: usize, c: usize, s: usize) -> Vec<f32> {
    assert_eq!(x.len(), n * c * s);
    (0..c)
        .into_par_iter()
        .map(|ch| {
            (0..n)
                .map(|b| sum_f64(&x[(b * c + ch) * s..][..s]))
                .sum::<f64>() as f32
        })
        .collect()
}
