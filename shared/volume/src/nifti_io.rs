//! NIfTI-1 reading and writing. (Being written: see the helper brief.)

use std::path::Path;

use crate::Volume;

/// Bounds checked against the header before any voxel buffer is allocated.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// Voxels × channels.
    pub max_voxels: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self {
            max_voxels: 1024 * 1024 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NiftiError {
    #[error("{file}: {problem}")]
    Invalid { file: String, problem: String },
}

/// A decoded image: voxel values with `scl_slope`/`scl_inter` applied, as f32.
#[derive(Debug, Clone)]
pub struct NiftiImage {
    pub volume: Volume<f32>,
    /// NIfTI datatype code of the stored data (2 = uint8, 4 = int16, 16 = float32, ...).
    pub datatype: i16,
}

pub fn read_nifti(path: &Path, limits: &ReadLimits) -> Result<NiftiImage, NiftiError> {
    let _ = (path, limits);
    todo!()
}

pub fn read_nifti_bytes(
    bytes: &[u8],
    name: &str,
    limits: &ReadLimits,
) -> Result<NiftiImage, NiftiError> {
    let _ = (bytes, name, limits);
    todo!()
}

/// Element types that can be written.
pub trait NiftiElem: Copy + Send + Sync + 'static {
    const DATATYPE: i16;
    fn write_le(self, out: &mut Vec<u8>);
}

pub fn write_nifti_bytes<T: NiftiElem>(volume: &Volume<T>, gzip: bool) -> Vec<u8> {
    let _ = (volume, gzip);
    todo!()
}

pub fn write_nifti<T: NiftiElem>(path: &Path, volume: &Volume<T>) -> Result<(), NiftiError> {
    let _ = (path, volume);
    todo!()
}
