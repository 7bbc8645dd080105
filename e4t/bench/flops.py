"""FLOPs and ops of one tuning step, counted on the meta device: no weights are made and
nothing is computed, so the full SDXL model at 1024 px is counted in seconds on any machine.

``torch.utils.flop_counter.FlopCounterMode`` counts every matmul, convolution and
attention of the step (a multiply-add is 2 FLOPs): the encoder's UNet-feature pass, both
text encoders forward and backward (v* is injected at their inputs), the UNet forward and
backward through the concept's deltas. The per-concept floor on a GPU is that count
divided by the card's dense bf16 peak.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass
class TuningFlops:
    arch: str
    resolution_px: int
    draws: int
    tuning_step: int  # one tuning step of one concept (K = 1), ``draws`` draws
    unet_forward: int  # the bare UNet's forward on ``draws`` latents
    unet_forward_backward: int  # the bare UNet's forward + backward to its text input
    # non-view ATen ops (e4t.bench.ops.OpCounter) of the step's forward + backward (no
    # optimizer step) and of the bare UNet's forward + backward, at the same size
    tuning_step_ops: int = 0
    unet_forward_backward_ops: int = 0

    @property
    def per_draw(self) -> float:
        return self.tuning_step / self.draws


@contextlib.contextmanager
def _no_autocast_query_on_meta() -> Iterator[None]:
    """``torch.is_autocast_enabled("meta")`` raises (no autocast for meta); on meta nothing
    is autocast, so the answer is False."""
    original = torch.is_autocast_enabled

    def query(*args: object) -> bool:
        if args and str(args[0]) == "meta":
            return False
        return original(*args)

    torch.is_autocast_enabled = query  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.is_autocast_enabled = original


def count_tuning_flops(arch: str, resolution_px: int = 1024, draws: int = 4) -> TuningFlops:
    """FLOPs of one K = 1 tuning step of ``draws`` draws at ``resolution_px`` on ``arch``
    (bf16, low-rank offsets, a rank-4 concept), and of the bare UNet on the same latents."""
    from torch.utils.flop_counter import FlopCounterMode

    from e4t.bench.common import model_config
    from e4t.bench.ops import OpCounter
    from e4t.models.architectures import build_base_models
    from e4t.models.e4t_model import E4TModel, PromptConditioning
    from e4t.training.step import objective_terms

    meta = torch.device("meta")
    config = model_config(
        arch,
        dtype="bf16",
        device="meta",
        gradient_checkpointing=False,
        **{"offsets.form": "lowrank"},
    )
    with meta:
        base = build_base_models(arch, config)
    model = E4TModel.from_config(config, base=base)
    model.set_trainable([])
    encoder = model.encoder
    cls = torch.zeros(1, len(encoder.layer_indices), encoder.config.clip_hidden_size, device=meta)
    scale = 2 ** (len(model.base.vae.config.block_out_channels) - 1)
    latent = resolution_px // scale
    unet = model.base.unet
    z = torch.zeros(draws, unet.config.in_channels, latent, latent, device=meta, dtype=unet.dtype)
    t = torch.zeros(draws, dtype=torch.long, device=meta)

    def step() -> None:
        prompts = ["a photo of {}"] * draws
        noise = torch.zeros_like(z)
        terms = objective_terms(model, z, noise, t, cls.expand(draws, -1, -1), prompts)
        (terms.diffusion.float().sum() + terms.embedding.float().sum()).backward()

    with _no_autocast_query_on_meta():
        model.attach_concepts(model.new_concepts(cls, rank=4, seeds=[0]))
        step()  # the first step builds the bank's weight stacks once
        with FlopCounterMode(display=False) as tuning:
            step()
        with OpCounter() as tuning_ops:
            step()
        model.detach_concepts()
    width = unet.config.cross_attention_dim
    text = torch.zeros(draws, 77, width, device=meta, dtype=unet.dtype, requires_grad=True)
    pooled = None
    if model.is_xl:
        c = unet.config
        num = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
        pooled = torch.zeros(draws, num, device=meta, dtype=unet.dtype)
    with model.offsets.disabled():
        with torch.no_grad(), FlopCounterMode(display=False) as forward:
            unet(z, t, **model.unet_kwargs(z, PromptConditioning(text.detach(), pooled)))
        kwargs = model.unet_kwargs(z, PromptConditioning(text, pooled))
        with FlopCounterMode(display=False) as both:
            unet(z, t, **kwargs).sample.float().sum().backward()
        with OpCounter() as both_ops:
            unet(z, t, **kwargs).sample.float().sum().backward()
    return TuningFlops(
        arch,
        resolution_px,
        draws,
        int(tuning.get_total_flops()),
        int(forward.get_total_flops()),
        int(both.get_total_flops()),
        tuning_ops.total,
        both_ops.total,
    )
