//! Volumes: NIfTI-1 read/write with the header validated before anything is allocated,
//! resampling onto a new spacing with SimpleITK's grid, CT/MR intensity normalization, and
//! synthetic MSD-layout phantom tasks.
//!
//! Axis order everywhere: voxel index (i, j, k) = (x, y, z) with x fastest, exactly as NIfTI
//! stores it; channel-major for multi-channel volumes. In row-major terms a volume is
//! `[C, Z, Y, X]`, which is candle's `[C, D, H, W]`.

mod geometry;
pub mod msd;
pub mod nifti;
pub mod normalize;
pub mod resample;
pub mod synth;

pub use crate::nifti::{
    NiftiError, ReadLimits, read_nifti, read_nifti_bytes, write_nifti, write_nifti_bytes,
};
pub use geometry::Geometry;

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
