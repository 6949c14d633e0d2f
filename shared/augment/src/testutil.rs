//! Helpers shared by the unit tests.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::Patch;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A patch of white noise N(mean, std²) and a random label in 0..classes.
pub fn noise_patch(dims: [usize; 3], channels: usize, mean: f32, std: f32, seed: u64) -> Patch {
    let mut r = rng(seed);
    let n = dims[0] * dims[1] * dims[2];
    let image = (0..channels * n)
        .map(|_| {
            let z: f64 = StandardNormal.sample(&mut r);
            mean + std * z as f32
        })
        .collect();
    let label = (0..n).map(|_| r.random_range(0..3u8)).collect();
    Patch::new(image, label, dims, channels)
}

/// A patch whose label is random in 0..4 and whose every image channel equals
/// `label as f32 + 10·c`, so spatial alignment can be checked after a transform.
pub fn aligned_patch(dims: [usize; 3], channels: usize, seed: u64) -> Patch {
    let mut r = rng(seed);
    let n = dims[0] * dims[1] * dims[2];
    let label: Vec<u8> = (0..n).map(|_| r.random_range(0..4u8)).collect();
    let image = (0..channels)
        .flat_map(|c| label.iter().map(move |&l| l as f32 + 10.0 * c as f32))
        .collect();
    Patch::new(image, label, dims, channels)
}

/// Asserts every image channel still equals `label + 10·c`.
pub fn assert_aligned(p: &Patch) {
    for c in 0..p.channels {
        for (v, &l) in p.channel(c).iter().zip(&p.label) {
            assert_eq!(*v, l as f32 + 10.0 * c as f32, "image and label misaligned");
        }
    }
}

pub fn mean_var(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var)
}

pub fn label_counts(label: &[u8]) -> [usize; 256] {
    let mut c = [0usize; 256];
    for &l in label {
        c[l as usize] += 1;
    }
    c
}
