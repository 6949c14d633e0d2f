//! 2× upsampling by a stride-2 2×2×2 transposed convolution (PyTorch `ConvTranspose3d`
//! with kernel 2, stride 2): `y[n, co, 2d+a, 2h+b, 2w+c] = bias[co] + Σ_ci x[n, ci, d, h, w] ·
//! w[ci, co, a, b, c]`. Each input voxel owns its 2×2×2 output block, so the forward pass is
//! one gemm per tile plus a scatter, and the backward pass a gather plus two gemms.

use super::conv::sum_in_order;
use super::{RowSeg, SyncPtr, group_bounds, ranges, row_segments, sgemm, tile_cols, with_scratch};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UpGeom {
    pub n: usize,
    pub cin: usize,
    pub cout: usize,
    /// Input spatial dims; the output has twice each.
    pub dims: [usize; 3],
}

impl UpGeom {
    pub fn out_dims(&self) -> [usize; 3] {
        self.dims.map(|d| 2 * d)
    }

    fn in_size(&self) -> usize {
        self.dims.iter().product()
    }

    /// Rows of the per-tile scratch: `cout · 8` (one per output channel and block offset).
    fn q(&self) -> usize {
        self.cout * 8
    }

    fn tiles(&self) -> Vec<(usize, usize, usize)> {
        let cols = tile_cols(self.q(), self.dims[2]);
        (0..self.n)
            .flat_map(|n| ranges(self.in_size(), cols).map(move |(a, b)| (n, a, b)))
            .collect()
    }

    /// Flattened output offset (within one channel) of block offset (a, b, c) of input
    /// voxel (d, h, w).
    #[inline(always)]
    fn out_offset(&self, d: usize, h: usize, w: usize, abc: usize) -> usize {
        let [_, oh, ow] = self.out_dims();
        let (a, b, c) = (abc >> 2, (abc >> 1) & 1, abc & 1);
        ((2 * d + a) * oh + 2 * h + b) * ow + 2 * w + c
    }
}

/// `x: [n, cin, S]`, `w: [cin, cout·8]`, `bias: [cout]` -> `y: [n, cout, 8S]`.
pub(crate) fn forward(g: &UpGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let (s, q) = (g.in_size(), g.q());
    let sout = 8 * s;
    assert_eq!(x.len(), g.n * g.cin * s);
    assert_eq!(w.len(), g.cin * q);
    let mut y = vec![0f32; g.n * g.cout * sout];
    let yp = SyncPtr(y.as_mut_ptr());
    g.tiles().into_par_iter().for_each(|(n, c0, c1)| {
        let nc = c1 - c0;
        let segs = row_segments(c0, c1, g.dims[1], g.dims[2]);
        with_scratch(q * nc, |z| {
            // z[q, j] = Σ_ci w[ci, q] · x[n, ci, c0 + j]
            // SAFETY: z is [q × nc]; w read transposed; x tile [cin × nc] at row stride s.
            unsafe {
                sgemm(
                    q,
                    nc,
                    g.cin,
                    z.as_mut_ptr(),
                    nc,
                    1,
                    false,
                    w.as_ptr(),
                    1,
                    q,
                    x[(n * g.cin) * s + c0..].as_ptr(),
                    s,
                    1,
                )
            };
            for co in 0..g.cout {
                let b = bias.map_or(0.0, |b| b[co]);
                for abc in 0..8 {
                    let zrow = &z[(co * 8 + abc) * nc..][..nc];
                    // SAFETY: the voxels c0..c1 of sample n own their output blocks
                    // exclusively; only those offsets of this channel are written.
                    unsafe { scatter_row(g, &segs, zrow, b, yp, (n * g.cout + co) * sout, abc) };
                }
            }
        });
    });
    y
}

/// # Safety
/// The output block positions of `segs` in the channel plane at `plane` must be in bounds of
/// `y` and written by no other task.
unsafe fn scatter_row(
    g: &UpGeom,
    segs: &[RowSeg],
    zrow: &[f32],
    b: f32,
    y: SyncPtr,
    plane: usize,
    abc: usize,
) {
    for seg in segs {
        let base = plane + g.out_offset(seg.d, seg.h, seg.w0, abc);
        let src = &zrow[seg.off..seg.off + seg.len];
        for (t, &v) in src.iter().enumerate() {
            // SAFETY: forwarded to the caller.
            unsafe { *y.0.add(base + 2 * t) = v + b };
        }
    }
}

fn gather_row(g: &UpGeom, segs: &[RowSeg], dyc: &[f32], grow: &mut [f32], abc: usize) {
    for seg in segs {
        let base = g.out_offset(seg.d, seg.h, seg.w0, abc);
        let dst = &mut grow[seg.off..seg.off + seg.len];
        for (t, v) in dst.iter_mut().enumerate() {
            *v = dyc[base + 2 * t];
        }
    }
}

/// Returns `(dx, dw)`: `dx: [n, cin, S]` only when `want_dx`, `dw: [cin, cout·8]`.
pub(crate) fn backward(
    g: &UpGeom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    want_dx: bool,
) -> (Option<Vec<f32>>, Vec<f32>) {
    let (s, q) = (g.in_size(), g.q());
    let sout = 8 * s;
    assert_eq!(x.len(), g.n * g.cin * s);
    assert_eq!(w.len(), g.cin * q);
    assert_eq!(dy.len(), g.n * g.cout * sout);
    let mut dx = want_dx.then(|| vec![0f32; g.n * g.cin * s]);
    let dxp = dx.as_mut().map(|v| SyncPtr(v.as_mut_ptr()));
    let tiles = g.tiles();
    let partials: Vec<Vec<f32>> = group_bounds(tiles.len(), 8)
        .into_par_iter()
        .map(|(t0, t1)| {
            let mut acc = vec![0f32; g.cin * q];
            for &(n, c0, c1) in &tiles[t0..t1] {
                let nc = c1 - c0;
                let segs = row_segments(c0, c1, g.dims[1], g.dims[2]);
                with_scratch(q * nc, |gt| {
                    for co in 0..g.cout {
                        let dyc = &dy[(n * g.cout + co) * sout..][..sout];
                        for abc in 0..8 {
                            gather_row(g, &segs, dyc, &mut gt[(co * 8 + abc) * nc..][..nc], abc);
                        }
                    }
                    let xt = x[(n * g.cin) * s + c0..].as_ptr();
                    if let Some(dxp) = dxp {
                        // dx[n, ci, c0 + j] = Σ_q w[ci, q] · gt[q, j]
                        // SAFETY: the dx tile [cin × nc] at row stride s is ours alone.
                        unsafe {
                            sgemm(
                                g.cin,
                                nc,
                                q,
                                dxp.0.add((n * g.cin) * s + c0),
                                s,
                                1,
                                false,
                                w.as_ptr(),
                                q,
                                1,
                                gt.as_ptr(),
                                nc,
                                1,
                            )
                        };
                    }
                    // acc[ci, q] += Σ_j x[n, ci, c0 + j] · gt[q, j]
                    // SAFETY: acc is [cin × q]; x tile [cin × nc]; gtᵀ read as [nc × q].
                    unsafe {
                        sgemm(
                            g.cin,
                            q,
                            nc,
                            acc.as_mut_ptr(),
                            q,
                            1,
                            true,
                            xt,
                            s,
                            1,
                            gt.as_ptr(),
                            1,
                            nc,
                        )
                    };
                });
            }
            acc
        })
        .collect();
    (dx, sum_in_order(partials, g.cin * q))
}
