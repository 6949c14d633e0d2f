//! Random Gaussian smoothing (MONAI `RandGaussianSmooth`): one sigma per axis drawn from
//! `smooth_sigma` ([0.25, 1.5] voxels), the same sigmas for every image channel; the label is
//! untouched. Kernel and edge handling: [`crate::gaussian_blur`].

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::{Patch, gaussian_blur, uniform};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Smooth {
    /// Range of each axis' sigma, voxels.
    pub sigma: [f64; 2],
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SmoothParams {
    /// `[σx, σy, σz]`, voxels.
    pub sigma: [f64; 3],
}

impl Smooth {
    pub fn randomize<R: Rng + ?Sized>(&self, rng: &mut R, _dims: [usize; 3]) -> SmoothParams {
        SmoothParams {
            sigma: std::array::from_fn(|_| uniform(rng, self.sigma)),
        }
    }

    pub fn apply(&self, params: &SmoothParams, patch: &mut Patch) {
        let dims = patch.dims;
        for c in patch.channels_mut() {
            gaussian_blur(c, dims, params.sigma);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn lowers_the_variance_of_white_noise_and_keeps_the_mean() {
        let t = Smooth { sigma: [0.25, 1.5] };
        for seed in 0..4 {
            let p0 = noise_patch([40, 40, 40], 1, 0.5, 0.2, seed);
            let mut p = p0.clone();
            let params = t.randomize(&mut rng(seed), p.dims);
            t.apply(&params, &mut p);
            let (m0, v0) = mean_var(&p0.image);
            let (m1, v1) = mean_var(&p.image);
            // White noise through a separable kernel keeps Σk² per axis of its variance.
            let expect: f64 = params
                .sigma
                .iter()
                .map(|&s| {
                    crate::gaussian_kernel(s)
                        .iter()
                        .map(|&k| (k * k) as f64)
                        .sum::<f64>()
                })
                .product();
            assert!(v1 < v0, "{params:?}: var {v0} -> {v1}");
            assert!(
                (v1 / v0 - expect).abs() < 0.1 * expect + 0.01,
                "{v1} / {v0} vs {expect}"
            );
            assert!((m1 - m0).abs() < 2e-3, "mean {m0} -> {m1}");
            assert_eq!(p.label, p0.label);
        }
    }

    #[test]
    fn sigma_is_drawn_per_axis_in_range() {
        let t = Smooth { sigma: [0.25, 1.5] };
        let mut r = rng(1);
        for _ in 0..100 {
            let s = t.randomize(&mut r, [4; 3]).sigma;
            assert!(s.iter().all(|v| (0.25..=1.5).contains(v)));
        }
    }
}
