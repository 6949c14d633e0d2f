//! NIfTI-1 reading and writing, single-file (`.nii`, `.nii.gz`).
//!
//! The reader parses the 348-byte header itself instead of handing bytes to the `nifti`
//! crate: that crate does not check `sizeof_hdr`, reads `dim` as `u16` (so negative extents
//! become huge ones), panics when `bitpix` disagrees with `datatype`, and turns every voxel
//! into NaN on a NaN `scl_slope` (docs/reliability.md, "Why a header parser of our own").
//! Every field we rely on is checked, with an error that names the file and the field, and
//! only then is a buffer sized, from the header and [`ReadLimits`]; decompression is bounded
//! by the same numbers, so a gzip bomb or a header claiming 30000³ voxels costs nothing.
//! The `nifti` crate is kept as an independent reader of what we write (tests).
//!
//! World coordinates stay in NIfTI's RAS+ frame: sform if `sform_code > 0`, else qform if
//! `qform_code > 0`, else `diag(pixdim)` with the origin at 0 (nifti_clib's method 1).

mod decode;
mod header;
mod write;

use std::io;

use crate::Volume;

pub use decode::{
    count_non_finite, read_nifti, read_nifti_bytes, read_nifti_labels, read_nifti_labels_bytes,
};
pub use header::{DataType, GeometrySource, Header, SpatialFields, parse_header};
pub use write::{
    NiftiElem, NiftiWriter, try_write_nifti_bytes, write_nifti, write_nifti_bytes,
    write_nifti_like, write_nifti_like_bytes,
};

/// Size of a NIfTI-1 header.
pub const HEADER_SIZE: usize = 348;
/// Offset of the voxel data in a single-file NIfTI-1 without extensions.
pub const MIN_VOX_OFFSET: usize = 352;
/// Extensions (header bytes between 352 and `vox_offset`) are skipped, never stored, but
/// on a gzip stream skipping still means decompressing: bound that work too.
pub const MAX_EXTENSION_BYTES: u64 = 256 << 20;
/// Decompressed bytes a gzip stream may hold after the voxel data. They are inflated (so the
/// CRC is always checked) but never stored; a stream that goes on longer is refused, which
/// bounds the work a gzip bomb hidden behind a small valid image can cause.
pub const MAX_GZIP_TRAILING_BYTES: u64 = 16 << 20;
/// Largest extent a NIfTI-1 `dim` entry can hold.
pub const MAX_DIM: usize = i16::MAX as usize;

/// Voxels per rayon task when converting; volumes smaller than this convert on one thread.
const PAR_CHUNK: usize = 1 << 16;
/// Bytes decoded per step when streaming (a multiple of every element size).
const STREAM_CHUNK: usize = 1 << 20;

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

/// Every message starts with the file name (the path, or the name given for bytes).
#[derive(Debug, thiserror::Error)]
pub enum NiftiError {
    /// The file could not be opened, read or written (the only variant that may be transient).
    #[error("{file}: {op}: {source}")]
    Io {
        file: String,
        op: &'static str,
        source: io::Error,
    },
    /// A header field holds a value we refuse.
    #[error("{file}: {field} = {value}, expected {expected}")]
    Field {
        file: String,
        field: String,
        value: String,
        expected: String,
    },
    /// A valid NIfTI variant or feature this reader does not handle.
    #[error("{file}: {problem}")]
    Unsupported { file: String, problem: String },
    /// The header claims more voxels than [`ReadLimits::max_voxels`].
    #[error(
        "{file}: dim[1..4] = {dims}: volume of {voxels} voxels exceeds the limit of {limit} \
         (ReadLimits::max_voxels)"
    )]
    TooLarge {
        file: String,
        /// The extents as written, e.g. `2048×2048×2560×1`.
        dims: String,
        voxels: u64,
        limit: usize,
    },
    /// The data ends before the header says it should.
    #[error("{file}: truncated: expected {expected} bytes of {what}, found {found}")]
    Truncated {
        file: String,
        what: &'static str,
        expected: u64,
        found: u64,
    },
    /// Anything else that makes the bytes unusable (not gzip, corrupt stream, singular affine).
    #[error("{file}: {problem}")]
    Invalid { file: String, problem: String },
}

impl NiftiError {
    /// The file (or name) the error is about.
    pub fn file(&self) -> &str {
        match self {
            Self::Io { file, .. }
            | Self::Field { file, .. }
            | Self::Unsupported { file, .. }
            | Self::TooLarge { file, .. }
            | Self::Truncated { file, .. }
            | Self::Invalid { file, .. } => file,
        }
    }

    /// True for I/O failures (worth a retry); every other variant is about the bytes
    /// themselves and will fail the same way again.
    pub fn is_io(&self) -> bool {
        matches!(self, Self::Io { .. })
    }
}

/// A decoded image: voxel values with `scl_slope`/`scl_inter` applied, as f32 (images) or
/// u8 (label maps, [`read_nifti_labels`]).
#[derive(Debug, Clone)]
pub struct NiftiImage<T = f32> {
    pub volume: Volume<T>,
    /// NIfTI datatype code of the stored data (2 = uint8, 4 = int16, 16 = float32, ...).
    pub datatype: i16,
    /// The header's spatial fields as stored.
    pub spatial: SpatialFields,
}

fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

fn ends_with_gz(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with(".gz")
}

fn not_gzip(file: &str) -> NiftiError {
    NiftiError::Invalid {
        file: file.to_owned(),
        problem: "not gzip data, although the name ends in .gz".to_owned(),
    }
}

fn field(
    name: &str,
    field: impl Into<String>,
    value: impl ToString,
    expected: impl Into<String>,
) -> NiftiError {
    NiftiError::Field {
        file: name.to_owned(),
        field: field.into(),
        value: value.to_string(),
        expected: expected.into(),
    }
}

#[cfg(test)]
mod fixtures {
    //! Hand-built headers and the geometries the tests of every part share.

    use std::io::Write;

    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::header::*;
    use super::*;
    use crate::Geometry;

    /// A NIfTI-1 header built field by field (in either byte order), then voxel bytes.
    pub(super) struct Raw {
        pub(super) big_endian: bool,
        pub(super) bytes: Vec<u8>,
    }

    impl Raw {
        /// Valid single-file header: `dims` give dim[0] and dim[1..], pixdim 1, no transform.
        pub(super) fn new(dims: &[i16], datatype: i16, bitpix: i16) -> Self {
            Self::with_order(dims, datatype, bitpix, false)
        }

        pub(super) fn with_order(
            dims: &[i16],
            datatype: i16,
            bitpix: i16,
            big_endian: bool,
        ) -> Self {
            let mut raw = Self {
                big_endian,
                bytes: vec![0; MIN_VOX_OFFSET],
            };
            raw.i32(0, 348);
            raw.i16(OFF_DIM, dims.len() as i16);
            for i in 1..8 {
                raw.i16(OFF_DIM + 2 * i, dims.get(i - 1).copied().unwrap_or(1));
            }
            raw.i16(OFF_DATATYPE, datatype).i16(OFF_BITPIX, bitpix);
            for i in 0..8 {
                raw.f32(OFF_PIXDIM + 4 * i, 1.0);
            }
            raw.f32(OFF_VOX_OFFSET, 352.0);
            raw.bytes[OFF_MAGIC..OFF_MAGIC + 4].copy_from_slice(b"n+1\0");
            raw
        }

        pub(super) fn put(&mut self, offset: usize, mut b: Vec<u8>) -> &mut Self {
            if self.big_endian {
                b.reverse();
            }
            self.bytes[offset..offset + b.len()].copy_from_slice(&b);
            self
        }
        pub(super) fn i16(&mut self, offset: usize, v: i16) -> &mut Self {
            self.put(offset, v.to_le_bytes().to_vec())
        }
        pub(super) fn i32(&mut self, offset: usize, v: i32) -> &mut Self {
            self.put(offset, v.to_le_bytes().to_vec())
        }
        pub(super) fn f32(&mut self, offset: usize, v: f32) -> &mut Self {
            self.put(offset, v.to_le_bytes().to_vec())
        }
        pub(super) fn with_data(&self, data: &[u8]) -> Vec<u8> {
            let mut out = self.bytes.clone();
            out.extend_from_slice(data);
            out
        }
    }

    pub(super) fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    pub(super) fn read(bytes: &[u8], name: &str) -> NiftiImage {
        read_nifti_bytes(bytes, name, &ReadLimits::default())
            .unwrap_or_else(|e| panic!("{name} should read: {e}"))
    }

    /// Asserts that reading fails with a message naming the file and containing `needle`.
    pub(super) fn assert_err_with(
        bytes: &[u8],
        name: &str,
        limits: &ReadLimits,
        needle: &str,
    ) -> NiftiError {
        let e = read_nifti_bytes(bytes, name, limits).expect_err(needle);
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("{name}: ")), "{msg}");
        assert!(msg.contains(needle), "expected {needle:?} in {msg:?}");
        assert_eq!(e.file(), name);
        assert!(!e.is_io(), "{msg}");
        e
    }

    pub(super) fn assert_err(bytes: &[u8], name: &str, needle: &str) -> NiftiError {
        assert_err_with(bytes, name, &ReadLimits::default(), needle)
    }

    pub(super) fn rotation(ax: f64, az: f64) -> [[f64; 3]; 3] {
        let (sx, cx) = ax.to_radians().sin_cos();
        let (sz, cz) = az.to_radians().sin_cos();
        let rx = [[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]];
        let rz = [[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]];
        let mut m = [[0.0; 3]; 3];
        for r in 0..3 {
            for c in 0..3 {
                m[r][c] = (0..3).map(|k| rz[r][k] * rx[k][c]).sum();
            }
        }
        m
    }

    /// Non-identity geometries: left-handed (flipped y) rotated 30°; right-handed 180° about
    /// z (the LPS-like flip, quaternion's small-trace branch); a generic left-handed rotation.
    pub(super) fn geometries() -> Vec<Geometry> {
        let c = 30f64.to_radians().cos();
        let s = 30f64.to_radians().sin();
        let mut generic = rotation(25.0, -70.0);
        for row in generic.iter_mut() {
            row[2] = -row[2];
        }
        vec![
            Geometry {
                spacing: [0.7, 1.3, 2.5],
                origin: [10.5, -20.25, 33.0],
                direction: [[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, 1.0]],
            },
            Geometry {
                spacing: [0.8, 0.8, 3.0],
                origin: [-100.0, 120.5, -7.75],
                direction: [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]],
            },
            Geometry {
                spacing: [1.5, 0.5, 2.0],
                origin: [1.0, 2.0, 3.0],
                direction: generic,
            },
        ]
    }

    pub(super) fn int16_file(slope: f32, inter: f32) -> Vec<u8> {
        let mut raw = Raw::new(&[4, 1, 1], 4, 16);
        raw.f32(OFF_SCL_SLOPE, slope).f32(OFF_SCL_INTER, inter);
        let data: Vec<u8> = [0i16, 1, 2, -3]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        raw.with_data(&data)
    }
}
