"""An aligned face → the tensors the objective reads: one implementation for pretraining's
stream (:class:`e4t.data.loader.SampleTransform`) and for personalization and evaluation
(:func:`e4t.data.concepts.prepare_face`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image


@dataclass
class FaceInput:
    """One aligned face: pixels (3, H, W) in [−1, 1], CLIP pixels (3, S, S) normalised by
    the vision tower's processor, mask (1, H, W) in [0, 1] or None."""

    pixel_values: torch.Tensor
    clip_pixel_values: torch.Tensor
    mask: torch.Tensor | None = None


def face_tensors(
    image: Image.Image,
    mask: Image.Image | None,
    resolution_px: int,
    image_processor: Any,
    flip: bool = False,
) -> FaceInput:
    """Resize to ``resolution_px`` (bicubic; the mask nearest), optionally mirror both, and
    convert. The CLIP pixels come from the resized (and mirrored) face."""
    size = (resolution_px, resolution_px)
    face = image.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    small_mask = mask.convert("L").resize(size, Image.Resampling.NEAREST) if mask else None
    if flip:
        face = face.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if small_mask is not None:
            small_mask = small_mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = torch.from_numpy(np.asarray(face, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    clip = image_processor(images=face, return_tensors="pt").pixel_values[0]
    mask_t = None
    if small_mask is not None:
        mask_t = torch.from_numpy(np.asarray(small_mask, dtype=np.float32) / 255.0)[None]
    return FaceInput(pixel_values=pixels, clip_pixel_values=clip, mask=mask_t)
