"""Hostile image files, made at run time (no binary fixtures): what a folder of photos from
the wild (or an attacker) holds that a decoder trips on.

EXIF blocks that Pillow cannot re-serialise, other formats' bytes under an image name,
truncated and zero-byte files, a 1×1 image, 9400² images that are small on disk (16-bit
grey, RGBA) and a JPEG whose header alone claims 9400², a float TIFF with a NaN, and
byte-flipped copies of valid JPEG/PNG/WebP/TIFF files (seeded, so every run sees the same
files). Everything is small on disk and quick to make; the big images are written row by row
through zlib, never held whole in memory.

:func:`build_hostile_folder` returns what each file must become: :class:`Expected`.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: the side of the "big" hostile images: 9400² = 88.4 MP, under decode.max_pixels (89.5 MP)
BIG_SIDE_PX = 9400


@dataclass(frozen=True)
class Expected:
    """What curation must make of a file: ``reason`` None = decoded (a face or ``no_face``);
    ``reasons``: the reasons allowed when several are honest (mutated files); ``detail``: a
    text the row's detail must contain (the exception's type, for files that raise)."""

    reason: str | None = None
    reasons: tuple[str, ...] = ()
    detail: str | None = None
    face: bool = False  # a real face: accepted


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def big_png(side: int, color_type: int, bit_depth: int) -> bytes:
    """A ``side``² PNG (grey 16-bit: color_type 0 / bit_depth 16; RGBA: 6 / 8) whose pixels
    are one gradient row repeated: every row after the first is filtered "Up" (all zeros),
    so the file is a few hundred KB and is written without holding the image."""
    channels = {0: 1, 2: 3, 6: 4}[color_type]
    dtype = ">u2" if bit_depth == 16 else "u1"
    top = 65535 if bit_depth == 16 else 255
    row = (np.arange(side * channels, dtype=np.int64) * 37 % top).astype(dtype).tobytes()
    compressor = zlib.compressobj(6)
    parts = [compressor.compress(b"\x00" + row)]
    zero_row = b"\x02" + bytes(len(row))
    for _ in range(side - 1):
        parts.append(compressor.compress(zero_row))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def jpeg_claiming(side: int) -> bytes:
    """A small valid JPEG whose frame header (SOF0) is patched to claim ``side``²: little
    data, a huge decode."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 120, 150)).save(buf, format="JPEG", quality=80)
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    # SOFn: marker, length (2), precision (1), height (2), width (2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def _exif_block(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """A little-endian TIFF/EXIF block with one IFD; values of ≤ 4 bytes inline."""
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\x00")[:4]
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)


def exif_broken_jpeg(photo: Image.Image, wrong_tag: int) -> bytes:
    """Pixels stored turned 90° counter-clockwise with EXIF Orientation 6 (so upright is one
    transpose away), plus standard tag ``wrong_tag`` stored as ASCII: re-serialising that
    block raises in Pillow (a SHORT tag: struct.error; a RATIONAL one: AttributeError)."""
    stored = photo.convert("RGB").rotate(90, expand=True)
    exif = _exif_block([(0x0112, 3, 1, struct.pack("<H", 6)), (wrong_tag, 2, 4, b"abc\x00")])
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=90, exif=b"Exif\x00\x00" + exif)
    return buf.getvalue()


def dds_bytes() -> bytes:
    """A DDS file (a format Pillow opens) with a pixel format it cannot decode."""
    header = bytearray(124)
    struct.pack_into("<IIII", header, 0, 124, 0x1007, 64, 64)  # size, flags, height, width
    struct.pack_into("<II4s", header, 72, 32, 0x4, b"ZZZZ")  # pixel format: an unknown FourCC
    return b"DDS " + bytes(header)


def float_tiff_with_nan(side: int = 64) -> bytes:
    """A float32 grey TIFF (mode F) with values 0–1000 and one NaN pixel."""
    values = np.tile(np.linspace(0, 1000, side, dtype=np.float32), (side, 1))
    values[3, 5] = np.nan
    buf = io.BytesIO()
    Image.fromarray(values, "F").save(buf, format="TIFF")
    return buf.getvalue()


def valid_files(side: int = 48) -> dict[str, bytes]:
    """One small valid file per accepted format (a coloured gradient), the fuzzer's seeds."""
    ramp = np.linspace(0, 255, side, dtype=np.uint8)
    rgb = np.stack([*np.meshgrid(ramp, ramp[::-1]), np.full((side, side), 90, np.uint8)], -1)
    image = Image.fromarray(rgb, "RGB")
    # an EXIF block with an orientation and typed tags: what the decoder reads as data
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation (SHORT)
    exif[0x0128] = 2  # ResolutionUnit (SHORT)
    exif[0x011A] = 72.0  # XResolution (RATIONAL)
    exif[0x010F] = "camera"  # Make (ASCII)
    files = {}
    for ext, fmt in (("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP"), ("tif", "TIFF")):
        buf = io.BytesIO()
        image.save(buf, format=fmt, exif=exif.tobytes())
        files[ext] = buf.getvalue()
    return files


def _retype_exif_entry(buf: bytearray, tiff_at: int, rng: random.Random) -> None:
    """Give one entry of the first IFD another TIFF type (1–12): a SHORT stored as ASCII, a
    RATIONAL as LONG... (the malformations cameras and editors really write)."""
    order = "<" if buf[tiff_at : tiff_at + 2] == b"II" else ">"
    ifd_at = tiff_at + struct.unpack_from(order + "I", buf, tiff_at + 4)[0]
    if ifd_at + 2 > len(buf):
        return
    num_entries = struct.unpack_from(order + "H", buf, ifd_at)[0]
    if num_entries == 0 or ifd_at + 2 + 12 * num_entries > len(buf):
        return
    entry_at = ifd_at + 2 + 12 * rng.randrange(num_entries)
    struct.pack_into(order + "H", buf, entry_at + 2, rng.randint(1, 12))


def _fix_png_crcs(buf: bytearray) -> None:
    """Recompute a PNG's chunk CRCs (so that a changed eXIf chunk is read, not refused)."""
    if not buf.startswith(b"\x89PNG"):
        return
    at = 8
    while at + 12 <= len(buf):
        length = struct.unpack_from(">I", buf, at)[0]
        end = at + 8 + length
        if end + 4 > len(buf):
            return
        struct.pack_into(">I", buf, end, zlib.crc32(buf[at + 4 : end]))
        at = end + 4


def mutations(data: bytes, count: int, seed: int) -> list[bytes]:
    """``count`` copies of ``data`` with 1–8 random bytes replaced or cut short, seeded: the
    same copies on every run. A flip lands in the header (first 200 bytes), in the EXIF
    block (its IFD entries' types and counts are what Pillow's EXIF code trusts) or anywhere.
    """
    rng = random.Random(seed)
    # the TIFF header of the EXIF block (a TIFF file's own IFD: at 0)
    exif_at = max(data.find(b"II*\x00"), data.find(b"MM\x00*"))
    regions = [(0, min(len(data), 200)), (0, len(data))]
    if exif_at >= 0:
        regions.append((exif_at, min(len(data), exif_at + 120)))
    out = []
    for i in range(count):
        buf = bytearray(data)
        if exif_at >= 0 and i % 2:  # a well-formed file with one mistyped EXIF entry
            _retype_exif_entry(buf, exif_at, rng)
            _fix_png_crcs(buf)
            out.append(bytes(buf))
            continue
        low, high = regions[i % len(regions)]
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(low, high)] = rng.randrange(256)
        if i % 7 == 6:
            del buf[rng.randrange(len(buf) // 2, len(buf)) :]
        out.append(bytes(buf))
    return out


def build_hostile_folder(
    photos: Path, dest: Path, big: bool = True, num_mutations: int = 3
) -> dict[str, Expected]:
    """Write the hostile folder into ``dest``; returns file name → :class:`Expected`.

    ``photos``: the real sample photos (``obama.jpg``, ``biden.jpg``), for the EXIF cases
    (faces that must be accepted upright). ``big``: include the 9400² images (slow to detect on).
    """
    dest.mkdir(parents=True, exist_ok=True)
    expected: dict[str, Expected] = {}

    def put(name: str, data: bytes, want: Expected) -> None:
        (dest / name).write_bytes(data)
        expected[name] = want

    # two different people (one photo twice would be a near-duplicate)
    for name, photo, tag in (
        ("exif_short_as_ascii.jpg", "obama.jpg", 0x0128),
        ("exif_rational_as_ascii.jpg", "biden.jpg", 0x011A),
    ):
        with Image.open(photos / photo) as image:
            put(name, exif_broken_jpeg(image, tag), Expected(face=True))
    put("dds.jpg", dds_bytes(), Expected("undecodable", detail="UnidentifiedImageError"))
    gif = io.BytesIO()
    Image.new("P", (32, 32)).save(gif, format="GIF")
    put("gif.png", gif.getvalue(), Expected("undecodable", detail="UnidentifiedImageError"))
    put("zero.jpg", b"", Expected("empty_file"))
    put("text.png", b"this is not a picture\n", Expected("undecodable"))
    seeds = valid_files()
    put(
        "truncated.png",
        seeds["png"][: len(seeds["png"]) // 2],
        Expected(reasons=("truncated", "undecodable")),
    )
    put(
        "truncated.webp",
        seeds["webp"][: len(seeds["webp"]) // 2],
        Expected(reasons=("truncated", "undecodable")),
    )
    one = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 10, 10)).save(one, format="PNG")
    put("one_pixel.png", one.getvalue(), Expected("too_small"))
    put("nan_float.tif", float_tiff_with_nan(), Expected("no_face"))
    put(
        "claims_9400.jpg",
        jpeg_claiming(BIG_SIDE_PX),
        Expected(reasons=("truncated", "no_face")),
    )
    if big:
        put("grey16_9400.png", big_png(BIG_SIDE_PX, 0, 16), Expected("no_face"))
        put("rgba_9400.png", big_png(BIG_SIDE_PX, 6, 8), Expected("no_face"))
    anything = ("no_face", "truncated", "undecodable", "too_small")
    for ext, data in seeds.items():
        for i, mutated in enumerate(mutations(data, num_mutations, seed=zlib.crc32(ext.encode()))):
            put(f"mutated_{ext}_{i}.{ext}", mutated, Expected(reasons=anything))
    return expected
