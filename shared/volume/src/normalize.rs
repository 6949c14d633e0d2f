//! Intensity normalization: fixed windows (CT) and percentile windows (MR).
//!
//! * CT: [`normalize_window`] with the caller's HU window (the paper: `[-1000, 1000]`).
//! * MR: the window is a pair of percentiles (the paper: 5th..95th), either of each volume
//!   ([`percentiles`], [`normalize_percentile`]) or of the whole dataset ([`PercentileSketch`],
//!   exact in two passes with bounded memory).
//!
//! Percentiles follow numpy's default (`method="linear"`): for `n` values and percentile `p`
//! the rank is `h = p/100 · (n − 1)`, and the result interpolates the order statistics
//! `⌊h⌋` and `⌊h⌋ + 1` (0-based) with numpy's `_lerp`.
//!
//! **NaN** values are ignored everywhere: they are not counted by the percentile functions
//! (so `n` is the number of non-NaN values) and [`normalize_window`] leaves them NaN. When no
//! non-NaN value is left there is no percentile: the functions return `None` /
//! [`SketchError::Empty`]. Infinities are ordinary (extreme) values.

use rayon::prelude::*;

use crate::Volume;

/// Maps `v ↦ clamp((v − low) / (high − low), 0, 1)` in place, in parallel.
///
/// When `high <= low` (an empty window, e.g. a constant volume's percentiles) every value
/// becomes 0. NaN values stay NaN. The arithmetic is done in `f64`, so `low ↦ 0` and
/// `high ↦ 1` exactly.
///
/// # Panics
/// When `low` or `high` is NaN.
pub fn normalize_window(data: &mut [f32], low: f64, high: f64) {
    assert!(
        !low.is_nan() && !high.is_nan(),
        "window bounds must not be NaN"
    );
    if high <= low {
        data.par_iter_mut().for_each(|v| {
            if !v.is_nan() {
                *v = 0.0;
            }
        });
        return;
    }
    data.par_chunks_mut(1 << 14)
        .for_each(|chunk| window_chunk(chunk, low, high - low));
}

simd::dispatch! {
    fn window_chunk(chunk: &mut [f32], low: f64, width: f64) {
        for v in chunk {
            // NaN compares false in clamp's max/min below and propagates.
            *v = ((*v as f64 - low) / width).clamp(0.0, 1.0) as f32;
        }
    }
}

/// Normalizes `data` with the window between its own `p_low` and `p_high` percentiles and
/// returns that window, or `None` (data untouched) when there is no non-NaN value.
pub fn normalize_percentile(data: &mut [f32], p_low: f64, p_high: f64) -> Option<(f64, f64)> {
    let w = percentiles(data, &[p_low, p_high])?;
    normalize_window(data, w[0], w[1]);
    Some((w[0], w[1]))
}

/// [`normalize_percentile`] for each channel of a volume independently.
pub fn normalize_percentile_channels(
    v: &mut Volume<f32>,
    p_low: f64,
    p_high: f64,
) -> Vec<Option<(f64, f64)>> {
    (0..v.channels)
        .map(|c| normalize_percentile(v.channel_mut(c), p_low, p_high))
        .collect()
}

/// [`normalize_window`] over every channel of a volume.
pub fn normalize_window_volume(v: &mut Volume<f32>, low: f64, high: f64) {
    normalize_window(&mut v.data, low, high);
}

/// Exact percentiles of the non-NaN values of `data`, numpy's default linear method
/// (`np.percentile(data[~np.isnan(data)], ps)`). `None` when no value is non-NaN.
///
/// Small inputs use selection on a copy; large ones the two-pass radix histogram of
/// [`PercentileSketch`] (no copy, parallel). Both are exact.
///
/// # Panics
/// When a percentile is outside `[0, 100]` or NaN.
pub fn percentiles(data: &[f32], ps: &[f64]) -> Option<Vec<f64>> {
    check_ps(ps);
    if data.len() <= SELECT_MAX {
        percentiles_select(data, ps)
    } else {
        percentiles_histogram(data, ps)
    }
}

/// Below this many values selection on a copy beats the 2 × 64 Ki-bin histograms.
const SELECT_MAX: usize = 1 << 16;

fn check_ps(ps: &[f64]) {
    for &p in ps {
        assert!(
            (0.0..=100.0).contains(&p),
            "percentile must be in [0, 100], got {p}"
        );
    }
}

/// Rank bookkeeping of numpy's linear method for one percentile over `n > 0` values:
/// `(lower order statistic, upper order statistic, gamma)`.
fn linear_ranks(p: f64, n: u64) -> (u64, u64, f64) {
    let h = p / 100.0 * (n - 1) as f64;
    let lo = (h.floor() as u64).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    (lo, hi, h - lo as f64)
}

/// numpy's `_lerp`: `a + (b − a)·t`, or `b − (b − a)·(1 − t)` when `t >= 0.5`. When the rank
/// is integral (`t == 0`) or both order statistics are equal, `a` itself is returned, so an
/// infinite order statistic gives ±∞ where numpy's formula would give NaN (`∞ · 0`).
fn lerp(a: f64, b: f64, t: f64) -> f64 {
    if t == 0.0 || a == b {
        return a;
    }
    let d = b - a;
    if t >= 0.5 {
        b - d * (1.0 - t)
    } else {
        a + d * t
    }
}

fn interpolate(ps: &[f64], n: u64, order_stat: impl Fn(u64) -> f64) -> Vec<f64> {
    ps.iter()
        .map(|&p| {
            let (lo, hi, t) = linear_ranks(p, n);
            lerp(order_stat(lo), order_stat(hi), t)
        })
        .collect()
}

fn percentiles_select(data: &[f32], ps: &[f64]) -> Option<Vec<f64>> {
    let mut v: Vec<f32> = data.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    let n = v.len() as u64;
    let mut ranks: Vec<usize> = ps
        .iter()
        .flat_map(|&p| {
            let (lo, hi, _) = linear_ranks(p, n);
            [lo as usize, hi as usize]
        })
        .collect();
    ranks.sort_unstable();
    ranks.dedup();
    // Select the ranks in increasing order, each within what is right of the previous one.
    let mut values = Vec::with_capacity(ranks.len());
    let mut start = 0;
    for &r in &ranks {
        let (_, x, _) = v[start..].select_nth_unstable_by(r - start, f32::total_cmp);
        values.push((r, *x));
        start = r + 1;
    }
    let stat = |r: u64| {
        let i = values.partition_point(|&(q, _)| (q as u64) < r);
        values[i].1 as f64
    };
    Some(interpolate(ps, n, stat))
}

fn percentiles_histogram(data: &[f32], ps: &[f64]) -> Option<Vec<f64>> {
    let mut sketch = PercentileSketch::new();
    sketch.add(data);
    let mut refinement = sketch.refine_plan(ps);
    refinement.add(data);
    refinement.finish().ok()
}

/// Order-preserving map of `f32` (IEEE total order) to `u32`: positives get the sign bit set,
/// negatives have all bits flipped.
#[inline]
fn key(x: f32) -> u32 {
    let b = x.to_bits();
    // Branch-free: the mask is all ones for negatives, just the sign bit for positives.
    let mask = ((b as i32 >> 31) as u32) | 0x8000_0000;
    b ^ mask
}

#[inline]
fn from_key(k: u32) -> f32 {
    f32::from_bits(if k & 0x8000_0000 != 0 {
        k & 0x7fff_ffff
    } else {
        !k
    })
}

const BINS: usize = 1 << 16;

/// Adds to `total` the number of values of `data` in each bin `bin(x)` (`None`: not counted).
///
/// `data` is split into about one part per thread (at least `MIN_PART` values each, at most
/// `u32::MAX`, so that a part counts in `u32`, half the cache footprint of `u64`).
fn parallel_counts(data: &[f32], total: &mut [u64], bin: impl Fn(f32) -> Option<usize> + Sync) {
    const MIN_PART: usize = 1 << 18;
    const MAX_PART: usize = u32::MAX as usize;
    let parts = rayon::current_num_threads()
        .min(data.len().div_ceil(MIN_PART))
        .max(data.len().div_ceil(MAX_PART))
        .max(1);
    let part_len = data.len().div_ceil(parts).max(1);
    let len = total.len();
    let counts: Vec<Vec<u32>> = data
        .par_chunks(part_len)
        .map(|chunk| {
            let mut h = vec![0u32; len];
            for &x in chunk {
                if let Some(b) = bin(x) {
                    h[b] += 1;
                }
            }
            h
        })
        .collect();
    for h in counts {
        for (t, c) in total.iter_mut().zip(h) {
            *t += u64::from(c);
        }
    }
}

/// Exact dataset-wide percentiles (numpy's linear method) over data that is seen in pieces and
/// never held in memory at once, in two passes with bounded memory.
///
/// Every non-NaN `f32` is mapped to an order-preserving `u32` key (sign bit flipped for
/// positives, all bits flipped for negatives).
///
/// 1. Pass 1: [`add`](Self::add) each piece (e.g. each volume). This counts the top 16 bits of
///    the keys in a 65 536-bin histogram (512 KiB), which gives the total count `n` and, for
///    every rank, the bin holding that order statistic.
/// 2. [`refine_plan`](Self::refine_plan) lists the order statistics the requested percentiles
///    need (`⌊h⌋` and `⌊h⌋ + 1` of each) and the bins that hold them.
/// 3. Pass 2: [`Refinement::add`] the *same* pieces again (any order). Only values falling in
///    those bins are counted, by their low 16 bits (at most two 512 KiB histograms per
///    percentile).
/// 4. [`Refinement::finish`] reads each order statistic off its bin's low-bit histogram —
///    the full 32-bit key, hence the exact value — and interpolates.
///
/// The result equals [`percentiles`] of the concatenation of all pieces, bit for bit.
/// Sketches (and refinements) of disjoint parts of the data can be [`merge`](Self::merge)d,
/// so pieces may be processed in parallel.
#[derive(Debug, Clone)]
pub struct PercentileSketch {
    hist: Vec<u64>,
    count: u64,
}

impl Default for PercentileSketch {
    fn default() -> Self {
        Self::new()
    }
}

impl PercentileSketch {
    pub fn new() -> Self {
        Self {
            hist: vec![0; BINS],
            count: 0,
        }
    }

    /// Pass 1: counts the non-NaN values of one piece of the data.
    pub fn add(&mut self, data: &[f32]) {
        parallel_counts(data, &mut self.hist, |x| {
            (!x.is_nan()).then_some((key(x) >> 16) as usize)
        });
        self.count = self.hist.iter().sum();
    }

    /// Adds the counts of a sketch of other data.
    pub fn merge(&mut self, other: &PercentileSketch) {
        self.count += other.count;
        for (t, c) in self.hist.iter_mut().zip(&other.hist) {
            *t += c;
        }
    }

    /// Number of non-NaN values seen.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Plans pass 2 for the percentiles `ps` (each in `[0, 100]`).
    ///
    /// # Panics
    /// When a percentile is outside `[0, 100]` or NaN.
    pub fn refine_plan(&self, ps: &[f64]) -> Refinement {
        check_ps(ps);
        let n = self.count;
        let mut slot_of_bin = vec![NO_SLOT; BINS];
        let mut bins = Vec::new();
        let mut targets = Vec::new();
        if n > 0 {
            // Cumulative counts: cum[b] = number of values in bins < b.
            let mut ranks: Vec<u64> = ps
                .iter()
                .flat_map(|&p| {
                    let (lo, hi, _) = linear_ranks(p, n);
                    [lo, hi]
                })
                .collect();
            ranks.sort_unstable();
            ranks.dedup();
            let mut bin = 0usize;
            let mut below = 0u64;
            for r in ranks {
                while below + self.hist[bin] <= r {
                    below += self.hist[bin];
                    bin += 1;
                }
                if slot_of_bin[bin] == NO_SLOT {
                    slot_of_bin[bin] = bins.len() as u16;
                    bins.push((bin as u32, self.hist[bin]));
                }
                targets.push(Target {
                    rank: r,
                    slot: slot_of_bin[bin] as usize,
                    within: r - below,
                });
            }
        }
        Refinement {
            ps: ps.to_vec(),
            count: n,
            low: vec![0; BINS * bins.len()],
            bins,
            slot_of_bin,
            targets,
        }
    }
}

const NO_SLOT: u16 = u16::MAX;

#[derive(Debug, Clone)]
struct Target {
    /// 0-based order statistic.
    rank: u64,
    /// Index into `Refinement::bins`.
    slot: usize,
    /// Rank inside the bin.
    within: u64,
}

/// Pass 2 of a [`PercentileSketch`]: counts the low 16 key bits inside the bins that hold the
/// needed order statistics. Feed it exactly the data the sketch saw.
#[derive(Debug, Clone)]
pub struct Refinement {
    ps: Vec<f64>,
    count: u64,
    /// (bin, pass-1 count) per slot.
    bins: Vec<(u32, u64)>,
    slot_of_bin: Vec<u16>,
    targets: Vec<Target>,
    /// Low-16-bit histogram per slot: `low[slot * BINS + (key & 0xffff)]`.
    low: Vec<u64>,
}

/// Why a [`Refinement`] has no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SketchError {
    /// No non-NaN value was added.
    #[error("no non-NaN values: percentiles are undefined")]
    Empty,
    /// Pass 2 did not see the data of pass 1.
    #[error("pass 2 counted {got} values in bin {bin:#06x}, pass 1 counted {expected}")]
    Mismatch { bin: u32, expected: u64, got: u64 },
}

impl Refinement {
    /// Pass 2: counts one piece of the data (the same pieces as pass 1, in any order).
    pub fn add(&mut self, data: &[f32]) {
        if self.bins.is_empty() {
            return;
        }
        let slot_of_bin = &self.slot_of_bin;
        parallel_counts(data, &mut self.low, |x| {
            let k = key(x);
            let s = slot_of_bin[(k >> 16) as usize];
            (s != NO_SLOT && !x.is_nan()).then_some(s as usize * BINS + (k & 0xffff) as usize)
        });
    }

    /// Adds the counts of a refinement (of the same plan) over other data.
    ///
    /// # Panics
    /// When `other` was planned differently.
    pub fn merge(&mut self, other: &Refinement) {
        assert!(
            self.bins == other.bins && self.ps == other.ps,
            "merging refinements of different plans"
        );
        for (t, c) in self.low.iter_mut().zip(&other.low) {
            *t += c;
        }
    }

    /// The exact percentiles, in the order requested.
    pub fn finish(self) -> Result<Vec<f64>, SketchError> {
        if self.count == 0 {
            return Err(SketchError::Empty);
        }
        for (slot, &(bin, expected)) in self.bins.iter().enumerate() {
            let got = self.low[slot * BINS..][..BINS].iter().sum::<u64>();
            if got != expected {
                return Err(SketchError::Mismatch { bin, expected, got });
            }
        }
        let values: Vec<(u64, f64)> = self
            .targets
            .iter()
            .map(|t| {
                let h = &self.low[t.slot * BINS..][..BINS];
                let mut below = 0u64;
                let mut low = 0usize;
                while below + h[low] <= t.within {
                    below += h[low];
                    low += 1;
                }
                let k = (self.bins[t.slot].0 << 16) | low as u32;
                (t.rank, from_key(k) as f64)
            })
            .collect();
        let stat = |r: u64| {
            let i = values.partition_point(|&(q, _)| q < r);
            values[i].1
        };
        Ok(interpolate(&self.ps, self.count, stat))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Geometry;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const PS: [f64; 11] = [
        0.0, 0.5, 5.0, 12.5, 25.0, 50.0, 66.6, 75.0, 95.0, 99.9, 100.0,
    ];

    /// numpy's linear method on a full sort (the reference).
    fn reference(data: &[f32], ps: &[f64]) -> Option<Vec<f64>> {
        let mut v: Vec<f32> = data.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f32::total_cmp);
        let n = v.len();
        Some(
            ps.iter()
                .map(|&p| {
                    let h = p / 100.0 * (n - 1) as f64;
                    let lo = h.floor() as usize;
                    let hi = (lo + 1).min(n - 1);
                    lerp(v[lo] as f64, v[hi] as f64, h - lo as f64)
                })
                .collect(),
        )
    }

    fn random_data(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| match rng.random_range(0..10) {
                // duplicates and signed zeros
                0 => 0.0,
                1 => -0.0,
                2 => rng.random_range(-3i32..3) as f32,
                3 => rng.random_range(-1e30f32..1e30),
                4 if rng.random_range(0..50) == 0 => f32::NAN,
                5 if rng.random_range(0..100) == 0 => f32::NEG_INFINITY,
                _ => rng.random_range(-2000.0f32..3000.0),
            })
            .collect()
    }

    fn assert_same(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            // -0.0 == 0.0 is fine; otherwise bit-identical
            assert!(x == y || (x.is_nan() && y.is_nan()), "{a:?}\n{b:?}");
        }
    }

    #[test]
    fn key_preserves_order() {
        let mut xs = vec![
            f32::NEG_INFINITY,
            -1e30,
            -1.0,
            -f32::MIN_POSITIVE,
            -1e-45,
            -0.0,
            0.0,
            1e-45,
            1.0,
            3.5,
            f32::MAX,
            f32::INFINITY,
        ];
        let keys: Vec<u32> = xs.iter().map(|&x| key(x)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        for x in xs.drain(..) {
            assert_eq!(from_key(key(x)).to_bits(), x.to_bits());
        }
    }

    #[test]
    fn percentiles_match_sort_reference() {
        // odd and even n, tiny to above the selection threshold
        for (i, n) in [1, 2, 3, 4, 10, 101, 1000, 4097, 70_001, 200_000]
            .into_iter()
            .enumerate()
        {
            let data = random_data(n, i as u64);
            let want = reference(&data, &PS);
            let got = percentiles(&data, &PS);
            match (want, got) {
                (Some(w), Some(g)) => assert_same(&g, &w),
                (w, g) => assert_eq!(w, g, "n = {n}"),
            }
            // both paths, whatever the size
            if let Some(w) = reference(&data, &PS) {
                assert_same(&percentiles_select(&data, &PS).unwrap(), &w);
                assert_same(&percentiles_histogram(&data, &PS).unwrap(), &w);
            }
        }
    }

    #[test]
    fn percentiles_known_values() {
        // np.percentile([1, 2, 3, 4], [0, 25, 50, 95, 100]) = [1, 1.75, 2.5, 3.85, 4]
        let got = percentiles(
            &[4.0, f32::NAN, 1.0, 3.0, 2.0],
            &[0.0, 25.0, 50.0, 95.0, 100.0],
        )
        .unwrap();
        let want = [1.0, 1.75, 2.5, 3.85, 4.0];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
        assert_eq!(percentiles(&[7.0], &[5.0, 95.0]), Some(vec![7.0, 7.0]));
    }

    #[test]
    fn all_nan_or_empty_has_no_percentile() {
        assert_eq!(percentiles(&[], &[50.0]), None);
        assert_eq!(percentiles(&[f32::NAN; 5], &[50.0]), None);
        assert_eq!(percentiles(&vec![f32::NAN; 100_000], &[50.0]), None);
        let sketch = PercentileSketch::new();
        assert_eq!(sketch.refine_plan(&[5.0]).finish(), Err(SketchError::Empty));
    }

    #[test]
    #[should_panic(expected = "percentile must be in")]
    fn rejects_bad_percentile() {
        percentiles(&[1.0], &[101.0]);
    }

    #[test]
    fn sketch_over_chunks_equals_percentiles_of_concatenation() {
        let chunks = [
            random_data(30_001, 10),
            random_data(12_345, 11),
            random_data(80_000, 12),
        ];
        let all: Vec<f32> = chunks.concat();
        let mut sketch = PercentileSketch::new();
        for c in &chunks {
            sketch.add(c);
        }
        assert_eq!(
            sketch.count(),
            all.iter().filter(|x| !x.is_nan()).count() as u64
        );
        let mut r = sketch.refine_plan(&PS);
        // pass 2 in another order
        for c in chunks.iter().rev() {
            r.add(c);
        }
        let got = r.finish().unwrap();
        assert_same(&got, &percentiles(&all, &PS).unwrap());
        assert_same(&got, &reference(&all, &PS).unwrap());
    }

    #[test]
    fn sketches_merge() {
        let a = random_data(5000, 20);
        let b = random_data(7001, 21);
        let (mut sa, mut sb) = (PercentileSketch::new(), PercentileSketch::new());
        sa.add(&a);
        sb.add(&b);
        sa.merge(&sb);
        let (mut ra, mut rb) = (sa.refine_plan(&[5.0, 95.0]), sa.refine_plan(&[5.0, 95.0]));
        ra.add(&a);
        rb.add(&b);
        ra.merge(&rb);
        let all = [a, b].concat();
        assert_same(
            &ra.finish().unwrap(),
            &reference(&all, &[5.0, 95.0]).unwrap(),
        );
    }

    #[test]
    fn sketch_detects_different_pass_two_data() {
        let a = random_data(1000, 30);
        let mut s = PercentileSketch::new();
        s.add(&a);
        let mut r = s.refine_plan(&[50.0]);
        r.add(&a[..500]);
        assert!(matches!(r.finish(), Err(SketchError::Mismatch { .. })));
    }

    #[test]
    fn window_is_the_same_at_every_simd_level() {
        // Long enough for the vector loops (and a tail), with NaN and infinities among them.
        let src: Vec<f32> = (0..40_003)
            .map(|i| match i % 997 {
                0 => f32::NAN,
                1 => f32::INFINITY,
                2 => f32::NEG_INFINITY,
                _ => (i as f32 * 0.37).sin() * 1500.0,
            })
            .collect();
        let want: Vec<f32> = src
            .iter()
            .map(|&v| ((v as f64 + 1000.0) / 2000.0).clamp(0.0, 1.0) as f32)
            .collect();
        simd::for_each_level(|level| {
            let mut d = src.clone();
            normalize_window(&mut d, -1000.0, 1000.0);
            for (i, (g, w)) in d.iter().zip(&want).enumerate() {
                assert!(
                    g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                    "SIMD {level}, value {i}: {g} vs {w}"
                );
            }
        });
    }

    #[test]
    fn window_endpoints() {
        let mut d = vec![
            -2000.0,
            -1000.0,
            -500.0,
            0.0,
            500.0,
            1000.0,
            3000.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        normalize_window(&mut d, -1000.0, 1000.0);
        assert_eq!(&d[..7], &[0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]);
        assert!(d[7].is_nan());
        assert_eq!(&d[8..], &[1.0, 0.0]);

        // odd window: endpoints still exact
        let (lo, hi) = (0.1f32, 0.7f32);
        let mut d = vec![lo, hi];
        normalize_window(&mut d, lo as f64, hi as f64);
        assert_eq!(d, vec![0.0, 1.0]);

        // empty window → 0
        let mut d = vec![-5.0, 3.0, 3.0, 9.0, f32::NAN];
        normalize_window(&mut d, 3.0, 3.0);
        assert_eq!(&d[..4], &[0.0; 4]);
        assert!(d[4].is_nan());
        let mut d = vec![1.0, 2.0];
        normalize_window(&mut d, 5.0, 1.0);
        assert_eq!(d, vec![0.0, 0.0]);
    }

    #[test]
    fn percentile_normalization_per_channel() {
        let dims = [10, 10, 1];
        let mut data: Vec<f32> = (0..100).map(|i| i as f32).collect();
        data.extend((0..100).map(|i| 1000.0 + 10.0 * i as f32));
        let mut v = Volume::new(data, dims, 2, Geometry::identity([1.0; 3]));
        let windows = normalize_percentile_channels(&mut v, 5.0, 95.0);
        // np.percentile(arange(100), [5, 95]) = [4.95, 94.05]
        let (l0, h0) = windows[0].unwrap();
        assert!((l0 - 4.95).abs() < 1e-9 && (h0 - 94.05).abs() < 1e-9);
        let (l1, h1) = windows[1].unwrap();
        assert!((l1 - 1049.5).abs() < 1e-9 && (h1 - 1940.5).abs() < 1e-9);
        for c in 0..2 {
            let ch = v.channel(c);
            assert_eq!(ch[0], 0.0);
            assert_eq!(ch[99], 1.0);
            assert!((ch[50] - (50.0 - 4.95) / (94.05 - 4.95)).abs() < 1e-6);
        }
        // a constant channel maps to 0
        let mut c = vec![3.0f32; 50];
        assert_eq!(normalize_percentile(&mut c, 5.0, 95.0), Some((3.0, 3.0)));
        assert!(c.iter().all(|&x| x == 0.0));
    }

    /// `cargo test -p volume --release --lib normalize::tests::timing -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn timing() {
        let data = random_data(358 * 358 * 300, 40);
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let h = percentiles_histogram(&data, &[5.0, 95.0]);
            let th = t.elapsed();
            let t = std::time::Instant::now();
            let s = percentiles_select(&data, &[5.0, 95.0]);
            let ts = t.elapsed();
            assert_eq!(h, s);
            let mut d = data.clone();
            let t = std::time::Instant::now();
            normalize_window(&mut d, -1000.0, 1000.0);
            let tw = t.elapsed();
            eprintln!("histogram {th:?}, select {ts:?}, window {tw:?}");
        }
    }
}
