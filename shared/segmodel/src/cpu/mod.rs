//! CPU kernels on plain contiguous `f32` slices (no candle types), parallel with rayon.
//!
//! The candle custom ops in [`crate::ops`] validate shapes and call into here; a CUDA path
//! would sit next to this module with the same entry points.
//!
//! Determinism: every kernel partitions its work by shape only (never by thread count or
//! scheduling) and reduces partial sums in a fixed order, so results are bit-identical from
//! run to run on the same machine.

pub(crate) mod act;
pub(crate) mod conv;
pub(crate) mod direct;
pub(crate) mod loss;
pub(crate) mod norm;
pub(crate) mod pool;
pub(crate) mod reduce;
pub(crate) mod up;

use std::cell::Cell;

/// A raw output pointer shared by tasks that write disjoint regions.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub *mut f32);
// SAFETY: only used for writes to disjoint index ranges, one task per range.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// # Safety
    /// `off..off + len` must be in bounds and written by no other task concurrently.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, off: usize, len: usize) -> &mut [f32] {
        // SAFETY: forwarded to the caller.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(off), len) }
    }
}

thread_local! {
    static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` with a per-thread scratch buffer of `len` floats (contents unspecified).
/// The buffer is taken out of the thread-local slot while in use, so nesting is safe
/// (the inner call just allocates).
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.with(|s| s.take());
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    SCRATCH.with(|s| s.set(buf));
    r
}

/// Strided single-threaded SGEMM: `dst[m×n] = (accumulate ? dst : 0) + lhs[m×k] · rhs[k×n]`.
/// Strides are in elements (`rs` between rows, `cs` between columns).
///
/// The microkernel follows [`simd::level`]: gemm's own dispatch (AVX-512 kernels, built with
/// its `x86-v4` feature, on an AVX-512 host) at `avx512`, its AVX2+FMA kernels at `avx2` and
/// its scalar kernels at `generic`, so that a lowered level runs what gemm runs on such a host.
///
/// # Safety
/// All three matrices must be valid for the given extents and strides; `dst` must not alias
/// `lhs`/`rhs` and must not be written concurrently.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    rhs_cs: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let (dst_rs, dst_cs) = (dst_rs as isize, dst_cs as isize);
    let (lhs_rs, lhs_cs) = (lhs_rs as isize, lhs_cs as isize);
    let (rhs_rs, rhs_cs) = (rhs_rs as isize, rhs_cs as isize);
    match simd::level() {
        // SAFETY: forwarded to the caller. gemm computes dst = alpha·dst + beta·lhs·rhs,
        // reading dst only when `read_dst` is set.
        simd::Level::Avx512 => unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst,
                dst_cs,
                dst_rs,
                accumulate,
                lhs,
                lhs_cs,
                lhs_rs,
                rhs,
                rhs_cs,
                rhs_rs,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        },
        // SAFETY: forwarded to the caller; `lowered_gemm` only runs a level the host has.
        level => unsafe {
            lowered_gemm(
                level, m, n, k, dst, dst_rs, dst_cs, accumulate, lhs, lhs_rs, lhs_cs, rhs, rhs_rs,
                rhs_cs,
            )
        },
    }
}

/// gemm's AVX2+FMA (`avx2`) or scalar (`generic`) kernels, called directly: gemm picks its
/// kernel from the CPU alone (a private function pointer), so a lowered level has to go
/// around its dispatcher to `gemm_basic_generic` with gemm-f32's microkernel tables, which
/// is what gemm's dispatcher calls for those CPUs. The operand swap is gemm's own: its
/// microkernels want a column-major destination.
///
/// # Safety
/// As [`sgemm`]; strides are non-negative.
#[allow(clippy::too_many_arguments)]
unsafe fn lowered_gemm(
    level: simd::Level,
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    dst_cs: isize,
    read_dst: bool,
    lhs: *const f32,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    rhs_cs: isize,
) {
    use gemm_common::gemm::gemm_basic_generic;
    let (m, n, dst_cs, dst_rs, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs) = if dst_cs < dst_rs {
        (
            n, m, dst_rs, dst_cs, rhs, rhs_rs, rhs_cs, lhs, lhs_rs, lhs_cs,
        )
    } else {
        (
            m, n, dst_cs, dst_rs, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs,
        )
    };
    let par = gemm_common::Parallelism::None;
    let fma = |a: f32, b: f32, c: f32| a * b + c;
    match level {
        #[cfg(target_arch = "x86_64")]
        simd::Level::Avx2 => {
            use gemm_f32::microkernel::fma::f32 as ukr;
            let Some(v3) = gemm_common::simd::V3::try_new() else {
                unreachable!("level avx2 is only chosen on a host with AVX2 and FMA")
            };
            // SAFETY: forwarded to the caller; V3 proves the CPU has AVX2 and FMA.
            unsafe {
                gemm_basic_generic::<
                    _,
                    f32,
                    8,
                    { ukr::MR_DIV_N * 8 },
                    { ukr::NR },
                    { ukr::MR_DIV_N },
                    { ukr::H_M },
                    { ukr::H_N },
                >(
                    v3,
                    m,
                    n,
                    k,
                    dst,
                    dst_cs,
                    dst_rs,
                    read_dst,
                    lhs,
                    lhs_cs,
                    lhs_rs,
                    rhs,
                    rhs_cs,
                    rhs_rs,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    fma,
                    &ukr::UKR,
                    &ukr::H_UKR,
                    false,
                    par,
                )
            }
        }
        _ => {
            use gemm_f32::microkernel::scalar::f32 as ukr;
            // SAFETY: forwarded to the caller; the scalar kernels need no CPU feature.
            unsafe {
                gemm_basic_generic::<
                    _,
                    f32,
                    1,
                    { ukr::MR_DIV_N },
                    { ukr::NR },
                    { ukr::MR_DIV_N },
                    { ukr::H_M },
                    { ukr::H_N },
                >(
                    gemm_common::simd::Scalar,
                    m,
                    n,
                    k,
                    dst,
                    dst_cs,
                    dst_rs,
                    read_dst,
                    lhs,
                    lhs_cs,
                    lhs_rs,
                    rhs,
                    rhs_cs,
                    rhs_rs,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    fma,
                    &ukr::UKR,
                    &ukr::H_UKR,
                    false,
                    par,
                )
            }
        }
    }
}

/// Number of floats a vol2col/scratch tile aims for: half the per-core L2 cache (read from
/// sysfs once; 512 KiB assumed when unknown), so the tile stays in L2 while the gemm streams
/// it. `SEGMODEL_TILE_FLOATS` overrides it (for tuning).
pub(crate) fn tile_floats() -> usize {
    static TILE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *TILE.get_or_init(|| {
        if let Some(n) = std::env::var("SEGMODEL_TILE_FLOATS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            return usize::max(n, 1024);
        }
        let l2 = l2_bytes().unwrap_or(512 << 10).clamp(256 << 10, 4 << 20);
        l2 / 2 / std::mem::size_of::<f32>()
    })
}

fn l2_bytes() -> Option<usize> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    for entry in dir.flatten() {
        let p = entry.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).ok();
        if read("level")?.trim() == "2" && read("type")?.trim() != "Instruction" {
            let size = read("size")?;
            let size = size.trim();
            let (num, mult) = match size.strip_suffix('K') {
                Some(n) => (n, 1 << 10),
                None => match size.strip_suffix('M') {
                    Some(n) => (n, 1 << 20),
                    None => (size, 1),
                },
            };
            return num.parse::<usize>().ok().map(|n| n * mult);
        }
    }
    None
}

/// Columns per tile for a `rows × cols` scratch matrix: about [`tile_floats`] floats, at
/// least 256 and at most 4096 columns, rounded down to whole rows of `row_len` when a row fits.
pub(crate) fn tile_cols(rows: usize, row_len: usize) -> usize {
    let n = (tile_floats() / rows.max(1)).clamp(256, 4096);
    if row_len > 0 && row_len <= n {
        n / row_len * row_len
    } else {
        n
    }
}

/// Splits `0..total` into consecutive ranges of at most `step`.
pub(crate) fn ranges(total: usize, step: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..total.div_ceil(step)).map(move |i| (i * step, ((i + 1) * step).min(total)))
}

/// A run of consecutive flattened positions that lie on one W-row of a `[D, H, W]` grid.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowSeg {
    pub d: usize,
    pub h: usize,
    pub w0: usize,
    pub len: usize,
    /// Offset of the segment's first position from the start of the range.
    pub off: usize,
}

/// Cuts the flattened position range `c0..c1` of a `[_, hn, wn]` grid into row segments.
pub(crate) fn row_segments(c0: usize, c1: usize, hn: usize, wn: usize) -> Vec<RowSeg> {
    let mut segs = Vec::with_capacity((c1 - c0) / wn.max(1) + 2);
    let mut pos = c0;
    while pos < c1 {
        let w0 = pos % wn;
        let row = pos / wn;
        let len = (wn - w0).min(c1 - pos);
        segs.push(RowSeg {
            d: row / hn,
            h: row % hn,
            w0,
            len,
            off: pos - c0,
        });
        pos += len;
    }
    segs
}

/// Groups `n` work items into at most `max_groups` consecutive chunks (by shape only).
pub(crate) fn group_bounds(n: usize, max_groups: usize) -> Vec<(usize, usize)> {
    let g = n.clamp(1, max_groups.max(1));
    let step = n.div_ceil(g).max(1);
    ranges(n, step).collect()
}

simd::dispatch! {
    /// Sum of a slice with 16 f32 lanes per block of 4096, blocks combined in f64.
    pub(crate) fn sum_f64(x: &[f32]) -> f64 {
        let mut total = 0f64;
        for block in x.chunks(4096) {
            let mut acc = [0f32; 16];
            let mut it = block.chunks_exact(16);
            for c in &mut it {
                for l in 0..16 {
                    acc[l] += c[l];
                }
            }
            let tail: f32 = it.remainder().iter().sum();
            total += acc.iter().map(|&v| v as f64).sum::<f64>() + tail as f64;
        }
        total
    }
}
