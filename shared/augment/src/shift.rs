//! Random intensity shift (MONAI `RandShiftIntensity`): `x' = x + offset`, one offset drawn from
//! `shift_offset` ([-0.1, 0.1] in normalized intensity) for all channels; the label is untouched.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::{Patch, uniform};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Shift {
    pub offset: [f64; 2],
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ShiftParams {
    pub offset: f64,
}

impl Shift {
    pub fn randomize<R: Rng + ?Sized>(&self, rng: &mut R, _dims: [usize; 3]) -> ShiftParams {
        ShiftParams {
            offset: uniform(rng, self.offset),
        }
    }

    pub fn apply(&self, params: &ShiftParams, patch: &mut Patch) {
        let o = params.offset as f32;
        patch.image.iter_mut().for_each(|v| *v += o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn adds_the_drawn_offset_to_every_voxel() {
        let t = Shift {
            offset: [-0.1, 0.1],
        };
        let mut r = rng(2);
        let mut signs = [false; 2];
        for seed in 0..20 {
            let p0 = noise_patch([5, 4, 3], 2, 0.5, 0.2, seed);
            let mut p = p0.clone();
            let params = t.randomize(&mut r, p.dims);
            assert!((-0.1..=0.1).contains(&params.offset));
            signs[(params.offset > 0.0) as usize] = true;
            t.apply(&params, &mut p);
            for (a, b) in p0.image.iter().zip(&p.image) {
                assert!((b - a - params.offset as f32).abs() < 1e-6);
            }
            assert_eq!(p.label, p0.label);
        }
        assert_eq!(signs, [true, true], "both signs are drawn");
    }
}
