//! Random intensity scaling (MONAI `RandScaleIntensity`): `x' = x · (1 + f)`, one factor drawn
//! from `scale_factor` ([-0.1, 0.1]) for all channels; the label is untouched.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::{Patch, uniform};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scale {
    pub factor: [f64; 2],
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScaleParams {
    pub factor: f64,
}

impl Scale {
    pub fn randomize<R: Rng + ?Sized>(&self, rng: &mut R, _dims: [usize; 3]) -> ScaleParams {
        ScaleParams {
            factor: uniform(rng, self.factor),
        }
    }

    pub fn apply(&self, params: &ScaleParams, patch: &mut Patch) {
        let m = (1.0 + params.factor) as f32;
        patch.image.iter_mut().for_each(|v| *v *= m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn multiplies_every_voxel_by_one_plus_the_factor() {
        let t = Scale {
            factor: [-0.1, 0.1],
        };
        let mut r = rng(3);
        for seed in 0..20 {
            let p0 = noise_patch([5, 4, 3], 2, 0.5, 0.2, seed);
            let mut p = p0.clone();
            let params = t.randomize(&mut r, p.dims);
            assert!((-0.1..=0.1).contains(&params.factor));
            t.apply(&params, &mut p);
            for (a, b) in p0.image.iter().zip(&p.image) {
                assert!((b - a * (1.0 + params.factor as f32)).abs() < 1e-6);
            }
            // Zero stays zero: scaling, not shifting.
            let mut z = Patch::new(vec![0.0; 8], vec![0; 8], [2, 2, 2], 1);
            t.apply(&params, &mut z);
            assert!(z.image.iter().all(|&v| v == 0.0));
            assert_eq!(p.label, p0.label);
        }
    }
}
