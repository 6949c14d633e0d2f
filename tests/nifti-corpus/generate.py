#!/usr/bin/env python3
"""Writes a corpus of malformed NIfTI-1 files, each breaking one header or data check, into OUTDIR.

Usage: generate.py OUTDIR

Python 3 standard library only; deterministic (same bytes on every run, gzip mtime 0).
Each file breaks one thing in an otherwise valid 4x4x4 uint8 image; `MANIFEST.tsv` lists
every file with what it breaks. The test that reads them (shared/volume/tests/corpus)
holds its own table of the error each file must produce, so a file added here without an
expectation there fails that test.

The two gzip bombs inflate to 10 GiB from ~10 MB. They are written without ever holding
more than 1 MiB: a 1 MiB block of zeros is deflated once, ending in a full flush (byte
aligned, history reset), so the same compressed bytes can be repeated 10240 times; the
CRC-32 of the zeros is extended with zlib's GF(2) operator method instead of being computed
over 10 GiB.
"""

import gzip
import os
import struct
import sys
import zlib

HEADER = 348
VOX_OFFSET = 352

# Offsets of NIfTI-1 header fields.
OFF_DIM = 40
OFF_DATATYPE = 70
OFF_BITPIX = 72
OFF_PIXDIM = 76
OFF_VOX_OFFSET = 108
OFF_SCL_SLOPE = 112
OFF_SCL_INTER = 116
OFF_QFORM_CODE = 252
OFF_SFORM_CODE = 254
OFF_SROW = 280
OFF_MAGIC = 344

NAN = float("nan")
INF = float("inf")

BOMB_CHUNK = 1 << 20
BOMB_CHUNKS = 10240  # 10 GiB of zeros


def header(
    dims=(4, 4, 4),
    datatype=2,
    bitpix=8,
    vox_offset=352.0,
    endian="<",
    extension=False,
):
    """A valid single-file NIfTI-1 header (352 bytes with the extender), no transform."""
    b = bytearray(VOX_OFFSET)
    struct.pack_into(endian + "i", b, 0, HEADER)
    dim = [len(dims)] + list(dims) + [1] * (7 - len(dims))
    struct.pack_into(endian + "8h", b, OFF_DIM, *dim)
    struct.pack_into(endian + "hh", b, OFF_DATATYPE, datatype, bitpix)
    struct.pack_into(endian + "8f", b, OFF_PIXDIM, *([1.0] * 8))
    struct.pack_into(endian + "f", b, OFF_VOX_OFFSET, vox_offset)
    struct.pack_into(endian + "ff", b, OFF_SCL_SLOPE, 1.0, 0.0)
    b[OFF_MAGIC : OFF_MAGIC + 4] = b"n+1\0"
    if extension:
        b[HEADER] = 1
    return b


def put(b, fmt, offset, *values, endian="<"):
    struct.pack_into(endian + fmt, b, offset, *values)
    return b


DATA = bytes(range(64))  # 4x4x4 uint8


def image(h, data=DATA):
    return bytes(h) + data


def gz(data):
    return gzip.compress(data, compresslevel=6, mtime=0)


def gf2_times(mat, vec):
    out = 0
    i = 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def gf2_square(mat):
    return [gf2_times(mat, mat[n]) for n in range(32)]


def crc32_zeros(crc, n):
    """CRC-32 of (data whose CRC-32 is `crc`) followed by `n` zero bytes.

    Feeding a zero byte to the (reflected) CRC register is linear, so n of them are the
    operator for one zero bit raised to 8n, by repeated squaring (zlib's crc32_combine).
    """
    reg = crc ^ 0xFFFFFFFF
    odd = [0xEDB88320] + [1 << i for i in range(31)]  # one zero bit
    even = gf2_square(odd)  # two zero bits
    odd = gf2_square(even)  # four zero bits
    while n:
        even = gf2_square(odd)
        if n & 1:
            reg = gf2_times(even, reg)
        n >>= 1
        if not n:
            break
        odd = gf2_square(even)
        if n & 1:
            reg = gf2_times(odd, reg)
        n >>= 1
    return reg ^ 0xFFFFFFFF


def write_bomb(path, prefix, chunks=BOMB_CHUNKS):
    """gzip of `prefix` followed by chunks x 1 MiB of zeros, streamed."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(BOMB_CHUNK)
    head = co.compress(prefix) + co.flush(zlib.Z_FULL_FLUSH)
    block = co.compress(zeros) + co.flush(zlib.Z_FULL_FLUSH)
    tail = co.flush(zlib.Z_FINISH)
    size = len(prefix) + chunks * BOMB_CHUNK
    crc = crc32_zeros(zlib.crc32(prefix), chunks * BOMB_CHUNK)
    with open(path, "wb") as f:
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff")
        f.write(head)
        for _ in range(chunks):
            f.write(block)
        f.write(tail)
        f.write(struct.pack("<II", crc, size & 0xFFFFFFFF))


def self_check():
    """The bomb construction, checked on a small instance against gzip itself."""
    assert crc32_zeros(zlib.crc32(b"abc"), 1000) == zlib.crc32(b"abc" + bytes(1000))
    assert crc32_zeros(0, 0) == 0
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "small.gz")
        write_bomb(p, b"prefix", chunks=3)
        with open(p, "rb") as f:
            assert gzip.decompress(f.read()) == b"prefix" + bytes(3 * BOMB_CHUNK)


def nifti2(endian="<"):
    """A valid-looking NIfTI-2 header (540 bytes) and 4x4x4 uint8 data."""
    b = bytearray(544)
    e = endian
    struct.pack_into(e + "i", b, 0, 540)
    b[4:12] = b"n+2\0\r\n\x1a\n"
    struct.pack_into(e + "hh", b, 12, 2, 8)
    struct.pack_into(e + "8q", b, 16, 3, 4, 4, 4, 1, 1, 1, 1)
    struct.pack_into(e + "8d", b, 104, *([1.0] * 8))
    struct.pack_into(e + "q", b, 168, 544)
    struct.pack_into(e + "dd", b, 176, 1.0, 0.0)
    return bytes(b) + DATA


def ext(esize, ecode=6, length=32):
    e = struct.pack("<ii", esize, ecode)
    return e + b"\x5a" * (length - len(e))


def cases():
    """(file name, what it breaks, bytes or a writer function)."""
    out = []

    def add(name, what, data):
        out.append((name, what, data))

    good = image(header())
    add("header-short.nii", "file ends inside the 348-byte header", good[:200])
    add("header-short.nii.gz", "gzip stream ends inside the header", gz(good[:200]))
    add("empty.nii", "zero bytes", b"")
    add("sizeof_hdr.nii", "sizeof_hdr = 1234", image(put(header(), "i", 0, 1234)))
    add("sizeof_hdr-zero.nii", "sizeof_hdr = 0", image(put(header(), "i", 0, 0)))
    h = header()
    h[OFF_MAGIC : OFF_MAGIC + 4] = b"abc\x01"
    add("magic.nii", "magic is not n+1", image(h))
    h = header()
    h[OFF_MAGIC : OFF_MAGIC + 4] = b"ni1\0"
    add("magic-pair.nii", "magic ni1 (a .hdr/.img pair)", image(h))
    add("nifti2.nii", "a NIfTI-2 header (sizeof_hdr 540)", nifti2())
    add("nifti2-be.nii", "a big-endian NIfTI-2 header", nifti2(">"))
    add("dim0-zero.nii", "dim[0] = 0", image(put(header(), "h", OFF_DIM, 0)))
    add("dim0-eight.nii", "dim[0] = 8", image(put(header(), "h", OFF_DIM, 8)))
    add("dim0-negative.nii", "dim[0] = -1", image(put(header(), "h", OFF_DIM, -1)))
    add("dim-negative.nii", "dim[2] = -4", image(put(header(), "h", OFF_DIM + 4, -4)))
    add(
        "dim-negative-min.nii",
        "dim[1] = -32768 (32768 when read as u16)",
        image(put(header(), "h", OFF_DIM + 2, -32768)),
    )
    add("dim-zero.nii", "dim[3] = 0", image(put(header(), "h", OFF_DIM + 6, 0)))
    add(
        "be-dim-negative.nii",
        "big-endian header with dim[1] = -4",
        image(put(header(endian=">"), "h", OFF_DIM + 2, -4, endian=">")),
    )
    add(
        "dims-overflow.nii",
        "32767^4 float64: 9.2e18 bytes, overflows i64 byte arithmetic",
        image(header(dims=(32767, 32767, 32767, 32767), datatype=64, bitpix=64)),
    )
    add(
        "dims-over-cap.nii",
        "2048x2048x257 uint8: over the default 2^30 voxel cap",
        image(header(dims=(2048, 2048, 257))),
    )
    add(
        "dims-over-cap.nii.gz",
        "the same, gzipped",
        gz(image(header(dims=(2048, 2048, 257)))),
    )
    add(
        "dims-over-file.nii",
        "1024x1024x512 uint8 (under the cap) in a 416-byte file",
        image(header(dims=(1024, 1024, 512))),
    )
    add(
        "dims-over-file.nii.gz",
        "the same, gzipped: the stream ends long before the data does",
        gz(image(header(dims=(1024, 1024, 512)))),
    )
    add(
        "dim5.nii",
        "5-D data (dim[5] = 2)",
        image(header(dims=(4, 4, 2, 1, 2)), DATA),
    )
    add("data-short.nii", "voxel data cut short", image(header(), DATA[:40]))
    add(
        "bitpix.nii",
        "bitpix 8 for datatype 4 (int16)",
        image(header(datatype=4, bitpix=8), DATA * 2),
    )
    add("bitpix-zero.nii", "bitpix 0 for uint8", image(header(bitpix=0)))
    add(
        "datatype-unknown.nii",
        "datatype 999",
        image(header(datatype=999, bitpix=8)),
    )
    add(
        "datatype-complex.nii",
        "datatype 32 (complex64), valid NIfTI but not for segmentation",
        image(header(datatype=32, bitpix=64), DATA * 8),
    )
    add("vox_offset-nan.nii", "vox_offset NaN", image(header(vox_offset=NAN)))
    add("vox_offset-inf.nii", "vox_offset +inf", image(header(vox_offset=INF)))
    add("vox_offset-small.nii", "vox_offset 348 (< 352)", image(header(vox_offset=348.0)))
    add("vox_offset-negative.nii", "vox_offset -1", image(header(vox_offset=-1.0)))
    add("vox_offset-fraction.nii", "vox_offset 352.5", image(header(vox_offset=352.5)))
    add(
        "vox_offset-past-end.nii",
        "vox_offset 100000 in a 416-byte file",
        image(header(vox_offset=100000.0)),
    )
    add(
        "vox_offset-past-end.nii.gz",
        "the same, gzipped",
        gz(image(header(vox_offset=100000.0))),
    )
    add("vox_offset-huge.nii", "vox_offset 1e12", image(header(vox_offset=1e12)))
    for suffix, pack in (("", lambda b: b), (".gz", gz)):
        add(
            "ext-esize-odd.nii" + suffix,
            "extension esize 20 (not a multiple of 16)",
            pack(image(header(vox_offset=384.0, extension=True), ext(20) + DATA)),
        )
        add(
            "ext-esize-negative.nii" + suffix,
            "extension esize -16",
            pack(image(header(vox_offset=384.0, extension=True), ext(-16) + DATA)),
        )
        add(
            "ext-esize-past-offset.nii" + suffix,
            "extension esize 4096 with 32 bytes before vox_offset",
            pack(image(header(vox_offset=384.0, extension=True), ext(4096) + DATA)),
        )
        add(
            "ext-esize-max.nii" + suffix,
            "second extension esize 2^31 - 16",
            pack(
                image(
                    header(vox_offset=384.0, extension=True),
                    ext(16, length=16) + ext(0x7FFFFFF0, length=16) + DATA,
                )
            ),
        )
    for i, v, tag in ((1, 0.0, "zero"), (2, -1.5, "negative"), (3, NAN, "nan"), (1, INF, "inf")):
        add(
            f"pixdim-{tag}.nii",
            f"pixdim[{i}] = {v}",
            image(put(header(), "f", OFF_PIXDIM + 4 * i, v)),
        )
    for v, tag in ((0.5, "half"), (-2.0, "minus-two"), (NAN, "nan")):
        h = put(header(), "h", OFF_QFORM_CODE, 1)
        add(f"qfac-{tag}.nii", f"qform used with qfac (pixdim[0]) = {v}", image(put(h, "f", OFF_PIXDIM, v)))
    add("qform_code.nii", "qform_code 9", image(put(header(), "h", OFF_QFORM_CODE, 9)))
    h = put(header(), "h", OFF_SFORM_CODE, 1)
    put(h, "12f", OFF_SROW, NAN, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0)
    add("sform-nan.nii", "sform_code 1 with srow_x[0] NaN", image(h))
    h = put(header(), "h", OFF_SFORM_CODE, 1)
    add("sform-singular.nii", "sform_code 1 with all-zero srow", image(h))
    add(
        "scl_slope-inf.nii",
        "scl_slope +inf",
        image(put(header(), "ff", OFF_SCL_SLOPE, INF, 0.0)),
    )
    add(
        "scl_slope-neg-inf.nii",
        "scl_slope -inf",
        image(put(header(), "ff", OFF_SCL_SLOPE, -INF, 0.0)),
    )
    add(
        "scl_inter-inf.nii",
        "scl_inter +inf with scl_slope 2",
        image(put(header(), "ff", OFF_SCL_SLOPE, 2.0, INF)),
    )
    # Read as unscaled on purpose: older nibabel wrote NaN into every unscaled file.
    add(
        "ok-scl_slope-nan.nii",
        "scl_slope NaN: accepted as unscaled (nibabel's convention)",
        image(put(header(), "ff", OFF_SCL_SLOPE, NAN, NAN)),
    )
    good_gz = gz(good)
    crc = bytearray(good_gz)
    crc[-8] ^= 0xFF
    add("gzip-crc.nii.gz", "gzip CRC-32 flipped", bytes(crc))
    size = bytearray(good_gz)
    size[-1] ^= 0x01
    add("gzip-isize.nii.gz", "gzip ISIZE wrong", bytes(size))
    add("gzip-truncated.nii.gz", "gzip stream cut in the voxel data", good_gz[: len(good_gz) - 20])
    add("gzip-no-trailer.nii.gz", "gzip stream without its 8-byte trailer", good_gz[:-8])
    body = bytearray(good_gz)
    for i in range(12, len(body) - 8, 3):
        body[i] ^= 0x55
    add("gzip-garbage.nii.gz", "deflate data scrambled", bytes(body))
    add("not-gzip.nii.gz", "plain NIfTI named .nii.gz", good)
    add(
        "gzip-bomb.nii.gz",
        "valid 16^3 uint8 image, then 10 GiB of zeros in the same gzip member",
        lambda p: write_bomb(p, image(header(dims=(16, 16, 16)), bytes(16**3))),
    )
    add(
        "gzip-bomb-dims.nii.gz",
        "header claiming 2048x2048x2560 uint8 (10 GiB), then 10 GiB of zeros",
        lambda p: write_bomb(p, bytes(header(dims=(2048, 2048, 2560)))),
    )
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    self_check()
    manifest = []
    for name, what, data in cases():
        path = os.path.join(outdir, name)
        if callable(data):
            data(path)
        else:
            with open(path, "wb") as f:
                f.write(data)
        manifest.append(f"{name}\t{os.path.getsize(path)}\t{what}\n")
    with open(os.path.join(outdir, "MANIFEST.tsv"), "w") as f:
        f.writelines(manifest)
    print(f"{len(manifest)} files in {outdir}")


if __name__ == "__main__":
    main()
