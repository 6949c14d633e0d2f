//! Post-processing of predicted label maps: removal of connected components too small to be
//! a structure of their class (nnU-Net removes spurious components the same way).
//!
//! The minimum size of each foreground class is learned from the training labels:
//! [`MIN_COMPONENT_FRACTION`] of the smallest connected component of that class in any
//! training case. A smaller predicted component is relabelled with the label most of its
//! face neighbours carry (a false lesion speck inside the organ becomes organ again, one in
//! the background becomes background). Connectivity is 6 (faces).

/// A predicted component smaller than this fraction of the smallest training component of
/// its class is removed.
pub const MIN_COMPONENT_FRACTION: f64 = 0.5;

/// Connected components (6-connectivity) of the voxels of `class` in a `dims` = `[x, y, z]`
/// label map (x fastest): each component's voxel indices.
pub fn components(labels: &[u8], dims: [usize; 3], class: u8) -> Vec<Vec<usize>> {
    let [nx, ny, nz] = dims;
    assert_eq!(labels.len(), nx * ny * nz, "label map and dims disagree");
    let mut seen = vec![false; labels.len()];
    let mut out = Vec::new();
    let mut stack = Vec::new();
    for start in 0..labels.len() {
        if labels[start] != class || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let mut comp = Vec::new();
        while let Some(i) = stack.pop() {
            comp.push(i);
            for j in neighbours(i, dims).into_iter().flatten() {
                if labels[j] == class && !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
        out.push(comp);
    }
    out
}

/// The up to 6 face neighbours of voxel `i`.
fn neighbours(i: usize, [nx, ny, nz]: [usize; 3]) -> [Option<usize>; 6] {
    let (x, y, z) = (i % nx, (i / nx) % ny, i / (nx * ny));
    let plane = nx * ny;
    [
        (x > 0).then(|| i - 1),
        (x + 1 < nx).then(|| i + 1),
        (y > 0).then(|| i - nx),
        (y + 1 < ny).then(|| i + nx),
        (z > 0).then(|| i - plane),
        (z + 1 < nz).then(|| i + plane),
    ]
}

/// The minimum component size of each class `1..num_classes` (index 0 = class 1): a fraction
/// [`MIN_COMPONENT_FRACTION`] of the smallest component of that class in `labels` (the
/// training labels, each with its dims); 0 (keep everything) for a class that never occurs.
pub fn min_component_sizes<'a>(
    labels: impl IntoIterator<Item = (&'a [u8], [usize; 3])>,
    num_classes: usize,
) -> Vec<usize> {
    let mut smallest = vec![usize::MAX; num_classes.saturating_sub(1)];
    for (l, dims) in labels {
        for (c, s) in smallest.iter_mut().enumerate() {
            for comp in components(l, dims, (c + 1) as u8) {
                *s = (*s).min(comp.len());
            }
        }
    }
    smallest
        .into_iter()
        .map(|s| {
            if s == usize::MAX {
                0
            } else {
                (s as f64 * MIN_COMPONENT_FRACTION).floor() as usize
            }
        })
        .collect()
}

/// Relabels every component of class `c` (1-based) smaller than `min_sizes[c - 1]` voxels
/// with the most common label among its outside face neighbours (background if it has
/// none). Returns the number of voxels changed.
pub fn remove_small_components(labels: &mut [u8], dims: [usize; 3], min_sizes: &[usize]) -> usize {
    let mut changed = 0;
    for (ci, &min) in min_sizes.iter().enumerate() {
        if min == 0 {
            continue;
        }
        let class = (ci + 1) as u8;
        for comp in components(labels, dims, class) {
            if comp.len() >= min {
                continue;
            }
            let mut votes = [0usize; 256];
            for &i in &comp {
                for j in neighbours(i, dims).into_iter().flatten() {
                    if labels[j] != class {
                        votes[labels[j] as usize] += 1;
                    }
                }
            }
            let fill = (0..256)
                .max_by_key(|&l| (votes[l], std::cmp::Reverse(l)))
                .filter(|&l| votes[l] > 0)
                .unwrap_or(0) as u8;
            for &i in &comp {
                labels[i] = fill;
            }
            changed += comp.len();
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `dims` map of zeros with `class` painted on the boxes `[x0, x1) × [y0, y1) × [z0, z1)`.
    fn paint(dims: [usize; 3], boxes: &[([usize; 6], u8)]) -> Vec<u8> {
        let mut l = vec![0u8; dims.iter().product()];
        for &([x0, x1, y0, y1, z0, z1], c) in boxes {
            for z in z0..z1 {
                for y in y0..y1 {
                    for x in x0..x1 {
                        l[x + dims[0] * (y + dims[1] * z)] = c;
                    }
                }
            }
        }
        l
    }

    #[test]
    fn components_use_face_connectivity_on_odd_shapes() {
        let dims = [7, 5, 3];
        // Two boxes touching only at an edge are two components; a box across the x border
        // of a row does not wrap to the next row.
        let l = paint(
            dims,
            &[
                ([0, 2, 0, 2, 0, 1], 1),
                ([2, 4, 2, 4, 0, 1], 1),
                ([6, 7, 0, 1, 0, 3], 1),
                ([0, 1, 1, 2, 2, 3], 2),
            ],
        );
        let mut sizes: Vec<usize> = components(&l, dims, 1).iter().map(Vec::len).collect();
        sizes.sort();
        assert_eq!(sizes, vec![3, 4, 4]);
        assert_eq!(components(&l, dims, 2).len(), 1);
        assert!(components(&l, dims, 3).is_empty());
    }

    #[test]
    fn minimum_sizes_come_from_the_smallest_training_component() {
        let dims = [8, 8, 8];
        let a = paint(dims, &[([0, 4, 0, 4, 0, 4], 1), ([5, 7, 5, 7, 5, 7], 2)]);
        let b = paint(dims, &[([0, 3, 0, 3, 0, 3], 1)]);
        let got = min_component_sizes([(&a[..], dims), (&b[..], dims)], 4);
        // class 1: smallest 27 → 13; class 2: 8 → 4; class 3 never occurs → 0 (keep all).
        assert_eq!(got, vec![13, 4, 0]);
    }

    #[test]
    fn small_specks_take_their_surroundings_label_and_big_ones_stay() {
        let dims = [10, 10, 10];
        // Organ (1) box with a 1-voxel false lesion (2) inside, a true lesion of 8 voxels,
        // and a 2-voxel organ speck in the background.
        let mut l = paint(
            dims,
            &[
                ([1, 8, 1, 8, 1, 8], 1),
                ([2, 3, 2, 3, 2, 3], 2),
                ([5, 7, 5, 7, 5, 7], 2),
                ([9, 10, 0, 2, 9, 10], 1),
            ],
        );
        let before = l.clone();
        let changed = remove_small_components(&mut l, dims, &[10, 4]);
        assert_eq!(changed, 3);
        let at = |x: usize, y: usize, z: usize| x + 10 * (y + 10 * z);
        assert_eq!(
            l[at(2, 2, 2)],
            1,
            "the speck inside the organ becomes organ"
        );
        assert_eq!(
            l[at(9, 0, 9)],
            0,
            "the organ speck in the air becomes background"
        );
        assert_eq!(l[at(5, 5, 5)], 2, "the true lesion stays");
        let diff = l.iter().zip(&before).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 3, "nothing else changes");
        // Nothing to remove: nothing changes, and 0 disables a class.
        let mut again = l.clone();
        assert_eq!(remove_small_components(&mut again, dims, &[10, 4]), 0);
        assert_eq!(remove_small_components(&mut again, dims, &[0, 0]), 0);
        assert_eq!(again, l);
    }
}
