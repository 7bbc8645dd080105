"""Robust image decoding: whatever a folder of photos holds becomes RGB uint8 or a reason.

Applies the EXIF orientation, converts grey, CMYK, 16-bit, palette and alpha images to
RGB (alpha composited over white), and refuses decompression bombs before decoding pixels.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from e4t.config import DecodeConfig

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


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


def _to_rgb(pil: Image.Image) -> Image.Image:
    mode = pil.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(pil, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        if mode == "F":
            top = max(float(arr.max()), 1.0)
        grey = np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P" and "transparency" in pil.info:
        pil = pil.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = pil.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode != "RGB":
        return pil.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    return pil


def decode_image(data: bytes, config: DecodeConfig) -> Decoded:
    """Decode bytes into an upright RGB array, or say why not (never raises on bad data)."""
    try:
        return _decode(data, config)
    except DecodeRejection as rej:
        return Decoded(image=None, reason=rej.reason, detail=rej.detail)


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
            pil = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as err:
            # (the message would hold an object address; keep the manifest deterministic)
            raise DecodeRejection("undecodable", "not an image format Pillow can read") from err
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise DecodeRejection("decompression_bomb", str(err)) from err
        except (OSError, SyntaxError, ValueError) as err:
            raise DecodeRejection("undecodable", f"{type(err).__name__}: {err}") from err
        width, height = pil.size
        # checked from the header, before any pixel is decoded
        if width * height > config.max_pixels:
            raise DecodeRejection(
                "decompression_bomb",
                f"{width}x{height} = {width * height} px > decode.max_pixels={config.max_pixels}",
            )
        source_mode = pil.mode
        try:
            pil.load()
            ImageOps.exif_transpose(pil, in_place=True)  # no full-size copy
            rgb = _to_rgb(pil)
            del pil
            array = np.asarray(rgb, dtype=np.uint8)
            del rgb
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise DecodeRejection("decompression_bomb", str(err)) from err
        except MemoryError as err:  # passes the byte and pixel caps, still too big for here
            raise DecodeRejection(
                "too_large", f"{width}x{height} px ({source_mode}) does not fit in memory"
            ) from err
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            # Pillow reports truncated files as OSError("image file is truncated ...")
            reason = "truncated" if "truncated" in str(err).lower() else "undecodable"
            raise DecodeRejection(reason, f"{type(err).__name__}: {err}") from err
    if array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) < 8:
        raise DecodeRejection("undecodable", f"unusable pixel array of shape {array.shape}")
    return Decoded(image=np.ascontiguousarray(array), source_mode=source_mode)
