"""Mixed precision for tuning and generation: bf16 autocast on CUDA by default.

The frozen base runs in whatever dtype it was loaded in (an fp32 config such as
``sd15-faces`` loads fp32 weights); autocast runs its matmuls and convolutions in bf16 on
the GPU's tensor cores while the trainable tensors (a concept bank, the encoder and
offsets of full tuning) stay fp32 and their updates do not round away.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

AutocastMode = Literal["auto", "bf16", "off"]


def autocast_dtype(device_type: str, mode: AutocastMode) -> torch.dtype | None:
    """``auto``: bf16 on CUDA, none elsewhere (a CPU runs bf16 slower than fp32);
    ``bf16``: bf16 on any device that supports it; ``off``: none."""
    if mode == "off":
        return None
    if mode == "bf16" or device_type == "cuda":
        return torch.bfloat16
    return None


def autocast(
    device: torch.device | str, mode: AutocastMode
) -> contextlib.AbstractContextManager[object]:
    """The autocast context for ``device`` and ``mode`` (a no-op when none applies)."""
    device_type = torch.device(device).type
    dtype = autocast_dtype(device_type, mode)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)
