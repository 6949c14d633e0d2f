//! The 348-byte NIfTI-1 header: field offsets, validation, and the geometry it describes.

use super::{HEADER_SIZE, MAX_EXTENSION_BYTES, MIN_VOX_OFFSET, NiftiError, ReadLimits, field};
use crate::Geometry;
use crate::geometry::{det3, quatern_to_affine};

/// Stored voxel types the reader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    U8,
    I8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
}

impl DataType {
    pub fn from_code(code: i16) -> Option<Self> {
        Some(match code {
            2 => Self::U8,
            256 => Self::I8,
            4 => Self::I16,
            512 => Self::U16,
            8 => Self::I32,
            768 => Self::U32,
            1024 => Self::I64,
            1280 => Self::U64,
            16 => Self::F32,
            64 => Self::F64,
            _ => return None,
        })
    }

    pub fn code(self) -> i16 {
        match self {
            Self::U8 => 2,
            Self::I8 => 256,
            Self::I16 => 4,
            Self::U16 => 512,
            Self::I32 => 8,
            Self::U32 => 768,
            Self::I64 => 1024,
            Self::U64 => 1280,
            Self::F32 => 16,
            Self::F64 => 64,
        }
    }

    /// Bytes per voxel.
    pub fn size(self) -> usize {
        match self {
            Self::U8 | Self::I8 => 1,
            Self::I16 | Self::U16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::I64 | Self::U64 | Self::F64 => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::U8 => "uint8",
            Self::I8 => "int8",
            Self::I16 => "int16",
            Self::U16 => "uint16",
            Self::I32 => "int32",
            Self::U32 => "uint32",
            Self::I64 => "int64",
            Self::U64 => "uint64",
            Self::F32 => "float32",
            Self::F64 => "float64",
        }
    }
}

/// Names of the NIfTI-1 codes we refuse, for the error message.
fn unsupported_datatype_name(code: i16) -> Option<&'static str> {
    Some(match code {
        0 => "unknown",
        1 => "binary",
        32 => "complex64",
        128 => "rgb24",
        1536 => "float128",
        1792 => "complex128",
        2048 => "complex256",
        2304 => "rgba32",
        _ => return None,
    })
}

/// Where the geometry of a file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeometrySource {
    Sform,
    Qform,
    /// Neither transform was set: `diag(pixdim)`, origin 0.
    Pixdim,
}

/// A validated header: everything needed to size buffers and decode the voxels.
#[derive(Debug, Clone)]
pub struct Header {
    /// Voxels along x, y, z (missing dimensions are 1).
    pub dims: [usize; 3],
    /// `dim[4]` (1 when absent).
    pub channels: usize,
    pub datatype: DataType,
    pub big_endian: bool,
    /// Byte offset of the voxel data.
    pub vox_offset: usize,
    /// `(slope, intercept)` to apply, `None` when the stored values are the values.
    pub scaling: Option<(f64, f64)>,
    pub geometry: Geometry,
    pub geometry_source: GeometrySource,
    /// The spatial fields as stored, to write a derived image (a mask) on the same grid with
    /// the same header transforms ([`super::write_nifti_like`]).
    pub spatial: SpatialFields,
}

/// The header fields that place voxels in the world, exactly as the file stores them (in
/// native byte order): both transform codes, the qform, the sform, `pixdim[0..4]` (qfac and
/// spacing) and the units. A viewer overlays two files whose fields are equal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpatialFields {
    pub qform_code: i16,
    pub sform_code: i16,
    /// `pixdim[0]` (qfac) and `pixdim[1..4]`.
    pub pixdim: [f32; 4],
    /// `quatern_b/c/d`, `qoffset_x/y/z`.
    pub quatern: [f32; 6],
    /// `srow_x`, `srow_y`, `srow_z`.
    pub srow: [f32; 12],
    pub xyzt_units: u8,
}

impl Header {
    /// Voxels × channels.
    pub fn values(&self) -> usize {
        self.dims.iter().product::<usize>() * self.channels
    }

    /// Bytes of voxel data after `vox_offset`.
    pub fn data_bytes(&self) -> usize {
        self.values() * self.datatype.size()
    }
}

/// Typed reads at fixed offsets of the header, in the file's byte order.
struct Fields<'a> {
    raw: &'a [u8; HEADER_SIZE],
    big_endian: bool,
}

impl Fields<'_> {
    fn bytes<const N: usize>(&self, offset: usize) -> [u8; N] {
        let mut b = [0u8; N];
        b.copy_from_slice(&self.raw[offset..offset + N]);
        if self.big_endian {
            b.reverse();
        }
        b
    }
    fn i16(&self, offset: usize) -> i16 {
        i16::from_le_bytes(self.bytes(offset))
    }
    fn f32(&self, offset: usize) -> f32 {
        f32::from_le_bytes(self.bytes(offset))
    }
}

// Offsets of the NIfTI-1 header fields we read.
pub(super) const OFF_DIM: usize = 40;
pub(super) const OFF_DATATYPE: usize = 70;
pub(super) const OFF_BITPIX: usize = 72;
pub(super) const OFF_PIXDIM: usize = 76;
pub(super) const OFF_VOX_OFFSET: usize = 108;
pub(super) const OFF_SCL_SLOPE: usize = 112;
pub(super) const OFF_SCL_INTER: usize = 116;
pub(super) const OFF_XYZT_UNITS: usize = 123;
pub(super) const OFF_DESCRIP: usize = 148;
pub(super) const OFF_QFORM_CODE: usize = 252;
pub(super) const OFF_SFORM_CODE: usize = 254;
pub(super) const OFF_QUATERN: usize = 256;
pub(super) const OFF_QOFFSET: usize = 268;
pub(super) const OFF_SROW: usize = 280;
pub(super) const OFF_MAGIC: usize = 344;

/// Validates a NIfTI-1 header and derives everything needed to decode the data. Pure: it
/// allocates nothing proportional to what the header claims.
pub fn parse_header(
    raw: &[u8; HEADER_SIZE],
    name: &str,
    limits: &ReadLimits,
) -> Result<Header, NiftiError> {
    // sizeof_hdr decides the byte order: 348 read one way or the other.
    let size_le = i32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let size_be = i32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let big_endian = match (size_le, size_be) {
        (348, _) => false,
        (_, 348) => true,
        (540, _) | (_, 540) => {
            return Err(NiftiError::Unsupported {
                file: name.to_owned(),
                problem: "NIfTI-2 is not supported (sizeof_hdr = 540)".to_owned(),
            });
        }
        _ => {
            return Err(field(
                name,
                "sizeof_hdr",
                size_le,
                "348 (not a NIfTI-1 file)",
            ));
        }
    };
    let f = Fields { raw, big_endian };

    let magic = &raw[OFF_MAGIC..OFF_MAGIC + 4];
    if magic == b"ni1\0" {
        return Err(NiftiError::Unsupported {
            file: name.to_owned(),
            problem: "pair .hdr/.img files are not supported (magic \"ni1\"); \
                      convert to a single .nii"
                .to_owned(),
        });
    }
    if magic != b"n+1\0" {
        return Err(field(
            name,
            "magic",
            format!("\"{}\"", magic.escape_ascii()),
            "\"n+1\\0\" (single-file NIfTI-1)",
        ));
    }

    let ndim = f.i16(OFF_DIM);
    if !(1..=7).contains(&ndim) {
        return Err(field(name, "dim[0]", ndim, "1..7"));
    }
    let ndim = ndim as usize;
    let mut extent = [1usize; 8];
    for (i, e) in extent.iter_mut().enumerate().take(ndim + 1).skip(1) {
        let d = f.i16(OFF_DIM + 2 * i);
        if d <= 0 {
            return Err(field(name, format!("dim[{i}]"), d, "a positive extent"));
        }
        *e = d as usize;
    }
    if let Some(i) = (5..=ndim).find(|&i| extent[i] != 1) {
        return Err(NiftiError::Unsupported {
            file: name.to_owned(),
            problem: format!(
                "{ndim}-D data with dim[{i}] = {} is not supported \
                 (only 3D volumes, with channels in dim[4])",
                extent[i]
            ),
        });
    }
    // At most four extents ≤ 32767 each: the product fits in u64.
    let values: u64 = extent[1..=4].iter().map(|&e| e as u64).product();
    if values > limits.max_voxels as u64 {
        return Err(NiftiError::TooLarge {
            file: name.to_owned(),
            dims: extent[1..=4]
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("×"),
            voxels: values,
            limit: limits.max_voxels,
        });
    }

    let code = f.i16(OFF_DATATYPE);
    let Some(datatype) = DataType::from_code(code) else {
        let what = match unsupported_datatype_name(code) {
            Some(n) => format!("{code} ({n})"),
            None => format!("{code} (unknown code)"),
        };
        return Err(field(
            name,
            "datatype",
            what,
            "one of 2 uint8, 256 int8, 4 int16, 512 uint16, 8 int32, 768 uint32, \
             1024 int64, 1280 uint64, 16 float32, 64 float64",
        ));
    };
    let bitpix = f.i16(OFF_BITPIX);
    if bitpix as i64 != 8 * datatype.size() as i64 {
        return Err(field(
            name,
            "bitpix",
            bitpix,
            format!(
                "{} for datatype {code} ({})",
                8 * datatype.size(),
                datatype.name()
            ),
        ));
    }

    let pixdim: [f32; 8] = std::array::from_fn(|i| f.f32(OFF_PIXDIM + 4 * i));
    let mut spacing = [1f64; 3];
    for (axis, s) in spacing.iter_mut().enumerate() {
        let i = axis + 1;
        let p = pixdim[i];
        if p.is_finite() && p > 0.0 {
            *s = p as f64;
        } else if i <= ndim {
            return Err(field(name, format!("pixdim[{i}]"), p, "a positive spacing"));
        }
        // An axis the file does not have keeps spacing 1 whatever pixdim says.
    }

    let vox_offset = f.f32(OFF_VOX_OFFSET);
    let max_offset = (MIN_VOX_OFFSET as u64 + MAX_EXTENSION_BYTES) as f32;
    if !(vox_offset.is_finite()
        && vox_offset >= MIN_VOX_OFFSET as f32
        && vox_offset <= max_offset
        && vox_offset.fract() == 0.0)
    {
        return Err(field(
            name,
            "vox_offset",
            vox_offset,
            format!("a whole number of bytes in {MIN_VOX_OFFSET}..={max_offset}"),
        ));
    }
    let vox_offset = vox_offset as usize;

    let slope = f.f32(OFF_SCL_SLOPE);
    let inter = f.f32(OFF_SCL_INTER);
    // nibabel: a zero or NaN slope means "not scaled" (older nibabel wrote NaN into every
    // unscaled file). An infinite slope is no such convention, only garbage: refused.
    if slope.is_infinite() {
        return Err(field(
            name,
            "scl_slope",
            slope,
            "a finite slope (0 or NaN for unscaled data)",
        ));
    }
    let scaling = if slope == 0.0 || slope.is_nan() {
        None
    } else if !inter.is_finite() {
        return Err(field(
            name,
            "scl_inter",
            inter,
            format!("a finite intercept with scl_slope = {slope}"),
        ));
    } else if slope == 1.0 && inter == 0.0 {
        None
    } else {
        Some((slope as f64, inter as f64))
    };

    let qform_code = f.i16(OFF_QFORM_CODE);
    let sform_code = f.i16(OFF_SFORM_CODE);
    for (label, c) in [("qform_code", qform_code), ("sform_code", sform_code)] {
        if !(0..=5).contains(&c) {
            return Err(field(name, label, c, "0..5"));
        }
    }

    let (affine, geometry_source) = if sform_code > 0 {
        let mut a = [[0f64; 4]; 4];
        for (r, axis) in ["srow_x", "srow_y", "srow_z"].into_iter().enumerate() {
            for (c, slot) in a[r].iter_mut().enumerate() {
                let v = f.f32(OFF_SROW + 16 * r + 4 * c);
                if !v.is_finite() {
                    return Err(field(
                        name,
                        format!("{axis}[{c}]"),
                        v,
                        "a finite value (sform_code > 0)",
                    ));
                }
                *slot = v as f64;
            }
        }
        a[3][3] = 1.0;
        (a, GeometrySource::Sform)
    } else if qform_code > 0 {
        let mut q = [0f64; 6];
        let labels = [
            "quatern_b",
            "quatern_c",
            "quatern_d",
            "qoffset_x",
            "qoffset_y",
            "qoffset_z",
        ];
        for (i, label) in labels.into_iter().enumerate() {
            let v = f.f32(OFF_QUATERN + 4 * i);
            if !v.is_finite() {
                return Err(field(name, label, v, "a finite value (qform_code > 0)"));
            }
            q[i] = v as f64;
        }
        debug_assert_eq!(OFF_QUATERN + 12, OFF_QOFFSET);
        // qfac is ±1; 0 (never set) reads as 1, like nifti_clib and nibabel. Anything else
        // would scale the third axis by an undefined factor.
        let qfac = match pixdim[0] {
            -1.0 => -1.0,
            0.0 | 1.0 => 1.0,
            q => {
                return Err(field(
                    name,
                    "pixdim[0] (qfac)",
                    q,
                    "-1 or 1 (0 reads as 1) when the qform is used",
                ));
            }
        };
        (
            quatern_to_affine([q[0], q[1], q[2]], [q[3], q[4], q[5]], spacing, qfac),
            GeometrySource::Qform,
        )
    } else {
        let mut a = [[0f64; 4]; 4];
        for (i, s) in spacing.iter().enumerate() {
            a[i][i] = *s;
        }
        a[3][3] = 1.0;
        (a, GeometrySource::Pixdim)
    };
    let geometry = geometry_from_affine(&affine).ok_or_else(|| NiftiError::Invalid {
        file: name.to_owned(),
        problem: format!(
            "the {} is degenerate (its 3×3 part is singular): {:?}",
            match geometry_source {
                GeometrySource::Sform => "sform (srow_x/y/z)",
                GeometrySource::Qform => "qform",
                GeometrySource::Pixdim => "pixdim affine",
            },
            &affine[..3]
        ),
    })?;

    Ok(Header {
        dims: [extent[1], extent[2], extent[3]],
        channels: extent[4],
        datatype,
        big_endian,
        vox_offset,
        scaling,
        geometry,
        geometry_source,
        spatial: SpatialFields {
            qform_code,
            sform_code,
            pixdim: [pixdim[0], pixdim[1], pixdim[2], pixdim[3]],
            quatern: std::array::from_fn(|i| f.f32(OFF_QUATERN + 4 * i)),
            srow: std::array::from_fn(|i| f.f32(OFF_SROW + 4 * i)),
            xyzt_units: raw[OFF_XYZT_UNITS],
        },
    })
}

/// `Geometry::from_affine`, also refusing linearly dependent columns.
fn geometry_from_affine(a: &[[f64; 4]; 4]) -> Option<Geometry> {
    let g = Geometry::from_affine(a)?;
    // The direction columns are unit vectors: |det| is 1 when orthogonal, 0 when singular.
    if det3(&g.direction).abs() < 1e-6 {
        return None;
    }
    Some(g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nifti::fixtures::*;
    use crate::nifti::*;
    use crate::{Geometry, Volume};

    #[test]
    fn infinite_slope_is_refused() {
        for (slope, needle) in [
            (f32::INFINITY, "scl_slope = inf, expected a finite slope"),
            (f32::NEG_INFINITY, "scl_slope = -inf"),
        ] {
            assert_err(&int16_file(slope, 5.0), "inf.nii", needle);
        }
    }

    #[test]
    fn qfac_must_be_plus_or_minus_one_when_the_qform_is_used() {
        for (qfac, z) in [(1.0, 1.0), (0.0, 1.0), (-1.0, -1.0)] {
            let mut raw = Raw::new(&[2, 2, 2], 2, 8);
            raw.i16(OFF_QFORM_CODE, 1).f32(OFF_PIXDIM, qfac);
            let g = read(&raw.with_data(&[0; 8]), "qfac.nii").volume.geometry;
            assert_eq!(g.direction[2][2], z, "qfac {qfac}");
        }
        for (qfac, needle) in [
            (0.5, "pixdim[0] (qfac) = 0.5, expected -1 or 1"),
            (-2.0, "pixdim[0] (qfac) = -2"),
            (f32::NAN, "pixdim[0] (qfac) = NaN"),
        ] {
            let mut raw = Raw::new(&[2, 2, 2], 2, 8);
            raw.i16(OFF_QFORM_CODE, 1).f32(OFF_PIXDIM, qfac);
            assert_err(&raw.with_data(&[0; 8]), "qfac.nii", needle);
            // Without a qform nothing reads qfac.
            raw.i16(OFF_QFORM_CODE, 0);
            read(&raw.with_data(&[0; 8]), "noqform.nii");
        }
    }

    #[test]
    fn finite_slope_with_non_finite_intercept_is_refused() {
        assert_err(
            &int16_file(2.0, f32::NAN),
            "inter.nii",
            "scl_inter = NaN, expected a finite intercept with scl_slope = 2",
        );
        assert_err(
            &int16_file(1.0, f32::INFINITY),
            "inter.nii",
            "scl_inter = inf",
        );
    }

    #[test]
    fn qform_only_gives_the_nifti_affine() {
        // 90° about z: (b, c, d) = (0, 0, sin 45°); qfac = -1 flips the third column.
        let mut raw = Raw::new(&[2, 2, 2], 2, 8);
        raw.i16(OFF_QFORM_CODE, 1)
            .f32(OFF_QUATERN + 8, std::f32::consts::FRAC_1_SQRT_2)
            .f32(OFF_QOFFSET, 5.0)
            .f32(OFF_QOFFSET + 4, 6.0)
            .f32(OFF_QOFFSET + 8, 7.0)
            .f32(OFF_PIXDIM, -1.0)
            .f32(OFF_PIXDIM + 4, 2.0)
            .f32(OFF_PIXDIM + 8, 3.0)
            .f32(OFF_PIXDIM + 12, 4.0);
        let img = read(&raw.with_data(&[0; 8]), "qform.nii");
        let expected = [
            [0.0, -3.0, 0.0, 5.0],
            [2.0, 0.0, 0.0, 6.0],
            [0.0, 0.0, -4.0, 7.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let g = img.volume.geometry;
        assert!(
            g.approx_eq(&Geometry::from_affine(&expected).unwrap(), 1e-5),
            "{:?}",
            g.affine()
        );

        // qfac = 0 counts as +1 (nibabel, nifti_clib).
        raw.f32(OFF_PIXDIM, 0.0);
        let g = read(&raw.with_data(&[0; 8]), "qfac0.nii").volume.geometry;
        assert!((g.affine()[2][2] - 4.0).abs() < 1e-6, "{:?}", g.affine());

        raw.f32(OFF_QUATERN, f32::NAN);
        assert_err(&raw.with_data(&[0; 8]), "qnan.nii", "quatern_b = NaN");
    }

    #[test]
    fn sform_wins_over_qform() {
        let volume = Volume::new(vec![0u8; 8], [2, 2, 2], 1, geometries()[0]);
        let mut raw = Raw {
            big_endian: false,
            bytes: write_nifti_bytes(&volume, false),
        };
        let srows = [
            [2.0, 0.0, 0.0, -1.0],
            [0.0, 0.0, 3.0, -2.0],
            [0.0, -4.0, 0.0, -3.0],
        ];
        for (r, row) in srows.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                raw.f32(OFF_SROW + 16 * r + 4 * c, *v);
            }
        }
        let g = read(&raw.bytes, "sform.nii").volume.geometry;
        assert_eq!(g.spacing, [2.0, 4.0, 3.0]);
        assert_eq!(g.origin, [-1.0, -2.0, -3.0]);
        assert_eq!(
            g.direction,
            [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]
        );

        raw.f32(OFF_SROW + 16 + 12, f32::NAN);
        assert_err(&raw.bytes, "srow.nii", "srow_y[3] = NaN");
        raw.f32(OFF_SROW + 16 + 12, 0.0);
        // Third column parallel to the first: singular.
        raw.f32(OFF_SROW + 8, 2.0).f32(OFF_SROW + 24, 0.0);
        assert_err(
            &raw.bytes,
            "singular.nii",
            "sform (srow_x/y/z) is degenerate",
        );
        raw.f32(OFF_SROW + 8, 0.0);
        assert_err(&raw.bytes, "zero.nii", "degenerate");
    }

    #[test]
    fn pixdim_only_is_a_diagonal_affine_at_the_origin() {
        let mut raw = Raw::new(&[2, 3, 4], 2, 8);
        raw.f32(OFF_PIXDIM + 4, 0.5)
            .f32(OFF_PIXDIM + 8, 0.75)
            .f32(OFF_PIXDIM + 12, 3.0);
        let img = read(&raw.with_data(&[1; 24]), "pixdim.nii");
        assert_eq!(img.volume.geometry, Geometry::identity([0.5, 0.75, 3.0]));
        assert_eq!(img.volume.dims, [2, 3, 4]);
    }

    #[test]
    fn lower_and_higher_dimensional_files() {
        // 2D: z = 1, and pixdim[3] of a missing axis may be anything.
        let mut raw = Raw::new(&[3, 2], 2, 8);
        raw.i16(OFF_DIM + 6, 0).f32(OFF_PIXDIM + 12, 0.0);
        let img = read(&raw.with_data(&[1; 6]), "slice.nii");
        assert_eq!((img.volume.dims, img.volume.channels), ([3, 2, 1], 1));
        assert_eq!(img.volume.geometry.spacing, [1.0, 1.0, 1.0]);

        let raw = Raw::new(&[2, 1, 1, 3], 2, 8);
        let img = read(&raw.with_data(&[1, 2, 3, 4, 5, 6]), "4d.nii");
        assert_eq!((img.volume.dims, img.volume.channels), ([2, 1, 1], 3));
        assert_eq!(img.volume.channel(2), &[5.0, 6.0]);

        let raw = Raw::new(&[2, 1, 1, 1, 1], 2, 8);
        assert_eq!(
            read(&raw.with_data(&[1, 2]), "5d.nii").volume.dims,
            [2, 1, 1]
        );
        let raw = Raw::new(&[2, 1, 1, 1, 2], 2, 8);
        assert_err(
            &raw.with_data(&[1, 2, 3, 4]),
            "5d.nii",
            "5-D data with dim[5] = 2 is not supported",
        );
    }

    #[test]
    fn dim0_out_of_range() {
        for (ndim, needle) in [
            (0, "dim[0] = 0, expected 1..7"),
            (9, "dim[0] = 9, expected 1..7"),
            (-1, "dim[0] = -1"),
        ] {
            let mut raw = Raw::new(&[2, 2, 2], 2, 8);
            raw.i16(OFF_DIM, ndim);
            assert_err(&raw.with_data(&[0; 8]), "ndim.nii", needle);
        }
    }

    #[test]
    fn zero_and_negative_extents() {
        for (d, needle) in [
            (0, "dim[2] = 0, expected a positive extent"),
            (-3, "dim[2] = -3, expected a positive extent"),
            (i16::MIN, "dim[2] = -32768"),
        ] {
            let raw = Raw::new(&[4, d, 2], 2, 8);
            assert_err(&raw.with_data(&[0; 64]), "extent.nii", needle);
        }
    }

    #[test]
    fn voxel_count_past_the_cap_is_refused_before_allocating() {
        // 30000³ float32 = 108 TB: refused from the header alone, plain and gzipped.
        let raw = Raw::new(&[30000, 30000, 30000], 16, 32);
        let needle = "volume of 27000000000000 voxels exceeds the limit of 1073741824";
        assert_err(&raw.bytes, "huge.nii", needle);
        assert_err(&gzip(&raw.bytes), "huge.nii.gz", needle);

        let raw = Raw::new(&[5, 5, 5, 2], 2, 8);
        let limits = ReadLimits { max_voxels: 200 };
        assert_err_with(
            &raw.with_data(&[0; 250]),
            "cap.nii",
            &limits,
            "volume of 250 voxels exceeds the limit of 200",
        );
    }

    #[test]
    fn bad_pixdim() {
        for (i, v, needle) in [
            (2, 0.0, "pixdim[2] = 0, expected a positive spacing"),
            (1, -1.0, "pixdim[1] = -1, expected a positive spacing"),
            (3, f32::NAN, "pixdim[3] = NaN, expected a positive spacing"),
            (3, f32::INFINITY, "pixdim[3] = inf"),
        ] {
            let mut raw = Raw::new(&[2, 2, 2], 2, 8);
            raw.f32(OFF_PIXDIM + 4 * i, v);
            assert_err(&raw.with_data(&[0; 8]), "pixdim.nii", needle);
        }
    }

    #[test]
    fn bitpix_must_match_datatype() {
        let raw = Raw::new(&[2, 2, 2], 4, 8);
        assert_err(
            &raw.with_data(&[0; 16]),
            "bitpix.nii",
            "bitpix = 8, expected 16 for datatype 4 (int16)",
        );
    }

    #[test]
    fn unknown_or_unsupported_datatype() {
        let raw = Raw::new(&[2, 2, 2], 32, 64);
        assert_err(
            &raw.with_data(&[0; 64]),
            "complex.nii",
            "datatype = 32 (complex64), expected one of",
        );
        let raw = Raw::new(&[2, 2, 2], 999, 8);
        assert_err(
            &raw.with_data(&[0; 8]),
            "odd.nii",
            "datatype = 999 (unknown code)",
        );
    }

    #[test]
    fn sizeof_hdr_and_magic() {
        let mut raw = Raw::new(&[2, 2, 2], 2, 8);
        raw.i32(0, 540);
        assert_err(
            &raw.with_data(&[0; 8]),
            "v2.nii",
            "NIfTI-2 is not supported",
        );
        raw.i32(0, 1234);
        assert_err(
            &raw.with_data(&[0; 8]),
            "junk.nii",
            "sizeof_hdr = 1234, expected 348",
        );

        let mut raw = Raw::new(&[2, 2, 2], 2, 8);
        raw.bytes[OFF_MAGIC..OFF_MAGIC + 4].copy_from_slice(b"ni1\0");
        assert_err(
            &raw.with_data(&[0; 8]),
            "pair.hdr",
            "pair .hdr/.img files are not supported",
        );
        raw.bytes[OFF_MAGIC..OFF_MAGIC + 4].copy_from_slice(b"abc\x01");
        assert_err(
            &raw.with_data(&[0; 8]),
            "magic.nii",
            "magic = \"abc\\x01\", expected \"n+1\\0\"",
        );
    }

    #[test]
    fn vox_offset_checks() {
        for (v, needle) in [
            (
                348.0,
                "vox_offset = 348, expected a whole number of bytes in 352..=",
            ),
            (f32::NAN, "vox_offset = NaN"),
            (352.5, "vox_offset = 352.5"),
            (1e12, "vox_offset = 1000000000000"),
            (
                400.0,
                "vox_offset = 400, expected an offset within the data (360 bytes)",
            ),
        ] {
            let mut raw = Raw::new(&[2, 2, 2], 2, 8);
            raw.f32(OFF_VOX_OFFSET, v);
            assert_err(&raw.with_data(&[0; 8]), "offset.nii", needle);
        }
        // Through gzip the length is unknown up front: the skip runs out.
        let mut raw = Raw::new(&[2, 2, 2], 2, 8);
        raw.f32(OFF_VOX_OFFSET, 400.0);
        assert_err(
            &gzip(&raw.with_data(&[0; 8])),
            "offset.nii.gz",
            "vox_offset = 400, expected an offset within the data (360 bytes)",
        );
        // Extensions between 352 and vox_offset are skipped.
        let mut raw = Raw::new(&[2, 2, 2], 2, 8);
        raw.f32(OFF_VOX_OFFSET, 368.0);
        let mut data = vec![0xAA; 16];
        data.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        for bytes in [raw.with_data(&data), gzip(&raw.with_data(&data))] {
            assert_eq!(
                read(&bytes, "ext.nii").volume.data,
                (1..=8).map(|v| v as f32).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn xform_codes() {
        let mut raw = Raw::new(&[2, 2, 2], 2, 8);
        raw.i16(OFF_SFORM_CODE, 7);
        assert_err(
            &raw.with_data(&[0; 8]),
            "codes.nii",
            "sform_code = 7, expected 0..5",
        );
        raw.i16(OFF_SFORM_CODE, 0).i16(OFF_QFORM_CODE, -1);
        assert_err(
            &raw.with_data(&[0; 8]),
            "codes.nii",
            "qform_code = -1, expected 0..5",
        );
    }
}
