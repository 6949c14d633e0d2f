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
    // SAFETY: forwarded to the caller. gemm computes dst = alpha·dst + beta·lhs·rhs, reading
    // dst only when `read_dst` is set.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
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
