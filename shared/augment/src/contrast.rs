//! Random contrast (gamma) adjustment, MONAI `AdjustContrast`'s formula
//!
//! ```text
//! x' = ((x − min) / (range + ε))^γ · range + min,   ε = 1e-7
//! ```
//!
//! with γ ~ U(0.7, 1.5) (nnU-Net's `GammaTransform` range). Min and range are taken per image
//! channel (nnU-Net applies gamma per channel; MONAI over the whole array, which would tie
//! differently scaled modalities together). The map is monotone and keeps the channel's min
//! exactly and its max up to ε; the label is untouched.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::{Patch, uniform};

/// MONAI's epsilon in `AdjustContrast`.
const EPSILON: f64 = 1e-7;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Contrast {
    pub gamma: [f64; 2],
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ContrastParams {
    pub gamma: f64,
}

impl Contrast {
    pub fn randomize<R: Rng + ?Sized>(&self, rng: &mut R, _dims: [usize; 3]) -> ContrastParams {
        ContrastParams {
            gamma: uniform(rng, self.gamma),
        }
    }

    pub fn apply(&self, params: &ContrastParams, patch: &mut Patch) {
        let gamma = params.gamma as f32;
        for c in patch.channels_mut() {
            let (lo, hi) = c
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                });
            let range = hi - lo;
            if !range.is_finite() || range <= 0.0 {
                continue; // constant (or non-finite) channel: the formula maps it to itself
            }
            let inv = (1.0 / (range as f64 + EPSILON)) as f32;
            for v in c.iter_mut() {
                *v = ((*v - lo) * inv).powf(gamma) * range + lo;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn keeps_the_endpoints_and_is_monotone() {
        let t = Contrast { gamma: [0.7, 1.5] };
        for seed in 0..6 {
            let p0 = noise_patch(
                [12, 11, 10],
                2,
                0.3 * seed as f32,
                0.2 + 0.1 * seed as f32,
                seed,
            );
            let mut p = p0.clone();
            let params = t.randomize(&mut rng(seed), p.dims);
            assert!((0.7..=1.5).contains(&params.gamma));
            t.apply(&params, &mut p);
            for c in 0..p.channels {
                let (a, b) = (p0.channel(c), p.channel(c));
                let min = |s: &[f32]| s.iter().cloned().fold(f32::INFINITY, f32::min);
                let max = |s: &[f32]| s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                assert_eq!(min(b), min(a));
                assert!((max(b) - max(a)).abs() < 1e-5, "{} vs {}", max(b), max(a));
                // Monotone: sorting by the input sorts the output.
                let mut order: Vec<usize> = (0..a.len()).collect();
                order.sort_by(|&i, &j| a[i].total_cmp(&a[j]));
                for w in order.windows(2) {
                    assert!(b[w[0]] <= b[w[1]], "not monotone at {w:?}");
                }
            }
            assert_eq!(p.label, p0.label);
        }
    }

    #[test]
    fn gamma_above_one_darkens_the_midtones() {
        let image = vec![0.0, 0.25, 0.5, 1.0];
        let mut p = Patch::new(image, vec![0; 4], [4, 1, 1], 1);
        Contrast { gamma: [2.0, 2.0] }.apply(&ContrastParams { gamma: 2.0 }, &mut p);
        let want = [0.0, 0.0625, 0.25, 1.0];
        for (g, w) in p.image.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{g} vs {w}");
        }
    }

    #[test]
    fn constant_channel_is_unchanged() {
        let mut p = Patch::new(vec![0.4; 8], vec![0; 8], [2, 2, 2], 1);
        Contrast { gamma: [0.7, 1.5] }.apply(&ContrastParams { gamma: 1.3 }, &mut p);
        assert!(p.image.iter().all(|&v| v == 0.4));
    }
}
