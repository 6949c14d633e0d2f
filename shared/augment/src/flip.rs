//! Random mirroring (nnU-Net `MirrorTransform`, MONAI `RandFlipd`): when the transform fires,
//! each spatial axis is mirrored independently with probability `flip_axis_prob` (0.5), image
//! channels and label together. As in nnU-Net, a firing may mirror no axis at all.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::Patch;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Flip {
    /// Probability that each axis is mirrored once the transform fires.
    pub axis_prob: f64,
}

/// Which axes (`[x, y, z]`) are mirrored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlipParams {
    pub axes: [bool; 3],
}

impl Flip {
    pub fn randomize<R: Rng + ?Sized>(&self, rng: &mut R, _dims: [usize; 3]) -> FlipParams {
        FlipParams {
            axes: std::array::from_fn(|_| rng.random::<f64>() < self.axis_prob),
        }
    }

    pub fn apply(&self, params: &FlipParams, patch: &mut Patch) {
        let dims = patch.dims;
        for c in patch.channels_mut() {
            flip_in_place(c, dims, params.axes);
        }
        flip_in_place(&mut patch.label, dims, params.axes);
    }
}

/// Mirrors one `[Z, Y, X]` grid along the chosen axes, in place.
pub fn flip_in_place<T: Copy>(data: &mut [T], [nx, ny, nz]: [usize; 3], axes: [bool; 3]) {
    debug_assert_eq!(data.len(), nx * ny * nz);
    if data.is_empty() {
        return;
    }
    let plane = nx * ny;
    if axes[0] {
        for row in data.chunks_exact_mut(nx) {
            row.reverse();
        }
    }
    if axes[1] {
        for p in data.chunks_exact_mut(plane) {
            for y in 0..ny / 2 {
                let (lo, hi) = p.split_at_mut((ny - 1 - y) * nx);
                lo[y * nx..(y + 1) * nx].swap_with_slice(&mut hi[..nx]);
            }
        }
    }
    if axes[2] {
        for z in 0..nz / 2 {
            let (lo, hi) = data.split_at_mut((nz - 1 - z) * plane);
            lo[z * plane..(z + 1) * plane].swap_with_slice(&mut hi[..plane]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn flips_each_axis_like_the_index_formula() {
        let dims = [4, 3, 5];
        let p0 = aligned_patch(dims, 2, 1);
        for axes in [
            [true, false, false],
            [false, true, false],
            [false, false, true],
        ] {
            let mut p = p0.clone();
            Flip { axis_prob: 0.5 }.apply(&FlipParams { axes }, &mut p);
            for z in 0..dims[2] {
                for y in 0..dims[1] {
                    for x in 0..dims[0] {
                        let sx = if axes[0] { dims[0] - 1 - x } else { x };
                        let sy = if axes[1] { dims[1] - 1 - y } else { y };
                        let sz = if axes[2] { dims[2] - 1 - z } else { z };
                        assert_eq!(p.label[p.index(x, y, z)], p0.label[p0.index(sx, sy, sz)]);
                    }
                }
            }
            assert_aligned(&p);
        }
    }

    #[test]
    fn flip_twice_is_identity_and_keeps_alignment() {
        let t = Flip { axis_prob: 0.5 };
        for seed in 0..8 {
            // Odd and even extents, several channels.
            let p0 = aligned_patch([5, 6, 7], 3, seed);
            let mut p = p0.clone();
            let params = t.randomize(&mut rng(seed), p.dims);
            t.apply(&params, &mut p);
            assert_aligned(&p);
            assert_eq!(label_counts(&p.label), label_counts(&p0.label));
            t.apply(&params, &mut p);
            assert_eq!(p, p0);
        }
    }

    #[test]
    fn axis_prob_controls_the_axes() {
        let mut r = rng(3);
        let all = Flip { axis_prob: 1.0 }.randomize(&mut r, [8; 3]);
        let none = Flip { axis_prob: 0.0 }.randomize(&mut r, [8; 3]);
        assert_eq!(all.axes, [true; 3]);
        assert_eq!(none.axes, [false; 3]);
        let half = Flip { axis_prob: 0.5 };
        let n = 3000;
        let flipped: usize = (0..n)
            .map(|_| {
                half.randomize(&mut r, [8; 3])
                    .axes
                    .iter()
                    .filter(|&&a| a)
                    .count()
            })
            .sum();
        let frac = flipped as f64 / (3 * n) as f64;
        assert!((frac - 0.5).abs() < 0.03, "{frac}");
    }
}
