"""Robust image decoding: whatever a folder of photos holds becomes RGB uint8 or a reason.

Only the formats the README lists are parsed (JPEG, PNG, WebP, BMP, TIFF). Applies the EXIF
orientation (read as data: a broken EXIF block is never re-serialised), converts grey, CMYK,
16-bit, float, palette and alpha images to RGB (alpha composited over white), and refuses
decompression bombs before decoding pixels.

Memory is bounded by the caps, not by the file: a decode holds the source's pixels in its own
depth plus what its codec keeps beside them (a progressive JPEG's coefficients, a TIFF strip,
WebP's buffers: read from the header), at most ``decode.max_decode_mib`` together (JPEGs are
scaled down by the codec while decoding, ``draft``), plus the RGB result (at most
``decode.max_decoded_megapixels``: larger images are reduced by an integer factor, strip by
strip, before any conversion). Any exception a decoder
raises on hostile bytes becomes a reason and a detail naming the exception, never a crash.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from dataclasses import dataclass
from typing import cast

import numpy as np
from PIL import Image, UnidentifiedImageError

from e4t.config import DecodeConfig

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
#: the Pillow formats ``Image.open`` may choose from (the README's list): nothing else is parsed
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")
#: images with a side shorter than this carry no face: ``too_small``
MIN_SIDE_PX = 8
#: rows converted at a time (times the reduction factor): bounds the conversion's copies
STRIP_ROWS = 128
_MAX_DETAIL_CHARS = 300

# EXIF orientation → the numpy view that makes the stored pixels upright (Pillow's
# exif_transpose table, as views: one copy at the end, no EXIF re-serialisation)
_UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


@dataclass(frozen=True)
class Decoded:
    """An RGB image (H, W, 3) uint8, or ``image is None`` and a ``reason`` for the manifest."""

    image: np.ndarray | None
    reason: str | None = None
    detail: str | None = None
    source_mode: str | None = None


class DecodeRejection(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def describe_error(err: BaseException) -> str:
    """``Type: message`` for a manifest's detail: object addresses dropped (rows stay
    deterministic), non-printable characters escaped, capped in length."""
    message = re.sub(r" at 0x[0-9a-fA-F]+", "", str(err))
    text = f"{type(err).__name__}: {message}" if message else type(err).__name__
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    return text if len(text) <= _MAX_DETAIL_CHARS else text[: _MAX_DETAIL_CHARS - 1] + "…"


def _bytes_per_pixel(mode: str) -> int:
    """Bytes per pixel of Pillow's in-memory storage for ``mode``."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4  # LA, RGB, RGBA, CMYK, YCbCr, LAB, HSV, I, F: 32 bits per pixel


# a WebP decode holds libwebp's RGBA output, Pillow's copy and (lossless) the ARGB working
# buffers at full size: ~16 bytes per pixel measured (9400² lossless: 1,348 MiB peak)
_WEBP_BYTES_PER_PIXEL = 16


def _codec_bytes(pil: Image.Image, full_size: tuple[int, int]) -> int:
    """Working memory a codec holds beside the image buffer while decoding, from the header:
    a progressive JPEG's coefficient buffer (2 bytes per coefficient of every component, at
    the full size whatever ``draft`` asks: libjpeg needs every scan before any output), a
    TIFF strip or tile in the file's own sample format (one strip can be the whole image),
    a WebP's decoder buffers. Baseline JPEG, PNG and BMP decode row by row: 0."""
    width, height = full_size
    if pil.format == "JPEG" and pil.info.get("progressive"):
        layers = getattr(pil, "layer", None) or [("", 1, 1, 0)] * len(pil.getbands())
        h_max = max(int(layer[1]) for layer in layers) or 1
        v_max = max(int(layer[2]) for layer in layers) or 1
        return sum(
            2 * math.ceil(width * int(layer[1]) / h_max) * math.ceil(height * int(layer[2]) / v_max)
            for layer in layers
        )
    if pil.format == "TIFF":
        tags = getattr(pil, "tag_v2", {})
        bits = tags.get(258, (8,))
        bits_per_pixel = sum(bits) if isinstance(bits, tuple) else int(bits)
        if isinstance(bits, tuple) and len(bits) == 1:
            bits_per_pixel *= int(tags.get(277, 1))
        if 322 in tags and 323 in tags:  # tiled: one tile at a time
            area = int(tags[322]) * int(tags[323])
        else:
            area = min(int(tags.get(278, height)), height) * width
        return area * bits_per_pixel // 8
    if pil.format == "WEBP":
        return width * height * _WEBP_BYTES_PER_PIXEL
    return 0


def _grey_scale(pil: Image.Image) -> tuple[float, bool]:
    """(top, is_float) for an integer or float grey image: ``top`` maps to white."""
    mode = pil.mode
    if mode.startswith("I;16"):
        return 65535.0, False
    if mode == "I":
        _low, high = cast(tuple[int, int], pil.getextrema())
        return (65535.0 if high > 255 else 255.0), False
    # F: the brightest finite value is white; NaN and ±inf pixels count as black / clip
    top = 1.0
    for y in range(0, pil.height, STRIP_ROWS):
        strip = np.asarray(pil.crop((0, y, pil.width, min(y + STRIP_ROWS, pil.height))))
        finite = strip[np.isfinite(strip)]
        if finite.size:
            top = max(top, float(finite.max()))
    return top, True


def _strip_to_rgb(strip: Image.Image, grey: tuple[float, bool] | None) -> Image.Image:
    """One strip of rows of the source, in the source's mode → RGB (8 bits per channel)."""
    mode = strip.mode
    if grey is not None:
        top, is_float = grey
        values = np.asarray(strip)
        if is_float:
            values = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=top, neginf=0.0)
            scaled = np.rint(np.clip(values, 0, top) * (255.0 / top))
        else:
            scaled = (np.clip(values.astype(np.int64), 0, int(top)) * 255 + int(top) // 2) // int(
                top
            )
        return Image.fromarray(scaled.astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in strip.info:
        strip = strip.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = strip.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode != "RGB":
        return strip.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    return strip


def _to_rgb_array(pil: Image.Image, factor: int) -> np.ndarray:
    """The loaded image → (ceil(H/factor), ceil(W/factor), 3) uint8, a strip at a time: the
    source is reduced (box filter) after each strip's conversion, before the next strip."""
    width, height = pil.size
    out = np.empty((-(-height // factor), -(-width // factor), 3), dtype=np.uint8)
    grey = _grey_scale(pil) if pil.mode.startswith("I") or pil.mode == "F" else None
    rows = factor * max(1, STRIP_ROWS // factor)
    for y in range(0, height, rows):
        strip = _strip_to_rgb(pil.crop((0, y, width, min(y + rows, height))), grey)
        if factor > 1:
            strip = strip.reduce(factor)
        values = np.asarray(strip)
        out[y // factor : y // factor + values.shape[0]] = values
    return out


def decode_image(data: bytes, config: DecodeConfig) -> Decoded:
    """Decode bytes into an upright RGB array, or say why not (never raises on bad data:
    whatever a decoder raises is this file's ``undecodable`` with the exception in detail)."""
    try:
        return _decode(data, config)
    except DecodeRejection as rej:
        return Decoded(image=None, reason=rej.reason, detail=rej.detail)
    except MemoryError as err:  # under the caps, still too big for this machine
        return Decoded(image=None, reason="too_large", detail=describe_error(err))
    except Exception as err:  # a decoder's failure on this file's bytes, whatever its type
        return Decoded(image=None, reason="undecodable", detail=describe_error(err))


def _orientation(pil: Image.Image) -> int:
    """The EXIF orientation (1–8), read as data; values outside 1–8 are reserved by the EXIF
    standard and mean "as stored" (what viewers show)."""
    value = pil.getexif().get(0x0112)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _decode(data: bytes, config: DecodeConfig) -> Decoded:
    if len(data) == 0:
        raise DecodeRejection("empty_file", "the file has zero bytes")
    if len(data) > config.max_bytes:
        raise DecodeRejection(
            "too_large", f"{len(data)} bytes > decode.max_bytes={config.max_bytes}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            pil = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        except UnidentifiedImageError as err:
            raise DecodeRejection(
                "undecodable", f"UnidentifiedImageError: not one of {', '.join(IMAGE_FORMATS)}"
            ) from err
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise DecodeRejection("decompression_bomb", str(err)) from err
        width, height = pil.size
        # checked from the header, before any pixel is decoded
        if width * height > config.max_pixels:
            raise DecodeRejection(
                "decompression_bomb",
                f"{width}x{height} = {width * height} px > decode.max_pixels={config.max_pixels}",
            )
        if min(width, height) < MIN_SIDE_PX:
            raise DecodeRejection(
                "too_small", f"{width}x{height} px: a side is under {MIN_SIDE_PX} px"
            )
        source_mode = pil.mode
        full_size = pil.size
        max_out = config.max_decoded_megapixels * 1e6
        factor = max(1, math.ceil(math.sqrt(width * height / max_out)))
        if factor > 1 and pil.format == "JPEG":
            # the codec decodes at 1/2, 1/4 or 1/8 scale: the full size is never allocated
            pil.draft(pil.mode, (-(-width // factor), -(-height // factor)))
            width, height = pil.size
            factor = max(1, math.ceil(math.sqrt(width * height / max_out)))
        buffer_bytes = width * height * _bytes_per_pixel(pil.mode) + _codec_bytes(pil, full_size)
        if buffer_bytes > config.max_decode_mib * 2**20:
            raise DecodeRejection(
                "too_large",
                f"{width}x{height} px ({source_mode}) needs {buffer_bytes // 2**20} MiB to decode "
                f"> decode.max_decode_mib={config.max_decode_mib}",
            )
        try:
            pil.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise DecodeRejection("decompression_bomb", str(err)) from err
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            # Pillow reports truncated files as OSError("image file is truncated ...")
            reason = "truncated" if "truncated" in str(err).lower() else "undecodable"
            raise DecodeRejection(reason, describe_error(err)) from err
        orientation = _orientation(pil)  # (after load: a PNG's EXIF may follow its pixels)
        array = _to_rgb_array(pil, factor)
        pil.close()
        del pil
    if orientation in _UPRIGHT:
        array = _UPRIGHT[orientation](array)
    if min(array.shape[:2]) < MIN_SIDE_PX:
        raise DecodeRejection("too_small", f"{array.shape[1]}x{array.shape[0]} px after reduction")
    return Decoded(image=np.ascontiguousarray(array), source_mode=source_mode)
