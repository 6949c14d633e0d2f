//! Volumes: NIfTI-1 read/write with the header validated before anything is allocated,
//! resampling onto a new spacing with SimpleITK's grid, CT/MR intensity normalization, and
//! synthetic MSD-layout phantom tasks.
//!
//! Axis order everywhere: voxel index (i, j, k) = (x, y, z) with x fastest, exactly as NIfTI
//! stores it; channel-major for multi-channel volumes. In row-major terms a volume is
//! `[C, Z, Y, X]`, which is candle's `[C, D, H, W]`.

pub mod msd;
pub mod nifti_io;
pub mod normalize;
pub mod resample;
pub mod synth;

pub use nifti_io::{
    NiftiError, ReadLimits, read_nifti, read_nifti_bytes, write_nifti, write_nifti_bytes,
};

/// A 3D (optionally multi-channel) voxel grid with its geometry.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume<T> {
    /// `channels * dims[0] * dims[1] * dims[2]` values, x fastest, then y, z, channel.
    pub data: Vec<T>,
    /// Voxels along x, y, z.
    pub dims: [usize; 3],
    pub channels: usize,
    /// Geometry in NIfTI's RAS+ world frame.
    pub geometry: Geometry,
}

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

impl<T: Copy> Volume<T> {
    pub fn new(data: Vec<T>, dims: [usize; 3], channels: usize, geometry: Geometry) -> Self {
        assert_eq!(
            data.len(),
            channels * dims[0] * dims[1] * dims[2],
            "volume data length does not match dims × channels"
        );
        Self {
            data,
            dims,
            channels,
            geometry,
        }
    }

    /// Voxels per channel.
    pub fn voxels(&self) -> usize {
        self.dims[0] * self.dims[1] * self.dims[2]
    }

    /// The data of one channel.
    pub fn channel(&self, c: usize) -> &[T] {
        let n = self.voxels();
        &self.data[c * n..(c + 1) * n]
    }

    pub fn channel_mut(&mut self, c: usize) -> &mut [T] {
        let n = self.voxels();
        &mut self.data[c * n..(c + 1) * n]
    }

    /// Linear index of voxel (x, y, z) in channel 0.
    #[inline]
    pub fn index(&self, x: usize, y: usize, z: usize) -> usize {
        x + self.dims[0] * (y + self.dims[1] * z)
    }

    pub fn map<U: Copy>(&self, f: impl Fn(T) -> U) -> Volume<U> {
        Volume {
            data: self.data.iter().map(|&v| f(v)).collect(),
            dims: self.dims,
            channels: self.channels,
            geometry: self.geometry,
        }
    }
}
