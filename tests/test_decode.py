"""Decoding: every kind of bad or unusual file becomes RGB or a named reason."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import hostile
import numpy as np
import pytest
from conftest import BAD_INPUT_EXPECTED
from PIL import Image

from e4t.config import DecodeConfig
from e4t.data.decode import decode_image, is_image_name


@pytest.mark.parametrize("name", [n for n in BAD_INPUT_EXPECTED if is_image_name(n)])
def test_decode_outcome_per_input(bad_inputs_dir: Path, name: str) -> None:
    result = decode_image((bad_inputs_dir / name).read_bytes(), DecodeConfig())
    expected = BAD_INPUT_EXPECTED[name]
    if expected in (None, "no_face"):
        assert result.reason is None, result.detail
        assert result.image is not None
        assert (
            result.image.dtype == np.uint8 and result.image.ndim == 3 and result.image.shape[2] == 3
        )
    else:
        assert result.image is None
        assert result.reason == expected, result.detail


def test_source_modes_are_converted(bad_inputs_dir: Path) -> None:
    modes = {
        n: decode_image((bad_inputs_dir / n).read_bytes(), DecodeConfig()).source_mode
        for n in ("cmyk.jpg", "deep16.png", "rgba.png", "grey.jpg")
    }
    assert modes["cmyk.jpg"] == "CMYK"
    assert modes["deep16.png"].startswith("I")
    assert modes["rgba.png"] == "RGBA"
    assert modes["grey.jpg"] == "L"


def test_sixteen_bit_keeps_its_range(bad_inputs_dir: Path, photos_dir: Path) -> None:
    from PIL import Image

    deep = decode_image((bad_inputs_dir / "deep16.png").read_bytes(), DecodeConfig()).image
    grey = np.asarray(Image.open(photos_dir / "biden.jpg").convert("L"))
    assert deep is not None
    # 16-bit values scaled back to 8 bits: the same picture, not a white or black one
    assert np.abs(deep[..., 0].astype(int) - grey.astype(int)).mean() < 1.0


def test_exif_orientation_is_applied(bad_inputs_dir: Path, photos_dir: Path) -> None:
    from PIL import Image

    result = decode_image((bad_inputs_dir / "exif_rotated.jpg").read_bytes(), DecodeConfig())
    upright = Image.open(photos_dir / "obama.jpg")
    assert result.image is not None
    assert result.image.shape[:2] == (upright.height, upright.width)


def test_max_pixels_is_configurable(photos_dir: Path) -> None:
    data = (photos_dir / "obama.jpg").read_bytes()
    assert decode_image(data, DecodeConfig()).image is not None
    small = decode_image(data, DecodeConfig(max_pixels=1000))
    assert small.reason == "decompression_bomb" and "max_pixels=1000" in (small.detail or "")


def test_an_image_too_big_for_memory_is_a_too_large_row(tmp_path: Path) -> None:
    """Under both caps (bytes and pixels) yet too big to decode here: a reason, not a
    MemoryError that kills the partition (the address space is capped in a subprocess)."""
    import subprocess
    import sys

    from PIL import Image

    path = tmp_path / "wide.png"
    Image.new("RGB", (8000, 8000), (120, 90, 60)).save(path)  # 192 MB decoded, tiny on disk
    code = (
        "import resource, sys\n"
        "from e4t.config import DecodeConfig\n"
        "from e4t.data.decode import decode_image\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "size = [l for l in open('/proc/self/status') if l.startswith('VmSize')][0]\n"
        "limit = int(size.split()[1]) * 1024 + 96 * 2**20\n"
        "resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
        "print(decode_image(data, DecodeConfig()).reason)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "too_large"


# --------------------------------------------------------------------------- hostile files


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _asymmetric(width: int = 96, height: int = 64) -> Image.Image:
    """A picture whose every flip and turn looks different (a gradient and a corner block)."""
    values = np.zeros((height, width, 3), np.uint8)
    values[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    values[..., 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    values[:16, :24, 2] = 255
    return Image.fromarray(values, "RGB")


def test_the_decoder_fuzzed_never_raises() -> None:
    """Byte-flipped and cut copies of a valid file of each format: every one decodes or is a
    reason with a detail; no exception of any type escapes (issue 21: struct.error,
    NotImplementedError, TypeError... used to)."""
    outcomes: dict[str, set[str | None]] = {}
    for ext, data in hostile.valid_files().items():
        for mutated in hostile.mutations(data, 60, seed=zlib.crc32(ext.encode())):
            result = decode_image(mutated, DecodeConfig())
            if result.image is None:
                assert result.reason and result.detail, (ext, result)
            else:
                assert result.image.dtype == np.uint8 and result.image.shape[2] == 3
            outcomes.setdefault(ext, set()).add(result.reason)
    assert set(outcomes) == {"jpg", "png", "webp", "tif"}


@pytest.mark.parametrize(("tag", "kind"), [(0x0128, "SHORT"), (0x011A, "RATIONAL")])
def test_a_broken_exif_block_still_turns_the_photo_upright(tag: int, kind: str) -> None:
    """Orientation 6 plus a standard {kind} tag stored as ASCII: Pillow's exif_transpose
    raised re-serialising the block; the orientation is read as data instead."""
    upright = _asymmetric()
    result = decode_image(hostile.exif_broken_jpeg(upright, tag), DecodeConfig())
    assert result.image is not None, result.detail
    assert result.image.shape == (upright.height, upright.width, 3)
    assert np.abs(result.image.astype(int) - np.asarray(upright, dtype=int)).mean() < 4


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow(orientation: int) -> None:
    from PIL import ImageOps

    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    _asymmetric().save(buf, format="PNG", exif=exif.tobytes())
    result = decode_image(buf.getvalue(), DecodeConfig())
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert result.image is not None
    assert np.array_equal(result.image, np.asarray(expected))


@pytest.mark.parametrize("name", ["dds", "gif"])
def test_only_the_listed_formats_are_parsed(name: str) -> None:
    """DDS bytes named .jpg raised NotImplementedError inside Pillow's DDS plugin; formats
    outside the README's list are not even parsed."""
    if name == "dds":
        data = hostile.dds_bytes()
    else:
        buf = io.BytesIO()
        Image.new("RGB", (32, 32)).save(buf, format="GIF")
        data = buf.getvalue()
    result = decode_image(data, DecodeConfig())
    assert result.reason == "undecodable"
    assert "UnidentifiedImageError" in (result.detail or "")


def test_a_one_pixel_image_is_too_small() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 0, 0)).save(buf, format="PNG")
    result = decode_image(buf.getvalue(), DecodeConfig())
    assert result.reason == "too_small" and "1x1" in (result.detail or "")


def test_one_nan_pixel_does_not_black_out_a_float_tiff() -> None:
    result = decode_image(hostile.float_tiff_with_nan(), DecodeConfig())
    assert result.image is not None, result.detail
    row = result.image[10, :, 0].astype(int)
    assert row[-1] == 255 and row[0] == 0  # values 0–1000 span black to white
    assert np.all(np.diff(row) >= 0) and 100 < row[32] < 160
    assert result.image[3, 5, 0] == 0  # the NaN pixel itself: black


def test_a_jpeg_claiming_9400_px_decodes_scaled_by_the_codec() -> None:
    """692 bytes whose header claims 9400²: decoded at 1/2 scale (draft), under
    decode.max_decoded_megapixels, never allocated at full size."""
    config = DecodeConfig()
    result = decode_image(hostile.jpeg_claiming(hostile.BIG_SIDE_PX), config)
    assert result.image is not None or result.reason == "truncated"
    if result.image is not None:
        height, width = result.image.shape[:2]
        assert height * width <= config.max_decoded_megapixels * 1e6
        assert width == hostile.BIG_SIDE_PX // 2


def test_large_images_are_reduced_to_the_decoded_cap() -> None:
    image = _asymmetric(900, 600)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    result = decode_image(buf.getvalue(), DecodeConfig(max_decoded_megapixels=0.1))
    assert result.image is not None
    assert result.image.shape == (200, 300, 3)  # reduced by 3: 0.06 MP ≤ 0.1 MP
    expected = np.asarray(image.reduce(3))
    assert np.abs(result.image.astype(int) - expected.astype(int)).max() <= 1


def test_a_decode_buffer_over_the_cap_is_too_large() -> None:
    buf = io.BytesIO()
    Image.new("RGBA", (1200, 1000)).save(buf, format="PNG")  # 4.6 MiB in Pillow's storage
    result = decode_image(buf.getvalue(), DecodeConfig(max_decode_mib=4))
    assert result.reason == "too_large" and "max_decode_mib=4" in (result.detail or "")


_PEAK_RSS = (
    "import sys\n"
    "from e4t.config import DecodeConfig\n"
    "from e4t.data.decode import decode_image\n"
    "def kib(key):\n"
    "    return int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1])\n"
    "data = open(sys.argv[1], 'rb').read()\n"
    "decode_image(b'GIF89a', DecodeConfig())  # Pillow's plugins loaded before the baseline\n"
    "open('/proc/self/clear_refs', 'w').write('5')  # the peak (VmHWM) restarts from here\n"
    "base = kib('VmRSS')\n"
    "result = decode_image(data, DecodeConfig())\n"
    "print(result.reason, (kib('VmHWM') - base) // 1024)\n"
)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "color_type", "bit_depth"), [("grey16", 0, 16), ("rgba", 6, 8)])
def test_a_big_image_under_the_caps_decodes_within_512_mib(
    tmp_path: Path, name: str, color_type: int, bit_depth: int
) -> None:
    """9400² (under decode.max_pixels) yet a few hundred KB on disk: peak RSS above the
    worker's baseline stays under 512 MiB (it was 2.2 GiB for 16-bit grey, 1.7 GiB for RGBA:
    float64 copies of the whole image). A memory bound, measured in a fresh process."""
    import subprocess
    import sys

    path = tmp_path / f"{name}.png"
    path.write_bytes(hostile.big_png(hostile.BIG_SIDE_PX, color_type, bit_depth))
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, str(path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    reason, peak_mib = done.stdout.split()
    assert reason == "None"  # decoded (reduced), not refused
    assert int(peak_mib) < 512, f"{name}: {peak_mib} MiB above the baseline"


def _tiff_one_strip(width: int, height: int, samples: int, bits: int) -> bytes:
    """A deflate-compressed little-endian TIFF whose one strip is the whole image (small on
    disk: the pixels are zeros)."""
    import struct

    data = zlib.compress(bytes(width * height * samples * bits // 8), 9)
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, samples, None),
               (259, 3, 1, 8), (262, 3, 1, 2), (273, 4, 1, None), (277, 3, 1, samples),
               (278, 4, 1, height), (279, 4, 1, len(data))]  # fmt: skip
    if samples == 4:
        entries.append((338, 3, 1, 2))
    ifd = 8
    bits_at = ifd + 2 + 12 * len(entries) + 4
    data_at = bits_at + 2 * samples
    out = b"II*\x00" + struct.pack("<I", ifd) + struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        if tag == 258:
            value = bits_at
        if tag == 273:
            value = data_at
        if kind == 3 and tag != 258:
            out += struct.pack("<HHIHH", tag, kind, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, kind, count, value)
    return out + struct.pack("<I", 0) + struct.pack("<H", bits) * samples + data


def test_a_codecs_working_memory_counts_in_the_decode_bound() -> None:
    """What a codec holds beside the image while decoding, read from the header: a
    progressive JPEG's coefficients (2 bytes each, full size), a TIFF's one strip in its own
    16-bit samples, a WebP's buffers; a baseline JPEG and a PNG decode row by row (0)."""
    from e4t.data.decode import _codec_bytes

    image = Image.new("RGB", (2000, 1000), (120, 90, 60))
    cases = {
        "progressive 4:4:4": (image, "JPEG", {"progressive": True, "subsampling": 0}),
        "progressive 4:2:0": (image, "JPEG", {"progressive": True, "subsampling": 2}),
        "progressive CMYK": (image.convert("CMYK"), "JPEG", {"progressive": True}),
        "baseline": (image, "JPEG", {}),
        "png": (image, "PNG", {}),
        "webp": (image, "WEBP", {"lossless": True}),
    }
    px = 2000 * 1000
    want = {"progressive 4:4:4": 6 * px, "progressive 4:2:0": 3 * px,
            "progressive CMYK": 8 * px, "baseline": 0, "png": 0, "webp": 16 * px}  # fmt: skip
    for name, (picture, fmt, options) in cases.items():
        buffer = io.BytesIO()
        picture.save(buffer, fmt, **options)
        opened = Image.open(io.BytesIO(buffer.getvalue()))
        assert _codec_bytes(opened, opened.size) == want[name], name
    tiff = Image.open(io.BytesIO(_tiff_one_strip(300, 200, 4, 16)))
    assert _codec_bytes(tiff, tiff.size) == 300 * 200 * 8


def test_images_whose_codec_would_blow_the_bound_are_too_large_before_decoding() -> None:
    """Small on disk, big to decode (found by an attacker's try: a 38-byte lossless WebP of
    9400² peaked at 1,348 MiB; a one-strip 16-bit RGBA TIFF at 1,011 MiB): refused as
    too_large from the header, with the MiB it would need."""
    from e4t.config import DecodeConfig

    buffer = io.BytesIO()
    Image.new("RGB", (6000, 6000)).save(buffer, "WEBP", lossless=True, method=0)
    assert len(buffer.getvalue()) < 10_000
    cases = {"webp": buffer.getvalue(), "tiff": _tiff_one_strip(6000, 6000, 4, 16)}
    for name, data in cases.items():
        result = decode_image(data, DecodeConfig())
        assert result.reason == "too_large", (name, result.reason, result.detail)
        assert "MiB to decode" in result.detail, name
