"""What the model benchmarks share: the model config of an architecture, from its preset."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from e4t.config import DecodeConfig, ModelConfig, load_config
from e4t.data.decode import decode_image, describe_error, is_image_name
from e4t.models.arch_names import MODEL_PRESETS, ArchName

# the model preset (configs/model/*.yaml) whose encoder and offsets go with each architecture
ARCH_PRESETS: dict[str, str] = {name: preset for name, preset in MODEL_PRESETS.items()}


def model_config(arch: ArchName | str, **values: Any) -> ModelConfig:
    """The ``configs/model`` preset of ``arch`` with the base built in memory
    (``base_model = preset:<arch>``) and ``values`` (dotted keys) on top."""
    if arch not in ARCH_PRESETS:
        raise ValueError(f"unknown architecture {arch!r}: use one of {', '.join(ARCH_PRESETS)}")
    return load_config(
        ModelConfig,
        "model",
        ARCH_PRESETS[arch],
        values={"base_model": f"preset:{arch}", **values},
    )


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_bytes(device: str) -> int:
    import resource

    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def timed(device: str, fn: Callable[[], Any], repeats: int = 1) -> float:
    return timed_apart(device, fn, repeats)[1]


def timed_apart(device: str, fn: Callable[[], Any], repeats: int = 1) -> tuple[float, float]:
    """(the first call's seconds, the mean of ``repeats`` calls after it): the first pays
    the warm-up (allocator, kernels, lazy init, compilation)."""
    start = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return first, (time.perf_counter() - start) / repeats


class CropError(ValueError):
    """An aligned crop (or its mask) that cannot be read: ``reason`` and ``detail`` as a
    manifest row gives them."""

    def __init__(self, path: Path, reason: str, detail: str) -> None:
        super().__init__(f"{path}: {reason} ({detail})")
        self.path, self.reason, self.detail = path, reason, detail


def aligned_crops(folder: Path) -> list[Path]:
    """The crops of a folder of aligned faces (``NAME.mask.png`` are masks, not crops)."""
    return [
        p
        for p in sorted(folder.iterdir())
        if p.is_file() and is_image_name(p.name) and not p.name.endswith(".mask.png")
    ]


def read_crop(path: Path) -> tuple[Image.Image, Image.Image | None]:
    """A crop decoded within the decode caps (RGB), and its ``NAME.mask.png`` as "L" (None
    without one); a :class:`CropError` when either cannot be read."""
    decoded = decode_image(path.read_bytes(), DecodeConfig())
    if decoded.image is None:
        raise CropError(path, str(decoded.reason), str(decoded.detail))
    mask_path = path.with_name(path.stem + ".mask.png")
    if not mask_path.exists():
        return Image.fromarray(decoded.image), None
    try:
        with Image.open(mask_path) as opened:
            mask = opened.convert("L")
    except Exception as err:  # whatever the decoder raises: this crop's row
        raise CropError(path, "undecodable", f"{mask_path.name}: {describe_error(err)}") from None
    return Image.fromarray(decoded.image), mask
