//! Resampling onto a new voxel spacing, on SimpleITK's grid.
//!
//! The output grid is what `sitk.Resample(img, size, sitk.Transform(), interp, img.GetOrigin(),
//! target_spacing, img.GetDirection())` produces with `size = output_dims(...)`:
//!
//! * the voxel axes, origin and direction of the input are kept (no reorientation);
//! * the output has `max(1, round(n · s / t))` voxels along an axis with `n` input voxels of
//!   spacing `s` resampled to spacing `t` ([`output_dims`]);
//! * output voxel `i` along an axis lies at continuous input index `x = i · t / s`.
//!
//! Because origin and direction are shared, the world → index mapping is separable, so trilinear
//! interpolation is computed as three 1-D linear passes (mathematically identical to trilinear,
//! and far cheaper), and nearest-neighbour as one gather through three per-axis index maps.
//!
//! One deliberate difference from ITK: ITK gives the default value (0) to output points more than
//! half a voxel past the last input voxel centre, which leaves a black border when the extent does
//! not divide evenly. Here every position past the last voxel centre (`x > n − 1`) takes the edge
//! value (clamping), so there is no border. Everywhere else results agree with SimpleITK up to
//! float rounding (ITK interpolates in `f64`, this module in `f32`).
//!
//! Nearest neighbour rounds half up (`floor(x + 0.5)`), like ITK's
//! `NearestNeighborInterpolateImageFunction` (`Math::RoundHalfIntegerUp`).
//!
//! Multi-channel volumes are resampled channel by channel. Work is parallel over output rows
//! (rayon); the per-axis tables are computed once per call.

use rayon::prelude::*;

use crate::{Geometry, Volume};

/// Output size on the SimpleITK grid: per axis `max(1, round(n · s / t))`, or 0 when the input
/// axis is empty.
///
/// # Panics
/// When a spacing or target is not finite and positive.
pub fn output_dims(dims: [usize; 3], spacing: [f64; 3], target: [f64; 3]) -> [usize; 3] {
    std::array::from_fn(|a| {
        check_spacing(spacing[a], target[a]);
        if dims[a] == 0 {
            return 0;
        }
        let m = (dims[a] as f64 * spacing[a] / target[a]).round();
        (m as usize).max(1)
    })
}

/// Trilinear resampling of an intensity volume onto spacing `target` (mm).
///
/// See the module docs for the grid and edge semantics. The output keeps origin and direction,
/// with `spacing = target`.
///
/// # Panics
/// When a spacing or target is not finite and positive.
pub fn resample_image(v: &Volume<f32>, target: [f64; 3]) -> Volume<f32> {
    let spacing = v.geometry.spacing;
    let out_dims = output_dims(v.dims, spacing, target);
    let plan = LinearPlan::new(v.dims, out_dims, spacing, target);
    let n_out = out_dims.iter().product::<usize>();
    let mut data = vec![0.0f32; n_out * v.channels];
    if n_out > 0 {
        for (c, dst) in data.chunks_exact_mut(n_out).enumerate() {
            plan.run(v.channel(c), 0, dst);
        }
    }
    Volume::new(
        data,
        out_dims,
        v.channels,
        output_geometry(&v.geometry, target),
    )
}

/// Trilinear resampling of `v` onto the grid of `dims` voxels of spacing `spacing` that shares
/// its origin and direction: the inverse of [`resample_image`] when `dims` and `spacing` are
/// the grid `v` was resampled from (output voxel `j` lies at continuous input index
/// `j · spacing / v.spacing`, with the same edge clamping). Predictions made on a resampled
/// grid go back to the source image's voxels this way.
///
/// # Panics
/// When a spacing is not finite and positive.
pub fn resample_image_to(v: &Volume<f32>, spacing: [f64; 3], dims: [usize; 3]) -> Volume<f32> {
    for (&s, &t) in v.geometry.spacing.iter().zip(&spacing) {
        check_spacing(s, t);
    }
    let plan = LinearPlan::new(v.dims, dims, v.geometry.spacing, spacing);
    let n_out = dims.iter().product::<usize>();
    let mut data = vec![0.0f32; n_out * v.channels];
    if n_out > 0 && v.voxels() > 0 {
        for (c, dst) in data.chunks_exact_mut(n_out).enumerate() {
            plan.run(v.channel(c), 0, dst);
        }
    }
    Volume::new(
        data,
        dims,
        v.channels,
        output_geometry(&v.geometry, spacing),
    )
}

/// [`resample_image`] without holding the output: hands `sink(channel, slab)` consecutive
/// slabs of at most `slab_slices` output z slices (channel 0 first, z ascending; each slab
/// is `mx × my × k` values), so a caller can normalize and write them as they come. The
/// values are those [`resample_image`] computes. Returns the output geometry, or the sink's
/// first error (no slab after it is computed).
///
/// # Panics
/// When a spacing or target is not finite and positive.
pub fn resample_image_slabs<E>(
    v: &Volume<f32>,
    target: [f64; 3],
    slab_slices: usize,
    mut sink: impl FnMut(usize, &mut [f32]) -> Result<(), E>,
) -> Result<Geometry, E> {
    let spacing = v.geometry.spacing;
    let out_dims = output_dims(v.dims, spacing, target);
    let plan = LinearPlan::new(v.dims, out_dims, spacing, target);
    let [mx, my, mz] = out_dims;
    let slice_out = mx * my;
    if slice_out * mz > 0 {
        let k = slab_slices.clamp(1, mz);
        let mut slab = vec![0.0f32; k * slice_out];
        for c in 0..v.channels {
            let src = v.channel(c);
            for z0 in (0..mz).step_by(k) {
                let out = &mut slab[..(k.min(mz - z0)) * slice_out];
                plan.run(src, z0, out);
                sink(c, out)?;
            }
        }
    }
    Ok(output_geometry(&v.geometry, target))
}

/// Nearest-neighbour resampling of a label volume onto spacing `target` (mm).
///
/// Every output value is one of the input values. Same grid as [`resample_image`].
///
/// # Panics
/// When a spacing or target is not finite and positive.
pub fn resample_label(v: &Volume<u8>, target: [f64; 3]) -> Volume<u8> {
    let plan = NearestPlan::new(v, target);
    let n_out = plan.m.iter().product::<usize>();
    let mut data = vec![0u8; n_out * v.channels];
    if n_out > 0 {
        for (c, dst) in data.chunks_exact_mut(n_out).enumerate() {
            plan.run(v.channel(c), 0, dst);
        }
    }
    Volume::new(
        data,
        plan.m,
        v.channels,
        output_geometry(&v.geometry, target),
    )
}

/// [`resample_label`] slab by slab, as [`resample_image_slabs`].
///
/// # Panics
/// When a spacing or target is not finite and positive.
pub fn resample_label_slabs<E>(
    v: &Volume<u8>,
    target: [f64; 3],
    slab_slices: usize,
    mut sink: impl FnMut(usize, &mut [u8]) -> Result<(), E>,
) -> Result<Geometry, E> {
    let plan = NearestPlan::new(v, target);
    let [mx, my, mz] = plan.m;
    let slice_out = mx * my;
    if slice_out * mz > 0 {
        let k = slab_slices.clamp(1, mz);
        let mut slab = vec![0u8; k * slice_out];
        for c in 0..v.channels {
            for z0 in (0..mz).step_by(k) {
                let out = &mut slab[..(k.min(mz - z0)) * slice_out];
                plan.run(v.channel(c), z0, out);
                sink(c, out)?;
            }
        }
    }
    Ok(output_geometry(&v.geometry, target))
}

/// Nearest-neighbour resampling: one gather through three per-axis index maps.
struct NearestPlan {
    n: [usize; 3],
    m: [usize; 3],
    tables: [Vec<usize>; 3],
    x_identity: bool,
}

impl NearestPlan {
    fn new(v: &Volume<u8>, target: [f64; 3]) -> Self {
        let spacing = v.geometry.spacing;
        let m = output_dims(v.dims, spacing, target);
        let tables: [Vec<usize>; 3] =
            std::array::from_fn(|a| nearest_table(v.dims[a], m[a], spacing[a], target[a]));
        let x_identity = m[0] == v.dims[0] && tables[0].iter().enumerate().all(|(i, &j)| i == j);
        Self {
            n: v.dims,
            m,
            tables,
            x_identity,
        }
    }

    /// Output slices `z0..` of one channel `src` into `dst` (whole slices).
    fn run(&self, src: &[u8], z0: usize, dst: &mut [u8]) {
        let [nx, ny, _] = self.n;
        let [mx, my, _] = self.m;
        let [ix, iy, iz] = &self.tables;
        dst.par_chunks_mut(mx).enumerate().for_each(|(row, out)| {
            let (y, z) = (row % my, z0 + row / my);
            let base = (iz[z] * ny + iy[y]) * nx;
            let src_row = &src[base..base + nx];
            if self.x_identity {
                out.copy_from_slice(src_row);
            } else {
                for (o, &i) in out.iter_mut().zip(ix) {
                    *o = src_row[i];
                }
            }
        });
    }
}

fn check_spacing(s: f64, t: f64) {
    assert!(
        s.is_finite() && s > 0.0,
        "input spacing must be finite and > 0, got {s}"
    );
    assert!(
        t.is_finite() && t > 0.0,
        "target spacing must be finite and > 0, got {t}"
    );
}

/// The geometry of the resampled volume: origin and direction kept, spacing `target`.
pub fn output_geometry(g: &Geometry, target: [f64; 3]) -> Geometry {
    Geometry {
        spacing: target,
        origin: g.origin,
        direction: g.direction,
    }
}

/// Continuous input index of output voxel `i`.
#[inline]
fn position(i: usize, s: f64, t: f64) -> f64 {
    i as f64 * t / s
}

/// One output sample along an axis: `a + w · (b − a)` with `a = in[i0]`, `b = in[i1]`
/// (ITK's interpolation formula).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Lerp {
    i0: usize,
    i1: usize,
    w: f32,
}

fn linear_table(n: usize, m: usize, s: f64, t: f64) -> Vec<Lerp> {
    (0..m)
        .map(|i| {
            let x = position(i, s, t);
            let last = n.saturating_sub(1);
            if x >= last as f64 {
                Lerp {
                    i0: last,
                    i1: last,
                    w: 0.0,
                }
            } else {
                let f = x.floor();
                let i0 = f as usize;
                let w = (x - f) as f32;
                Lerp {
                    i0,
                    i1: if w == 0.0 { i0 } else { i0 + 1 },
                    w,
                }
            }
        })
        .collect()
}

fn nearest_table(n: usize, m: usize, s: f64, t: f64) -> Vec<usize> {
    (0..m)
        .map(|i| {
            // Math::RoundHalfIntegerUp, clamped to the last voxel.
            let r = (position(i, s, t) + 0.5).floor();
            (r as usize).min(n.saturating_sub(1))
        })
        .collect()
}

fn is_identity(table: &[Lerp]) -> bool {
    table
        .iter()
        .enumerate()
        .all(|(i, l)| l.i0 == i && l.w == 0.0)
}

/// Trilinear resampling as three separable 1-D passes, fused so that each output value is
/// written once and no volume-sized intermediate exists.
///
/// The in-plane (x, y) passes run per z slice with a slice-sized scratch buffer, x or y first,
/// whichever touches fewer elements. The z pass runs either
/// * last (usual: z is upsampled): output slices are split into one contiguous block per task;
///   a task walks its slices in order keeping the in-plane resampled input slices `i0`, `i1` it
///   needs in a two-slice cache, so each input slice is resampled in-plane about once; or
/// * first (z strongly downsampled): each output slice blends two input slices, then resamples
///   that in-plane.
struct LinearPlan {
    n: [usize; 3],
    m: [usize; 3],
    tables: [Vec<Lerp>; 3],
    identity: [bool; 3],
    x_first: bool,
    z_first: bool,
}

impl LinearPlan {
    fn new(n: [usize; 3], m: [usize; 3], spacing: [f64; 3], target: [f64; 3]) -> Self {
        let tables: [Vec<Lerp>; 3] =
            std::array::from_fn(|a| linear_table(n[a], m[a], spacing[a], target[a]));
        let identity = std::array::from_fn(|a| n[a] == m[a] && is_identity(&tables[a]));
        let [nx, ny, nz] = n;
        let [mx, my, mz] = m;
        // Rough element costs: a gather along x costs twice a streaming row blend or copy.
        let gather = |len: usize| if identity[0] { len } else { 2 * len };
        let x_first_cost = gather(mx * ny) + mx * my;
        let y_first_cost = nx * my + gather(mx * my);
        let xy_cost = x_first_cost.min(y_first_cost);
        let z_last_cost = xy_cost * nz.min(2 * mz) + mx * my * mz;
        let z_first_cost = nx * ny * mz + xy_cost * mz;
        Self {
            n,
            m,
            tables,
            identity,
            x_first: x_first_cost <= y_first_cost,
            z_first: z_first_cost < z_last_cost,
        }
    }

    /// Resamples output slices `z0..` of one channel `src` (n voxels) into `dst` (whole
    /// `mx × my` slices, at least one).
    fn run(&self, src: &[f32], z0: usize, dst: &mut [f32]) {
        let [nx, ny, _] = self.n;
        let [mx, my, _] = self.m;
        let (slice_in, slice_out) = (nx * ny, mx * my);
        let nslices = dst.len() / slice_out;
        let tz = &self.tables[2][z0..z0 + nslices];
        if self.identity[2] {
            dst.par_chunks_mut(slice_out)
                .zip(src[z0 * slice_in..].par_chunks(slice_in))
                .for_each_init(Vec::new, |scratch, (out, slice)| {
                    self.xy(slice, out, scratch)
                });
        } else if self.z_first {
            dst.par_chunks_mut(slice_out)
                .zip(tz.par_iter())
                .for_each_init(
                    || (Vec::new(), Vec::new()),
                    |(scratch, blended), (out, l)| {
                        let a = &src[l.i0 * slice_in..][..slice_in];
                        let slice: &[f32] = if l.w == 0.0 {
                            a
                        } else {
                            blended.resize(slice_in, 0.0);
                            let b = &src[l.i1 * slice_in..][..slice_in];
                            blend_rows(blended, a, b, l.w);
                            blended
                        };
                        self.xy(slice, out, scratch);
                    },
                );
        } else {
            // Two blocks per thread for balance, but at least 16 slices each: a block's first
            // slices cost an extra in-plane pass (its cache starts empty), which matters when
            // a caller asks for small slabs.
            let blocks = (2 * rayon::current_num_threads()).clamp(1, (nslices / 16).max(1));
            let per_block = nslices.div_ceil(blocks);
            dst.par_chunks_mut(per_block * slice_out)
                .enumerate()
                .for_each(|(block, outs)| {
                    let mut scratch = Vec::new();
                    let mut cache = [
                        (usize::MAX, vec![0.0f32; slice_out]),
                        (usize::MAX, vec![0.0f32; slice_out]),
                    ];
                    for (i, out) in outs.chunks_exact_mut(slice_out).enumerate() {
                        let l = tz[block * per_block + i];
                        for (need, other) in [(l.i0, l.i1), (l.i1, l.i0)] {
                            if cache[0].0 != need && cache[1].0 != need {
                                // Evict the slot that does not hold the other needed slice.
                                let slot = usize::from(cache[0].0 == other);
                                let slice = &src[need * slice_in..][..slice_in];
                                self.xy(slice, &mut cache[slot].1, &mut scratch);
                                cache[slot].0 = need;
                            }
                        }
                        let get = |i: usize| &cache[usize::from(cache[0].0 != i)].1;
                        blend_rows(out, get(l.i0), get(l.i1), l.w);
                    }
                });
        }
    }

    /// In-plane resampling of one z slice: `src` is `nx × ny`, `dst` is `mx × my`.
    fn xy(&self, src: &[f32], dst: &mut [f32], scratch: &mut Vec<f32>) {
        let [nx, ny, _] = self.n;
        let [mx, _, _] = self.m;
        let (tx, ty) = (&self.tables[0], &self.tables[1]);
        if self.x_first {
            let rows: &[f32] = if self.identity[0] {
                src
            } else {
                scratch.resize(mx * ny, 0.0);
                for (out, row) in scratch.chunks_exact_mut(mx).zip(src.chunks_exact(nx)) {
                    gather_row(out, row, tx);
                }
                scratch
            };
            for (out, l) in dst.chunks_exact_mut(mx).zip(ty) {
                blend_rows(out, &rows[l.i0 * mx..][..mx], &rows[l.i1 * mx..][..mx], l.w);
            }
        } else {
            scratch.resize(nx, 0.0);
            for (out, l) in dst.chunks_exact_mut(mx).zip(ty) {
                let a = &src[l.i0 * nx..][..nx];
                let row: &[f32] = if l.w == 0.0 {
                    a
                } else {
                    blend_rows(scratch, a, &src[l.i1 * nx..][..nx], l.w);
                    scratch
                };
                if self.identity[0] {
                    out.copy_from_slice(row);
                } else {
                    gather_row(out, row, tx);
                }
            }
        }
    }
}

simd::dispatch! {
    fn gather_row(out: &mut [f32], row: &[f32], table: &[Lerp]) {
        for (o, l) in out.iter_mut().zip(table) {
            let a = row[l.i0];
            let b = row[l.i1];
            *o = a + l.w * (b - a);
        }
    }
}

simd::dispatch! {
    fn blend_rows(out: &mut [f32], a: &[f32], b: &[f32], w: f32) {
        if w == 0.0 {
            out.copy_from_slice(a);
        } else {
            for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                *o = a + w * (b - a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Resampling to 1 mm and back onto the source grid with `resample_image_to` returns the
    /// source voxels (exactly for a linear ramp away from the clamped far edge), on the source
    /// geometry, for upsampled, downsampled and mixed axes.
    #[test]
    fn resampling_back_to_the_source_grid_inverts_the_resampling() {
        for spacing in [[0.7, 0.7, 2.5], [1.6, 0.5, 1.0]] {
            let dims = [13, 17, 9];
            let g = geometry(spacing);
            let ramp = |x: usize, y: usize, z: usize| {
                (x as f64 * spacing[0] * 0.5 - y as f64 * spacing[1] * 0.25
                    + z as f64 * spacing[2] * 0.125) as f32
            };
            let mut data = Vec::new();
            for z in 0..dims[2] {
                for y in 0..dims[1] {
                    for x in 0..dims[0] {
                        data.push(ramp(x, y, z));
                    }
                }
            }
            let v = Volume::new(data, dims, 1, g);
            let down = resample_image(&v, [1.0; 3]);
            let back = resample_image_to(&down, spacing, dims);
            assert_eq!(back.dims, dims);
            assert!(back.geometry.approx_eq(&g, 1e-12), "{:?}", back.geometry);
            // Voxels whose position maps inside the resampled grid (no clamping) are exact.
            // ... and whose two resampled neighbours were not clamped themselves.
            let inside = |a: usize, i: usize| {
                let hi = (i as f64 * spacing[a] - 1e-9).ceil();
                hi <= (down.dims[a] - 1) as f64 && hi / spacing[a] <= (dims[a] - 1) as f64 + 1e-9
            };
            let mut checked = 0;
            for z in (0..dims[2]).filter(|&z| inside(2, z)) {
                for y in (0..dims[1]).filter(|&y| inside(1, y)) {
                    for x in (0..dims[0]).filter(|&x| inside(0, x)) {
                        let got = back.data[back.index(x, y, z)];
                        assert!(
                            (got - ramp(x, y, z)).abs() < 1e-4,
                            "{spacing:?} {x},{y},{z}"
                        );
                        checked += 1;
                    }
                }
            }
            assert!(checked > dims.iter().product::<usize>() / 2, "{checked}");
        }
    }

    fn geometry(spacing: [f64; 3]) -> Geometry {
        // A rotated, translated frame: results must not depend on it.
        let (c, s) = (0.6f64, 0.8f64);
        Geometry {
            spacing,
            origin: [-12.5, 30.0, 7.25],
            direction: [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, -1.0]],
        }
    }

    fn random_volume(
        dims: [usize; 3],
        channels: usize,
        spacing: [f64; 3],
        seed: u64,
    ) -> Volume<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = dims.iter().product::<usize>() * channels;
        let data = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Volume::new(data, dims, channels, geometry(spacing))
    }

    /// Direct trilinear through world coordinates: output index → world point → input
    /// continuous index, 8-neighbour weights, indices clamped to the volume.
    fn naive_trilinear(v: &Volume<f32>, target: [f64; 3]) -> Volume<f32> {
        let out_dims = output_dims(v.dims, v.geometry.spacing, target);
        let g_out = Geometry {
            spacing: target,
            ..v.geometry
        };
        let a_out = g_out.affine();
        let g = &v.geometry;
        let mut data = Vec::new();
        for c in 0..v.channels {
            let ch = v.channel(c);
            for k in 0..out_dims[2] {
                for j in 0..out_dims[1] {
                    for i in 0..out_dims[0] {
                        let idx = [i as f64, j as f64, k as f64];
                        let world: [f64; 3] = std::array::from_fn(|r| {
                            a_out[r][3] + (0..3).map(|q| a_out[r][q] * idx[q]).sum::<f64>()
                        });
                        // direction is orthonormal: inverse = transpose.
                        let cont: [f64; 3] = std::array::from_fn(|q| {
                            (0..3)
                                .map(|r| g.direction[r][q] * (world[r] - g.origin[r]))
                                .sum::<f64>()
                                / g.spacing[q]
                        });
                        let mut acc = 0.0f64;
                        for corner in 0..8 {
                            let mut w = 1.0;
                            let mut p = [0usize; 3];
                            for q in 0..3 {
                                let n = v.dims[q];
                                let x = cont[q].clamp(0.0, (n - 1) as f64);
                                let f = x.floor();
                                let frac = x - f;
                                let lo = f as usize;
                                if corner >> q & 1 == 1 {
                                    w *= frac;
                                    p[q] = (lo + 1).min(n - 1);
                                } else {
                                    w *= 1.0 - frac;
                                    p[q] = lo;
                                }
                            }
                            acc += w * ch[v.index(p[0], p[1], p[2])] as f64;
                        }
                        data.push(acc as f32);
                    }
                }
            }
        }
        Volume::new(data, out_dims, v.channels, g_out)
    }

    #[test]
    fn output_dims_formula() {
        assert_eq!(
            output_dims([512, 512, 120], [0.7, 0.7, 2.5], [1.0; 3]),
            [358, 358, 300]
        );
        assert_eq!(output_dims([10, 10, 10], [1.0; 3], [1.0; 3]), [10, 10, 10]);
        // round half away from zero: 5 × 1.5 / 2 = 3.75 → 4; 3 × 1 / 2 = 1.5 → 2
        assert_eq!(output_dims([5, 3, 1], [1.5, 1.0, 1.0], [2.0; 3]), [4, 2, 1]);
        // never below 1
        assert_eq!(output_dims([2, 1, 3], [1.0; 3], [100.0; 3]), [1, 1, 1]);
        assert_eq!(output_dims([0, 4, 4], [1.0; 3], [1.0; 3]), [0, 4, 4]);
    }

    #[test]
    #[should_panic(expected = "target spacing")]
    fn rejects_bad_target() {
        output_dims([4, 4, 4], [1.0; 3], [1.0, 0.0, 1.0]);
    }

    #[test]
    fn identity_spacing_is_exact_copy() {
        let v = random_volume([7, 5, 3], 2, [0.8, 1.3, 2.0], 1);
        let r = resample_image(&v, v.geometry.spacing);
        assert_eq!(r, v);
        let l = v.map(|x| (x * 3.0 + 3.0) as u8);
        assert_eq!(resample_label(&l, l.geometry.spacing), l);
    }

    #[test]
    fn output_geometry_keeps_origin_and_direction() {
        let v = random_volume([9, 6, 4], 1, [0.7, 0.9, 3.0], 2);
        let target = [1.0, 1.5, 1.25];
        let r = resample_image(&v, target);
        assert_eq!(r.dims, [6, 4, 10]);
        assert_eq!(r.channels, 1);
        assert_eq!(r.geometry.spacing, target);
        assert_eq!(r.geometry.origin, v.geometry.origin);
        assert_eq!(r.geometry.direction, v.geometry.direction);
        let l = resample_label(&v.map(|_| 1u8), target);
        assert_eq!(l.dims, r.dims);
        assert_eq!(l.geometry, r.geometry);
    }

    #[test]
    fn linear_ramp_is_reproduced() {
        let dims = [13, 11, 7];
        let spacing = [0.7, 0.9, 2.5];
        let (a, b, c) = (0.5, -1.25, 0.75);
        let g = geometry(spacing);
        let ramp = |p: [f64; 3]| {
            // world-space linear function
            let w: [f64; 3] = std::array::from_fn(|r| {
                g.origin[r]
                    + (0..3)
                        .map(|q| g.direction[r][q] * g.spacing[q] * p[q])
                        .sum::<f64>()
            });
            a * w[0] + b * w[1] + c * w[2]
        };
        let mut data = Vec::new();
        for z in 0..dims[2] {
            for y in 0..dims[1] {
                for x in 0..dims[0] {
                    data.push(ramp([x as f64, y as f64, z as f64]) as f32);
                }
            }
        }
        let v = Volume::new(data, dims, 1, g);
        let target = [1.0, 0.6, 1.1];
        let r = resample_image(&v, target);
        let mut checked = 0;
        for z in 0..r.dims[2] {
            for y in 0..r.dims[1] {
                for x in 0..r.dims[0] {
                    let p = [
                        x as f64 * target[0] / spacing[0],
                        y as f64 * target[1] / spacing[1],
                        z as f64 * target[2] / spacing[2],
                    ];
                    if (0..3).any(|q| p[q] > (dims[q] - 1) as f64) {
                        continue; // clamped edge region
                    }
                    let got = r.data[r.index(x, y, z)] as f64;
                    let want = ramp(p);
                    assert!((got - want).abs() < 1e-4, "{p:?}: {got} vs {want}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 500, "{checked}");
    }

    #[test]
    fn matches_naive_trilinear() {
        for (seed, dims, spacing, target, channels) in [
            (3, [17, 13, 9], [0.7, 0.9, 2.5], [1.0, 1.0, 1.0], 1),
            (4, [11, 15, 5], [1.3, 0.45, 3.1], [0.9, 1.7, 1.3], 2),
            (5, [9, 1, 7], [1.0, 1.0, 0.5], [0.35, 0.5, 2.2], 1),
            (6, [5, 7, 3], [2.0, 1.0, 1.0], [0.7, 3.3, 0.4], 1),
        ] {
            let v = random_volume(dims, channels, spacing, seed);
            let slow = naive_trilinear(&v, target);
            let mut first: Option<Vec<f32>> = None;
            simd::for_each_level(|level| {
                let fast = resample_image(&v, target);
                assert_eq!(fast.dims, slow.dims);
                assert_eq!(fast.geometry, slow.geometry);
                let max = fast
                    .data
                    .iter()
                    .zip(&slow.data)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(max < 1e-5, "seed {seed}, SIMD {level}: max diff {max}");
                // The loops fix their order of operations: every level rounds alike.
                let first = first.get_or_insert_with(|| fast.data.clone());
                assert!(
                    first
                        .iter()
                        .zip(&fast.data)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "seed {seed}: SIMD {level} differs from the generic level"
                );
            });
        }
    }

    #[test]
    fn slabs_are_the_whole_volume_in_order() {
        // z upsampled (z last, per-block caches restart per slab), z strongly downsampled
        // (z first), z unchanged (identity), and two channels.
        for (seed, dims, spacing, target, channels) in [
            (21, [9, 7, 40], [1.0, 1.0, 2.5], [1.0, 1.0, 1.0], 2),
            (22, [6, 8, 60], [1.0, 1.0, 0.25], [1.3, 1.0, 2.0], 1),
            (23, [10, 6, 7], [0.7, 0.9, 1.0], [1.0, 1.0, 1.0], 1),
        ] {
            let v = random_volume(dims, channels, spacing, seed);
            let whole = resample_image(&v, target);
            let lv = v.map(|x| (x * 5.0) as u8);
            let whole_label = resample_label(&lv, target);
            let mz = whole.dims[2];
            for slab in [1, 3, 16, mz, usize::MAX] {
                let mut got = Vec::new();
                let mut seen = Vec::new();
                let g = resample_image_slabs(&v, target, slab, |c, s| {
                    seen.push((c, s.len()));
                    got.extend_from_slice(s);
                    Ok::<_, ()>(())
                })
                .unwrap();
                assert_eq!(g, whole.geometry);
                assert_eq!(got, whole.data, "seed {seed}, slab {slab}");
                let slice = whole.dims[0] * whole.dims[1];
                assert!(
                    seen.iter()
                        .all(|&(_, n)| n % slice == 0 && n <= slab.min(mz) * slice)
                );
                assert!(
                    seen.windows(2).all(|w| w[0].0 <= w[1].0),
                    "channels in order"
                );
                let mut labels = Vec::new();
                resample_label_slabs(&lv, target, slab, |_, s| {
                    labels.extend_from_slice(s);
                    Ok::<_, ()>(())
                })
                .unwrap();
                assert_eq!(labels, whole_label.data, "seed {seed}, slab {slab}");
            }
            // The sink's error stops the run at the first slab.
            let mut calls = 0;
            let r = resample_image_slabs(&v, target, 2, |_, _| {
                calls += 1;
                Err("full")
            });
            assert_eq!((r, calls), (Err("full"), 1));
        }
    }

    #[test]
    fn clamps_past_last_voxel() {
        // 3 voxels of 1 mm → 0.4 mm: positions up to 2.8 (> n − 1 = 2) take the edge value.
        let v = Volume::new(
            vec![1.0, 2.0, 5.0],
            [3, 1, 1],
            1,
            Geometry::identity([1.0; 3]),
        );
        let r = resample_image(&v, [0.4, 1.0, 1.0]);
        assert_eq!(r.dims, [8, 1, 1]);
        let want = [1.0, 1.4, 1.8, 2.6, 3.8, 5.0, 5.0, 5.0];
        for (g, w) in r.data.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{:?}", r.data);
        }
    }

    #[test]
    fn nearest_rounds_half_up_and_clamps() {
        // 4 voxels of 1 mm → 0.5 mm: positions 0, .5, 1, 1.5, 2, 2.5, 3, 3.5
        let v = Volume::new(
            vec![10, 20, 30, 40],
            [4, 1, 1],
            1,
            Geometry::identity([1.0; 3]),
        );
        let r = resample_label(&v, [0.5, 1.0, 1.0]);
        assert_eq!(r.data, vec![10, 20, 20, 30, 30, 40, 40, 40]);
    }

    #[test]
    fn nearest_keeps_label_set_and_scales_counts() {
        let dims = [12, 10, 8];
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let n = dims.iter().product();
        let values = [0u8, 1, 2, 7];
        let data: Vec<u8> = (0..n).map(|_| values[rng.random_range(0..4)]).collect();
        let v = Volume::new(data, dims, 1, geometry([1.0, 1.0, 2.0]));
        let r = resample_label(&v, [0.5, 0.5, 1.0]);
        assert_eq!(r.dims, [24, 20, 16]);
        let count = |d: &[u8], x: u8| d.iter().filter(|&&y| y == x).count();
        for x in 0..=255u8 {
            let (a, b) = (count(&v.data, x), count(&r.data, x));
            if a == 0 {
                assert_eq!(b, 0, "label {x} appeared");
            } else {
                let ratio = b as f64 / a as f64;
                assert!((ratio - 8.0).abs() < 0.8, "label {x}: {a} → {b}");
            }
        }
        // Random labels with anisotropic downsampling keep a subset too.
        let d = resample_label(&v, [1.7, 2.3, 1.1]);
        for x in d.data {
            assert!(values.contains(&x));
        }
    }

    #[test]
    fn nearest_matches_naive() {
        let dims = [9, 7, 5];
        let n = dims.iter().product::<usize>() * 2;
        let data: Vec<u8> = (0..n).map(|i| (i * 37 % 251) as u8).collect();
        let v = Volume::new(data, dims, 2, geometry([0.8, 1.1, 2.0]));
        let target = [0.6, 1.3, 0.9];
        let r = resample_label(&v, target);
        for c in 0..2 {
            for z in 0..r.dims[2] {
                for y in 0..r.dims[1] {
                    for x in 0..r.dims[0] {
                        let p = [x, y, z];
                        let src: [usize; 3] = std::array::from_fn(|q| {
                            let f = p[q] as f64 * target[q] / v.geometry.spacing[q];
                            ((f + 0.5).floor() as usize).min(dims[q] - 1)
                        });
                        assert_eq!(
                            r.channel(c)[r.index(x, y, z)],
                            v.channel(c)[v.index(src[0], src[1], src[2])]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn plan_choices() {
        // the benchmark case: z upsampled → z last
        let p = LinearPlan::new([512, 512, 120], [358, 358, 300], [0.7, 0.7, 2.5], [1.0; 3]);
        assert!(!p.z_first);
        // z strongly downsampled → z first
        let p = LinearPlan::new(
            [100, 100, 400],
            [100, 100, 50],
            [1.0, 1.0, 0.25],
            [1.0, 1.0, 2.0],
        );
        assert!(p.z_first);
        assert!(p.identity[0] && p.identity[1] && !p.identity[2]);
    }

    #[test]
    fn every_pass_order_matches_naive() {
        for (seed, dims, spacing, target) in [
            (11, [13, 9, 11], [0.7, 0.9, 2.5], [1.0, 1.0, 1.0]),
            (12, [10, 12, 17], [1.3, 0.8, 0.4], [0.9, 1.1, 1.9]),
            (13, [8, 6, 5], [1.0, 1.0, 1.0], [1.0, 1.0, 0.6]),
            (14, [8, 6, 5], [1.0, 1.0, 1.0], [0.5, 0.75, 1.0]),
        ] {
            let v = random_volume(dims, 1, spacing, seed);
            let want = naive_trilinear(&v, target);
            let out_dims = output_dims(dims, spacing, target);
            for (x_first, z_first) in [(true, true), (true, false), (false, true), (false, false)] {
                let mut plan = LinearPlan::new(dims, out_dims, spacing, target);
                plan.x_first = x_first;
                plan.z_first = z_first;
                simd::for_each_level(|level| {
                    let mut got = vec![f32::NAN; want.data.len()];
                    plan.run(&v.data, 0, &mut got);
                    let max = got
                        .iter()
                        .zip(&want.data)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0f32, f32::max);
                    assert!(
                        max < 1e-5,
                        "seed {seed} x_first {x_first} z_first {z_first} SIMD {level}: {max}"
                    );
                });
            }
        }
    }

    /// `cargo test -p volume --release --lib resample::tests::timing -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn timing() {
        let v = random_volume([512, 512, 120], 1, [0.7, 0.7, 2.5], 9);
        let l = v.map(|x| (x > 0.5) as u8);
        for _ in 0..5 {
            let t = std::time::Instant::now();
            let r = resample_image(&v, [1.0; 3]);
            let ti = t.elapsed();
            let t = std::time::Instant::now();
            let rl = resample_label(&l, [1.0; 3]);
            let tl = t.elapsed();
            assert_eq!(r.dims, [358, 358, 300]);
            assert_eq!(rl.dims, [358, 358, 300]);
            eprintln!(
                "threads {}: image {ti:?}, label {tl:?}",
                rayon::current_num_threads()
            );
        }
    }
}
