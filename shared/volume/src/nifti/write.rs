//! Writing: a little-endian header with both sform and qform, then the voxels, optionally
//! gzip-compressed; files go through a `.partial` sibling renamed into place.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;

use super::header::{
    OFF_BITPIX, OFF_DATATYPE, OFF_DESCRIP, OFF_DIM, OFF_MAGIC, OFF_PIXDIM, OFF_QFORM_CODE,
    OFF_QUATERN, OFF_SCL_INTER, OFF_SCL_SLOPE, OFF_SFORM_CODE, OFF_SROW, OFF_VOX_OFFSET,
    OFF_XYZT_UNITS,
};
use super::{MAX_DIM, MIN_VOX_OFFSET, NiftiError, PAR_CHUNK, SpatialFields, ends_with_gz};
use crate::geometry::{affine_to_quatern, det3};
use crate::{Geometry, Volume};

/// Element types that can be written.
pub trait NiftiElem: Copy + Send + Sync + 'static {
    const DATATYPE: i16;
    /// Bytes per element (`bitpix / 8`).
    const SIZE: usize = size_of::<Self>();
    fn write_le(self, out: &mut Vec<u8>);

    /// Writes `values` little-endian to `out`.
    fn write_all_le(values: &[Self], out: &mut impl Write) -> io::Result<()> {
        let mut buf = Vec::with_capacity(PAR_CHUNK.min(values.len()) * Self::SIZE);
        for chunk in values.chunks(PAR_CHUNK) {
            buf.clear();
            for &v in chunk {
                v.write_le(&mut buf);
            }
            out.write_all(&buf)?;
        }
        Ok(())
    }
}

impl NiftiElem for u8 {
    const DATATYPE: i16 = 2;
    fn write_le(self, out: &mut Vec<u8>) {
        out.push(self);
    }

    fn write_all_le(values: &[u8], out: &mut impl Write) -> io::Result<()> {
        out.write_all(values)
    }
}

impl NiftiElem for i16 {
    const DATATYPE: i16 = 4;
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl NiftiElem for f32 {
    const DATATYPE: i16 = 16;
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }

    fn write_all_le(values: &[f32], out: &mut impl Write) -> io::Result<()> {
        #[cfg(target_endian = "little")]
        {
            // SAFETY: f32 has no padding and every byte pattern is a valid u8; the slice
            // covers exactly the values' bytes, which are little-endian on this target.
            let bytes = unsafe {
                std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), size_of_val(values))
            };
            out.write_all(bytes)
        }
        #[cfg(not(target_endian = "little"))]
        {
            let mut buf = Vec::with_capacity(PAR_CHUNK.min(values.len()) * 4);
            for chunk in values.chunks(PAR_CHUNK) {
                buf.clear();
                for &v in chunk {
                    v.write_le(&mut buf);
                }
                out.write_all(&buf)?;
            }
            Ok(())
        }
    }
}

/// Encodes a volume as a single-file NIfTI-1 (gzip-compressed when `gzip`).
///
/// # Panics
/// When the volume cannot be written: see [`try_write_nifti_bytes`].
pub fn write_nifti_bytes<T: NiftiElem>(volume: &Volume<T>, gzip: bool) -> Vec<u8> {
    match try_write_nifti_bytes(volume, gzip) {
        Ok(bytes) => bytes,
        Err(e) => panic!("{e}"),
    }
}

/// Like [`write_nifti_bytes`], but refuses (instead of panicking on) a volume NIfTI-1 cannot
/// hold: an extent or channel count over 32767, data that does not match the dims, or a
/// non-finite or degenerate geometry.
pub fn try_write_nifti_bytes<T: NiftiElem>(
    volume: &Volume<T>,
    gzip: bool,
) -> Result<Vec<u8>, NiftiError> {
    const NAME: &str = "<in-memory NIfTI>";
    let header = build_header::<T>(
        volume.dims,
        volume.channels,
        &volume.geometry,
        volume.data.len(),
    )
    .map_err(|problem| NiftiError::Invalid {
        file: NAME.to_owned(),
        problem,
    })?;
    encode(NAME, &header, volume, gzip)
}

/// The file bytes of `header` and `volume`'s values (gzip-compressed when `gzip`).
fn encode<T: NiftiElem>(
    name: &str,
    header: &[u8; MIN_VOX_OFFSET],
    volume: &Volume<T>,
    gzip: bool,
) -> Result<Vec<u8>, NiftiError> {
    let capacity = MIN_VOX_OFFSET + volume.data.len() * T::SIZE;
    let io_err = |source| NiftiError::Io {
        file: name.to_owned(),
        op: "cannot encode",
        source,
    };
    if gzip {
        let mut enc = GzEncoder::new(Vec::with_capacity(capacity / 2), Compression::fast());
        write_body(header, volume, &mut enc).map_err(io_err)?;
        enc.finish().map_err(io_err)
    } else {
        let mut out = Vec::with_capacity(capacity);
        write_body(header, volume, &mut out).map_err(io_err)?;
        Ok(out)
    }
}

/// Writes `path` (gzip iff it ends in `.gz`) through a sibling `.partial` file renamed into
/// place, so readers never see half a file.
pub fn write_nifti<T: NiftiElem>(path: &Path, volume: &Volume<T>) -> Result<(), NiftiError> {
    let header = volume_header(path, volume)?;
    write_file(path, &header, volume)
}

/// Like [`write_nifti`], with the spatial fields (transform codes, qform, sform, qfac,
/// spacing, units) of the image `volume` was derived from, copied as stored: a mask written
/// this way overlays its source image in any viewer, whatever transforms the source used.
/// `volume` must be on the source's grid (its geometry is the source's).
pub fn write_nifti_like<T: NiftiElem>(
    path: &Path,
    volume: &Volume<T>,
    source: &SpatialFields,
) -> Result<(), NiftiError> {
    let mut header = volume_header(path, volume)?;
    copy_spatial_fields(&mut header, source);
    write_file(path, &header, volume)
}

/// [`write_nifti_like`] into memory, gzip-compressed: the bytes of the `.nii.gz` file it
/// writes. `name` is used in errors.
pub fn write_nifti_like_bytes<T: NiftiElem>(
    name: &str,
    volume: &Volume<T>,
    source: &SpatialFields,
) -> Result<Vec<u8>, NiftiError> {
    let mut header = build_header::<T>(
        volume.dims,
        volume.channels,
        &volume.geometry,
        volume.data.len(),
    )
    .map_err(|problem| NiftiError::Invalid {
        file: name.to_owned(),
        problem,
    })?;
    copy_spatial_fields(&mut header, source);
    encode(name, &header, volume, true)
}

/// Overwrites the spatial fields of `header` with the source image's, as stored.
fn copy_spatial_fields(header: &mut [u8; MIN_VOX_OFFSET], source: &SpatialFields) {
    let mut put =
        |offset: usize, bytes: &[u8]| header[offset..offset + bytes.len()].copy_from_slice(bytes);
    put(OFF_QFORM_CODE, &source.qform_code.to_le_bytes());
    put(OFF_SFORM_CODE, &source.sform_code.to_le_bytes());
    for (i, p) in source.pixdim.iter().enumerate() {
        put(OFF_PIXDIM + 4 * i, &p.to_le_bytes());
    }
    for (i, q) in source.quatern.iter().enumerate() {
        put(OFF_QUATERN + 4 * i, &q.to_le_bytes());
    }
    for (i, v) in source.srow.iter().enumerate() {
        put(OFF_SROW + 4 * i, &v.to_le_bytes());
    }
    put(OFF_XYZT_UNITS, &[source.xyzt_units]);
}

/// The header of `volume` as [`write_nifti`] writes it; errors name `path`.
fn volume_header<T: NiftiElem>(
    path: &Path,
    volume: &Volume<T>,
) -> Result<[u8; MIN_VOX_OFFSET], NiftiError> {
    build_header::<T>(
        volume.dims,
        volume.channels,
        &volume.geometry,
        volume.data.len(),
    )
    .map_err(|problem| NiftiError::Invalid {
        file: path.display().to_string(),
        problem,
    })
}

fn write_file<T: NiftiElem>(
    path: &Path,
    header: &[u8; MIN_VOX_OFFSET],
    volume: &Volume<T>,
) -> Result<(), NiftiError> {
    let file = path.display().to_string();
    let io_err = |op, source| NiftiError::Io {
        file: file.clone(),
        op,
        source,
    };
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = Path::new(&partial);
    let result = (|| {
        let out = io::BufWriter::with_capacity(1 << 20, File::create(partial)?);
        let out = if ends_with_gz(&file) {
            let mut enc = GzEncoder::new(out, Compression::fast());
            write_body(header, volume, &mut enc)?;
            enc.finish()?
        } else {
            let mut out = out;
            write_body(header, volume, &mut out)?;
            out
        };
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(partial);
        return Err(io_err("cannot write", e));
    }
    std::fs::rename(partial, path).map_err(|e| {
        let _ = std::fs::remove_file(partial);
        io_err("cannot rename the written file into place", e)
    })
}

fn write_body<T: NiftiElem>(
    header: &[u8; MIN_VOX_OFFSET],
    volume: &Volume<T>,
    out: &mut impl Write,
) -> io::Result<()> {
    out.write_all(header)?;
    T::write_all_le(&volume.data, out)
}

/// Writes an uncompressed NIfTI-1 piece by piece, so that a volume being computed slab by
/// slab is never held whole: the header when made, then the values in order
/// ([`NiftiWriter::write`]), and [`NiftiWriter::finish`] checks that exactly
/// `dims × channels` values came. The bytes are those [`write_nifti_bytes`] makes.
pub struct NiftiWriter<W, T> {
    out: W,
    name: String,
    left: usize,
    _values: std::marker::PhantomData<fn(T)>,
}

impl<W: Write, T: NiftiElem> NiftiWriter<W, T> {
    /// Writes the header for a volume of `dims` × `channels` values with `geometry`; `name`
    /// is used in errors. Refuses what NIfTI-1 cannot hold (as [`try_write_nifti_bytes`]).
    pub fn new(
        mut out: W,
        name: &str,
        dims: [usize; 3],
        channels: usize,
        geometry: &Geometry,
    ) -> Result<Self, NiftiError> {
        let total = dims.iter().product::<usize>() * channels;
        let header = build_header::<T>(dims, channels, geometry, total).map_err(|problem| {
            NiftiError::Invalid {
                file: name.to_owned(),
                problem,
            }
        })?;
        out.write_all(&header).map_err(|e| io_error(name, e))?;
        Ok(Self {
            out,
            name: name.to_owned(),
            left: total,
            _values: std::marker::PhantomData,
        })
    }

    /// Appends the next values (x fastest, then y, z, channel).
    pub fn write(&mut self, values: &[T]) -> Result<(), NiftiError> {
        if values.len() > self.left {
            return Err(self.count_error(values.len()));
        }
        T::write_all_le(values, &mut self.out).map_err(|e| io_error(&self.name, e))?;
        self.left -= values.len();
        Ok(())
    }

    /// Checks that every value came and hands the writer back (not flushed).
    pub fn finish(self) -> Result<W, NiftiError> {
        if self.left != 0 {
            return Err(self.count_error(0));
        }
        Ok(self.out)
    }

    fn count_error(&self, more: usize) -> NiftiError {
        NiftiError::Invalid {
            file: self.name.clone(),
            problem: format!(
                "{} value(s) left to write, {more} given: a stream must end exactly at \
                 dims × channels values",
                self.left
            ),
        }
    }
}

fn io_error(name: &str, source: io::Error) -> NiftiError {
    NiftiError::Io {
        file: name.to_owned(),
        op: "cannot write",
        source,
    }
}

/// The 348-byte header plus 4 zero extension bytes, little-endian.
fn build_header<T: NiftiElem>(
    dims: [usize; 3],
    c: usize,
    g: &Geometry,
    values: usize,
) -> Result<[u8; MIN_VOX_OFFSET], String> {
    let [nx, ny, nz] = dims;
    for (label, n) in [("x", nx), ("y", ny), ("z", nz), ("channels", c)] {
        if n == 0 || n > MAX_DIM {
            return Err(format!(
                "cannot write {label} = {n}: NIfTI-1 holds 1..={MAX_DIM}"
            ));
        }
    }
    if values != nx * ny * nz * c {
        return Err(format!(
            "volume data has {values} values, dims {dims:?} × {c} channels need {}",
            nx * ny * nz * c
        ));
    }
    if !g.spacing.iter().all(|s| s.is_finite() && *s > 0.0) {
        return Err(format!(
            "cannot write spacing {:?}: expected positive finite values",
            g.spacing
        ));
    }
    let finite = g
        .origin
        .iter()
        .chain(g.direction.iter().flatten())
        .all(|v| v.is_finite());
    if !finite || det3(&g.direction).abs() < 1e-6 {
        return Err(format!(
            "cannot write geometry with origin {:?} and direction {:?}: expected finite values \
             and independent axes",
            g.origin, g.direction
        ));
    }

    let mut h = [0u8; MIN_VOX_OFFSET];
    let mut put =
        |offset: usize, bytes: &[u8]| h[offset..offset + bytes.len()].copy_from_slice(bytes);
    put(0, &348i32.to_le_bytes());
    put(38, b"r");
    let ndim: i16 = if c > 1 { 4 } else { 3 };
    let dim = [ndim, nx as i16, ny as i16, nz as i16, c as i16, 1, 1, 1];
    for (i, d) in dim.iter().enumerate() {
        put(OFF_DIM + 2 * i, &d.to_le_bytes());
    }
    put(OFF_DATATYPE, &T::DATATYPE.to_le_bytes());
    put(OFF_BITPIX, &((8 * T::SIZE) as i16).to_le_bytes());

    let (quatern, qfac) = affine_to_quatern(&g.direction);
    let pixdim = [
        qfac as f32,
        g.spacing[0] as f32,
        g.spacing[1] as f32,
        g.spacing[2] as f32,
        1.0,
        1.0,
        1.0,
        1.0,
    ];
    for (i, p) in pixdim.iter().enumerate() {
        put(OFF_PIXDIM + 4 * i, &p.to_le_bytes());
    }
    put(OFF_VOX_OFFSET, &(MIN_VOX_OFFSET as f32).to_le_bytes());
    put(OFF_SCL_SLOPE, &1f32.to_le_bytes());
    put(OFF_SCL_INTER, &0f32.to_le_bytes());
    put(OFF_XYZT_UNITS, &[2]); // NIFTI_UNITS_MM
    put(OFF_DESCRIP, b"segtune");
    put(OFF_QFORM_CODE, &1i16.to_le_bytes()); // NIFTI_XFORM_SCANNER_ANAT
    put(OFF_SFORM_CODE, &1i16.to_le_bytes());
    for (i, v) in quatern.iter().chain(g.origin.iter()).enumerate() {
        put(OFF_QUATERN + 4 * i, &(*v as f32).to_le_bytes());
    }
    let affine = g.affine();
    for (r, row) in affine.iter().take(3).enumerate() {
        for (col, v) in row.iter().enumerate() {
            put(OFF_SROW + 16 * r + 4 * col, &(*v as f32).to_le_bytes());
        }
    }
    put(OFF_MAGIC, b"n+1\0");
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Geometry;
    use crate::nifti::fixtures::*;
    use crate::nifti::header::*;
    use crate::nifti::*;

    #[test]
    fn streamed_writes_are_the_bytes_of_a_whole_write() {
        let g = geometries()[0];
        let dims = [5, 4, 3];
        let f: Vec<f32> = (0..120).map(|i| i as f32 * 0.5 - 7.0).collect();
        let v = Volume::new(f.clone(), dims, 2, g);
        let mut w = NiftiWriter::<_, f32>::new(Vec::new(), "s", dims, 2, &g).unwrap();
        for piece in f.chunks(7) {
            w.write(piece).unwrap();
        }
        assert_eq!(w.finish().unwrap(), write_nifti_bytes(&v, false));

        let l: Vec<u8> = (0..60).map(|i| (i % 3) as u8).collect();
        let lv = Volume::new(l.clone(), dims, 1, g);
        let mut w = NiftiWriter::<_, u8>::new(Vec::new(), "l", dims, 1, &g).unwrap();
        w.write(&l[..20]).unwrap();
        w.write(&l[20..]).unwrap();
        assert_eq!(w.finish().unwrap(), write_nifti_bytes(&lv, false));
    }

    #[test]
    fn streamed_writes_refuse_a_wrong_count_and_a_bad_volume() {
        let g = geometries()[1];
        let mut w = NiftiWriter::<_, f32>::new(Vec::new(), "short", [2, 2, 2], 1, &g).unwrap();
        w.write(&[0.0; 5]).unwrap();
        let e = w.write(&[0.0; 4]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("short: 3 value(s) left to write, 4 given"),
            "{e}"
        );
        let e = w.finish().unwrap_err();
        assert!(
            e.to_string().contains("3 value(s) left to write, 0 given"),
            "{e}"
        );
        let e = NiftiWriter::<_, u8>::new(Vec::new(), "huge", [40_000, 1, 1], 1, &g)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("cannot write x = 40000"), "{e}");
    }

    fn round_trip<T: NiftiElem + PartialEq + std::fmt::Debug>(
        make: impl Fn(usize) -> T,
        to_f32: impl Fn(T) -> f32,
    ) {
        let dir = tempfile::tempdir().unwrap();
        for (g, geometry) in geometries().into_iter().enumerate() {
            for channels in [1, 2] {
                let dims = [3, 4, 5];
                let n = channels * 60;
                let volume = Volume::new((0..n).map(&make).collect(), dims, channels, geometry);
                let expected: Vec<f32> = volume.data.iter().map(|&v| to_f32(v)).collect();
                for gz in [false, true] {
                    let name = format!("g{g}_c{channels}.nii{}", if gz { ".gz" } else { "" });
                    let bytes = write_nifti_bytes(&volume, gz);
                    assert_eq!(is_gzip(&bytes), gz);
                    let from_bytes = read(&bytes, &name);

                    let path = dir.path().join(&name);
                    write_nifti(&path, &volume).unwrap();
                    let on_disk = std::fs::read(&path).unwrap();
                    assert_eq!(is_gzip(&on_disk), gz, "{name}");
                    let from_file = read_nifti(&path, &ReadLimits::default()).unwrap();

                    for img in [from_bytes, from_file] {
                        assert_eq!(img.datatype, T::DATATYPE);
                        assert_eq!(img.volume.dims, dims);
                        assert_eq!(img.volume.channels, channels);
                        assert_eq!(img.volume.data, expected, "{name}");
                        assert!(
                            img.volume.geometry.approx_eq(&geometry, 1e-5),
                            "{name}: {:?} vs {geometry:?}",
                            img.volume.geometry
                        );
                    }

                    // The qform alone (sform_code = 0) describes the same grid.
                    let mut plain = write_nifti_bytes(&volume, false);
                    plain[OFF_SFORM_CODE..OFF_SFORM_CODE + 2].copy_from_slice(&0i16.to_le_bytes());
                    let header = parse_header(
                        plain.first_chunk().unwrap(),
                        "qform.nii",
                        &ReadLimits::default(),
                    )
                    .unwrap();
                    assert_eq!(header.geometry_source, GeometrySource::Qform);
                    assert!(
                        header.geometry.approx_eq(&geometry, 1e-5),
                        "qform of geometry {g}: {:?} vs {geometry:?}",
                        header.geometry
                    );
                }
            }
        }
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".partial"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn round_trip_u8() {
        round_trip(|i| (i * 7 % 256) as u8, f32::from);
    }

    #[test]
    fn round_trip_i16() {
        round_trip(
            |i| (i as i16).wrapping_mul(331).wrapping_sub(20_000),
            f32::from,
        );
    }

    #[test]
    fn round_trip_f32() {
        round_trip(|i| i as f32 * 0.37 - 11.5, |v| v);
    }

    #[test]
    fn written_header_reads_in_the_nifti_crate() {
        let geometry = geometries()[0];
        let volume = Volume::new(vec![0i16; 3 * 4 * 5 * 2], [3, 4, 5], 2, geometry);
        let bytes = write_nifti_bytes(&volume, false);
        assert_eq!(bytes.len(), 352 + 120 * 2);
        assert_eq!(&bytes[348..352], &[0, 0, 0, 0]);
        let h = ::nifti::NiftiHeader::from_reader(&bytes[..]).unwrap();
        assert_eq!(h.sizeof_hdr, 348);
        assert_eq!(&h.magic, b"n+1\0");
        assert_eq!(h.dim, [4, 3, 4, 5, 2, 1, 1, 1]);
        assert_eq!((h.datatype, h.bitpix), (4, 16));
        assert_eq!(h.vox_offset, 352.0);
        assert_eq!((h.scl_slope, h.scl_inter), (1.0, 0.0));
        assert_eq!((h.qform_code, h.sform_code, h.xyzt_units), (1, 1, 2));
        assert_eq!(h.pixdim[0], -1.0, "flipped axis: qfac = -1");
        assert_eq!(&h.pixdim[1..4], &[0.7, 1.3, 2.5]);
        let a = geometry.affine();
        for (row, srow) in [h.srow_x, h.srow_y, h.srow_z].iter().enumerate() {
            for c in 0..4 {
                assert!(
                    (srow[c] as f64 - a[row][c]).abs() < 1e-6,
                    "{srow:?} vs {a:?}"
                );
            }
        }
        assert_eq!(
            [h.quatern_x, h.quatern_y, h.quatern_z],
            [10.5, -20.25, 33.0]
        );

        let v3 = Volume::new(vec![0u8; 60], [3, 4, 5], 1, geometry);
        let h = ::nifti::NiftiHeader::from_reader(&write_nifti_bytes(&v3, false)[..]).unwrap();
        assert_eq!(h.dim, [3, 3, 4, 5, 1, 1, 1, 1]);
    }

    #[test]
    fn unwritable_volumes_are_refused() {
        let g = Geometry::identity([1.0; 3]);
        let too_wide = Volume {
            data: vec![0u8; 40_000],
            dims: [40_000, 1, 1],
            channels: 1,
            geometry: g,
        };
        let e = try_write_nifti_bytes(&too_wide, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot write x = 40000"), "{e}");
        let mismatched = Volume {
            data: vec![0u8; 7],
            dims: [2, 2, 2],
            channels: 1,
            geometry: g,
        };
        assert!(try_write_nifti_bytes(&mismatched, false).is_err());
        let flat = Volume::new(
            vec![0u8; 8],
            [2, 2, 2],
            1,
            Geometry::identity([1.0, 0.0, 1.0]),
        );
        let e = write_nifti(Path::new("/nonexistent/x.nii"), &flat)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/nonexistent/x.nii: cannot write spacing"),
            "{e}"
        );
        let ok = Volume::new(vec![0u8; 8], [2, 2, 2], 1, g);
        let e = write_nifti(Path::new("/nonexistent/x.nii"), &ok).unwrap_err();
        assert!(
            e.is_io()
                && e.to_string()
                    .starts_with("/nonexistent/x.nii: cannot write"),
            "{e}"
        );
    }

    /// Cross-check with nibabel and SimpleITK (`cargo test -p volume --lib nifti:: -- --ignored`;
    /// needs python3 with both installed).
    #[test]
    #[ignore]
    fn nibabel_and_simpleitk_agree() {
        let dir = tempfile::tempdir().unwrap();
        for (g, geometry) in geometries().into_iter().enumerate() {
            let volume = Volume::new(
                (0..60).map(|i| i as i16 - 30).collect(),
                [3, 4, 5],
                1,
                geometry,
            );
            let path = dir.path().join(format!("g{g}.nii.gz"));
            write_nifti(&path, &volume).unwrap();
            let script = r#"
import sys, json, nibabel as nib, numpy as np, SimpleITK as sitk
img = nib.load(sys.argv[1])
s = sitk.ReadImage(sys.argv[1])
a = sitk.GetArrayFromImage(s)
print(json.dumps({"affine": img.affine.tolist(), "sum": float(np.asarray(img.dataobj).sum()),
  "spacing": s.GetSpacing(), "origin": s.GetOrigin(), "direction": s.GetDirection(),
  "sitk_sum": float(a.sum()), "shape": list(img.shape)}))
"#;
            let out = std::process::Command::new("python3")
                .args(["-c", script, path.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let a = geometry.affine();
            for r in 0..4 {
                for c in 0..4 {
                    let nib = v["affine"][r][c].as_f64().unwrap();
                    assert!((nib - a[r][c]).abs() < 1e-5, "nibabel affine {v} vs {a:?}");
                }
            }
            assert_eq!(v["shape"], serde_json::json!([3, 4, 5]));
            assert_eq!(v["sum"].as_f64().unwrap(), -30.0);
            assert_eq!(v["sitk_sum"].as_f64().unwrap(), -30.0);
            // ITK is LPS: x and y of origin and direction rows negate.
            let flip = [-1.0, -1.0, 1.0];
            for i in 0..3 {
                let sp = v["spacing"][i].as_f64().unwrap();
                assert!((sp - geometry.spacing[i]).abs() < 1e-5, "{v}");
                let o = v["origin"][i].as_f64().unwrap();
                assert!((o - flip[i] * geometry.origin[i]).abs() < 1e-4, "{v}");
                for c in 0..3 {
                    let d = v["direction"][3 * i + c].as_f64().unwrap();
                    assert!((d - flip[i] * geometry.direction[i][c]).abs() < 1e-5, "{v}");
                }
            }
        }
    }
}
