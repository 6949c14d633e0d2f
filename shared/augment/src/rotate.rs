//! Random 90° rotation in the axial (x–y) plane, image channels and label together
//! (MONAI `RandRotate90d` with `spatial_axes=(0, 1)`, nnU-Net's `Rot90Transform`).
//!
//! `k` quarter turns rotate from +x towards +y: voxel (x, y) moves to (ny−1−y, x) per turn. An odd
//! `k` swaps the x and y extents; [`Rotate90::apply`] handles that and updates `dims`. Because a
//! batch needs one shape, [`Rotate90::randomize`] draws `k ∈ {1, 2, 3}` only for square in-plane
//! patches and `k = 2` (the one shape-keeping turn) otherwise.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::Patch;
use crate::flip::flip_in_place;

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rotate90;

/// Number of quarter turns, 0..=3 (0 is the identity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotate90Params {
    pub k: u8,
}

impl Rotate90 {
    pub fn randomize<R: Rng + ?Sized>(&self, rng: &mut R, dims: [usize; 3]) -> Rotate90Params {
        let k = if dims[0] == dims[1] {
            rng.random_range(1..=3u8)
        } else {
            2
        };
        Rotate90Params { k }
    }

    pub fn apply(&self, params: &Rotate90Params, patch: &mut Patch) {
        let k = params.k % 4;
        if k == 0 || patch.voxels() == 0 {
            return;
        }
        let dims = patch.dims;
        if k == 2 || dims[0] == dims[1] {
            // Shape kept: rotate in place, no allocation.
            for c in patch.channels_mut() {
                rotate_in_place(c, dims, k);
            }
            rotate_in_place(&mut patch.label, dims, k);
            return;
        }
        let n = patch.voxels();
        let mut image = vec![0.0f32; patch.image.len()];
        for (src, dst) in patch.image.chunks_exact(n).zip(image.chunks_exact_mut(n)) {
            rotate_into(src, dst, dims, k);
        }
        let mut label = vec![0u8; n];
        rotate_into(&patch.label, &mut label, dims, k);
        patch.image = image;
        patch.label = label;
        patch.dims = rotated_dims(dims, k);
    }
}

/// `k` quarter turns of a grid whose shape they keep (`k == 2`, or square x–y planes):
/// a half turn mirrors x and y; a quarter turn transposes each plane, then mirrors x
/// (`k = 1`) or y (`k = 3`).
fn rotate_in_place<T: Copy>(data: &mut [T], dims: [usize; 3], k: u8) {
    if k == 2 {
        flip_in_place(data, dims, [true, true, false]);
        return;
    }
    debug_assert_eq!(dims[0], dims[1]);
    let n = dims[0];
    for p in data.chunks_exact_mut(n * n) {
        for y in 0..n {
            for x in y + 1..n {
                p.swap(x + n * y, y + n * x);
            }
        }
    }
    let axes = if k == 1 {
        [true, false, false]
    } else {
        [false, true, false]
    };
    flip_in_place(data, dims, axes);
}

/// The `[x, y, z]` extents after `k` quarter turns.
pub fn rotated_dims([nx, ny, nz]: [usize; 3], k: u8) -> [usize; 3] {
    if k % 2 == 1 {
        [ny, nx, nz]
    } else {
        [nx, ny, nz]
    }
}

/// Writes `src` (`[Z, Y, X]` with `dims`) rotated by `k` quarter turns into `dst`.
fn rotate_into<T: Copy>(src: &[T], dst: &mut [T], dims: [usize; 3], k: u8) {
    let [nx, ny, nz] = dims;
    let [ox, oy, _] = rotated_dims(dims, k);
    let plane = nx * ny;
    for z in 0..nz {
        let s = &src[z * plane..(z + 1) * plane];
        let d = &mut dst[z * plane..(z + 1) * plane];
        for y2 in 0..oy {
            let row = &mut d[y2 * ox..(y2 + 1) * ox];
            match k {
                // Forward map (x, y) -> (ny-1-y, x), so out(x2, y2) = in(y2, ny-1-x2).
                1 => {
                    for (x2, v) in row.iter_mut().enumerate() {
                        *v = s[y2 + nx * (ny - 1 - x2)];
                    }
                }
                // (x, y) -> (nx-1-x, ny-1-y): a reversed source row.
                2 => {
                    let src_row = &s[(ny - 1 - y2) * nx..(ny - y2) * nx];
                    for (v, &w) in row.iter_mut().zip(src_row.iter().rev()) {
                        *v = w;
                    }
                }
                // Inverse of k = 1: out(x2, y2) = in(nx-1-y2, x2).
                _ => {
                    for (x2, v) in row.iter_mut().enumerate() {
                        *v = s[(nx - 1 - y2) + nx * x2];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn quarter_turn_moves_voxels_from_x_towards_y() {
        // 3×2 in-plane, 1 slice: label = x + 3y.
        let label: Vec<u8> = (0..6).collect();
        let image: Vec<f32> = label.iter().map(|&l| l as f32).collect();
        let mut p = Patch::new(image, label, [3, 2, 1], 1);
        Rotate90.apply(&Rotate90Params { k: 1 }, &mut p);
        assert_eq!(p.dims, [2, 3, 1]);
        // (x, y) -> (ny-1-y, x): (0,0)->(1,0), (1,0)->(1,1), (2,0)->(1,2), (0,1)->(0,0), ...
        for y in 0..2 {
            for x in 0..3 {
                let (x2, y2) = (1 - y, x);
                assert_eq!(p.label[p.index(x2, y2, 0)] as usize, x + 3 * y);
            }
        }
    }

    #[test]
    fn four_turns_are_identity_and_keep_label_counts() {
        for (seed, dims) in [(1, [6, 6, 4]), (2, [5, 7, 3]), (3, [1, 4, 2])] {
            let p0 = aligned_patch(dims, 2, seed);
            for k in 1..=3u8 {
                let mut p = p0.clone();
                for turn in 1..=4 {
                    Rotate90.apply(&Rotate90Params { k }, &mut p);
                    assert_aligned(&p);
                    assert_eq!(label_counts(&p.label), label_counts(&p0.label));
                    if turn < 4 && (k as usize * turn) % 2 == 1 {
                        assert_eq!(p.dims, [dims[1], dims[0], dims[2]]);
                    }
                }
                assert_eq!(p, p0, "k = {k}, dims {dims:?}");
            }
        }
    }

    #[test]
    fn in_place_path_matches_the_general_one() {
        let p0 = aligned_patch([5, 5, 3], 1, 4);
        for k in 1..=3u8 {
            let mut fast = p0.label.clone();
            rotate_in_place(&mut fast, p0.dims, k);
            let mut general = vec![0u8; fast.len()];
            rotate_into(&p0.label, &mut general, p0.dims, k);
            assert_eq!(fast, general, "k = {k}");
        }
    }

    #[test]
    fn k_and_its_inverse_cancel() {
        let p0 = aligned_patch([4, 7, 2], 1, 9);
        let mut p = p0.clone();
        Rotate90.apply(&Rotate90Params { k: 1 }, &mut p);
        Rotate90.apply(&Rotate90Params { k: 3 }, &mut p);
        assert_eq!(p, p0);
    }

    #[test]
    fn randomize_keeps_the_shape_of_non_square_patches() {
        let mut r = rng(5);
        let mut seen = [false; 4];
        for _ in 0..200 {
            let k = Rotate90.randomize(&mut r, [8, 8, 3]).k;
            assert!((1..=3).contains(&k));
            seen[k as usize] = true;
            assert_eq!(Rotate90.randomize(&mut r, [8, 6, 3]).k, 2);
        }
        assert_eq!(seen, [false, true, true, true]);
    }
}
