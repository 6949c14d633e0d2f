//! The cache file of one case: a 4 KiB header, then the image (f32, channel-major, x fastest),
//! the label (u8) and the foreground index, all little-endian, so the image starts on a page
//! boundary and maps straight to `&[f32]`.
//!
//! | offset | field |
//! |---|---|
//! | 0 | magic `SEGCASE\0` |
//! | 8 | format version (u32), header length (u32, 4096) |
//! | 16 | dims x, y, z (3 × u64), channels (u64) |
//! | 48 | image dtype (u32, 1 = f32), label dtype (u32, 2 = u8) |
//! | 56 | image offset, bytes; label offset, bytes; index offset, bytes (6 × u64) |
//! | 104 | file length (u64) |
//! | 112 | spacing (3 × f64), origin (3 × f64), direction (9 × f64, row-major) |
//! | 232 | source checksum (32 bytes: BLAKE3 of the manifest's image and label checksums, zero when the manifest has none) |
//! | 264 | body checksum (32 bytes: BLAKE3 of every byte after the header) |
//! | 296 | channel minima (channels × f32) |
//! | 4064 | header checksum (32 bytes: BLAKE3 of bytes 0..4064) |
//!
//! The foreground index: class count (u32), then per class its id (u32), its voxel count
//! (u64) and the voxels' linear indices (u64 each).
//!
//! The header checksum is checked at every open (cheap); the body checksum the first time a
//! process opens a given file, so a truncated or bit-flipped file is never used.

use std::io::Write;

use augment::CaseIndex;
use volume::Geometry;

pub const MAGIC: &[u8; 8] = b"SEGCASE\0";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 4096;
const DTYPE_F32: u32 = 1;
const DTYPE_U8: u32 = 2;
const MINS_AT: usize = 296;
const HEADER_HASH_AT: usize = HEADER_LEN - 32;
/// The most image channels whose minima fit in the header.
pub const MAX_CHANNELS: usize = (HEADER_HASH_AT - MINS_AT) / 4;

#[cfg(not(target_endian = "little"))]
compile_error!("the case cache maps little-endian files as native arrays");

/// What the header says about a case.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub dims: [usize; 3],
    pub channels: usize,
    pub image: (usize, usize),
    pub label: (usize, usize),
    pub index: (usize, usize),
    pub file_len: usize,
    pub geometry: Geometry,
    pub source: [u8; 32],
    pub body_hash: [u8; 32],
    pub mins: Vec<f32>,
}

impl Header {
    /// The layout of a case of `dims` × `channels` with a foreground index of `index_bytes`.
    pub fn layout(dims: [usize; 3], channels: usize, index_bytes: usize) -> Header {
        let n: usize = dims.iter().product();
        let image = (HEADER_LEN, 4 * n * channels);
        let label = (image.0 + image.1, n);
        let index = ((label.0 + label.1).next_multiple_of(8), index_bytes);
        Header {
            dims,
            channels,
            image,
            label,
            index,
            file_len: index.0 + index.1,
            geometry: Geometry::identity([1.0; 3]),
            source: [0; 32],
            body_hash: [0; 32],
            mins: vec![0.0; channels],
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        for v in self.dims.iter().chain([&self.channels]) {
            h.extend_from_slice(&(*v as u64).to_le_bytes());
        }
        h.extend_from_slice(&DTYPE_F32.to_le_bytes());
        h.extend_from_slice(&DTYPE_U8.to_le_bytes());
        for (o, l) in [self.image, self.label, self.index] {
            h.extend_from_slice(&(o as u64).to_le_bytes());
            h.extend_from_slice(&(l as u64).to_le_bytes());
        }
        h.extend_from_slice(&(self.file_len as u64).to_le_bytes());
        let g = &self.geometry;
        for v in g
            .spacing
            .iter()
            .chain(&g.origin)
            .chain(g.direction.iter().flatten())
        {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h.extend_from_slice(&self.source);
        h.extend_from_slice(&self.body_hash);
        debug_assert_eq!(h.len(), MINS_AT);
        for m in &self.mins {
            h.extend_from_slice(&m.to_le_bytes());
        }
        h.resize(HEADER_HASH_AT, 0);
        let hash = blake3::hash(&h);
        h.extend_from_slice(hash.as_bytes());
        h
    }

    /// Parses and checks a header against the file's actual length; the error says what is
    /// wrong (the caller names the file).
    pub fn decode(bytes: &[u8], actual_len: u64) -> Result<Header, String> {
        if bytes.len() < HEADER_LEN {
            return Err(format!(
                "{} bytes, shorter than the {HEADER_LEN}-byte header (truncated)",
                bytes.len()
            ));
        }
        let h = &bytes[..HEADER_LEN];
        if &h[..8] != MAGIC {
            return Err("not a segtune case cache file (bad magic)".into());
        }
        if blake3::hash(&h[..HEADER_HASH_AT]).as_bytes() != &h[HEADER_HASH_AT..] {
            return Err("header checksum mismatch (corrupt header)".into());
        }
        let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().expect("8 bytes"));
        let f64_at = |o: usize| f64::from_le_bytes(h[o..o + 8].try_into().expect("8 bytes"));
        if u32_at(8) != VERSION {
            return Err(format!(
                "format version {}, this build reads {VERSION}",
                u32_at(8)
            ));
        }
        if u32_at(12) as usize != HEADER_LEN || u32_at(48) != DTYPE_F32 || u32_at(52) != DTYPE_U8 {
            return Err("unexpected header length or dtypes".into());
        }
        let size = |o: usize| usize::try_from(u64_at(o)).map_err(|_| "size overflows".to_string());
        let dims = [size(16)?, size(24)?, size(32)?];
        let channels = size(40)?;
        if channels == 0 || channels > MAX_CHANNELS {
            return Err(format!("{channels} channels, expected 1 to {MAX_CHANNELS}"));
        }
        let n = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(4 * channels))
            .ok_or("dims overflow")?;
        let index_bytes = size(96)?;
        let want = Header::layout(dims, channels, index_bytes);
        let got = (
            (size(56)?, size(64)?),
            (size(72)?, size(80)?),
            (size(88)?, index_bytes),
            size(104)?,
        );
        if got != (want.image, want.label, want.index, want.file_len) || want.image.1 != n {
            return Err("section offsets do not match the dims".into());
        }
        if actual_len != want.file_len as u64 {
            return Err(format!(
                "{actual_len} bytes, the header says {} (truncated or padded)",
                want.file_len
            ));
        }
        let mut vals = (0..15).map(|i| f64_at(112 + 8 * i));
        let mut take3 = || -> [f64; 3] { std::array::from_fn(|_| vals.next().expect("15 values")) };
        let spacing = take3();
        let origin = take3();
        let direction = [take3(), take3(), take3()];
        let mut source = [0; 32];
        source.copy_from_slice(&h[232..264]);
        let mut body_hash = [0; 32];
        body_hash.copy_from_slice(&h[264..296]);
        let mins = (0..channels)
            .map(|c| {
                f32::from_le_bytes(
                    h[MINS_AT + 4 * c..MINS_AT + 4 * c + 4]
                        .try_into()
                        .expect("4"),
                )
            })
            .collect();
        Ok(Header {
            geometry: Geometry {
                spacing,
                origin,
                direction,
            },
            source,
            body_hash,
            mins,
            ..want
        })
    }
}

/// The index section's bytes.
pub fn encode_index(index: &CaseIndex) -> Vec<u8> {
    let parts = index.parts();
    let mut out =
        Vec::with_capacity(4 + parts.iter().map(|(_, v)| 12 + 8 * v.len()).sum::<usize>());
    out.extend_from_slice(&(parts.len() as u32).to_le_bytes());
    for (c, list) in parts {
        out.extend_from_slice(&(*c as u32).to_le_bytes());
        out.extend_from_slice(&(list.len() as u64).to_le_bytes());
        for &v in list {
            out.extend_from_slice(&(v as u64).to_le_bytes());
        }
    }
    out
}

pub fn decode_index(bytes: &[u8], dims: [usize; 3]) -> Result<CaseIndex, String> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let s = bytes
            .get(at..at + n)
            .ok_or_else(|| "foreground index is cut short".to_string())?;
        at += n;
        Ok(s)
    };
    let classes = u32::from_le_bytes(take(4)?.try_into().expect("4"));
    let mut parts = Vec::new();
    for _ in 0..classes {
        let c = u32::from_le_bytes(take(4)?.try_into().expect("4"));
        let c = u8::try_from(c).map_err(|_| format!("foreground class {c} is not a u8"))?;
        let count = u64::from_le_bytes(take(8)?.try_into().expect("8")) as usize;
        let raw = take(count.checked_mul(8).ok_or("index count overflows")?)?;
        let list = raw
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8")) as usize)
            .collect();
        parts.push((c, list));
    }
    if at != bytes.len() {
        return Err(format!(
            "foreground index has {} trailing bytes",
            bytes.len() - at
        ));
    }
    CaseIndex::from_parts(dims, parts).map_err(|e| format!("foreground index: {e}"))
}

/// Writes `data` as little-endian bytes through `out` and `hasher`, a chunk at a time.
pub fn write_f32s(
    data: &[f32],
    out: &mut impl Write,
    hasher: &mut blake3::Hasher,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1 << 16);
    for chunk in data.chunks(1 << 14) {
        buf.clear();
        for v in chunk {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        hasher.update(&buf);
        out.write_all(&buf)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_round_trips_and_any_changed_byte_is_refused() {
        let mut h = Header::layout([5, 6, 7], 2, 20);
        h.geometry = Geometry {
            spacing: [0.5, 1.0, 2.0],
            origin: [1.0, -2.0, 3.0],
            direction: [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]],
        };
        h.mins = vec![-1.0, 0.25];
        h.source = [7; 32];
        h.body_hash = [9; 32];
        let bytes = h.encode();
        assert_eq!(bytes.len(), HEADER_LEN);
        assert_eq!(Header::decode(&bytes, h.file_len as u64), Ok(h.clone()));
        let e = Header::decode(&bytes, h.file_len as u64 - 1).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        for at in [0, 20, 100, 300, 4070] {
            let mut b = bytes.clone();
            b[at] ^= 1;
            assert!(Header::decode(&b, h.file_len as u64).is_err(), "byte {at}");
        }
    }

    #[test]
    fn an_index_round_trips_and_a_cut_one_is_refused() {
        let idx =
            CaseIndex::from_parts([4, 4, 4], vec![(1, vec![0, 5, 63]), (3, vec![7])]).unwrap();
        let b = encode_index(&idx);
        assert_eq!(decode_index(&b, [4, 4, 4]).unwrap(), idx);
        assert!(decode_index(&b[..b.len() - 1], [4, 4, 4]).is_err());
        assert!(decode_index(&b, [2, 2, 2]).is_err(), "voxel 63 outside 2³");
    }
}
