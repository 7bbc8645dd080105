"""Per-concept state, for K concepts at once: what personalization tunes and stores.

A concept is small: the image's CLIP [CLS] tokens (what the encoder reads), a correction
to v* (``word``), its own copy of the encoder's output layer (``head_weight`` /
``head_bias``), and low-rank weight deltas B·A on top of the domain's offsets. All are
stacked along a leading concept axis, so one forward pass tunes K concepts: samples are
grouped by concept (K equal, contiguous groups) and each group meets only its own
concept's tensors — a concept's gradients never depend on the others.

At initialisation every delta is zero and the head is the domain model's, so a fresh
concept is exactly the domain model's prediction (a "0-step" concept).
"""

from __future__ import annotations

import contextlib
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from e4t.models.offsets import hook_projections, remove_hooks

CONCEPT_TENSORS = "concept.safetensors"
CONCEPT_CONFIG = "concept.json"
FORMAT = "e4t-concept-v1"


def _key(path: str) -> str:
    return path.replace(".", "__")


class ConceptBank(nn.Module):
    """Stacked state of K concepts. cls: (K, L, C); head: (D, H) weight + (D,) bias to start
    from; shapes: {projection path: (out, in)} of the low-rank deltas."""

    def __init__(
        self,
        cls: torch.Tensor,
        head_weight: torch.Tensor,
        head_bias: torch.Tensor,
        shapes: dict[str, tuple[int, int]],
        rank: int = 4,
        seeds: list[int] | None = None,
    ) -> None:
        super().__init__()
        k = cls.shape[0]
        self.num_concepts = k
        self.use_encoder = True  # False: the encoder's output is known to be zero (TI)
        self.rank = rank
        self.paths = sorted(shapes)
        self.shapes = {p: tuple(shapes[p]) for p in self.paths}
        self.cls: torch.Tensor
        self.register_buffer("cls", cls.detach().clone())
        self.word = nn.Parameter(torch.zeros(k, head_weight.shape[0], device=cls.device))
        self.head_weight = nn.Parameter(head_weight.detach().float().expand(k, -1, -1).clone())
        self.head_bias = nn.Parameter(head_bias.detach().float().expand(k, -1).clone())
        seeds = seeds if seeds is not None else list(range(k))
        downs, ups = {}, {}
        for path in self.paths:
            out_f, in_f = self.shapes[path]
            # each concept's A from its own seed: tuning it alone or in a bank starts the same
            rows = []
            for seed in seeds:
                gen = torch.Generator().manual_seed(int(seed) * 7919 + zlib.crc32(path.encode()))
                rows.append(torch.randn(rank, in_f, generator=gen) / in_f**0.5)
            downs[_key(path)] = nn.Parameter(torch.stack(rows).to(cls.device))
            ups[_key(path)] = nn.Parameter(torch.zeros(k, out_f, rank, device=cls.device))
        self.down = nn.ParameterDict(downs)
        self.up = nn.ParameterDict(ups)
        self._handles: list[Any] = []
        self._enabled = True

    # ------------------------------------------------------------------ grouping

    def concept_index(self, batch: int, device: torch.device) -> torch.Tensor:
        """Concept of each sample when a batch of ``batch`` is K equal contiguous groups."""
        if batch % self.num_concepts:
            raise ValueError(f"batch {batch} does not split into {self.num_concepts} concepts")
        return torch.arange(batch, device=device) // (batch // self.num_concepts)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The per-concept output layer: (N, H) → (N, D)."""
        idx = self.concept_index(hidden.shape[0], hidden.device)
        w, b = self.head_weight[idx], self.head_bias[idx]
        return torch.einsum("nh,ndh->nd", hidden.to(w.dtype), w) + b

    def word_for(self, batch: int, device: torch.device) -> torch.Tensor:
        return self.word[self.concept_index(batch, device)]

    # ------------------------------------------------------------------ UNet deltas

    def attach(self, unet: nn.Module) -> ConceptBank:
        self.detach()
        self._handles = hook_projections(unet, self.shapes, self._hook_for, "concept delta")
        return self

    def detach(self) -> None:
        remove_hooks(self._handles)

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """The deltas off inside the block: the encoder's UNet-feature pass reads the base
        UNet, as it did in pretraining (the domain offsets are off there too)."""
        previous, self._enabled = self._enabled, False
        try:
            yield
        finally:
            self._enabled = previous

    def _hook_for(self, path: str) -> Any:
        key = _key(path)

        def hook(
            module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
        ) -> torch.Tensor:
            if not self._enabled:
                return output
            x = inputs[0]
            k = self.num_concepts
            grouped = x.reshape(k, -1, x.shape[-1])  # (K, n·T, in): samples are grouped
            down, up = self.down[key].to(x.dtype), self.up[key].to(x.dtype)
            # two batched matmuls: (K, n·T, in) @ (K, in, r) @ (K, r, out)
            extra = torch.bmm(torch.bmm(grouped, down.transpose(1, 2)), up.transpose(1, 2))
            return output + extra.reshape(output.shape)

        return hook

    def delta_weight(self, path: str, index: int = 0) -> torch.Tensor:
        key = _key(path)
        return self.up[key][index] @ self.down[key][index]

    def squared_norms(self) -> torch.Tensor:
        """Σ‖B_c A_c‖² per concept, (K,), via r × r products."""
        if not self.up:
            return torch.zeros(self.num_concepts, device=self.word.device)
        ups = [self.up[key].float() for key in self.up]
        downs = [self.down[key].float() for key in self.up]
        gram_up = torch.stack([torch.bmm(u.transpose(1, 2), u) for u in ups])  # (P, K, r, r)
        gram_down = torch.stack([torch.bmm(d, d.transpose(1, 2)) for d in downs])
        return (gram_up * gram_down).sum(dim=(0, 2, 3))

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Clip each concept's gradient to ``max_norm`` on its own; returns the (K,) norms.

        One norm kernel per tensor (its K rows at once), one to combine them, one scale per
        tensor: few kernels per step whatever K."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        k = self.num_concepts
        if k == 1 and all(g.dtype == torch.float32 for g in grads):
            # one concept: one norm over the gradients laid end to end, one multi-tensor scale
            norm = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads]))
            scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
            torch._foreach_mul_(grads, scale)
            return norm.reshape(1)
        rows = torch.stack(
            [torch.linalg.vector_norm(g.reshape(k, -1), dim=1, dtype=torch.float32) for g in grads]
        )  # (tensors, K)
        norms = torch.linalg.vector_norm(rows, dim=0)
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for grad in grads:
            grad.mul_(scale.reshape(-1, *([1] * (grad.dim() - 1))).to(grad.dtype))
        return norms

    def subset(self, index: int) -> ConceptBank:
        """A detached one-concept bank holding a copy of concept ``index``."""
        one = ConceptBank(
            self.cls[index : index + 1],
            self.head_weight[index],
            self.head_bias[index],
            self.shapes,  # type: ignore[arg-type]
            self.rank,
        )
        with torch.no_grad():
            one.load_state_dict({k: v[index : index + 1] for k, v in self.state_dict().items()})
        one.use_encoder = self.use_encoder
        return one.to(self.word.device)

    # ------------------------------------------------------------------ storage

    def tensors_of(self, index: int, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
        out = {
            "image.clip_cls": self.cls[index],
            "word": self.word[index],
            "head.weight": self.head_weight[index],
            "head.bias": self.head_bias[index],
        }
        for path in self.paths:
            out[f"delta.{path}.down"] = self.down[_key(path)][index]
            out[f"delta.{path}.up"] = self.up[_key(path)][index]
        return {k: v.detach().to("cpu", dtype).contiguous() for k, v in out.items()}

    def save(
        self, index: int, folder: str | Path, meta: dict[str, Any], dtype: str = "fp16"
    ) -> int:
        """Write concept ``index`` (safetensors + JSON); returns its bytes."""
        torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        save_file(self.tensors_of(index, torch_dtype), str(out / CONCEPT_TENSORS))
        info = {"format": FORMAT, "rank": self.rank, "dtype": dtype, **meta}
        (out / CONCEPT_CONFIG).write_text(json.dumps(info, indent=1, sort_keys=True))
        return sum(p.stat().st_size for p in out.iterdir() if p.is_file())

    @classmethod
    def from_tensors(
        cls_, items: list[dict[str, torch.Tensor]], rank: int, device: torch.device
    ) -> ConceptBank:
        """A bank of the given concepts' tensors (as :meth:`tensors_of` writes them)."""
        first = items[0]
        paths = sorted({k[len("delta.") : -len(".down")] for k in first if k.endswith(".down")})
        shapes = {
            p: (first[f"delta.{p}.up"].shape[0], first[f"delta.{p}.down"].shape[1]) for p in paths
        }
        bank = cls_(
            torch.stack([t["image.clip_cls"].float() for t in items]).to(device),
            first["head.weight"].float(),
            first["head.bias"].float(),
            shapes,
            rank,
        )
        with torch.no_grad():
            bank.word.copy_(torch.stack([t["word"].float() for t in items]))
            bank.head_weight.copy_(torch.stack([t["head.weight"].float() for t in items]))
            bank.head_bias.copy_(torch.stack([t["head.bias"].float() for t in items]))
            for p in paths:
                bank.down[_key(p)].copy_(torch.stack([t[f"delta.{p}.down"].float() for t in items]))
                bank.up[_key(p)].copy_(torch.stack([t[f"delta.{p}.up"].float() for t in items]))
        return bank.to(device)
