"""Decoding: every kind of bad or unusual file becomes RGB or a named reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import BAD_INPUT_EXPECTED

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
