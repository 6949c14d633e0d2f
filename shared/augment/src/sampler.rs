//! Random patch sampling with foreground oversampling (nnU-Net's data loader).
//!
//! With probability `fg_fraction` (default 1/3, nnU-Net's `oversample_foreground_percent`) a
//! patch is placed around a foreground voxel: a class present in the case is picked uniformly
//! (so small structures are seen as often as large ones), then one of its voxels from the
//! [`CaseIndex`], and the patch start is `voxel − patch/2 + jitter` (jitter uniform in
//! ±`jitter`·patch per axis), clamped so that the voxel stays inside the patch and the patch
//! inside the (padded) volume. Otherwise the crop is uniform over all positions.
//!
//! nnU-Net forces a fixed share of every batch onto foreground; here each patch decides alone
//! with probability `fg_fraction`, which has the same mean and keeps patches independent.
//!
//! A volume smaller than the patch along an axis is padded: the label with 0 (background), the
//! image with the channel's minimum (the background of the [0, 1]-normalized CT and MR volumes
//! the preprocessor writes, and still background for any other normalization, where 0 might
//! not be). The volume then sits at a random offset inside the patch (a random crop of the
//! padded volume), so every patch has exactly `patch_size`.

use rand::seq::index;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use volume::Volume;

use crate::{AugmentError, Patch};

/// nnU-Net's `oversample_foreground_percent`.
pub const DEFAULT_FG_FRACTION: f64 = 1.0 / 3.0;
/// Foreground voxels kept per class in a [`CaseIndex`] (nnU-Net keeps 10 000 per class).
pub const MAX_FG_PER_CLASS: usize = 10_000;
/// Seed of the subsampling in [`CaseIndex::new`]: the index is a property of the case, not of a
/// training run, so it is the same for every job.
const INDEX_SEED: u64 = 1234;
/// Default jitter of a foreground-centred patch, as a fraction of the patch size per side.
const DEFAULT_JITTER: f64 = 0.25;

/// Where each foreground class of a case lies: up to `max_per_class` voxel indices per class,
/// a uniform random subset when the class is larger, so sampling a foreground voxel is O(1).
#[derive(Debug, Clone, PartialEq)]
pub struct CaseIndex {
    dims: [usize; 3],
    /// `(class, linear voxel indices)` for each class present, ascending by class.
    classes: Vec<(u8, Vec<usize>)>,
}

impl CaseIndex {
    /// Indexes channel 0 of `label` with [`MAX_FG_PER_CLASS`] voxels per class.
    pub fn new(label: &Volume<u8>) -> Self {
        Self::with_limit(label, MAX_FG_PER_CLASS, INDEX_SEED)
    }

    /// Keeps at most `max_per_class` voxels per class (a random subset drawn with `seed`).
    /// Two passes over the label and no per-voxel allocation, whatever the class sizes.
    pub fn with_limit(label: &Volume<u8>, max_per_class: usize, seed: u64) -> Self {
        let data = label.channel(0);
        let mut counts = [0usize; 256];
        for &l in data {
            counts[l as usize] += 1;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // For each class, the sorted ranks (order of appearance) of the voxels to keep, or
        // None to keep all of them.
        let keep: Vec<Option<Vec<usize>>> = (0..256)
            .map(|c| {
                (c > 0 && counts[c] > max_per_class).then(|| {
                    let mut r = index::sample(&mut rng, counts[c], max_per_class).into_vec();
                    r.sort_unstable();
                    r
                })
            })
            .collect();
        let mut lists: Vec<Vec<usize>> = (0..256)
            .map(|c| {
                if c == 0 {
                    Vec::new()
                } else {
                    Vec::with_capacity(counts[c].min(max_per_class))
                }
            })
            .collect();
        let mut seen = [0usize; 256];
        let mut cursor = [0usize; 256];
        for (i, &l) in data.iter().enumerate() {
            let c = l as usize;
            if c == 0 {
                continue;
            }
            let rank = seen[c];
            seen[c] += 1;
            match &keep[c] {
                None => lists[c].push(i),
                Some(ranks) => {
                    if ranks.get(cursor[c]) == Some(&rank) {
                        cursor[c] += 1;
                        lists[c].push(i);
                    }
                }
            }
        }
        let classes = lists
            .into_iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(c, v)| (c as u8, v))
            .collect();
        Self {
            dims: label.dims,
            classes,
        }
    }

    pub fn dims(&self) -> [usize; 3] {
        self.dims
    }

    /// An index stored earlier ([`CaseIndex::parts`]): `(class, linear voxel indices)` per
    /// class. Checks what a stored index could get wrong (a class 0 or listed twice, an empty
    /// list, a voxel outside `dims`), so a bad file is an error, never a panic in a sampler.
    pub fn from_parts(dims: [usize; 3], classes: Vec<(u8, Vec<usize>)>) -> Result<Self, String> {
        let n: usize = dims.iter().product();
        let mut last = 0u8;
        for (c, list) in &classes {
            if *c <= last {
                return Err(format!(
                    "class {c} listed out of order (classes must ascend from 1)"
                ));
            }
            last = *c;
            if list.is_empty() {
                return Err(format!("class {c} has no voxels"));
            }
            if let Some(v) = list.iter().find(|&&v| v >= n) {
                return Err(format!("class {c}: voxel {v} is outside {dims:?}"));
            }
        }
        Ok(Self { dims, classes })
    }

    /// `(class, linear voxel indices)` for each class present, ascending by class.
    pub fn parts(&self) -> &[(u8, Vec<usize>)] {
        &self.classes
    }

    /// The foreground classes present, ascending.
    pub fn classes(&self) -> impl Iterator<Item = u8> + '_ {
        self.classes.iter().map(|(c, _)| *c)
    }

    pub fn has_foreground(&self) -> bool {
        !self.classes.is_empty()
    }

    /// The indexed voxels (`[x, y, z]`) of `class`.
    pub fn voxels(&self, class: u8) -> impl Iterator<Item = [usize; 3]> + '_ {
        let list = self
            .classes
            .iter()
            .find(|(c, _)| *c == class)
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[]);
        list.iter().map(|&i| self.coords(i))
    }

    fn coords(&self, i: usize) -> [usize; 3] {
        let [nx, ny, _] = self.dims;
        [i % nx, (i / nx) % ny, i / (nx * ny)]
    }

    /// A foreground voxel: a uniformly chosen class, then a uniformly chosen indexed voxel.
    fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<[usize; 3]> {
        if self.classes.is_empty() {
            return None;
        }
        let (_, list) = &self.classes[rng.random_range(0..self.classes.len())];
        Some(self.coords(list[rng.random_range(0..list.len())]))
    }
}

/// Draws training patches of one size from a case.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PatchSampler {
    patch_size: [usize; 3],
    fg_fraction: f64,
    jitter: f64,
}

impl PatchSampler {
    /// `patch_size` is `[x, y, z]`, each ≥ 1; `fg_fraction` in [0, 1] is the probability that a
    /// patch is centred on foreground ([`DEFAULT_FG_FRACTION`] is nnU-Net's).
    pub fn new(patch_size: [usize; 3], fg_fraction: f64) -> Result<Self, AugmentError> {
        if patch_size.contains(&0) {
            return Err(AugmentError::InvalidConfig {
                what: "patch size",
                reason: format!("{patch_size:?} has a zero extent"),
            });
        }
        if !(0.0..=1.0).contains(&fg_fraction) {
            return Err(AugmentError::InvalidConfig {
                what: "fg_fraction",
                reason: format!("{fg_fraction} is not in [0, 1]"),
            });
        }
        Ok(Self {
            patch_size,
            fg_fraction,
            jitter: DEFAULT_JITTER,
        })
    }

    /// Sets the jitter of foreground-centred patches, a fraction in [0, 0.5] of the patch size
    /// per side (default 0.25: the chosen voxel lands in the central half of the patch unless
    /// the volume border is near). 0 centres exactly, as nnU-Net does.
    pub fn with_jitter(mut self, fraction: f64) -> Result<Self, AugmentError> {
        if !(0.0..=0.5).contains(&fraction) {
            return Err(AugmentError::InvalidConfig {
                what: "jitter",
                reason: format!("{fraction} is not in [0, 0.5]"),
            });
        }
        self.jitter = fraction;
        Ok(self)
    }

    pub fn patch_size(&self) -> [usize; 3] {
        self.patch_size
    }

    pub fn fg_fraction(&self) -> f64 {
        self.fg_fraction
    }

    /// One patch of exactly `patch_size` from the case (`index` built from `label`).
    ///
    /// # Panics
    /// When `image`, `label` and `index` do not share dims, or `label` has more than one channel
    /// ([`crate::spawn_producer`] checks this up front).
    pub fn sample<R: Rng + ?Sized>(
        &self,
        image: &Volume<f32>,
        label: &Volume<u8>,
        index: &CaseIndex,
        rng: &mut R,
    ) -> Patch {
        assert_eq!(image.dims, label.dims, "image and label dims differ");
        assert_eq!(
            index.dims, label.dims,
            "case index was built for another label"
        );
        assert_eq!(label.channels, 1, "label must have one channel");
        self.sample_case(
            &VolumeCase {
                image,
                label,
                index,
            },
            rng,
        )
    }

    /// One patch of exactly `patch_size` from any [`TrainingCase`] (in memory or mapped): only
    /// the rows of the patch are read, and the padding value is asked for only when the
    /// volume is smaller than the patch.
    pub fn sample_case<C: TrainingCase + ?Sized, R: Rng + ?Sized>(
        &self,
        case: &C,
        rng: &mut R,
    ) -> Patch {
        let dims = case.dims();
        let index = case.index();
        let p = self.patch_size;

        let forced = rng.random::<f64>() < self.fg_fraction;
        let centre = if forced { index.pick(rng) } else { None };
        let start: [i64; 3] = std::array::from_fn(|a| {
            let (d, p) = (dims[a] as i64, p[a] as i64);
            let (lo, hi) = ((d - p).min(0), (d - p).max(0));
            match centre {
                None => rng.random_range(lo..=hi),
                Some(v) => {
                    let v = v[a] as i64;
                    let j = (self.jitter * p as f64).floor() as i64;
                    let s = v - p / 2 + rng.random_range(-j..=j);
                    // Keep the voxel inside the patch: s ∈ [v−p+1, v].
                    s.clamp(lo.max(v - p + 1), hi.min(v))
                }
            }
        });

        let n = p[0] * p[1] * p[2];
        let channels = case.channels();
        let mut out_image = vec![0.0f32; channels * n];
        for (c, dst) in out_image.chunks_exact_mut(n).enumerate() {
            let pad = if needs_padding(dims, p) {
                case.channel_min(c)
            } else {
                0.0
            };
            let pad = if pad.is_finite() { pad } else { 0.0 };
            crop(case.image_channel(c), dims, dst, p, start, pad);
        }
        let mut out_label = vec![0u8; n];
        crop(case.label(), dims, &mut out_label, p, start, 0);
        case.patch_read();
        Patch::new(out_image, out_label, p, channels)
    }
}

/// A case patches are drawn from: its image channels and label as slices of one grid (x
/// fastest), and its [`CaseIndex`]. In memory ([`Volume`]s) or memory-mapped from a local
/// cache file, where a slice costs nothing until its pages are read.
pub trait TrainingCase: Send + Sync {
    /// Voxels along x, y, z.
    fn dims(&self) -> [usize; 3];
    fn channels(&self) -> usize;
    /// Channel `c` of the image, `dims` voxels.
    fn image_channel(&self, c: usize) -> &[f32];
    /// The label (one channel), `dims` voxels.
    fn label(&self) -> &[u8];
    fn index(&self) -> &CaseIndex;
    /// The smallest value of channel `c`: what a volume smaller than the patch is padded with.
    /// A mapped case keeps it precomputed, so padding never reads the whole channel.
    fn channel_min(&self, c: usize) -> f32 {
        self.image_channel(c)
            .iter()
            .copied()
            .fold(f32::INFINITY, f32::min)
    }
    /// Called after a patch has been copied out: a mapped case lets go of the pages it read
    /// (they stay in the OS page cache), so resident memory does not grow with the dataset.
    fn patch_read(&self) {}
    /// Disagreements between the parts of the case (checked before any thread starts).
    fn check(&self) -> Result<(), String> {
        let n: usize = self.dims().iter().product();
        if self.label().len() != n {
            return Err(format!(
                "label has {} voxels, dims {:?} need {n}",
                self.label().len(),
                self.dims()
            ));
        }
        if self.index().dims() != self.dims() {
            return Err(format!(
                "index dims {:?}, case dims {:?}",
                self.index().dims(),
                self.dims()
            ));
        }
        for c in 0..self.channels() {
            if self.image_channel(c).len() != n {
                return Err(format!("image channel {c} is not {:?}", self.dims()));
            }
        }
        Ok(())
    }
}

/// A case held as [`Volume`]s, borrowed.
pub struct VolumeCase<'a> {
    pub image: &'a Volume<f32>,
    pub label: &'a Volume<u8>,
    pub index: &'a CaseIndex,
}

impl TrainingCase for VolumeCase<'_> {
    fn dims(&self) -> [usize; 3] {
        self.image.dims
    }
    fn channels(&self) -> usize {
        self.image.channels
    }
    fn image_channel(&self, c: usize) -> &[f32] {
        self.image.channel(c)
    }
    fn label(&self) -> &[u8] {
        self.label.channel(0)
    }
    fn index(&self) -> &CaseIndex {
        self.index
    }
    fn check(&self) -> Result<(), String> {
        if self.image.dims != self.label.dims || self.index.dims() != self.label.dims {
            return Err(format!(
                "image dims {:?}, label dims {:?}, index dims {:?}",
                self.image.dims,
                self.label.dims,
                self.index.dims()
            ));
        }
        if self.label.channels != 1 {
            return Err(format!("label has {} channels", self.label.channels));
        }
        Ok(())
    }
}

/// A case owned as [`Volume`]s with its index (what [`crate::spawn_producer`] took before
/// cases could be mapped).
impl TrainingCase for (Volume<f32>, Volume<u8>, CaseIndex) {
    fn dims(&self) -> [usize; 3] {
        self.0.dims
    }
    fn channels(&self) -> usize {
        self.0.channels
    }
    fn image_channel(&self, c: usize) -> &[f32] {
        self.0.channel(c)
    }
    fn label(&self) -> &[u8] {
        self.1.channel(0)
    }
    fn index(&self) -> &CaseIndex {
        &self.2
    }
    fn check(&self) -> Result<(), String> {
        VolumeCase {
            image: &self.0,
            label: &self.1,
            index: &self.2,
        }
        .check()
    }
}

impl<T: TrainingCase + ?Sized> TrainingCase for std::sync::Arc<T> {
    fn dims(&self) -> [usize; 3] {
        (**self).dims()
    }
    fn channels(&self) -> usize {
        (**self).channels()
    }
    fn image_channel(&self, c: usize) -> &[f32] {
        (**self).image_channel(c)
    }
    fn label(&self) -> &[u8] {
        (**self).label()
    }
    fn index(&self) -> &CaseIndex {
        (**self).index()
    }
    fn channel_min(&self, c: usize) -> f32 {
        (**self).channel_min(c)
    }
    fn patch_read(&self) {
        (**self).patch_read()
    }
    fn check(&self) -> Result<(), String> {
        (**self).check()
    }
}

fn needs_padding(dims: [usize; 3], p: [usize; 3]) -> bool {
    (0..3).any(|a| dims[a] < p[a])
}

/// Copies the `p`-sized box at `start` (may be negative or run past the end) out of `src`
/// (`dims`), filling voxels outside the volume with `pad`.
fn crop<T: Copy>(
    src: &[T],
    dims: [usize; 3],
    dst: &mut [T],
    p: [usize; 3],
    start: [i64; 3],
    pad: T,
) {
    let [nx, ny, nz] = dims.map(|d| d as i64);
    // The x range of each patch row that lies inside the volume.
    let x0 = (-start[0]).clamp(0, p[0] as i64) as usize;
    let x1 = (nx - start[0]).clamp(0, p[0] as i64) as usize;
    for (z, plane) in dst.chunks_exact_mut(p[0] * p[1]).enumerate() {
        let sz = start[2] + z as i64;
        for (y, row) in plane.chunks_exact_mut(p[0]).enumerate() {
            let sy = start[1] + y as i64;
            if !(0..nz).contains(&sz) || !(0..ny).contains(&sy) || x0 >= x1 {
                row.fill(pad);
                continue;
            }
            let base = (sy + ny * sz) as usize * nx as usize;
            let sx0 = (start[0] + x0 as i64) as usize;
            row[..x0].fill(pad);
            row[x0..x1].copy_from_slice(&src[base + sx0..base + sx0 + (x1 - x0)]);
            row[x1..].fill(pad);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use volume::Geometry;

    /// A case of `dims` with image = x + 100·y + 10⁴·z (+0.5 per channel) and a label that is
    /// `fg` inside the given box, 0 elsewhere.
    fn case(
        dims: [usize; 3],
        channels: usize,
        boxes: &[([usize; 3], [usize; 3], u8)],
    ) -> (Volume<f32>, Volume<u8>) {
        let n = dims[0] * dims[1] * dims[2];
        let mut image = Vec::with_capacity(channels * n);
        for c in 0..channels {
            for z in 0..dims[2] {
                for y in 0..dims[1] {
                    for x in 0..dims[0] {
                        image.push((x + 100 * y + 10_000 * z) as f32 + 0.5 * c as f32 + 1.0);
                    }
                }
            }
        }
        let mut label = vec![0u8; n];
        for &(lo, hi, class) in boxes {
            for z in lo[2]..hi[2] {
                for y in lo[1]..hi[1] {
                    for x in lo[0]..hi[0] {
                        label[x + dims[0] * (y + dims[1] * z)] = class;
                    }
                }
            }
        }
        let g = Geometry::identity([1.0; 3]);
        (
            Volume::new(image, dims, channels, g),
            Volume::new(label, dims, 1, g),
        )
    }

    #[test]
    fn index_lists_every_class_and_subsamples_large_ones() {
        let (_, label) = case(
            [20, 20, 10],
            1,
            &[([0, 0, 0], [20, 20, 5], 1), ([3, 3, 7], [5, 4, 8], 2)],
        );
        let idx = CaseIndex::with_limit(&label, 100, 7);
        assert_eq!(idx.classes().collect::<Vec<_>>(), [1, 2]);
        let ones: Vec<_> = idx.voxels(1).collect();
        assert_eq!(ones.len(), 100);
        assert!(
            ones.iter()
                .all(|v| label.data[label.index(v[0], v[1], v[2])] == 1)
        );
        let mut dedup = ones.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), 100, "distinct, in scan order");
        assert_eq!(idx.voxels(2).collect::<Vec<_>>(), [[3, 3, 7], [4, 3, 7]]);
        // The subset is spread over the class, not its first 100 voxels.
        assert!(ones.iter().any(|v| v[2] >= 3));
        let (_, empty) = case([4, 4, 4], 1, &[]);
        assert!(!CaseIndex::new(&empty).has_foreground());
    }

    #[test]
    fn patch_dims_are_always_exact_and_content_matches_the_volume() {
        let (image, label) = case([30, 25, 12], 2, &[([10, 10, 4], [14, 13, 7], 1)]);
        let idx = CaseIndex::new(&label);
        let s = PatchSampler::new([16, 16, 8], 0.5).unwrap();
        let mut r = rng(1);
        for _ in 0..200 {
            let p = s.sample(&image, &label, &idx, &mut r);
            assert_eq!(p.dims, [16, 16, 8]);
            assert_eq!(p.image.len(), 2 * 16 * 16 * 8);
            assert_eq!(p.label.len(), 16 * 16 * 8);
            // Rows are contiguous copies: decode the crop origin from voxel (0,0,0) and check all.
            let v0 = p.image[0] - 1.0;
            let (ox, oy, oz) = (
                v0 as usize % 100,
                (v0 as usize / 100) % 100,
                v0 as usize / 10_000,
            );
            for z in 0..8 {
                for y in 0..16 {
                    for x in 0..16 {
                        let (sx, sy, sz) = (ox + x, oy + y, oz + z);
                        assert_eq!(
                            p.image[p.index(x, y, z)],
                            image.data[image.index(sx, sy, sz)]
                        );
                        assert_eq!(
                            p.channel(1)[p.index(x, y, z)],
                            image.channel(1)[image.index(sx, sy, sz)]
                        );
                        assert_eq!(
                            p.label[p.index(x, y, z)],
                            label.data[label.index(sx, sy, sz)]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn small_volumes_are_padded_with_the_min_and_background() {
        // 6 × 40 × 3 against a 16 × 16 × 8 patch: padded along x and z, cropped along y.
        let (image, label) = case([6, 40, 3], 1, &[([0, 0, 0], [6, 40, 3], 1)]);
        let idx = CaseIndex::new(&label);
        let s = PatchSampler::new([16, 16, 8], 0.0).unwrap();
        let mut r = rng(2);
        let min = 1.0; // image value of voxel (0, 0, 0)
        for _ in 0..50 {
            let p = s.sample(&image, &label, &idx, &mut r);
            assert_eq!(p.dims, [16, 16, 8]);
            // The whole 6 × 3 cross-section is inside, once per row / slice.
            let inside = p.label.iter().filter(|&&l| l == 1).count();
            assert_eq!(inside, 6 * 16 * 3);
            for (v, &l) in p.image.iter().zip(&p.label) {
                if l == 0 {
                    assert_eq!(*v, min, "padding uses the image minimum");
                } else {
                    assert!(*v >= min);
                }
            }
        }
    }

    #[test]
    fn fg_fraction_one_always_contains_foreground() {
        // A 2×2×2 structure in a 64×64×32 volume: a random 16³ crop rarely hits it.
        let (image, label) = case(
            [64, 64, 32],
            1,
            &[([50, 7, 20], [52, 9, 22], 3), ([1, 60, 1], [2, 61, 2], 1)],
        );
        let idx = CaseIndex::new(&label);
        let mut r = rng(3);
        let always = PatchSampler::new([16, 16, 16], 1.0).unwrap();
        let mut classes_hit = [0usize; 4];
        for _ in 0..300 {
            let p = always.sample(&image, &label, &idx, &mut r);
            let counts = label_counts(&p.label);
            assert!(counts[1] + counts[3] > 0, "patch without foreground");
            classes_hit[1] += (counts[1] > 0) as usize;
            classes_hit[3] += (counts[3] > 0) as usize;
        }
        // Classes are picked uniformly, not by size.
        assert!(
            classes_hit[1] > 100 && classes_hit[3] > 100,
            "{classes_hit:?}"
        );
        let never = PatchSampler::new([16, 16, 16], 0.0).unwrap();
        let hits = (0..300)
            .filter(|_| {
                never
                    .sample(&image, &label, &idx, &mut r)
                    .label
                    .iter()
                    .any(|&l| l > 0)
            })
            .count();
        assert!(
            hits < 60,
            "random crops hit the tiny structures {hits}/300 times"
        );
        // A case without foreground falls back to random crops.
        let (image, label) = case([20, 20, 20], 1, &[]);
        let p = always.sample(&image, &label, &CaseIndex::new(&label), &mut r);
        assert_eq!(p.dims, [16, 16, 16]);
    }

    #[test]
    fn deterministic_for_a_seed() {
        let (image, label) = case([40, 30, 20], 1, &[([5, 5, 5], [9, 9, 9], 1)]);
        let idx = CaseIndex::new(&label);
        let s = PatchSampler::new([12, 12, 12], DEFAULT_FG_FRACTION).unwrap();
        let draw = |seed| {
            let mut r = rng(seed);
            (0..20)
                .map(|_| s.sample(&image, &label, &idx, &mut r))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
        assert_eq!(CaseIndex::new(&label), CaseIndex::new(&label));
    }

    #[test]
    fn invalid_settings_are_errors() {
        assert!(PatchSampler::new([0, 8, 8], 0.3).is_err());
        assert!(PatchSampler::new([8, 8, 8], 1.2).is_err());
        assert!(PatchSampler::new([8, 8, 8], f64::NAN).is_err());
        assert!(
            PatchSampler::new([8, 8, 8], 0.3)
                .unwrap()
                .with_jitter(0.6)
                .is_err()
        );
    }
}
