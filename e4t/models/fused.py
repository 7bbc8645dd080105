"""Fused attention projections: what makes a tuning step launch few kernels.

Each attention's projections that read the same input run as ONE matmul on concatenated
weights: a self-attention's q, k and v; a cross-attention's q, then its k and v (which read
the text); the output projection. A :class:`ProjectionGroup` names such a set. Groups of the
same shape (count, out, in) form a shape class, whose weights live stacked in one tensor,
so everything done to the weights (folding the domain offsets in, adding K concepts'
low-rank deltas, the deltas' gradients) is a handful of ops per class instead of several
per projection. :class:`FusedAttnProcessor` is the diffusers attention processor that reads
those weights; the concept bank (:mod:`e4t.models.concept`) supplies them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from torch import nn

Role = Literal["hidden", "context", "output"]
Kernel = Literal["sdpa", "eager"]
OUT = "to_out.0"


@dataclass(frozen=True)
class ProjectionGroup:
    """Projections of one attention that read one input, fused into one matmul.

    role: ``hidden`` (they read the attention's input), ``context`` (a cross-attention's
    k/v, reading the text) or ``output``; names: ``to_q``/``to_k``/``to_v``/``to_out.0`` in
    that order; each is (out_features, in_features).
    """

    attention: str
    role: Role
    names: tuple[str, ...]
    out_features: int
    in_features: int

    @property
    def paths(self) -> list[str]:
        return [f"{self.attention}.{name}" for name in self.names]

    @property
    def shape_class(self) -> str:
        """Groups of one class stack: ``"3x320x320"`` = 3 projections of (320, 320)."""
        return f"{len(self.names)}x{self.out_features}x{self.in_features}"


def split_path(path: str) -> tuple[str, str]:
    """``…attn1.to_q`` → (``…attn1``, ``to_q``); ``…attn1.to_out.0`` → (…, ``to_out.0``)."""
    if path.endswith("." + OUT):
        return path[: -len(OUT) - 1], OUT
    attention, _, name = path.rpartition(".")
    return attention, name


def check_plain(attention: str, module: nn.Module) -> Attention:
    """The fused processor computes plain attention only: refuse the variants it does not."""
    if not isinstance(module, Attention):
        raise ValueError(f"{attention} is {type(module).__name__}, not a diffusers Attention")
    extras = [
        name
        for name in ("spatial_norm", "group_norm", "norm_cross", "norm_q", "norm_k")
        if getattr(module, name, None) is not None
    ]
    if getattr(module, "residual_connection", False):
        extras.append("residual_connection")
    if extras:
        raise ValueError(
            f"attention {attention} uses {extras}: concept deltas support plain attention "
            "(as in Stable Diffusion's transformer blocks) only"
        )
    return module


def group_projections(unet: nn.Module, paths: list[str]) -> list[ProjectionGroup]:
    """The fused groups covering ``paths`` (attention projection paths) in ``unet``."""
    wanted: dict[str, set[str]] = {}
    for path in paths:
        attention, name = split_path(path)
        if name not in ("to_q", "to_k", "to_v", OUT):
            raise ValueError(f"{path}: only to_q, to_k, to_v and to_out.0 can carry deltas")
        wanted.setdefault(attention, set()).add(name)
    groups: list[ProjectionGroup] = []
    for attention in sorted(wanted):
        try:
            module = check_plain(attention, unet.get_submodule(attention))
        except AttributeError as err:
            raise ValueError(f"{attention} is not in this UNet") from err
        names = wanted[attention]
        if module.is_cross_attention:
            roles: list[tuple[Role, list[str]]] = [
                ("hidden", ["to_q"]),
                ("context", ["to_k", "to_v"]),
            ]
        else:
            roles = [("hidden", ["to_q", "to_k", "to_v"])]
        roles.append(("output", [OUT]))
        for role, candidates in roles:
            chosen = [n for n in candidates if n in names]
            shapes = {n: _linear_shape(module, attention, n) for n in chosen}
            # one group when every member has one shape; otherwise one group per projection
            parts = [chosen] if len(set(shapes.values())) == 1 else [[n] for n in chosen]
            for part in parts:
                if part:
                    out_f, in_f = shapes[part[0]]
                    groups.append(ProjectionGroup(attention, role, tuple(part), out_f, in_f))
    return groups


def _linear_shape(module: nn.Module, attention: str, name: str) -> tuple[int, int]:
    linear = module.get_submodule(name)
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"{attention}.{name} is {type(linear).__name__}, not nn.Linear")
    return linear.out_features, linear.in_features


def kernel_for(attention: str, processor: Any) -> Kernel:
    """The attention kernel a fused processor runs in place of ``processor``: diffusers'
    ``AttnProcessor2_0`` → ``sdpa``, its ``AttnProcessor`` (``ModelConfig.attention: eager``)
    → ``eager``. Any other processor (sliced, xformers, a custom one) does something the
    fused path would silently drop: refused, as is another bank's fused processor."""
    if isinstance(processor, FusedAttnProcessor):
        raise ValueError(
            f"{attention} already runs another concept bank's fused processor: detach that "
            "bank first (bank.detach() or E4TModel.detach_concepts())"
        )
    if type(processor) is AttnProcessor2_0:
        return "sdpa"
    if type(processor) is AttnProcessor:
        return "eager"
    raise ValueError(
        f"{attention} runs {type(processor).__name__}: concept deltas replace it with a fused "
        "processor computing plain attention (sdpa or eager, as ModelConfig.attention sets), "
        "which would drop what it does; set AttnProcessor2_0 or AttnProcessor on the UNet "
        "before attaching concepts (e.g. pipe.disable_attention_slicing(), "
        "pipe.disable_xformers_memory_efficient_attention())"
    )


class ProjectionSource(Protocol):
    """What supplies a fused processor's weights (the concept bank)."""

    groups: list[ProjectionGroup]

    def project(self, index: int, x: torch.Tensor) -> torch.Tensor: ...


class FusedAttnProcessor:
    """A diffusers attention processor whose projections come from a concept bank.

    ``groups``: role → index of that role's group in the bank. Projections no group covers
    run as the module's own layers. The attention itself is ``kernel``:
    ``F.scaled_dot_product_attention`` as in diffusers' ``AttnProcessor2_0`` (``sdpa``), or
    the explicit softmax(q·kᵀ·scale)·v of its ``AttnProcessor`` (``eager``).
    """

    def __init__(
        self, bank: ProjectionSource, groups: dict[str, int], original: Any, kernel: Kernel
    ) -> None:
        self.bank = bank
        self.groups = groups
        self.original = original  # put back when the bank detaches
        self.kernel = kernel

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if hidden_states.ndim != 3:
            raise ValueError(
                f"fused attention takes (batch, tokens, channels), got {hidden_states.shape}"
            )
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        inputs = {"hidden": hidden_states, "context": context}
        projected: dict[str, torch.Tensor] = {}
        for role, index in self.groups.items():
            if role == "output":
                continue
            group = self.bank.groups[index]
            y = self.bank.project(index, inputs[role])
            parts = y.split(group.out_features, dim=-1) if len(group.names) > 1 else (y,)
            projected.update(zip(group.names, parts, strict=True))
        q = projected["to_q"] if "to_q" in projected else attn.to_q(hidden_states)
        k = projected["to_k"] if "to_k" in projected else attn.to_k(context)
        v = projected["to_v"] if "to_v" in projected else attn.to_v(context)
        batch, heads = hidden_states.shape[0], attn.heads
        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
        if self.kernel == "eager":  # as AttnProcessor: (batch·heads, tokens, head_dim)
            q, k, v = (attn.head_to_batch_dim(x) for x in (q, k, v))
            out = attn.batch_to_head_dim(torch.bmm(attn.get_attention_scores(q, k, mask), v))
        else:
            if mask is not None:
                mask = mask.view(batch, heads, -1, mask.shape[-1])
            q, k, v = (x.unflatten(-1, (heads, -1)).transpose(1, 2) for x in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
            out = out.transpose(1, 2).flatten(2)
        if "output" in self.groups:
            out = self.bank.project(self.groups["output"], out)
        else:
            out = attn.to_out[0](out)
        out = attn.to_out[1](out)  # dropout
        if attn.rescale_output_factor != 1.0:
            out = out / attn.rescale_output_factor
        return out
