//! Voxel-to-world geometry, and the NIfTI quaternion form of its rotation (qform), computed
//! as nifti_clib computes it so that every reader derives the same affine from our files.

/// Voxel-to-world mapping: `world = origin + direction · diag(spacing) · index`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometry {
    /// mm per voxel along each voxel axis (always > 0).
    pub spacing: [f64; 3],
    /// World position of voxel (0, 0, 0), mm.
    pub origin: [f64; 3],
    /// Unit direction of each voxel axis: `direction[row][col]`, column c is axis c.
    pub direction: [[f64; 3]; 3],
}

impl Geometry {
    pub fn identity(spacing: [f64; 3]) -> Self {
        Self {
            spacing,
            origin: [0.0; 3],
            direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        }
    }

    /// The 4×4 affine (NIfTI sform rows) of this geometry.
    pub fn affine(&self) -> [[f64; 4]; 4] {
        let mut a = [[0.0; 4]; 4];
        for (r, row) in a.iter_mut().take(3).enumerate() {
            for (c, v) in row.iter_mut().take(3).enumerate() {
                *v = self.direction[r][c] * self.spacing[c];
            }
            row[3] = self.origin[r];
        }
        a[3][3] = 1.0;
        a
    }

    /// Splits an affine into spacing (column norms), unit directions and origin.
    /// Returns `None` when a column has zero or non-finite length.
    pub fn from_affine(a: &[[f64; 4]; 4]) -> Option<Self> {
        let mut spacing = [0.0; 3];
        let mut direction = [[0.0; 3]; 3];
        for c in 0..3 {
            let n = (0..3).map(|r| a[r][c] * a[r][c]).sum::<f64>().sqrt();
            if !n.is_finite() || n <= 0.0 {
                return None;
            }
            spacing[c] = n;
            for r in 0..3 {
                direction[r][c] = a[r][c] / n;
            }
        }
        let origin = [a[0][3], a[1][3], a[2][3]];
        if origin.iter().any(|v| !v.is_finite()) {
            return None;
        }
        Some(Self {
            spacing,
            origin,
            direction,
        })
    }

    /// True when both geometries describe the same grid within `tol` mm.
    pub fn approx_eq(&self, other: &Geometry, tol: f64) -> bool {
        let a = self.affine();
        let b = other.affine();
        (0..3).all(|r| (0..4).all(|c| (a[r][c] - b[r][c]).abs() <= tol))
    }
}

pub(crate) fn det3(m: &[[f64; 3]; 3]) -> f64 {
    m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
}

/// nifti_clib `nifti_quatern_to_mat44`.
pub(crate) fn quatern_to_affine(
    bcd: [f64; 3],
    offset: [f64; 3],
    spacing: [f64; 3],
    qfac: f64,
) -> [[f64; 4]; 4] {
    let [mut b, mut c, mut d] = bcd;
    let mut a = 1.0 - (b * b + c * c + d * d);
    if a < 1e-7 {
        // Special case: a 180° rotation; renormalise (b, c, d).
        let n = 1.0 / (b * b + c * c + d * d).sqrt();
        b *= n;
        c *= n;
        d *= n;
        a = 0.0;
    } else {
        a = a.sqrt();
    }
    let [xd, yd, zd] = [spacing[0], spacing[1], spacing[2] * qfac];
    let r = [
        [
            a * a + b * b - c * c - d * d,
            2.0 * (b * c - a * d),
            2.0 * (b * d + a * c),
        ],
        [
            2.0 * (b * c + a * d),
            a * a + c * c - b * b - d * d,
            2.0 * (c * d - a * b),
        ],
        [
            2.0 * (b * d - a * c),
            2.0 * (c * d + a * b),
            a * a + d * d - c * c - b * b,
        ],
    ];
    let mut m = [[0f64; 4]; 4];
    for row in 0..3 {
        m[row][0] = r[row][0] * xd;
        m[row][1] = r[row][1] * yd;
        m[row][2] = r[row][2] * zd;
        m[row][3] = offset[row];
    }
    m[3][3] = 1.0;
    m
}

/// nifti_clib `nifti_mat44_to_quatern` on the direction matrix: the nearest rotation (polar
/// decomposition), its third column negated when the axes are left-handed (qfac = -1).
/// Returns `([b, c, d], qfac)`.
pub(crate) fn affine_to_quatern(direction: &[[f64; 3]; 3]) -> ([f64; 3], f64) {
    let mut p = polar(direction);
    let qfac = if det3(&p) > 0.0 {
        1.0
    } else {
        for row in p.iter_mut() {
            row[2] = -row[2];
        }
        -1.0
    };
    let [[r11, r12, r13], [r21, r22, r23], [r31, r32, r33]] = p;
    let (mut a, mut b, mut c, mut d);
    a = r11 + r22 + r33 + 1.0;
    if a > 0.5 {
        a = 0.5 * a.sqrt();
        b = 0.25 * (r32 - r23) / a;
        c = 0.25 * (r13 - r31) / a;
        d = 0.25 * (r21 - r12) / a;
    } else {
        let xd = 1.0 + r11 - (r22 + r33);
        let yd = 1.0 + r22 - (r11 + r33);
        let zd = 1.0 + r33 - (r11 + r22);
        if xd > 1.0 {
            b = 0.5 * xd.sqrt();
            c = 0.25 * (r12 + r21) / b;
            d = 0.25 * (r13 + r31) / b;
            a = 0.25 * (r32 - r23) / b;
        } else if yd > 1.0 {
            c = 0.5 * yd.sqrt();
            b = 0.25 * (r12 + r21) / c;
            d = 0.25 * (r23 + r32) / c;
            a = 0.25 * (r13 - r31) / c;
        } else {
            d = 0.5 * zd.sqrt();
            b = 0.25 * (r13 + r31) / d;
            c = 0.25 * (r23 + r32) / d;
            a = 0.25 * (r21 - r12) / d;
        }
        if a < 0.0 {
            b = -b;
            c = -c;
            d = -d;
        }
    }
    ([b, c, d], qfac)
}

/// Nearest orthogonal matrix (nifti_clib `nifti_mat33_polar`: scaled Newton iteration).
fn polar(m: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let row_norm = |m: &[[f64; 3]; 3]| {
        (0..3)
            .map(|r| m[r].iter().map(|v| v.abs()).sum::<f64>())
            .fold(0.0, f64::max)
    };
    let col_norm = |m: &[[f64; 3]; 3]| {
        (0..3)
            .map(|c| (0..3).map(|r| m[r][c].abs()).sum::<f64>())
            .fold(0.0, f64::max)
    };
    let mut x = *m;
    let mut dif = 1.0;
    for _ in 0..100 {
        let Some(y) = inverse3(&x) else {
            return x;
        };
        let (gam, gmi) = if dif > 0.3 {
            let alp = (row_norm(&x) * col_norm(&x)).sqrt();
            let bet = (row_norm(&y) * col_norm(&y)).sqrt();
            let gam = (bet / alp).sqrt();
            (gam, 1.0 / gam)
        } else {
            (1.0, 1.0)
        };
        let mut z = [[0f64; 3]; 3];
        dif = 0.0;
        for r in 0..3 {
            for c in 0..3 {
                z[r][c] = 0.5 * (gam * x[r][c] + gmi * y[c][r]);
                dif += (z[r][c] - x[r][c]).abs();
            }
        }
        x = z;
        if dif < 1e-12 {
            break;
        }
    }
    x
}

fn inverse3(m: &[[f64; 3]; 3]) -> Option<[[f64; 3]; 3]> {
    let det = det3(m);
    if det == 0.0 || !det.is_finite() {
        return None;
    }
    // inv[r][c] = cofactor(c, r) / det; cyclic indices carry the cofactor's sign.
    Some(std::array::from_fn(|r| {
        std::array::from_fn(|c| {
            let (r1, r2) = ((c + 1) % 3, (c + 2) % 3);
            let (c1, c2) = ((r + 1) % 3, (r + 2) % 3);
            (m[r1][c1] * m[r2][c2] - m[r1][c2] * m[r2][c1]) / det
        })
    }))
}
