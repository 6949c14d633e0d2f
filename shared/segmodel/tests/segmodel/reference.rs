//! Naive f64 reference implementations (plain loops, written from the definitions, sharing
//! no code with the crate), finite differences, and helpers.

use candle_core::{DType, Device, Result, Tensor};

/// SplitMix64: a deterministic stream of test values.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1), rounded to f32 so candle and the reference see the same values.
    pub fn uniform(&mut self) -> f64 {
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        (2.0 * u - 1.0) as f32 as f64
    }

    pub fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.uniform()).collect()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

pub fn tensor(data: &[f64], shape: &[usize], dev: &Device) -> Result<Tensor> {
    let v: Vec<f32> = data.iter().map(|&x| x as f32).collect();
    Tensor::from_vec(v, shape, dev)
}

pub fn values(t: &Tensor) -> Result<Vec<f64>> {
    t.to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()
}

/// Asserts `max |got − want| ≤ tol · (1 + max |want|)`.
#[track_caller]
pub fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = 1.0 + want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let (i, err) = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .enumerate()
        .fold((0, 0f64), |(bi, be), (i, e)| {
            if e > be || e.is_nan() {
                (i, e)
            } else {
                (bi, be)
            }
        });
    assert!(
        err <= tol * scale,
        "{what}: max |diff| {err:.3e} at {i} (got {}, want {}), tolerance {:.3e}",
        got[i],
        want[i],
        tol * scale
    );
}

/// Central finite differences of `f` at `x` (step `h`).
pub fn finite_diff(x: &[f64], h: f64, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            xp[i] = x[i] + h;
            let a = f(&xp);
            xp[i] = x[i] - h;
            let b = f(&xp);
            xp[i] = x[i];
            (a - b) / (2.0 * h)
        })
        .collect()
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Convolution geometry for the reference.
#[derive(Clone, Copy, Debug)]
pub struct Conv {
    pub n: usize,
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub dims: [usize; 3],
    pub pad: usize,
    pub stride: usize,
}

impl Conv {
    pub fn out_dims(&self) -> [usize; 3] {
        self.dims
            .map(|d| (d + 2 * self.pad - self.k) / self.stride + 1)
    }

    /// Calls `f(out_index, in_index, weight_index)` for every tap inside the input.
    fn taps(&self, mut f: impl FnMut(usize, usize, usize)) {
        let [d, h, w] = self.dims;
        let [od, oh, ow] = self.out_dims();
        let k = self.k;
        for n in 0..self.n {
            for co in 0..self.cout {
                for z in 0..od {
                    for y in 0..oh {
                        for x in 0..ow {
                            let o = (((n * self.cout + co) * od + z) * oh + y) * ow + x;
                            for ci in 0..self.cin {
                                for a in 0..k {
                                    for b in 0..k {
                                        for c in 0..k {
                                            let iz =
                                                (z * self.stride + a) as isize - self.pad as isize;
                                            let iy =
                                                (y * self.stride + b) as isize - self.pad as isize;
                                            let ix =
                                                (x * self.stride + c) as isize - self.pad as isize;
                                            if iz < 0 || iy < 0 || ix < 0 {
                                                continue;
                                            }
                                            let (iz, iy, ix) =
                                                (iz as usize, iy as usize, ix as usize);
                                            if iz >= d || iy >= h || ix >= w {
                                                continue;
                                            }
                                            let i =
                                                (((n * self.cin + ci) * d + iz) * h + iy) * w + ix;
                                            let wi =
                                                (((co * self.cin + ci) * k + a) * k + b) * k + c;
                                            f(o, i, wi);
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    pub fn forward(&self, x: &[f64], w: &[f64], b: Option<&[f64]>) -> Vec<f64> {
        let [od, oh, ow] = self.out_dims();
        let so = od * oh * ow;
        let mut y = vec![0.0; self.n * self.cout * so];
        if let Some(b) = b {
            for (i, v) in y.iter_mut().enumerate() {
                *v = b[(i / so) % self.cout];
            }
        }
        self.taps(|o, i, wi| y[o] += w[wi] * x[i]);
        y
    }

    /// Analytic gradients of `Σ y ⊙ g`: (dx, dw, db).
    pub fn backward(&self, x: &[f64], w: &[f64], g: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let [od, oh, ow] = self.out_dims();
        let so = od * oh * ow;
        let mut dx = vec![0.0; x.len()];
        let mut dw = vec![0.0; w.len()];
        let mut db = vec![0.0; self.cout];
        self.taps(|o, i, wi| {
            dx[i] += w[wi] * g[o];
            dw[wi] += x[i] * g[o];
        });
        for (o, gv) in g.iter().enumerate() {
            db[(o / so) % self.cout] += gv;
        }
        (dx, dw, db)
    }
}

/// 2×2×2 stride-2 max-pool over `[planes, d, h, w]` (floor).
pub fn max_pool(x: &[f64], planes: usize, [d, h, w]: [usize; 3]) -> Vec<f64> {
    let (od, oh, ow) = (d / 2, h / 2, w / 2);
    let mut y = Vec::with_capacity(planes * od * oh * ow);
    for p in 0..planes {
        for z in 0..od {
            for yy in 0..oh {
                for xx in 0..ow {
                    let mut m = f64::NEG_INFINITY;
                    for a in 0..2 {
                        for b in 0..2 {
                            for c in 0..2 {
                                let i = ((p * d + 2 * z + a) * h + 2 * yy + b) * w + 2 * xx + c;
                                m = m.max(x[i]);
                            }
                        }
                    }
                    y.push(m);
                }
            }
        }
    }
    y
}

/// Transposed conv, kernel 2, stride 2: `x [n, cin, d, h, w]`, `w [cin, cout, 2, 2, 2]`.
pub fn up2(
    x: &[f64],
    w: &[f64],
    b: Option<&[f64]>,
    n: usize,
    cin: usize,
    cout: usize,
    [d, h, wd]: [usize; 3],
) -> Vec<f64> {
    let (od, oh, ow) = (2 * d, 2 * h, 2 * wd);
    let mut y = vec![0.0; n * cout * od * oh * ow];
    for bn in 0..n {
        for co in 0..cout {
            for z in 0..od {
                for yy in 0..oh {
                    for xx in 0..ow {
                        let o = (((bn * cout + co) * od + z) * oh + yy) * ow + xx;
                        let mut acc = b.map_or(0.0, |b| b[co]);
                        for ci in 0..cin {
                            let i = (((bn * cin + ci) * d + z / 2) * h + yy / 2) * wd + xx / 2;
                            let wi = (((ci * cout + co) * 2 + z % 2) * 2 + yy % 2) * 2 + xx % 2;
                            acc += x[i] * w[wi];
                        }
                        y[o] = acc;
                    }
                }
            }
        }
    }
    y
}

/// Instance norm over `[n, c, s]` with affine params and optional leaky slope.
#[allow(clippy::too_many_arguments)]
pub fn instance_norm(
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    n: usize,
    c: usize,
    s: usize,
    eps: f64,
    slope: Option<f64>,
) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for p in 0..n * c {
        let ch = p % c;
        let xp = &x[p * s..(p + 1) * s];
        let mean = xp.iter().sum::<f64>() / s as f64;
        let var = xp.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / s as f64;
        for i in 0..s {
            let z = gamma[ch] * (xp[i] - mean) / (var + eps).sqrt() + beta[ch];
            y[p * s + i] = match slope {
                Some(a) if z <= 0.0 => a * z,
                _ => z,
            };
        }
    }
    y
}

/// Softmax soft Dice (+ CE) loss over `[b, k, s]` logits and `[b, s]` labels.
#[allow(clippy::too_many_arguments)]
pub fn dice_loss(
    logits: &[f64],
    labels: &[usize],
    b: usize,
    k: usize,
    s: usize,
    include_bg: bool,
    smooth: f64,
    ce_weight: f64,
) -> f64 {
    let mut inter = vec![0.0; k];
    let mut ps = vec![0.0; k];
    let mut ts = vec![0.0; k];
    let mut nll = 0.0;
    for bi in 0..b {
        for i in 0..s {
            let l = |c: usize| logits[(bi * k + c) * s + i];
            let z: f64 = (0..k).map(|c| l(c).exp()).sum();
            let t = labels[bi * s + i];
            for c in 0..k {
                let p = l(c).exp() / z;
                ps[c] += p;
                if c == t {
                    inter[c] += p;
                    ts[c] += 1.0;
                }
            }
            nll -= (l(t).exp() / z).ln();
        }
    }
    let first = if include_bg { 0 } else { 1 };
    let dice: Vec<f64> = (first..k)
        .map(|c| (2.0 * inter[c] + smooth) / (ps[c] + ts[c] + smooth))
        .collect();
    1.0 - dice.iter().sum::<f64>() / dice.len() as f64 + ce_weight * nll / (b * s) as f64
}

/// Analytic gradients of `Σ up2(x, w, b) ⊙ g`: (dx, dw, db).
pub fn up2_backward(
    x: &[f64],
    w: &[f64],
    g: &[f64],
    n: usize,
    cin: usize,
    cout: usize,
    [d, h, wd]: [usize; 3],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (od, oh, ow) = (2 * d, 2 * h, 2 * wd);
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; w.len()];
    let mut db = vec![0.0; cout];
    for bn in 0..n {
        for co in 0..cout {
            for z in 0..od {
                for yy in 0..oh {
                    for xx in 0..ow {
                        let gv = g[(((bn * cout + co) * od + z) * oh + yy) * ow + xx];
                        db[co] += gv;
                        for ci in 0..cin {
                            let i = (((bn * cin + ci) * d + z / 2) * h + yy / 2) * wd + xx / 2;
                            let wi = (((ci * cout + co) * 2 + z % 2) * 2 + yy % 2) * 2 + xx % 2;
                            dx[i] += w[wi] * gv;
                            dw[wi] += x[i] * gv;
                        }
                    }
                }
            }
        }
    }
    (dx, dw, db)
}
