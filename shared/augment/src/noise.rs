//! Random additive Gaussian noise (MONAI `RandGaussianNoise`): the noise std is drawn from
//! `noise_std` (U(0, 0.1) in normalized intensity), mean 0, independent per voxel and channel;
//! the label is untouched.
//!
//! `randomize` draws the std and a 64-bit noise seed; `apply` expands the seed with ChaCha8, so
//! the params stay small (loggable) and `apply` is a pure function of them.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::{Patch, uniform};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Noise {
    /// Range the noise std is drawn from.
    pub std: [f64; 2],
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NoiseParams {
    pub std: f64,
    pub seed: u64,
}

impl Noise {
    pub fn randomize<R: Rng + ?Sized>(&self, rng: &mut R, _dims: [usize; 3]) -> NoiseParams {
        NoiseParams {
            std: uniform(rng, self.std),
            seed: rng.random(),
        }
    }

    pub fn apply(&self, params: &NoiseParams, patch: &mut Patch) {
        if params.std == 0.0 {
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
        let std = params.std as f32;
        for v in patch.image.iter_mut() {
            let z: f32 = StandardNormal.sample(&mut rng);
            *v += std * z;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn adds_the_drawn_variance_with_mean_zero() {
        let t = Noise { std: [0.0, 0.1] };
        for seed in 0..5 {
            let p0 = noise_patch([48, 48, 48], 1, 0.4, 0.05, 100 + seed);
            let mut p = p0.clone();
            let params = t.randomize(&mut rng(seed), p.dims);
            assert!((0.0..=0.1).contains(&params.std));
            t.apply(&params, &mut p);
            let (m0, v0) = mean_var(&p0.image);
            let (m1, v1) = mean_var(&p.image);
            let expect = v0 + params.std * params.std;
            // 110k voxels: the sample variance is within ~1 % of its expectation.
            assert!(
                (v1 - expect).abs() < 0.02 * expect,
                "{params:?}: {v0} -> {v1}, want {expect}"
            );
            assert!((m1 - m0).abs() < 1e-3, "mean {m0} -> {m1}");
            assert_eq!(p.label, p0.label);
        }
    }

    #[test]
    fn apply_is_a_function_of_the_params() {
        let t = Noise { std: [0.05, 0.05] };
        let p0 = noise_patch([10, 9, 8], 2, 0.0, 1.0, 1);
        let params = t.randomize(&mut rng(4), p0.dims);
        let (mut a, mut b) = (p0.clone(), p0.clone());
        t.apply(&params, &mut a);
        t.apply(&params, &mut b);
        assert_eq!(a, b);
        assert_ne!(a, p0);
        // Channels get different noise.
        let n = a.voxels();
        let d0: Vec<f32> = (0..n).map(|i| a.image[i] - p0.image[i]).collect();
        let d1: Vec<f32> = (0..n).map(|i| a.image[n + i] - p0.image[n + i]).collect();
        assert_ne!(d0, d1);
    }
}
