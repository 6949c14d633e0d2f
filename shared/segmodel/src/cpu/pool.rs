//! 2×2×2 max-pooling with stride 2 (odd trailing planes/rows/columns are dropped, as in
//! PyTorch with `ceil_mode = false`).

use rayon::prelude::*;

pub(crate) fn out_dims(dims: [usize; 3]) -> [usize; 3] {
    dims.map(|d| d / 2)
}

/// Index (within the plane) of the first maximum of the 2×2×2 window of output (od, oh, ow),
/// scanning in (d, h, w) order.
#[inline(always)]
fn window_argmax(x: &[f32], [_, h, w]: [usize; 3], od: usize, oh: usize, ow: usize) -> usize {
    let mut best = ((2 * od) * h + 2 * oh) * w + 2 * ow;
    let mut m = x[best];
    for a in 0..2 {
        for b in 0..2 {
            let row = ((2 * od + a) * h + 2 * oh + b) * w + 2 * ow;
            for c in 0..2 {
                let v = x[row + c];
                if v > m {
                    m = v;
                    best = row + c;
                }
            }
        }
    }
    best
}

/// `x: [planes, D, H, W]` -> `[planes, D/2, H/2, W/2]`.
pub(crate) fn forward(x: &[f32], planes: usize, dims: [usize; 3]) -> Vec<f32> {
    let sin: usize = dims.iter().product();
    let od = out_dims(dims);
    let sout: usize = od.iter().product();
    assert_eq!(x.len(), planes * sin);
    let mut y = vec![0f32; planes * sout];
    if sout == 0 {
        return y;
    }
    let [_, hi, wi] = dims;
    let ow = od[2];
    y.par_chunks_mut(sout)
        .zip(x.par_chunks(sin))
        .for_each(|(yp, xp)| forward_plane(xp, yp, hi, wi, od[1], ow));
    y
}

simd::dispatch! {
    /// One plane of [`forward`]: `xp` has rows of `wi`, `hi` rows per slice; `yp` rows of `ow`,
    /// `oh` rows per slice.
    fn forward_plane(xp: &[f32], yp: &mut [f32], hi: usize, wi: usize, oh: usize, ow: usize) {
        // Max over the 4 input rows of a window row, elementwise (vectorizes), then over
        // adjacent pairs. Same value as `window_argmax` picks for non-NaN inputs.
        let mut tmp = vec![0f32; 2 * ow];
        for (row, yrow) in yp.chunks_exact_mut(ow).enumerate() {
            let (d, h) = (row / oh, row % oh);
            let r = |a: usize, b: usize| &xp[((2 * d + a) * hi + 2 * h + b) * wi..][..2 * ow];
            let (r00, r01, r10, r11) = (r(0, 0), r(0, 1), r(1, 0), r(1, 1));
            for (i, t) in tmp.iter_mut().enumerate() {
                *t = r00[i].max(r01[i]).max(r10[i].max(r11[i]));
            }
            for (o, y) in yrow.iter_mut().enumerate() {
                *y = tmp[2 * o].max(tmp[2 * o + 1]);
            }
        }
    }
}

/// Routes each output gradient to the window's first maximum; other inputs get zero.
pub(crate) fn backward(x: &[f32], dy: &[f32], planes: usize, dims: [usize; 3]) -> Vec<f32> {
    let sin: usize = dims.iter().product();
    let od = out_dims(dims);
    let sout: usize = od.iter().product();
    assert_eq!(x.len(), planes * sin);
    assert_eq!(dy.len(), planes * sout);
    let mut dx = vec![0f32; planes * sin];
    if sout == 0 {
        return dx;
    }
    dx.par_chunks_mut(sin)
        .zip(x.par_chunks(sin))
        .zip(dy.par_chunks(sout))
        .for_each(|((dxp, xp), gp)| {
            let mut i = 0;
            for d in 0..od[0] {
                for h in 0..od[1] {
                    for w in 0..od[2] {
                        dxp[window_argmax(xp, dims, d, h, w)] = gp[i];
                        i += 1;
                    }
                }
            }
        });
    dx
}
