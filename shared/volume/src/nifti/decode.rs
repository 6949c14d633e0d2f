//! Reading: bounded decompression, extension walk, and conversion of the voxels to f32.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use flate2::bufread::MultiGzDecoder;
use rayon::prelude::*;

use super::header::{DataType, Header, parse_header};
use super::{
    HEADER_SIZE, MAX_GZIP_TRAILING_BYTES, NiftiError, NiftiImage, PAR_CHUNK, ReadLimits,
    STREAM_CHUNK, ends_with_gz, field, is_gzip, not_gzip,
};
use crate::Volume;

/// Reads a `.nii` or `.nii.gz` file (gzip recognised by its magic bytes).
pub fn read_nifti(path: &Path, limits: &ReadLimits) -> Result<NiftiImage, NiftiError> {
    read_path_as(path, limits)
}

fn read_path_as<T: Target>(path: &Path, limits: &ReadLimits) -> Result<NiftiImage<T>, NiftiError> {
    let file = path.display().to_string();
    let io_err = |op, source| NiftiError::Io {
        file: file.clone(),
        op,
        source,
    };
    let handle = File::open(path).map_err(|e| io_err("cannot open", e))?;
    let len = handle
        .metadata()
        .map_err(|e| io_err("cannot stat", e))?
        .len();
    let mut reader = BufReader::with_capacity(1 << 18, handle);
    // The first fill of a regular file holds min(file size, capacity) bytes.
    let gzip = is_gzip(reader.fill_buf().map_err(|e| io_err("cannot read", e))?);
    if gzip {
        decode_stream(MultiGzDecoder::new(reader), &file, None, Some(len), limits)
    } else if ends_with_gz(&file) {
        Err(not_gzip(&file))
    } else {
        decode_stream(reader, &file, Some(len), None, limits)
    }
}

/// Decodes an in-memory `.nii` or `.nii.gz`; `name` is used in errors and to insist on gzip
/// when it ends in `.gz`.
pub fn read_nifti_bytes(
    bytes: &[u8],
    name: &str,
    limits: &ReadLimits,
) -> Result<NiftiImage, NiftiError> {
    read_bytes_as(bytes, name, limits)
}

/// Reads a label map straight into `u8` classes, never holding it as `f32`: every value
/// (after scaling) must be an integer in `0..=255`, else the error names the first voxel
/// that is not. Otherwise as [`read_nifti`].
pub fn read_nifti_labels(path: &Path, limits: &ReadLimits) -> Result<NiftiImage<u8>, NiftiError> {
    read_path_as(path, limits)
}

/// [`read_nifti_labels`] of an in-memory `.nii` or `.nii.gz`.
pub fn read_nifti_labels_bytes(
    bytes: &[u8],
    name: &str,
    limits: &ReadLimits,
) -> Result<NiftiImage<u8>, NiftiError> {
    read_bytes_as(bytes, name, limits)
}

fn read_bytes_as<T: Target>(
    bytes: &[u8],
    name: &str,
    limits: &ReadLimits,
) -> Result<NiftiImage<T>, NiftiError> {
    if is_gzip(bytes) {
        let len = bytes.len() as u64;
        decode_stream(MultiGzDecoder::new(bytes), name, None, Some(len), limits)
    } else if ends_with_gz(name) {
        Err(not_gzip(name))
    } else {
        decode_slice(bytes, name, limits)
    }
}

/// Number of NaN or infinite values (the reader keeps them; callers decide).
pub fn count_non_finite(values: &[f32]) -> usize {
    let count = |s: &[f32]| s.iter().filter(|v| !v.is_finite()).count();
    if values.len() <= PAR_CHUNK {
        count(values)
    } else {
        values.par_chunks(PAR_CHUNK).map(count).sum()
    }
}

fn decode_slice<T: Target>(
    bytes: &[u8],
    name: &str,
    limits: &ReadLimits,
) -> Result<NiftiImage<T>, NiftiError> {
    let Some(raw) = bytes.first_chunk::<HEADER_SIZE>() else {
        return Err(truncated(name, "header", HEADER_SIZE, bytes.len()));
    };
    let header = parse_header(raw, name, limits)?;
    check_known_length(&header, bytes.len() as u64, name)?;
    walk_extensions(
        &mut &bytes[HEADER_SIZE..header.vox_offset],
        &header,
        name,
        false,
    )?;
    let data = &bytes[header.vox_offset..header.vox_offset + header.data_bytes()];
    let mut values = vec![T::default(); header.values()];
    if let Some(bad) = T::convert(&header, data, &mut values, 0) {
        return Err(T::refused(&header, name, bad));
    }
    Ok(image(header, values))
}

/// Reads header, skips extensions, then decodes the voxel data chunk by chunk, never reading
/// past `vox_offset + data bytes`. `known_len` is the length of plain data, `gzip_len` that
/// of a gzip stream.
fn decode_stream<T: Target, R: Read>(
    reader: R,
    name: &str,
    known_len: Option<u64>,
    gzip_len: Option<u64>,
    limits: &ReadLimits,
) -> Result<NiftiImage<T>, NiftiError> {
    let gzip = gzip_len.is_some();
    let read_err = |e: io::Error, what: &'static str, expected: usize, found: usize| {
        stream_error(e, name, gzip, what, expected, found)
    };
    let mut reader = reader.take(HEADER_SIZE as u64);
    let mut raw = [0u8; HEADER_SIZE];
    let got =
        read_full(&mut reader, &mut raw).map_err(|(e, n)| read_err(e, "header", HEADER_SIZE, n))?;
    if got < HEADER_SIZE {
        return Err(truncated(name, "header", HEADER_SIZE, got));
    }
    let header = parse_header(&raw, name, limits)?;
    if let Some(len) = known_len {
        check_known_length(&header, len, name)?;
    }
    if let Some(len) = gzip_len {
        check_inflatable(&header, len, name)?;
    }

    reader.set_limit((header.vox_offset - HEADER_SIZE) as u64);
    walk_extensions(&mut reader, &header, name, gzip)?;

    let total = header.data_bytes();
    reader.set_limit(total as u64);
    let mut values = vec![T::default(); header.values()];
    let size = header.datatype.size();
    // The first refused voxel (lowest index) over all chunks, for targets that refuse some.
    let refused: std::sync::Mutex<Option<(usize, f32)>> = std::sync::Mutex::new(None);
    let chunk_len = STREAM_CHUNK.min(total);
    // Decompression is sequential: this thread inflates chunk after chunk while rayon
    // converts the previous ones, so a read costs about one inflate pass. Converted chunk
    // buffers come back through `recycled`.
    let (give_back, recycled) = std::sync::mpsc::channel::<Vec<u8>>();
    let header_ref = &header;
    let refused_ref = &refused;
    rayon::in_place_scope(|scope| -> Result<(), NiftiError> {
        let mut rest: &mut [T] = &mut values;
        let mut done = 0;
        while done < total {
            let want = chunk_len.min(total - done);
            let mut chunk = recycled.try_recv().unwrap_or_else(|_| vec![0u8; chunk_len]);
            let got = read_full(&mut reader, &mut chunk[..want])
                .map_err(|(e, n)| read_err(e, "voxel data", total, done + n))?;
            if got < want {
                return Err(truncated(name, "voxel data", total, done + got));
            }
            let (out, tail) = std::mem::take(&mut rest).split_at_mut(want / size);
            rest = tail;
            let give_back = give_back.clone();
            let first = done / size;
            scope.spawn(move |_| {
                if let Some(bad) = T::convert(header_ref, &chunk[..want], out, first) {
                    let mut slot = refused_ref.lock().unwrap_or_else(|p| p.into_inner());
                    if slot.is_none_or(|(i, _)| bad.0 < i) {
                        *slot = Some(bad);
                    }
                }
                let _ = give_back.send(chunk);
            });
            done += want;
        }
        Ok(())
    })?;
    if let Some(bad) = refused.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(T::refused(&header, name, bad));
    }

    if gzip {
        // Reading on to the end lets the decoder reach the trailer and check the CRC. Bytes
        // after the voxel data are ignored (as nibabel does) up to a bound: past it the
        // stream is refused instead of inflated further.
        reader.set_limit(MAX_GZIP_TRAILING_BYTES + 1);
        match io::copy(&mut reader, &mut io::sink()) {
            Ok(n) if n > MAX_GZIP_TRAILING_BYTES => {
                return Err(NiftiError::Invalid {
                    file: name.to_owned(),
                    problem: format!(
                        "gzip stream continues past the voxel data: more than {} MiB after \
                         vox_offset + {} data bytes (a gzip bomb?)",
                        MAX_GZIP_TRAILING_BYTES >> 20,
                        total
                    ),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(NiftiError::Invalid {
                    file: name.to_owned(),
                    problem: "truncated gzip stream: the voxel data is complete but the gzip \
                              trailer is missing"
                        .to_owned(),
                });
            }
            Err(e) => return Err(stream_error(e, name, true, "gzip trailer", 8, 0)),
        }
    }
    Ok(image(header, values))
}

/// Checks the extensions in the header bytes 348..vox_offset, reading exactly that many bytes
/// from `reader` and storing none. The extender's first byte says whether extensions follow;
/// each one then starts with its size `esize` (a multiple of 16, at least 16, header of 8
/// bytes included) and must end by `vox_offset`. Zero padding after the last one is allowed.
fn walk_extensions<R: Read>(
    reader: &mut R,
    header: &Header,
    name: &str,
    gzip: bool,
) -> Result<(), NiftiError> {
    let total = (header.vox_offset - HEADER_SIZE) as u64;
    let mut walk = ExtensionWalk {
        reader,
        header,
        name,
        gzip,
        total,
        consumed: 0,
    };
    let mut extender = [0u8; 4];
    walk.read(&mut extender)?;
    if extender[0] != 0 {
        let mut index = 0;
        while walk.left() >= 8 {
            let mut ext = [0u8; 8];
            walk.read(&mut ext)?;
            let word = |b: &[u8]| {
                let b: [u8; 4] = b.try_into().expect("4 bytes");
                if header.big_endian {
                    i32::from_be_bytes(b)
                } else {
                    i32::from_le_bytes(b)
                }
            };
            let (esize, ecode) = (word(&ext[..4]), word(&ext[4..]));
            if esize == 0 && ecode == 0 {
                break;
            }
            let left = walk.left() + 8;
            if esize < 16 || esize % 16 != 0 || esize as u64 > left {
                return Err(field(
                    name,
                    format!("extension[{index}].esize"),
                    esize,
                    format!(
                        "a multiple of 16, at least 16 and at most the {left} bytes left \
                         before vox_offset = {}",
                        header.vox_offset
                    ),
                ));
            }
            walk.skip(esize as u64 - 8)?;
            index += 1;
        }
    }
    walk.skip(walk.left())
}

/// A reader positioned in the extension area, counting what it consumed.
struct ExtensionWalk<'a, R> {
    reader: &'a mut R,
    header: &'a Header,
    name: &'a str,
    gzip: bool,
    total: u64,
    consumed: u64,
}

impl<R: Read> ExtensionWalk<'_, R> {
    fn left(&self) -> u64 {
        self.total - self.consumed
    }

    fn ran_out(&self) -> NiftiError {
        vox_offset_past_end(self.header, HEADER_SIZE as u64 + self.consumed, self.name)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), NiftiError> {
        let got = read_full(self.reader, buf).map_err(|(e, n)| {
            let found = (self.consumed as usize) + n;
            stream_error(
                e,
                self.name,
                self.gzip,
                "header extensions",
                self.total as usize,
                found,
            )
        })?;
        self.consumed += got as u64;
        if got < buf.len() {
            return Err(self.ran_out());
        }
        Ok(())
    }

    fn skip(&mut self, n: u64) -> Result<(), NiftiError> {
        let got = io::copy(&mut self.reader.take(n), &mut io::sink()).map_err(|e| {
            let found = self.consumed as usize;
            stream_error(
                e,
                self.name,
                self.gzip,
                "header extensions",
                self.total as usize,
                found,
            )
        })?;
        self.consumed += got;
        if got < n {
            return Err(self.ran_out());
        }
        Ok(())
    }
}

/// Fills `buf` unless the reader ends first; on error also returns the bytes read so far.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> Result<usize, (io::Error, usize)> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((e, got)),
        }
    }
    Ok(got)
}

/// Classifies a read error: flate2 reports a stream that ends early as `UnexpectedEof` and
/// bad data as `InvalidInput`/`InvalidData`; anything else comes from the file itself.
fn stream_error(
    e: io::Error,
    name: &str,
    gzip: bool,
    what: &'static str,
    expected: usize,
    found: usize,
) -> NiftiError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof if gzip => truncated(name, what, expected, found),
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData if gzip => corrupt_gzip(name, &e),
        _ => NiftiError::Io {
            file: name.to_owned(),
            op: "cannot read",
            source: e,
        },
    }
}

fn corrupt_gzip(name: &str, e: &io::Error) -> NiftiError {
    NiftiError::Invalid {
        file: name.to_owned(),
        problem: format!("corrupt gzip stream: {e}"),
    }
}

fn truncated(name: &str, what: &'static str, expected: usize, found: usize) -> NiftiError {
    NiftiError::Truncated {
        file: name.to_owned(),
        what,
        expected: expected as u64,
        found: found as u64,
    }
}

fn vox_offset_past_end(header: &Header, len: u64, name: &str) -> NiftiError {
    field(
        name,
        "vox_offset",
        header.vox_offset,
        format!("an offset within the data ({len} bytes)"),
    )
}

/// Deflate turns one bit into at most 258 bytes: no gzip stream inflates to more than 1032
/// times its size.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// Refuses, before allocating, a header claiming more bytes than its gzip stream can hold:
/// this bounds the voxel buffer of a gzip input by ~4000 times the input's size.
fn check_inflatable(header: &Header, gzip_len: u64, name: &str) -> Result<(), NiftiError> {
    let claimed = (header.vox_offset + header.data_bytes()) as u64;
    let max = gzip_len.saturating_mul(MAX_DEFLATE_RATIO);
    if claimed > max {
        return Err(NiftiError::Invalid {
            file: name.to_owned(),
            problem: format!(
                "truncated gzip stream or lying dim/bitpix: {gzip_len} bytes of gzip inflate to \
                 at most {max} bytes, the header claims {claimed} (vox_offset + voxel data)"
            ),
        });
    }
    Ok(())
}

/// With the total length known, refuse short data before allocating anything.
fn check_known_length(header: &Header, len: u64, name: &str) -> Result<(), NiftiError> {
    let offset = header.vox_offset as u64;
    if offset > len {
        return Err(vox_offset_past_end(header, len, name));
    }
    let available = len - offset;
    if available < header.data_bytes() as u64 {
        return Err(NiftiError::Truncated {
            file: name.to_owned(),
            what: "voxel data",
            expected: header.data_bytes() as u64,
            found: available,
        });
    }
    Ok(())
}

fn image<T>(header: Header, values: Vec<T>) -> NiftiImage<T> {
    NiftiImage {
        volume: Volume {
            data: values,
            dims: header.dims,
            channels: header.channels,
            geometry: header.geometry,
        },
        datatype: header.datatype.code(),
        spatial: header.spatial,
    }
}

/// What voxels decode into: `f32` (images) or `u8` (label maps).
trait Target: Copy + Default + Send + Sync + 'static {
    /// Converts the stored values in `raw` (voxels `first..`) into `out`; returns the first
    /// voxel this type cannot hold (index, value as `f32`), if any.
    fn convert(header: &Header, raw: &[u8], out: &mut [Self], first: usize)
    -> Option<(usize, f32)>;

    /// The error for a voxel [`Target::convert`] refused.
    fn refused(header: &Header, name: &str, bad: (usize, f32)) -> NiftiError;
}

impl Target for f32 {
    fn convert(
        header: &Header,
        raw: &[u8],
        out: &mut [f32],
        _first: usize,
    ) -> Option<(usize, f32)> {
        convert(header, raw, out);
        None
    }

    fn refused(_: &Header, name: &str, (i, v): (usize, f32)) -> NiftiError {
        unreachable_refusal(name, i, v)
    }
}

#[cold]
fn unreachable_refusal(name: &str, i: usize, v: f32) -> NiftiError {
    NiftiError::Invalid {
        file: name.to_owned(),
        problem: format!("voxel {i} = {v} refused"),
    }
}

/// A label value: a finite integer in `0..=255` after scaling.
fn is_class(v: f32) -> bool {
    v.is_finite() && v.fract() == 0.0 && (0.0..=255.0).contains(&v)
}

impl Target for u8 {
    fn convert(header: &Header, raw: &[u8], out: &mut [u8], first: usize) -> Option<(usize, f32)> {
        if header.datatype == DataType::U8 && header.scaling.is_none() {
            out.copy_from_slice(raw);
            return None;
        }
        let size = header.datatype.size();
        out.par_chunks_mut(PAR_CHUNK)
            .zip(raw.par_chunks(PAR_CHUNK * size))
            .enumerate()
            .filter_map(|(c, (out, raw))| {
                let mut wide = vec![0f32; out.len()];
                convert(header, raw, &mut wide);
                for (j, (o, &v)) in out.iter_mut().zip(&wide).enumerate() {
                    if !is_class(v) {
                        return Some((first + c * PAR_CHUNK + j, v));
                    }
                    *o = v as u8;
                }
                None
            })
            .min_by_key(|&(i, _)| i)
    }

    fn refused(header: &Header, name: &str, (i, v): (usize, f32)) -> NiftiError {
        let [nx, ny, _] = header.dims;
        NiftiError::Invalid {
            file: name.to_owned(),
            problem: format!(
                "label value {v} at voxel ({}, {}, {}) is not an integer class in 0..=255",
                i % nx,
                (i / nx) % ny,
                (i / (nx * ny)) % header.dims[2].max(1)
            ),
        }
    }
}

/// Converts stored values to f32 (`v * slope + inter` when scaled), in parallel on large
/// inputs. `raw.len()` is `out.len()` × element size.
fn convert(header: &Header, raw: &[u8], out: &mut [f32]) {
    debug_assert_eq!(raw.len(), out.len() * header.datatype.size());
    macro_rules! go {
        ($t:ty) => {{
            const N: usize = size_of::<$t>();
            match (header.big_endian, header.scaling) {
                (false, None) => convert_as::<N>(raw, out, |b| <$t>::from_le_bytes(b) as f32),
                (true, None) => convert_as::<N>(raw, out, |b| <$t>::from_be_bytes(b) as f32),
                (false, Some((s, i))) => convert_as::<N>(raw, out, move |b| {
                    (<$t>::from_le_bytes(b) as f64 * s + i) as f32
                }),
                (true, Some((s, i))) => convert_as::<N>(raw, out, move |b| {
                    (<$t>::from_be_bytes(b) as f64 * s + i) as f32
                }),
            }
        }};
    }
    match header.datatype {
        DataType::U8 => go!(u8),
        DataType::I8 => go!(i8),
        DataType::I16 => go!(i16),
        DataType::U16 => go!(u16),
        DataType::I32 => go!(i32),
        DataType::U32 => go!(u32),
        DataType::I64 => go!(i64),
        DataType::U64 => go!(u64),
        DataType::F32 => go!(f32),
        DataType::F64 => go!(f64),
    }
}

fn convert_as<const N: usize>(raw: &[u8], out: &mut [f32], f: impl Fn([u8; N]) -> f32 + Sync) {
    let run = |(out, raw): (&mut [f32], &[u8])| {
        let (elems, _) = raw.as_chunks::<N>();
        for (o, b) in out.iter_mut().zip(elems) {
            *o = f(*b);
        }
    };
    if out.len() <= PAR_CHUNK {
        run((out, raw));
    } else {
        out.par_chunks_mut(PAR_CHUNK)
            .zip(raw.par_chunks(PAR_CHUNK * N))
            .for_each(run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Geometry;
    use crate::nifti::fixtures::*;
    use crate::nifti::header::*;
    use crate::nifti::*;

    fn labels(bytes: &[u8], name: &str) -> Result<NiftiImage<u8>, NiftiError> {
        read_nifti_labels_bytes(bytes, name, &ReadLimits::default())
    }

    #[test]
    fn labels_decode_straight_to_u8_from_any_integer_valued_type() {
        let classes: Vec<u8> = (0..300).map(|i| (i * 7 % 5) as u8).collect();
        let dims = [10, 6, 5];
        for be in [false, true] {
            let order = |mut b: Vec<u8>| {
                if be {
                    b.reverse();
                }
                b
            };
            let u8s = classes.clone();
            let i16s: Vec<u8> = classes
                .iter()
                .flat_map(|&c| order((c as i16).to_le_bytes().to_vec()))
                .collect();
            let f32s: Vec<u8> = classes
                .iter()
                .flat_map(|&c| order((c as f32).to_le_bytes().to_vec()))
                .collect();
            for (code, bitpix, data) in [(2, 8, u8s), (4, 16, i16s), (16, 32, f32s)] {
                let raw = Raw::with_order(&[10, 6, 5], code, bitpix, be).with_data(&data);
                for (name, bytes) in [("l.nii", raw.clone()), ("l.nii.gz", gzip(&raw))] {
                    let img = labels(&bytes, name).unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(img.datatype, code);
                    assert_eq!(img.volume.dims, dims);
                    assert_eq!(img.volume.data, classes, "{name} code {code} be {be}");
                }
            }
        }
        // Scaling applies before the check: stored 0..2 with slope 2, intercept 1 → 1, 3, 5.
        let mut raw = Raw::new(&[3, 1, 1], 2, 8);
        raw.f32(OFF_SCL_SLOPE, 2.0).f32(OFF_SCL_INTER, 1.0);
        let img = labels(&raw.with_data(&[0, 1, 2]), "scaled.nii").unwrap();
        assert_eq!(img.volume.data, vec![1, 3, 5]);
    }

    #[test]
    fn labels_refuse_the_first_voxel_that_is_not_a_class() {
        // Two stream chunks of int16 (1 MiB = 524 288 values each), converted concurrently:
        // bad values in both; the error names the earliest, whichever chunk finished first.
        let n = 600_000usize;
        let mut values = vec![1i16; n];
        values[590_123] = 256;
        values[550_000] = -1;
        values[100_000] = 300;
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let raw = Raw::new(&[1000, 600, 1], 4, 16).with_data(&data);
        for (name, bytes) in [("big.nii", raw.clone()), ("big.nii.gz", gzip(&raw))] {
            let e = labels(&bytes, name).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "{name}: label value 300 at voxel (0, 100, 0) is not an integer class in 0..=255"
                )
            );
        }
        let f: Vec<u8> = [0.0f32, 1.0, 1.5, f32::NAN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let e = labels(&Raw::new(&[4, 1, 1], 16, 32).with_data(&f), "frac.nii").unwrap_err();
        assert!(
            e.to_string().contains("label value 1.5 at voxel (2, 0, 0)"),
            "{e}"
        );
        let e = labels(
            &Raw::new(&[4, 1, 1], 16, 32).with_data(&f[..12]),
            "short.nii",
        )
        .unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    #[test]
    fn reads_every_datatype_in_both_byte_orders() {
        fn check<const N: usize>(code: i16, values: &[[u8; N]], expected: &[f32], be: bool) {
            let raw = Raw::with_order(&[values.len() as i16, 1, 1], code, 8 * N as i16, be);
            let data: Vec<u8> = values
                .iter()
                .flat_map(|b| {
                    let mut b = *b;
                    if be {
                        b.reverse();
                    }
                    b
                })
                .collect();
            let img = read(&raw.with_data(&data), "types.nii");
            assert_eq!(img.datatype, code);
            assert_eq!(img.volume.dims, [values.len(), 1, 1]);
            let got = &img.volume.data;
            assert_eq!(got.len(), expected.len());
            for (g, e) in got.iter().zip(expected) {
                assert!(
                    g == e || (g.is_nan() && e.is_nan()),
                    "code {code}: {got:?} vs {expected:?}"
                );
            }
        }
        for be in [false, true] {
            check(2, &[[0], [255], [7]], &[0.0, 255.0, 7.0], be);
            check(
                256,
                &[(-128i8).to_le_bytes(), (-1i8).to_le_bytes(), [127]],
                &[-128.0, -1.0, 127.0],
                be,
            );
            check(
                4,
                &[(-32768i16).to_le_bytes(), 1234i16.to_le_bytes()],
                &[-32768.0, 1234.0],
                be,
            );
            check(
                512,
                &[65535u16.to_le_bytes(), 3u16.to_le_bytes()],
                &[65535.0, 3.0],
                be,
            );
            check(
                8,
                &[(-2_000_000i32).to_le_bytes(), 77i32.to_le_bytes()],
                &[-2e6, 77.0],
                be,
            );
            check(768, &[4_000_000_000u32.to_le_bytes()], &[4e9], be);
            check(
                1024,
                &[(-5i64).to_le_bytes(), (1i64 << 40).to_le_bytes()],
                &[-5.0, 1099511627776.0],
                be,
            );
            check(1280, &[9u64.to_le_bytes()], &[9.0], be);
            check(
                16,
                &[1.5f32.to_le_bytes(), f32::NAN.to_le_bytes()],
                &[1.5, f32::NAN],
                be,
            );
            check(
                64,
                &[(-2.25f64).to_le_bytes(), 1e300f64.to_le_bytes()],
                &[-2.25, f32::INFINITY],
                be,
            );
        }
    }

    #[test]
    fn non_finite_voxels_are_kept_and_counted() {
        let data: Vec<f32> = vec![1.0, f32::NAN, f32::INFINITY, -f32::INFINITY, 0.0];
        let volume = Volume::new(data, [5, 1, 1], 1, Geometry::identity([1.0; 3]));
        let img = read(&write_nifti_bytes(&volume, true), "nan.nii.gz");
        assert_eq!(count_non_finite(&img.volume.data), 3);
        let big: Vec<f32> = (0..3 * PAR_CHUNK)
            .map(|i| if i % 1000 == 0 { f32::NAN } else { 1.0 })
            .collect();
        assert_eq!(count_non_finite(&big), 3 * PAR_CHUNK / 1000 + 1);
    }

    #[test]
    fn scaling_is_applied() {
        let img = read(&int16_file(2.0, -1024.0), "ct.nii");
        assert_eq!(img.volume.data, vec![-1024.0, -1022.0, -1020.0, -1030.0]);
        let img = read(&int16_file(0.5, 0.0), "half.nii");
        assert_eq!(img.volume.data, vec![0.0, 0.5, 1.0, -1.5]);
    }

    #[test]
    fn zero_or_nan_slope_means_no_scaling() {
        for slope in [0.0, f32::NAN] {
            let img = read(&int16_file(slope, 5.0), "noscale.nii");
            assert_eq!(img.volume.data, vec![0.0, 1.0, 2.0, -3.0], "slope {slope}");
        }
    }

    /// A header with `vox_offset` = 352 + `ext.len()`, extension flag set, then `ext`.
    fn with_extensions(ext: &[u8], big_endian: bool) -> Vec<u8> {
        let mut raw = Raw::with_order(&[2, 2, 2], 2, 8, big_endian);
        raw.f32(OFF_VOX_OFFSET, (MIN_VOX_OFFSET + ext.len()) as f32);
        raw.bytes[HEADER_SIZE] = 1;
        let mut data = ext.to_vec();
        data.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        raw.with_data(&data)
    }

    fn extension(esize: i32, ecode: i32, len: usize, big_endian: bool) -> Vec<u8> {
        let word = |v: i32| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut e = word(esize).to_vec();
        e.extend_from_slice(&word(ecode));
        e.resize(len, 0x5A);
        e
    }

    #[test]
    fn extension_sizes_are_checked() {
        for be in [false, true] {
            // Two good extensions (32 + 16 bytes), then 16 bytes of zero padding.
            let mut ext = extension(32, 6, 32, be);
            ext.extend(extension(16, 4, 16, be));
            ext.extend([0; 16]);
            let bytes = with_extensions(&ext, be);
            for b in [bytes.clone(), gzip(&bytes)] {
                assert_eq!(
                    read(&b, "ext.nii").volume.data,
                    (1..=8).map(|v| v as f32).collect::<Vec<_>>()
                );
            }
            for (ext, needle) in [
                (
                    extension(20, 6, 32, be),
                    "extension[0].esize = 20, expected a multiple of 16",
                ),
                (extension(-16, 6, 32, be), "extension[0].esize = -16"),
                (extension(8, 6, 32, be), "extension[0].esize = 8"),
                (
                    extension(48, 6, 32, be),
                    "extension[0].esize = 48, expected a multiple of 16, at least 16 and at \
                     most the 32 bytes left before vox_offset = 384",
                ),
                (
                    [
                        extension(16, 6, 16, be),
                        extension(i32::MAX - 15, 6, 16, be),
                    ]
                    .concat(),
                    "extension[1].esize = 2147483632",
                ),
            ] {
                let bytes = with_extensions(&ext, be);
                assert_err(&bytes, "ext.nii", needle);
                assert_err(&gzip(&bytes), "ext.nii.gz", needle);
            }
        }
        // Without the extension flag the bytes before vox_offset are not looked at.
        let mut bytes = with_extensions(&extension(20, 6, 32, false), false);
        bytes[HEADER_SIZE] = 0;
        read(&bytes, "noext.nii");
    }

    #[test]
    fn gzip_too_small_for_the_claimed_data_is_refused_before_allocating() {
        let raw = Raw::new(&[1024, 1024, 4], 2, 8);
        assert_err(
            &gzip(&raw.with_data(&[0; 64])),
            "lying.nii.gz",
            "bytes of gzip inflate to at most",
        );
        // Real all-zero data compresses less than 1032x and reads.
        let zeros = gzip(&raw.with_data(&vec![0; 1 << 22]));
        assert_eq!(read(&zeros, "zeros.nii.gz").volume.dims, [1024, 1024, 4]);
    }

    #[test]
    fn gzip_stream_running_on_past_the_data_is_refused() {
        let raw = Raw::new(&[2, 2, 2], 2, 8);
        let mut bytes = raw.with_data(&[9; 8]);
        bytes.resize(bytes.len() + MAX_GZIP_TRAILING_BYTES as usize + 1, 0);
        assert_err(
            &gzip(&bytes),
            "bomb.nii.gz",
            "gzip stream continues past the voxel data: more than 16 MiB after vox_offset",
        );
        // Up to the bound the trailing bytes are inflated, so the CRC is still checked.
        bytes.truncate(bytes.len() - 2);
        let mut gz = gzip(&bytes);
        read(&gz, "tail.nii.gz");
        let n = gz.len();
        gz[n - 6] ^= 0xff;
        assert_err(&gz, "tail.nii.gz", "corrupt gzip stream");
    }

    #[test]
    fn gzip_decoding_stops_at_the_data_the_header_claims() {
        // A valid 2×2×2 image followed by 8 MB of zeros (a small bomb): read, rest ignored.
        let raw = Raw::new(&[2, 2, 2], 2, 8);
        let mut bytes = raw.with_data(&[9; 8]);
        bytes.resize(bytes.len() + (8 << 20), 0);
        let img = read(&gzip(&bytes), "bomb.nii.gz");
        assert_eq!(img.volume.data, vec![9.0; 8]);
    }

    #[test]
    fn truncated_plain_file() {
        let raw = Raw::new(&[4, 4, 4], 2, 8);
        assert_err(
            &raw.with_data(&[0; 60]),
            "short.nii",
            "truncated: expected 64 bytes of voxel data, found 60",
        );
        assert_err(
            &raw.bytes[..100],
            "tiny.nii",
            "truncated: expected 348 bytes of header, found 100",
        );
        assert_err(
            &gzip(&raw.with_data(&[0; 60])),
            "short.nii.gz",
            "truncated: expected 64 bytes of voxel data, found 60",
        );
    }

    #[test]
    fn truncated_or_corrupt_gzip() {
        // Poorly compressible data so that cutting the stream cuts the voxels.
        let mut state = 12345u32;
        let data: Vec<i16> = (0..16 * 16 * 16)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 16) as i16
            })
            .collect();
        let volume = Volume::new(data, [16, 16, 16], 1, Geometry::identity([1.0; 3]));
        let gz = write_nifti_bytes(&volume, true);
        let e = assert_err(
            &gz[..gz.len() / 2],
            "cut.nii.gz",
            "truncated: expected 8192 bytes of voxel data, found",
        );
        assert!(matches!(e, NiftiError::Truncated { .. }));
        assert_err(
            &gz[..30],
            "cut.nii.gz",
            "truncated: expected 348 bytes of header",
        );
        assert_err(
            &gz[..gz.len() - 8],
            "trailer.nii.gz",
            "gzip trailer is missing",
        );
        assert_err(
            &gz[..gz.len() - 3],
            "trailer.nii.gz",
            "gzip trailer is missing",
        );
        let mut bad_crc = gz.clone();
        let n = bad_crc.len();
        bad_crc[n - 6] ^= 0xff;
        assert_err(&bad_crc, "crc.nii.gz", "corrupt gzip stream");
    }

    #[test]
    fn gz_name_requires_gzip_bytes() {
        let raw = Raw::new(&[2, 2, 2], 2, 8);
        let bytes = raw.with_data(&[0; 8]);
        assert_err(&bytes, "plain.nii.gz", "not gzip data");
        // Gzip is recognised by its magic whatever the name says.
        assert_eq!(
            read(&gzip(&bytes), "mislabelled.nii").volume.dims,
            [2, 2, 2]
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain.nii.gz");
        std::fs::write(&path, &bytes).unwrap();
        let msg = read_nifti(&path, &ReadLimits::default())
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with(&path.display().to_string()), "{msg}");
        assert!(msg.contains("not gzip data"), "{msg}");

        let short = dir.path().join("short.nii");
        std::fs::write(&short, raw.with_data(&[0; 5])).unwrap();
        let msg = read_nifti(&short, &ReadLimits::default())
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            format!(
                "{}: truncated: expected 8 bytes of voxel data, found 5",
                short.display()
            )
        );
    }

    #[test]
    fn missing_file_is_an_io_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.nii.gz");
        let e = read_nifti(&path, &ReadLimits::default()).unwrap_err();
        assert!(e.is_io());
        assert!(
            e.to_string()
                .starts_with(&format!("{}: cannot open", path.display())),
            "{e}"
        );
    }
}

#[cfg(test)]
mod peer_checks {
    use super::*;
    use crate::Geometry;
    use crate::nifti::{MIN_VOX_OFFSET, write_nifti};

    /// Reads files nibabel and SimpleITK write (nibabel stores `scl_slope = NaN` for
    /// unscaled data; SimpleITK writes both transforms). Needs python3 with both installed:
    /// `cargo test -p volume --lib nifti:: -- --ignored`.
    #[test]
    #[ignore]
    fn reads_what_nibabel_and_simpleitk_write() {
        let dir = tempfile::tempdir().unwrap();
        let script = r#"
import sys, json, numpy as np, nibabel as nib, SimpleITK as sitk
d = sys.argv[1]
data = (np.arange(4*5*6, dtype=np.int16) - 50).reshape((4, 5, 6), order="F")
aff = np.array([[0., -0.8, 0., 30.], [0.9, 0., 0., -12.5], [0., 0., -2.5, 7.], [0, 0, 0, 1]])
nib.save(nib.Nifti1Image(data, aff), d + "/nib.nii.gz")
nib.save(nib.Nifti1Image(np.stack([data, data + 1], -1).astype(np.uint8), aff), d + "/nib4d.nii")
s = sitk.GetImageFromArray(np.transpose(data, (2, 1, 0)).astype(np.float32))
s.SetSpacing((0.7, 1.1, 3.0)); s.SetOrigin((5., -6., 7.))
s.SetDirection((0., 1., 0., -1., 0., 0., 0., 0., 1.))
sitk.WriteImage(s, d + "/sitk.nii.gz")
print(json.dumps({"nib_affine": nib.load(d + "/sitk.nii.gz").affine.tolist()}))
"#;
        let d = dir.path().to_str().unwrap();
        let out = std::process::Command::new("python3")
            .args(["-c", script, d])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let expected: Vec<f32> = (0..120).map(|i| i as f32 - 50.0).collect();
        let limits = ReadLimits::default();

        let nib = read_nifti(&dir.path().join("nib.nii.gz"), &limits).unwrap();
        assert_eq!(nib.volume.dims, [4, 5, 6]);
        assert_eq!(nib.volume.data, expected);
        let want = [
            [0., -0.8, 0., 30.],
            [0.9, 0., 0., -12.5],
            [0., 0., -2.5, 7.],
            [0., 0., 0., 1.],
        ];
        assert!(
            nib.volume
                .geometry
                .approx_eq(&Geometry::from_affine(&want).unwrap(), 1e-5)
        );

        let nib4 = read_nifti(&dir.path().join("nib4d.nii"), &limits).unwrap();
        assert_eq!((nib4.volume.dims, nib4.volume.channels), ([4, 5, 6], 2));
        assert_eq!(nib4.datatype, 2);

        let sitk = read_nifti(&dir.path().join("sitk.nii.gz"), &limits).unwrap();
        assert_eq!(sitk.volume.data, expected);
        let mut nib_affine = [[0.0; 4]; 4];
        for (r, row) in nib_affine.iter_mut().enumerate() {
            for (c, x) in row.iter_mut().enumerate() {
                *x = v["nib_affine"][r][c].as_f64().unwrap();
            }
        }
        let g = sitk.volume.geometry;
        assert!(
            g.approx_eq(&Geometry::from_affine(&nib_affine).unwrap(), 1e-5),
            "{g:?}"
        );
        // ITK's LPS origin (5, -6, 7) is RAS (-5, 6, 7).
        assert!((g.origin[0] + 5.0).abs() < 1e-5 && (g.origin[1] - 6.0).abs() < 1e-5);
    }

    /// `cargo test --release -p volume --lib nifti:: -- --ignored --nocapture bench`
    #[test]
    #[ignore]
    fn bench_read_ct_512x512x120() {
        let dims = [512, 512, 120];
        let n = dims.iter().product::<usize>();
        let mut state = 1u32;
        // Smooth anatomy-like field plus a little noise: compresses roughly like CT.
        let data: Vec<i16> = (0..n)
            .map(|i| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let (x, y) = ((i % 512) as i32 - 256, ((i / 512) % 512) as i32 - 256);
                let body = if x * x + y * y < 200 * 200 { 40 } else { -1000 };
                (body + ((state >> 28) as i32 - 8)) as i16
            })
            .collect();
        let volume = Volume::new(data, dims, 1, Geometry::identity([0.8, 0.8, 2.5]));
        let dir = tempfile::tempdir().unwrap();
        for name in ["ct.nii", "ct.nii.gz"] {
            let path = dir.path().join(name);
            let t = std::time::Instant::now();
            write_nifti(&path, &volume).unwrap();
            let write = t.elapsed();
            let size = std::fs::metadata(&path).unwrap().len();
            let mut best = f64::MAX;
            for _ in 0..3 {
                let t = std::time::Instant::now();
                let img = read_nifti(&path, &ReadLimits::default()).unwrap();
                best = best.min(t.elapsed().as_secs_f64());
                assert_eq!(img.volume.data.len(), n);
            }
            println!(
                "{name}: {} MB on disk, write {:.3} s, read {best:.3} s",
                size >> 20,
                write.as_secs_f64()
            );
        }
        // The floor for a .nii.gz read: inflating the stream, nothing else.
        let gz = std::fs::read(dir.path().join("ct.nii.gz")).unwrap();
        let mut inflated = Vec::with_capacity(n * 2 + MIN_VOX_OFFSET);
        let mut best = f64::MAX;
        for _ in 0..3 {
            inflated.clear();
            let t = std::time::Instant::now();
            MultiGzDecoder::new(&gz[..])
                .read_to_end(&mut inflated)
                .unwrap();
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!("inflate alone (in memory): {best:.3} s");
        if let Ok(keep) = std::env::var("NIFTI_BENCH_KEEP") {
            std::fs::copy(dir.path().join("ct.nii.gz"), keep).unwrap();
        }
    }
}
