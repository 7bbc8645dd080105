"""Counting dispatched ATen ops: the CPU's proxy for a GPU's kernel-launch cost.

A tuning step on a GPU is launch-bound when it dispatches thousands of small kernels; the
count of non-view ATen ops one step dispatches does not depend on the device, so it is
measured on any machine (a small resolution keeps it quick) and predicts the GPU's
per-step overhead. ``e4t bench personalize --count-ops`` prints it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    """Counts each ATen op dispatched inside the block, view ops (no kernel) excepted."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.views = 0

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        if getattr(func, "is_view", False):
            self.views += 1
        else:
            self.counts[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def synthetic_faces(model: Any, num: int, resolution_px: int, seed: int = 0) -> list[Any]:
    """``num`` random aligned-face inputs (op counts do not depend on the pixels)."""
    from e4t.data.transforms import FaceInput

    gen = torch.Generator().manual_seed(seed)
    size = model.image_encoder.config.image_size
    return [
        FaceInput(
            pixel_values=torch.rand(3, resolution_px, resolution_px, generator=gen) * 2 - 1,
            clip_pixel_values=torch.randn(3, size, size, generator=gen),
            mask=torch.ones(1, resolution_px, resolution_px),
        )
        for _ in range(num)
    ]


def count_tuning_step_ops(model: Any, faces: list[Any], tune: Any) -> OpCounter:
    """Non-view ops of ONE steady tuning step of ``len(faces)`` concepts (the second step:
    the first pays one-off set-up)."""
    from e4t.training.tune import tune_concepts

    counter = OpCounter()

    def on_step(step: int, bank: Any, seconds: float) -> None:
        if step == 1:
            counter.__enter__()
        elif step == 2:
            counter.__exit__(None, None, None)

    tune_concepts(
        model,
        faces,
        list(range(len(faces))),
        tune.model_copy(update={"num_steps": 2}),
        on_step=on_step,
    )
    model.detach_concepts()
    return counter


def count_unet_ops(model: Any, batch: int, resolution_px: int) -> tuple[int, int]:
    """(forward + backward to the text input, forward alone) non-view ops of the bare UNet
    (on SDXL with its pooled text embedding and time ids, as a step gives them)."""
    from e4t.models.e4t_model import PromptConditioning

    unet = model.base.unet
    device, dtype = model.base.device, unet.dtype
    latent = resolution_px // 8
    z = torch.randn(batch, unet.config.in_channels, latent, latent, device=device, dtype=dtype)
    t = torch.full((batch,), 500, device=device)
    width = unet.config.cross_attention_dim
    text = torch.randn(batch, 77, width, device=device, dtype=dtype, requires_grad=True)
    pooled = None
    if model.is_xl:  # the pooled width: what text_time's projection reads beside 6 time ids
        config = unet.config
        num = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        pooled = torch.randn(batch, num, device=device, dtype=dtype)
    with model.offsets.disabled():  # bare: the offsets' hooks return at once
        kwargs = model.unet_kwargs(z, PromptConditioning(text, pooled))
        with OpCounter() as both:
            unet(z, t, **kwargs).sample.float().pow(2).mean().backward()
        kwargs = model.unet_kwargs(z, PromptConditioning(text.detach(), pooled))
        with torch.no_grad(), OpCounter() as forward:
            unet(z, t, **kwargs)
    return both.total, forward.total
