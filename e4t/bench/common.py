"""What the model benchmarks share: the model config of an architecture, from its preset."""

from __future__ import annotations

from typing import Any

from e4t.config import ArchName, ModelConfig, load_config

# the model preset (configs/model/*.yaml) whose encoder and offsets go with each architecture
ARCH_PRESETS: dict[str, str] = {"tiny": "tiny", "sd15-random": "sd15"}


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
