"""What the model benchmarks share: the model config of an architecture, from its preset."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from e4t.config import ModelConfig, load_config
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
    fn()  # warm-up: allocator, kernels, lazy init
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats
