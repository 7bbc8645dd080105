"""Weight offsets on the UNet's attention projections (E4T §3.2), as forward hooks.

For a projection ``y = W0 x + b`` the offset adds ``ΔW x``:

- ``multiplicative``: ``W = W0 ⊙ (1 + Δ)``, so ``ΔW = W0 ⊙ Δ`` with Δ shaped like W0;
- ``lowrank``: ``W = W0 + B·A`` with A (r, in), B (out, r), so ``ΔW x = B (A x)``.

Both start at zero (Δ = 0; B = 0), so at initialisation the UNet is exactly the base UNet.
Hooks leave the UNet's modules and state dict untouched: the base weights stay frozen and
shareable, the offsets live in this module alone, and they can be switched off
(:meth:`WeightOffsets.disabled`) for the encoder's feature pass or a baseline.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

OffsetForm = Literal["multiplicative", "lowrank"]


def _key(path: str) -> str:
    return path.replace(".", "__")  # module names may not contain dots


def find_projections(
    unet: nn.Module, targets: tuple[str, ...], projections: tuple[str, ...]
) -> dict[str, nn.Linear]:
    """The attention projections to offset: ``{module path: Linear}`` in a stable order.

    targets: attention kinds, ``attn1`` (self) and/or ``attn2`` (cross).
    projections: ``to_q``, ``to_k``, ``to_v``, ``to_out.0``.
    """
    found: dict[str, nn.Linear] = {}
    for name, module in unet.named_modules():
        if not isinstance(module, Attention) or name.rsplit(".", 1)[-1] not in targets:
            continue
        for proj in projections:
            linear = module.get_submodule(proj)
            if not isinstance(linear, nn.Linear):
                raise TypeError(f"{name}.{proj} is {type(linear).__name__}, not nn.Linear")
            found[f"{name}.{proj}"] = linear
    if not found:
        raise ValueError(f"no attention projections matched targets={targets}: is this a UNet?")
    return found


def projection_linears(
    unet: nn.Module, shapes: Mapping[str, tuple[int, ...]], what: str
) -> dict[str, nn.Linear]:
    """Each path's projection in ``unet``, checked to be (out, in) = its shape; ``what``
    names the caller in the errors (offset, concept delta)."""
    found: dict[str, nn.Linear] = {}
    for path, expected in shapes.items():
        try:
            linear = unet.get_submodule(path)
        except AttributeError as err:
            raise ValueError(f"{what} {path!r} has no projection in this UNet") from err
        if (linear.out_features, linear.in_features) != tuple(expected):
            raise ValueError(
                f"{what} {path}: UNet projection is "
                f"{(linear.out_features, linear.in_features)}, {what} {expected}"
            )
        found[path] = cast(nn.Linear, linear)
    return found


def hook_projections(
    unet: nn.Module,
    shapes: Mapping[str, tuple[int, ...]],
    make_hook: Callable[[str], Any],
    what: str,
) -> list[Any]:
    """Register ``make_hook(path)`` on each projection, checking it is (out, in) = shape."""
    linears = projection_linears(unet, shapes, what)  # all checked before any hook
    return [linear.register_forward_hook(make_hook(path)) for path, linear in linears.items()]


def remove_hooks(handles: list[Any]) -> None:
    for handle in handles:
        handle.remove()
    handles.clear()


class WeightOffsets(ModelMixin, ConfigMixin):
    """Zero-initialised offsets for a set of attention projections, applied through hooks.

    ``shapes`` maps each projection path to (out_features, in_features).
    """

    config_name = "offsets_config.json"

    @register_to_config
    def __init__(
        self,
        shapes: dict[str, tuple[int, int]],
        form: OffsetForm = "multiplicative",
        rank: int = 4,
    ) -> None:
        super().__init__()
        if form not in ("multiplicative", "lowrank"):
            raise ValueError(f"offset form {form!r}: use 'multiplicative' or 'lowrank'")
        self.paths = sorted(shapes)
        if form == "multiplicative":
            self.delta = nn.ParameterDict(
                {_key(p): nn.Parameter(torch.zeros(*shapes[p])) for p in self.paths}
            )
        else:
            # A random (so B gets gradients), B zero (so B·A = 0): the LoRA initialisation
            self.down = nn.ParameterDict(
                {
                    _key(p): nn.Parameter(torch.randn(rank, shapes[p][1]) / math.sqrt(shapes[p][1]))
                    for p in self.paths
                }
            )
            self.up = nn.ParameterDict(
                {_key(p): nn.Parameter(torch.zeros(shapes[p][0], rank)) for p in self.paths}
            )
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._enabled = True

    @classmethod
    def for_unet(
        cls,
        unet: nn.Module,
        targets: tuple[str, ...] = ("attn1", "attn2"),
        projections: tuple[str, ...] = ("to_q", "to_k", "to_v"),
        form: OffsetForm = "multiplicative",
        rank: int = 4,
    ) -> WeightOffsets:
        found = find_projections(unet, targets, projections)
        shapes = {p: (lin.out_features, lin.in_features) for p, lin in found.items()}
        return cls(shapes=shapes, form=form, rank=rank)

    # ------------------------------------------------------------------ hooks

    def attach(self, unet: nn.Module) -> WeightOffsets:
        """Hook every projection of ``unet``; the UNet must match the shapes exactly."""
        self.detach()
        shapes = {p: tuple(self.config.shapes[p]) for p in self.paths}
        self._handles = hook_projections(unet, shapes, self._hook_for, "offset")
        return self

    def detach(self) -> None:
        remove_hooks(self._handles)

    @property
    def enabled(self) -> bool:
        return self._enabled

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the base UNet (offsets off) inside the block."""
        previous, self._enabled = self._enabled, False
        try:
            yield
        finally:
            self._enabled = previous

    def _hook_for(self, path: str):
        key = _key(path)

        def hook(
            module: nn.Linear, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
        ) -> torch.Tensor:
            x = inputs[0]
            if not self._enabled:
                return output
            if self.config.form == "multiplicative":
                delta = self.delta[key]
                extra = F.linear(x, module.weight * delta.to(module.weight.dtype))
            else:
                down, up = self.down[key], self.up[key]
                extra = F.linear(F.linear(x, down.to(x.dtype)), up.to(x.dtype))
            return output + extra

        return hook

    # ------------------------------------------------------------------ maths

    def delta_weight(self, path: str, base_weight: torch.Tensor) -> torch.Tensor:
        """ΔW for one projection (out, in): what merging the offset adds to W0."""
        key = _key(path)
        if self.config.form == "multiplicative":
            return base_weight * self.delta[key].to(base_weight.dtype)
        return (self.up[key] @ self.down[key]).to(base_weight.dtype)

    def squared_norm(self) -> torch.Tensor:
        """Σ‖Δ‖² over all projections (the λ_w regulariser; Δ = B·A for low rank).

        For low rank, ‖B A‖²_F = Σ (BᵀB) ⊙ (A Aᵀ), an r × r computation.
        """
        if self.config.form == "multiplicative":
            return sum((d.float() ** 2).sum() for d in self.delta.values())
        total = torch.zeros((), device=self.device)
        for key in self.up:
            up, down = self.up[key].float(), self.down[key].float()
            total = total + ((up.T @ up) * (down @ down.T)).sum()
        return total
