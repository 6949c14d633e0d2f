//! Random Gaussian sharpening, an unsharp mask (MONAI `RandGaussianSharpen`, after the scipy
//! lecture notes' recipe):
//!
//! ```text
//! b1 = G(σ1) * x;   b2 = G(σ2) * b1;   x' = b1 + α · (b1 − b2)
//! ```
//!
//! with σ1 ~ U(0.5, 1.0) per axis, σ2 ~ U(0.5, σ1) per axis and α ~ U(10, 30) (MONAI's
//! defaults). The label is untouched. Kernel and edge handling: [`crate::gaussian_blur`].

use std::cell::RefCell;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::{Patch, gaussian_blur, uniform};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sharpen {
    /// Range of each axis' first sigma, voxels.
    pub sigma1: [f64; 2],
    /// Each axis' second sigma is drawn from `[sigma2_min, σ1 of that axis]`.
    pub sigma2_min: f64,
    pub alpha: [f64; 2],
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SharpenParams {
    pub sigma1: [f64; 3],
    pub sigma2: [f64; 3],
    pub alpha: f64,
}

impl Sharpen {
    pub fn randomize<R: Rng + ?Sized>(&self, rng: &mut R, _dims: [usize; 3]) -> SharpenParams {
        let sigma1: [f64; 3] = std::array::from_fn(|_| uniform(rng, self.sigma1));
        let sigma2 = sigma1.map(|s1| uniform(rng, [self.sigma2_min.min(s1), s1]));
        let alpha = uniform(rng, self.alpha);
        SharpenParams {
            sigma1,
            sigma2,
            alpha,
        }
    }

    pub fn apply(&self, params: &SharpenParams, patch: &mut Patch) {
        let dims = patch.dims;
        let alpha = params.alpha as f32;
        B2.with_borrow_mut(|b2| {
            for c in patch.channels_mut() {
                gaussian_blur(c, dims, params.sigma1);
                b2.clear();
                b2.extend_from_slice(c);
                gaussian_blur(b2, dims, params.sigma2);
                for (v, &w) in c.iter_mut().zip(b2.iter()) {
                    *v += alpha * (*v - w);
                }
            }
        });
    }
}

thread_local! {
    /// The second blur's buffer, kept per thread: a fresh patch-sized allocation per call costs
    /// page faults worth a blur pass.
    static B2: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    /// A smooth 3D Gaussian blob of width `w` voxels centred in the patch.
    fn blob(n: usize, w: f64) -> Patch {
        let c = (n as f64 - 1.0) / 2.0;
        let mut image = Vec::with_capacity(n * n * n);
        for z in 0..n {
            for y in 0..n {
                for x in 0..n {
                    let d2 =
                        (x as f64 - c).powi(2) + (y as f64 - c).powi(2) + (z as f64 - c).powi(2);
                    image.push((-d2 / (2.0 * w * w)).exp() as f32);
                }
            }
        }
        Patch::new(image, vec![0; n * n * n], [n; 3], 1)
    }

    /// Σ of squared forward differences along all axes.
    fn gradient_energy(p: &Patch) -> f64 {
        let [nx, ny, nz] = p.dims;
        let v = |x, y, z| p.image[p.index(x, y, z)] as f64;
        let mut e = 0.0;
        for z in 0..nz {
            for y in 0..ny {
                for x in 0..nx {
                    if x + 1 < nx {
                        e += (v(x + 1, y, z) - v(x, y, z)).powi(2);
                    }
                    if y + 1 < ny {
                        e += (v(x, y + 1, z) - v(x, y, z)).powi(2);
                    }
                    if z + 1 < nz {
                        e += (v(x, y, z + 1) - v(x, y, z)).powi(2);
                    }
                }
            }
        }
        e
    }

    fn monai_default() -> Sharpen {
        Sharpen {
            sigma1: [0.5, 1.0],
            sigma2_min: 0.5,
            alpha: [10.0, 30.0],
        }
    }

    #[test]
    fn increases_the_gradient_energy_of_a_smooth_blob() {
        let t = monai_default();
        let p0 = blob(24, 4.0);
        let e0 = gradient_energy(&p0);
        for seed in 0..6 {
            let mut p = p0.clone();
            let params = t.randomize(&mut rng(seed), p.dims);
            t.apply(&params, &mut p);
            let e1 = gradient_energy(&p);
            assert!(e1 > 1.05 * e0, "{params:?}: {e0} -> {e1}");
        }
    }

    #[test]
    fn keeps_a_constant_image_and_the_label() {
        let t = monai_default();
        let mut p = noise_patch([6, 5, 4], 2, 0.0, 1.0, 2);
        let label = p.label.clone();
        p.image.iter_mut().for_each(|v| *v = 0.3);
        let params = t.randomize(&mut rng(1), p.dims);
        t.apply(&params, &mut p);
        assert!(p.image.iter().all(|v| (v - 0.3).abs() < 1e-4));
        assert_eq!(p.label, label);
    }

    #[test]
    fn draws_sigma2_below_sigma1_and_alpha_in_range() {
        let t = monai_default();
        let mut r = rng(7);
        for _ in 0..200 {
            let s = t.randomize(&mut r, [8; 3]);
            for a in 0..3 {
                assert!((0.5..=1.0).contains(&s.sigma1[a]));
                assert!(s.sigma2[a] >= 0.5 && s.sigma2[a] <= s.sigma1[a]);
            }
            assert!((10.0..=30.0).contains(&s.alpha));
        }
    }
}
