//! Direct 3×3×3 convolution (stride 1, padding 1, no dilation: every convolution of the
//! U-Net's blocks and their input gradients) with AVX-512 or AVX2+FMA register blocking.
//!
//! vol2col + GEMM writes and reads the input 27 times over; with the U-Net's few channels
//! (4–32) that copy costs as much as the multiply-adds. Here each task takes one output
//! plane `d` of one sample: it copies the three input planes `d − 1, d, d + 1` of every
//! channel into a zero-padded slab (`[cin][3][H + 2][W + 2]`, per thread, reused), and a
//! microkernel keeps a block of `CB` output channels × `R` vectors of output positions in
//! registers while it runs over every input channel and the 27 taps, reading the slab at a
//! fixed offset per tap. Output positions are numbered on the padded plane
//! (`p = h·(W + 2) + w`), so one run of positions crosses rows; the two columns per row that
//! fall on the padding are computed and dropped when the plane is copied out.
//!
//! Every output value is the same chain of fused multiply-adds, starting from the bias, in
//! the same order (input channel, then tap `kd, kh, kw`), whatever the vector width or
//! block: the AVX-512 and AVX2 kernels give bit-identical results, and a result never
//! depends on the thread count. The generic level keeps vol2col + GEMM (no FMA there).

use super::conv::ConvGeom;
use super::{SyncPtr, with_scratch};
use rayon::prelude::*;

/// Which path computes the 3×3×3 stride-1 convolutions: `SEGMODEL_CONV=vol2col` keeps
/// vol2col + GEMM on every level (for before/after measurements); unset or `direct` uses
/// this module where the level has a kernel.
pub(crate) const ENV: &str = "SEGMODEL_CONV";

fn direct_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| match std::env::var(ENV) {
        Ok(v) if v.trim().eq_ignore_ascii_case("vol2col") => false,
        Ok(v) if v.trim().is_empty() || v.trim().eq_ignore_ascii_case("direct") => true,
        Ok(v) => {
            eprintln!("warning: {ENV}={v:?} is not vol2col or direct; using direct");
            true
        }
        Err(_) => true,
    })
}

/// One output plane's work, shared by the microkernels.
struct Plane {
    /// The padded slab, channel 0, plane 0 (`d − 1`).
    x: *const f32,
    cin: usize,
    /// Floats between channels of the slab.
    cstride: usize,
    /// Slab offset of each tap `(kd, kh, kw)`, row-major.
    offs: [usize; 27],
    /// Weights `[nb][cin][27][CB]`, zero for output channels past `cout`.
    w: *const f32,
    /// Number of `CB`-channel blocks.
    nb: usize,
    /// Bias per padded output channel (`nb · CB`).
    bias: *const f32,
    /// Output `[nb · CB][len]`.
    out: *mut f32,
    /// Positions computed per channel: a multiple of the kernel's `V · R`.
    len: usize,
}

/// One output plane's share of the weight gradient.
struct WPlane {
    /// The padded slab (as [`Plane::x`]), `cin_b · CIB` channels (those past `cin` zero).
    x: *const f32,
    cstride: usize,
    offs: [usize; 27],
    cin_b: usize,
    /// `dy` of the plane on the padded numbering, `[cout_b · COB][len]`, zero on the
    /// padding columns, past the last row and for channels past `cout`.
    dy: *const f32,
    cout_b: usize,
    /// A multiple of the vector width.
    len: usize,
    /// Accumulated into: `[cout_b · COB][cin_b · CIB][27]`.
    dw: *mut f32,
}

/// The microkernels of one SIMD level: the forward/input-gradient kernel (`cb` output
/// channels × `step` positions per register block) and the weight-gradient kernel (`wco` ×
/// `wci` channel pairs per register block, `lanes` positions per vector).
#[derive(Clone, Copy)]
pub(crate) struct Kernel {
    cb: usize,
    step: usize,
    run: unsafe fn(&Plane),
    wco: usize,
    wci: usize,
    lanes: usize,
    wrun: unsafe fn(&WPlane),
}

macro_rules! plane_kernel {
    ($name:ident, $features:literal, $vec:ty, $lanes:literal, $cb:literal, $r:literal,
     $zero:ident, $set1:ident, $load:ident, $store:ident, $fma:ident) => {
        /// # Safety
        /// The host has the enabled features; `p` describes valid buffers: the slab readable
        /// at `x + ci·cstride + offs[t] + q` for every `q < len`, the weights and bias of
        /// `nb` blocks, and `out` writable for `nb · CB · len` floats.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(p: &Plane) {
            use std::arch::x86_64::*;
            const CB: usize = $cb;
            const R: usize = $r;
            const V: usize = $lanes;
            // SAFETY: the caller's contract covers every pointer offset below.
            unsafe {
                let mut p0 = 0;
                while p0 < p.len {
                    for b in 0..p.nb {
                        let wb = p.w.add(b * p.cin * 27 * CB);
                        let mut acc: [[$vec; R]; CB] = [[$zero(); R]; CB];
                        for (c, row) in acc.iter_mut().enumerate() {
                            let bv = $set1(*p.bias.add(b * CB + c));
                            for a in row.iter_mut() {
                                *a = bv;
                            }
                        }
                        for ci in 0..p.cin {
                            let xc = p.x.add(ci * p.cstride + p0);
                            let wc = wb.add(ci * 27 * CB);
                            for (t, &off) in p.offs.iter().enumerate() {
                                let xt = xc.add(off);
                                let mut xv: [$vec; R] = [$zero(); R];
                                for (r, v) in xv.iter_mut().enumerate() {
                                    *v = $load(xt.add(r * V));
                                }
                                let wt = wc.add(t * CB);
                                for (c, row) in acc.iter_mut().enumerate() {
                                    let wv = $set1(*wt.add(c));
                                    for (a, &xr) in row.iter_mut().zip(&xv) {
                                        *a = $fma(xr, wv, *a);
                                    }
                                }
                            }
                        }
                        let ob = p.out.add(b * CB * p.len + p0);
                        for (c, row) in acc.iter().enumerate() {
                            for (r, &a) in row.iter().enumerate() {
                                $store(ob.add(c * p.len + r * V), a);
                            }
                        }
                    }
                    p0 += V * R;
                }
            }
        }
    };
}

plane_kernel!(
    avx512_cb8,
    "avx,avx2,fma,avx512f",
    __m512,
    16,
    8,
    3,
    _mm512_setzero_ps,
    _mm512_set1_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_fmadd_ps
);
plane_kernel!(
    avx512_cb4,
    "avx,avx2,fma,avx512f",
    __m512,
    16,
    4,
    6,
    _mm512_setzero_ps,
    _mm512_set1_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_fmadd_ps
);
plane_kernel!(
    avx2_cb4,
    "avx,avx2,fma",
    __m256,
    8,
    4,
    2,
    _mm256_setzero_ps,
    _mm256_set1_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_fmadd_ps
);

macro_rules! wgrad_kernel {
    ($name:ident, $features:literal, $vec:ty, $lanes:literal, $co:literal, $ci:literal,
     $zero:ident, $load:ident, $fma:ident, $hsum:path) => {
        /// # Safety
        /// The host has the enabled features; `p` describes valid buffers: the slab readable
        /// at `x + ci·cstride + offs[t] + q` and `dy` at `co·len + q` for every `q < len`
        /// and padded channel, `dw` writable for every padded channel pair and tap.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(p: &WPlane) {
            use std::arch::x86_64::*;
            const CO: usize = $co;
            const CI: usize = $ci;
            const V: usize = $lanes;
            let cin_p = p.cin_b * CI;
            // SAFETY: the caller's contract covers every pointer offset below.
            unsafe {
                for (t, &off) in p.offs.iter().enumerate() {
                    for bi in 0..p.cin_b {
                        let xb = p.x.add(bi * CI * p.cstride + off);
                        for bo in 0..p.cout_b {
                            let db = p.dy.add(bo * CO * p.len);
                            let mut acc: [[$vec; CI]; CO] = [[$zero(); CI]; CO];
                            let mut q = 0;
                            while q < p.len {
                                let mut dv: [$vec; CO] = [$zero(); CO];
                                for (i, v) in dv.iter_mut().enumerate() {
                                    *v = $load(db.add(i * p.len + q));
                                }
                                let mut xv: [$vec; CI] = [$zero(); CI];
                                for (j, v) in xv.iter_mut().enumerate() {
                                    *v = $load(xb.add(j * p.cstride + q));
                                }
                                for (row, &d) in acc.iter_mut().zip(&dv) {
                                    for (a, &x) in row.iter_mut().zip(&xv) {
                                        *a = $fma(d, x, *a);
                                    }
                                }
                                q += V;
                            }
                            for (i, row) in acc.iter().enumerate() {
                                for (j, &a) in row.iter().enumerate() {
                                    let at = ((bo * CO + i) * cin_p + bi * CI + j) * 27 + t;
                                    *p.dw.add(at) += $hsum(a);
                                }
                            }
                        }
                    }
                }
            }
        }
    };
}

/// Sum of the 8 lanes, in lane order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn hsum256(v: std::arch::x86_64::__m256) -> f32 {
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` has room for 8 floats.
    unsafe { std::arch::x86_64::_mm256_storeu_ps(lanes.as_mut_ptr(), v) };
    lanes.iter().sum()
}

/// Sum of the 16 lanes, in lane order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn hsum512(v: std::arch::x86_64::__m512) -> f32 {
    let mut lanes = [0f32; 16];
    // SAFETY: `lanes` has room for 16 floats.
    unsafe { std::arch::x86_64::_mm512_storeu_ps(lanes.as_mut_ptr(), v) };
    lanes.iter().sum()
}

wgrad_kernel!(
    avx512_w4x4,
    "avx,avx2,fma,avx512f",
    __m512,
    16,
    4,
    4,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_fmadd_ps,
    hsum512
);
wgrad_kernel!(
    avx2_w2x4,
    "avx,avx2,fma",
    __m256,
    8,
    2,
    4,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_fmadd_ps,
    hsum256
);

/// The kernel for `g` at the current SIMD level, or `None` when vol2col + GEMM computes it
/// (another geometry, the generic level, or `SEGMODEL_CONV=vol2col`).
pub(crate) fn kernel(g: &ConvGeom) -> Option<Kernel> {
    let shape = g.k == 3 && g.stride == 1 && g.in_dil == 1 && g.pad == 1;
    if !shape || g.in_dims != g.out_dims || g.cin == 0 || g.cout == 0 || !direct_enabled() {
        return None;
    }
    kernel_at(simd::level(), g.cout)
}

#[cfg(target_arch = "x86_64")]
fn kernel_at(level: simd::Level, cout: usize) -> Option<Kernel> {
    let avx512 = |cb: usize, step: usize, run: unsafe fn(&Plane)| Kernel {
        cb,
        step,
        run,
        wco: 4,
        wci: 4,
        lanes: 16,
        wrun: avx512_w4x4,
    };
    match level {
        simd::Level::Avx512 if cout <= 4 => Some(avx512(4, 16 * 6, avx512_cb4)),
        simd::Level::Avx512 => Some(avx512(8, 16 * 3, avx512_cb8)),
        simd::Level::Avx2 => Some(Kernel {
            cb: 4,
            step: 8 * 2,
            run: avx2_cb4,
            wco: 2,
            wci: 4,
            lanes: 8,
            wrun: avx2_w2x4,
        }),
        simd::Level::Generic => None,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn kernel_at(_: simd::Level, _: usize) -> Option<Kernel> {
    None
}

/// `y = conv(x, w) + bias` for a geometry [`kernel`] accepted, with that kernel.
pub(crate) fn forward(
    kern: Kernel,
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let [d, h, wd] = g.out_dims;
    let (cin, cout, cb) = (g.cin, g.cout, kern.cb);
    let (hp, wp) = (h + 2, wd + 2);
    let plane = hp * wp;
    let sin = d * h * wd;
    assert_eq!(x.len(), g.n * cin * sin);
    assert_eq!(w.len(), cout * cin * 27);
    assert_eq!(y.len(), g.n * cout * sin);
    let nb = cout.div_ceil(cb);
    // Weights as [block][ci][tap][co in block], zero past cout; bias likewise.
    let mut wt = vec![0f32; nb * cin * 27 * cb];
    for co in 0..cout {
        let (b, c) = (co / cb, co % cb);
        for ci in 0..cin {
            for t in 0..27 {
                wt[((b * cin + ci) * 27 + t) * cb + c] = w[(co * cin + ci) * 27 + t];
            }
        }
    }
    let mut bp = vec![0f32; nb * cb];
    if let Some(b) = bias {
        bp[..cout].copy_from_slice(b);
    }
    let offs = tap_offsets(plane, wp);
    // Positions per plane, rounded up to whole kernel steps; the slab has room for the
    // last step's reads past the last channel (at most `step + 2` floats).
    let len = (h * wp).div_ceil(kern.step) * kern.step;
    let cstride = 3 * plane;
    let slab_len = cin * cstride + kern.step + 2 * wp + 2;
    let out_len = nb * cb * len;
    let yp = SyncPtr(y.as_mut_ptr());
    (0..g.n * d).into_par_iter().for_each(|task| {
        let (n, z) = (task / d, task % d);
        let xn = &x[n * cin * sin..(n + 1) * cin * sin];
        with_scratch(slab_len + out_len, |buf| {
            let (slab, out) = buf.split_at_mut(slab_len);
            fill_slab(xn, [d, h, wd], z, cin, cin, slab);
            let p = Plane {
                x: slab.as_ptr(),
                cin,
                cstride,
                offs,
                w: wt.as_ptr(),
                nb,
                bias: bp.as_ptr(),
                out: out.as_mut_ptr(),
                len,
            };
            // SAFETY: `kernel_at` picked this kernel for a level the host runs; the slab is
            // `cin · cstride` floats plus more than `step + 2·wp + 2` (the reads past a
            // channel's last computed position, see `len`), `out` is `nb · cb · len`.
            unsafe { (kern.run)(&p) };
            for co in 0..cout {
                let src = &out[co * len..];
                // SAFETY: task (n, z) alone writes plane z of sample n, every channel.
                let dst = unsafe { yp.slice(((n * cout + co) * d + z) * h * wd, h * wd) };
                for (row, dst_row) in dst.chunks_exact_mut(wd).enumerate() {
                    dst_row.copy_from_slice(&src[row * wp..row * wp + wd]);
                }
            }
        });
    });
}

/// Slab offset of each tap `(kd, kh, kw)` (row-major) for padded planes of `plane` floats
/// and rows of `wp`.
fn tap_offsets(plane: usize, wp: usize) -> [usize; 27] {
    std::array::from_fn(|t| (t / 9) * plane + (t / 3 % 3) * wp + t % 3)
}

/// Copies planes `z − 1, z, z + 1` of every channel of `xn` (`[cin][d][h][w]`) into `slab`
/// as `[cin_p][3][h + 2][w + 2]` with a zero border (and zero planes outside the volume,
/// zero channels from `cin` to `cin_p`), then zeroes the tail after the last channel.
fn fill_slab(
    xn: &[f32],
    [d, h, w]: [usize; 3],
    z: usize,
    cin: usize,
    cin_p: usize,
    slab: &mut [f32],
) {
    let (hp, wp) = (h + 2, w + 2);
    let plane = hp * wp;
    let sin = d * h * w;
    let (body, tail) = slab.split_at_mut(cin_p * 3 * plane);
    tail.fill(0.0);
    let (real, extra) = body.split_at_mut(cin * 3 * plane);
    extra.fill(0.0);
    for (ci, chan) in real.chunks_exact_mut(3 * plane).enumerate() {
        for (j, dst) in chan.chunks_exact_mut(plane).enumerate() {
            let Some(src_z) = (z + j).checked_sub(1).filter(|&s| s < d) else {
                dst.fill(0.0);
                continue;
            };
            let src = &xn[ci * sin + src_z * h * w..][..h * w];
            dst[..wp].fill(0.0);
            dst[(hp - 1) * wp..].fill(0.0);
            for (r, row) in src.chunks_exact(w).enumerate() {
                let drow = &mut dst[(r + 1) * wp..(r + 2) * wp];
                drow[0] = 0.0;
                drow[1..=w].copy_from_slice(row);
                drow[w + 1] = 0.0;
            }
        }
    }
}

/// Weight gradient `dw[co, ci, t] = Σ_n Σ_o dy[n, co, o] · x_pad[n, ci, o + t]` for a
/// geometry [`kernel`] accepted: per output plane a slab as in [`forward`] and `dy` on the
/// same padded numbering (zero on the padding columns), reduced by the weight-gradient
/// microkernel; planes are summed in groups fixed by the shape, then the groups in order.
pub(crate) fn weight_grad(kern: Kernel, g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let [d, h, wd] = g.out_dims;
    let (cin, cout) = (g.cin, g.cout);
    let (hp, wp) = (h + 2, wd + 2);
    let plane = hp * wp;
    let sin = d * h * wd;
    assert_eq!(x.len(), g.n * cin * sin);
    assert_eq!(dy.len(), g.n * cout * sin);
    let (cin_b, cout_b) = (cin.div_ceil(kern.wci), cout.div_ceil(kern.wco));
    let (cin_p, cout_p) = (cin_b * kern.wci, cout_b * kern.wco);
    let offs = tap_offsets(plane, wp);
    let len = (h * wp).div_ceil(kern.lanes) * kern.lanes;
    let cstride = 3 * plane;
    let slab_len = cin_p * cstride + kern.lanes + 2 * wp + 2;
    let dy_len = cout_p * len;
    let acc_len = cout_p * cin_p * 27;
    let tasks = g.n * d;
    let partials: Vec<Vec<f32>> = super::group_bounds(tasks, 8)
        .into_par_iter()
        .map(|(t0, t1)| {
            let mut acc = vec![0f32; acc_len];
            with_scratch(slab_len + dy_len, |buf| {
                let (slab, dyp) = buf.split_at_mut(slab_len);
                for task in t0..t1 {
                    let (n, z) = (task / d, task % d);
                    fill_slab(
                        &x[n * cin * sin..][..cin * sin],
                        [d, h, wd],
                        z,
                        cin,
                        cin_p,
                        slab,
                    );
                    dyp.fill(0.0);
                    for co in 0..cout {
                        let src = &dy[((n * cout + co) * d + z) * h * wd..][..h * wd];
                        let dst = &mut dyp[co * len..];
                        for (row, s) in src.chunks_exact(wd).enumerate() {
                            dst[row * wp..row * wp + wd].copy_from_slice(s);
                        }
                    }
                    let p = WPlane {
                        x: slab.as_ptr(),
                        cstride,
                        offs,
                        cin_b,
                        dy: dyp.as_ptr(),
                        cout_b,
                        len,
                        dw: acc.as_mut_ptr(),
                    };
                    // SAFETY: `kernel_at` picked this kernel for a level the host runs; the
                    // slab holds `cin_p` channels plus more than `lanes + 2·wp + 2` floats
                    // (the reads past the last channel's last position), `dyp` is
                    // `cout_p · len` and `acc` `cout_p · cin_p · 27`.
                    unsafe { (kern.wrun)(&p) };
                }
            });
            acc
        })
        .collect();
    let summed = super::conv::sum_in_order(partials, acc_len);
    let mut dw = vec![0f32; cout * cin * 27];
    for co in 0..cout {
        for ci in 0..cin {
            dw[(co * cin + ci) * 27..][..27]
                .copy_from_slice(&summed[(co * cin_p + ci) * 27..][..27]);
        }
    }
    dw
}
