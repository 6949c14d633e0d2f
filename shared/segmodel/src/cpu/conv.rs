//! 3D convolution as L2-tiled vol2col + single-threaded gemm per tile, rayon over tiles;
//! the 3×3×3 stride-1 convolutions of the U-Net run the direct kernels of
//! [`super::direct`] instead where the SIMD level has them.
//!
//! The same forward kernel computes `dx` (on `dy`, with the weight flipped and transposed and
//! the input virtually dilated by the forward stride), so one kernel covers both passes.

use super::{RowSeg, SyncPtr, group_bounds, ranges, row_segments, sgemm, tile_cols, with_scratch};
use rayon::prelude::*;

/// Geometry of `y[n, co, o] = Σ w[co, ci, kk] · x_dil[n, ci, o·stride − pad + kk]`, where
/// `x_dil` is the input dilated by `in_dil` (zeros between samples) and any index outside
/// it reads zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvGeom {
    pub n: usize,
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub in_dims: [usize; 3],
    pub in_dil: usize,
    pub stride: usize,
    pub pad: isize,
    pub out_dims: [usize; 3],
}

impl ConvGeom {
    /// Forward geometry with symmetric zero padding; `None` when the output would be empty.
    pub fn forward(
        n: usize,
        cin: usize,
        cout: usize,
        k: usize,
        in_dims: [usize; 3],
        pad: usize,
        stride: usize,
    ) -> Option<Self> {
        let mut out_dims = [0; 3];
        for (o, &i) in out_dims.iter_mut().zip(&in_dims) {
            let span = (i + 2 * pad).checked_sub(k)?;
            *o = span / stride + 1;
        }
        Some(Self {
            n,
            cin,
            cout,
            k,
            in_dims,
            in_dil: 1,
            stride,
            pad: pad as isize,
            out_dims,
        })
    }

    /// Geometry of the input gradient of a forward (non-dilated) convolution: a stride-1
    /// convolution of `dy` (dilated by the forward stride) with the flipped kernel.
    pub fn input_grad(&self) -> Self {
        debug_assert_eq!(self.in_dil, 1);
        Self {
            n: self.n,
            cin: self.cout,
            cout: self.cin,
            k: self.k,
            in_dims: self.out_dims,
            in_dil: self.stride,
            stride: 1,
            pad: self.k as isize - 1 - self.pad,
            out_dims: self.in_dims,
        }
    }

    pub fn in_size(&self) -> usize {
        self.in_dims.iter().product()
    }

    pub fn out_size(&self) -> usize {
        self.out_dims.iter().product()
    }

    /// Rows of the vol2col matrix: `cin · k³`.
    pub fn kdim(&self) -> usize {
        self.cin * self.k * self.k * self.k
    }

    /// A 1×1×1 stride-1 convolution reads the input directly as the gemm operand.
    fn pointwise(&self) -> bool {
        self.k == 1
            && self.stride == 1
            && self.in_dil == 1
            && self.pad == 0
            && self.in_dims == self.out_dims
    }

    fn tiles(&self) -> Vec<(usize, usize, usize)> {
        let cols = tile_cols(self.kdim(), self.out_dims[2]);
        (0..self.n)
            .flat_map(|n| ranges(self.out_size(), cols).map(move |(a, b)| (n, a, b)))
            .collect()
    }
}

/// Maps a position on the dilated, padded axis to a stored index.
#[inline(always)]
fn src_index(j: isize, dil: usize, len: usize) -> Option<usize> {
    if j < 0 {
        return None;
    }
    let j = j as usize;
    if !j.is_multiple_of(dil) {
        return None;
    }
    let i = j / dil;
    (i < len).then_some(i)
}

/// Fills `col[(ci,kd,kh,kw), j]` (row-major, `ncols` columns) for the output positions of
/// `segs` from sample `xn` (`[cin, D, H, W]`).
fn vol2col(g: &ConvGeom, xn: &[f32], segs: &[RowSeg], ncols: usize, col: &mut [f32]) {
    let [di, hi, wi] = g.in_dims;
    let sin = g.in_size();
    let k = g.k;
    let (s, dil, pad) = (g.stride as isize, g.in_dil, g.pad);
    let mut rows = col.chunks_exact_mut(ncols);
    for ci in 0..g.cin {
        let xc = &xn[ci * sin..(ci + 1) * sin];
        for kd in 0..k {
            for kh in 0..k {
                for kw in 0..k {
                    let row = rows.next().expect("col has kdim rows");
                    for seg in segs {
                        let dst = &mut row[seg.off..seg.off + seg.len];
                        let jd = seg.d as isize * s - pad + kd as isize;
                        let jh = seg.h as isize * s - pad + kh as isize;
                        let (Some(id), Some(ih)) = (src_index(jd, dil, di), src_index(jh, dil, hi))
                        else {
                            dst.fill(0.0);
                            continue;
                        };
                        let xrow = &xc[(id * hi + ih) * wi..(id * hi + ih + 1) * wi];
                        let jw0 = seg.w0 as isize * s - pad + kw as isize;
                        if s == 1 && dil == 1 {
                            // dst[t] = xrow[jw0 + t] where in range.
                            let lo = (-jw0).clamp(0, seg.len as isize) as usize;
                            let hi_t = (wi as isize - jw0).clamp(lo as isize, seg.len as isize);
                            let hi_t = hi_t as usize;
                            dst[..lo].fill(0.0);
                            if hi_t > lo {
                                let a = (jw0 + lo as isize) as usize;
                                dst[lo..hi_t].copy_from_slice(&xrow[a..a + hi_t - lo]);
                            }
                            dst[hi_t..].fill(0.0);
                        } else {
                            for (t, v) in dst.iter_mut().enumerate() {
                                let jw = jw0 + t as isize * s;
                                *v = match src_index(jw, dil, wi) {
                                    Some(iw) => xrow[iw],
                                    None => 0.0,
                                };
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `y = conv(x, w) + bias`; `x: [n, cin, in_dims]`, `w: [cout, cin·k³]`, `y: [n, cout, out_dims]`.
pub(crate) fn forward(g: &ConvGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let (sin, sout, kdim) = (g.in_size(), g.out_size(), g.kdim());
    assert_eq!(x.len(), g.n * g.cin * sin);
    assert_eq!(w.len(), g.cout * kdim);
    assert_eq!(y.len(), g.n * g.cout * sout);
    if let Some(kern) = super::direct::kernel(g) {
        return super::direct::forward(kern, g, x, w, bias, y);
    }
    let yp = SyncPtr(y.as_mut_ptr());
    g.tiles().into_par_iter().for_each(|(n, c0, c1)| {
        let nc = c1 - c0;
        let ybase = n * g.cout * sout + c0;
        if let Some(b) = bias {
            for (co, &bv) in b.iter().enumerate() {
                // SAFETY: tiles cover disjoint (n, c0..c1) column ranges of y.
                unsafe { yp.slice(ybase + co * sout, nc) }.fill(bv);
            }
        }
        let xn = &x[n * g.cin * sin..(n + 1) * g.cin * sin];
        let run = |rhs: *const f32, rhs_rs: usize| {
            // SAFETY: y tile is [cout × nc] at row stride sout, exclusively ours; w is
            // [cout × kdim]; rhs is [kdim × nc] at row stride rhs_rs.
            unsafe {
                sgemm(
                    g.cout,
                    nc,
                    kdim,
                    yp.0.add(ybase),
                    sout,
                    1,
                    bias.is_some(),
                    w.as_ptr(),
                    kdim,
                    1,
                    rhs,
                    rhs_rs,
                    1,
                )
            }
        };
        if g.pointwise() {
            run(xn[c0..].as_ptr(), sin);
        } else {
            let segs = row_segments(c0, c1, g.out_dims[1], g.out_dims[2]);
            with_scratch(kdim * nc, |col| {
                vol2col(g, xn, &segs, nc, col);
                run(col.as_ptr(), nc);
            });
        }
    });
}

/// Weight gradient `dw[co, (ci,kk)] = Σ_n Σ_o dy[n, co, o] · col[n][(ci,kk), o]`.
pub(crate) fn weight_grad(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (sin, sout, kdim) = (g.in_size(), g.out_size(), g.kdim());
    assert_eq!(x.len(), g.n * g.cin * sin);
    assert_eq!(dy.len(), g.n * g.cout * sout);
    if let Some(kern) = super::direct::kernel(g) {
        return super::direct::weight_grad(kern, g, x, dy);
    }
    let tiles = g.tiles();
    let wlen = g.cout * kdim;
    let partials: Vec<Vec<f32>> = group_bounds(tiles.len(), 8)
        .into_par_iter()
        .map(|(t0, t1)| {
            let mut acc = vec![0f32; wlen];
            for &(n, c0, c1) in &tiles[t0..t1] {
                let nc = c1 - c0;
                let xn = &x[n * g.cin * sin..(n + 1) * g.cin * sin];
                let dyt = dy[n * g.cout * sout + c0..].as_ptr();
                let run = |colt: *const f32, col_rs: usize, acc: &mut [f32]| {
                    // SAFETY: acc is [cout × kdim]; dy tile [cout × nc] at row stride sout;
                    // colᵀ is [nc × kdim] read through (1, col_rs) strides.
                    unsafe {
                        sgemm(
                            g.cout,
                            kdim,
                            nc,
                            acc.as_mut_ptr(),
                            kdim,
                            1,
                            true,
                            dyt,
                            sout,
                            1,
                            colt,
                            1,
                            col_rs,
                        )
                    }
                };
                if g.pointwise() {
                    run(xn[c0..].as_ptr(), sin, &mut acc);
                } else {
                    let segs = row_segments(c0, c1, g.out_dims[1], g.out_dims[2]);
                    with_scratch(kdim * nc, |col| {
                        vol2col(g, xn, &segs, nc, col);
                        run(col.as_ptr(), nc, &mut acc);
                    });
                }
            }
            acc
        })
        .collect();
    sum_in_order(partials, wlen)
}

/// Input gradient of the forward geometry `g` (stride 1 or 2): `dx = conv(dy_dil, flip(w)ᵀ)`.
pub(crate) fn input_grad(g: &ConvGeom, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let k3 = g.k * g.k * g.k;
    // wt[ci, co, kk] = w[co, ci, k³ − 1 − kk]
    let mut wt = vec![0f32; w.len()];
    for co in 0..g.cout {
        for ci in 0..g.cin {
            let src = &w[(co * g.cin + ci) * k3..][..k3];
            let dst = &mut wt[(ci * g.cout + co) * k3..][..k3];
            for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
        }
    }
    forward(&g.input_grad(), dy, &wt, None, dx);
}

/// Sums equally sized partial buffers in their given order.
pub(crate) fn sum_in_order(partials: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut it = partials.into_iter();
    let mut out = it.next().unwrap_or_else(|| vec![0f32; len]);
    for p in it {
        for (o, v) in out.iter_mut().zip(&p) {
            *o += v;
        }
    }
    out
}
