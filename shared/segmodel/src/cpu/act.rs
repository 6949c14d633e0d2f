//! Leaky ReLU (ReLU for slope 0), forward and backward.

use rayon::prelude::*;

const CHUNK: usize = 1 << 16;

pub(crate) fn forward(x: &[f32], slope: f32) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| forward_chunk(x, y, slope));
    y
}

simd::dispatch! {
    fn forward_chunk(x: &[f32], y: &mut [f32], slope: f32) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = x.max(0.0) + slope * x.min(0.0);
        }
    }
}

simd::dispatch! {
    fn backward_chunk(y: &[f32], g: &[f32], dx: &mut [f32], slope: f32) {
        for ((d, &y), &g) in dx.iter_mut().zip(y).zip(g) {
            let pos = (y > 0.0) as u32 as f32;
            *d = g * (slope + pos * (1.0 - slope));
        }
    }
}

/// `dx = dy · (y > 0 ? 1 : slope)`; the mask is read from the output (slope ≥ 0 keeps its
/// sign), and the kink itself gets `slope` (0 for ReLU, as in PyTorch).
pub(crate) fn backward(y: &[f32], dy: &[f32], slope: f32) -> Vec<f32> {
    let mut dx = vec![0f32; y.len()];
    dx.par_chunks_mut(CHUNK)
        .zip(y.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(dx, (y, g))| backward_chunk(y, g, dx, slope));
    dx
}
