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
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from safetensors.torch import save_file
from torch import nn

from e4t.models.fused import FusedAttnProcessor, ProjectionGroup, check_plain, kernel_for
from e4t.models.offsets import WeightOffsets, projection_linears

CONCEPT_TENSORS = "concept.safetensors"
CONCEPT_CONFIG = "concept.json"
FORMAT = "e4t-concept-v1"

# one group's low-rank factors in the compute dtype (K concepts): its j projections' A
# stacked, (K, j·r, in), and their Bᵀ as one block-diagonal matrix, (K, j·r, Σout)
LowRank = tuple[torch.Tensor, torch.Tensor]
# one group's weights for a UNet forward: W0 (Σout, in) or W0 + B·A folded (K, Σout, in), its
# bias, and the factors when they are kept apart (reduced precision)
Projection = tuple[torch.Tensor, torch.Tensor | None, LowRank | None]


class ConceptBank(nn.Module):
    """Stacked state of K concepts. cls: (K, L, C); head: (D, H) weight + (D,) bias to start
    from; groups: the fused projection groups (:func:`~e4t.models.fused.group_projections`)
    that carry low-rank deltas.

    The deltas of one shape class are one tensor each: ``down[class]`` (K, n, j, r, in) and
    ``up[class]`` (K, n, j, out, r) for the class's n groups of j projections, so
    ``up @ down`` is every delta of the class in one matmul.

    Attached (:meth:`attach`), the bank caches the UNet's weights stacked per class (with
    the domain offsets folded in), keyed by each tensor's ``data_ptr`` and ``_version``: a
    write through ``.data`` (a PEFT merge, ``fuse_lora``) bumps neither, so **weights must
    not change under an attached bank** — or call :meth:`invalidate` after changing them.
    """

    def __init__(
        self,
        cls: torch.Tensor,
        head_weight: torch.Tensor,
        head_bias: torch.Tensor,
        groups: list[ProjectionGroup],
        rank: int = 4,
        seeds: list[int] | None = None,
    ) -> None:
        super().__init__()
        k = cls.shape[0]
        self.num_concepts = k
        self.use_encoder = True  # False: the encoder's output is known to be zero (TI)
        self.rank = rank
        self.groups = list(groups)
        self.classes: dict[str, list[int]] = {}
        for index, group in enumerate(self.groups):
            self.classes.setdefault(group.shape_class, []).append(index)
        # path → (class, group's place in the class, projection's place in the group)
        self.where = {
            path: (group.shape_class, self.classes[group.shape_class].index(i), j)
            for i, group in enumerate(self.groups)
            for j, path in enumerate(group.paths)
        }
        self.paths = sorted(self.where)
        self.shapes = {
            p: (self.groups[i].out_features, self.groups[i].in_features)
            for i, group in enumerate(self.groups)
            for p in group.paths
        }
        self.cls: torch.Tensor
        self.register_buffer("cls", cls.detach().clone())
        self.word = nn.Parameter(torch.zeros(k, head_weight.shape[0], device=cls.device))
        self.head_weight = nn.Parameter(head_weight.detach().float().expand(k, -1, -1).clone())
        self.head_bias = nn.Parameter(head_bias.detach().float().expand(k, -1).clone())
        seeds = seeds if seeds is not None else list(range(k))
        downs, ups = {}, {}
        for key, members in self.classes.items():
            first = self.groups[members[0]]
            j, out_f, in_f = len(first.names), first.out_features, first.in_features
            down = torch.empty(k, len(members), j, rank, in_f)
            for c, seed in enumerate(seeds):
                for m, index in enumerate(members):
                    for p, path in enumerate(self.groups[index].paths):
                        # each concept's A from its own seed and the projection's name:
                        # tuning it alone or in a bank starts the same
                        gen = torch.Generator().manual_seed(
                            int(seed) * 7919 + zlib.crc32(path.encode())
                        )
                        down[c, m, p] = torch.randn(rank, in_f, generator=gen) / in_f**0.5
            downs[key] = nn.Parameter(down.to(cls.device))
            ups[key] = nn.Parameter(torch.zeros(k, len(members), j, out_f, rank, device=cls.device))
        self.down = nn.ParameterDict(downs)
        self.up = nn.ParameterDict(ups)
        self._enabled = True
        # what the bank is attached to, kept outside nn.Module's registry (not submodules)
        self._unet: nn.Module | None
        self._offsets: WeightOffsets | None
        object.__setattr__(self, "_unet", None)
        object.__setattr__(self, "_offsets", None)
        # attention path → (its module, the fused processor installed there)
        self._installed: dict[str, tuple[Attention, FusedAttnProcessor]] = {}
        self._handle: Any = None
        self._generation = 0  # bumped by invalidate(): part of every cache key
        self._linears: dict[str, nn.Linear] = {}
        # per folded-or-not: (what they were made of, per class (weights, biases))
        self._stacks: dict[
            bool, tuple[Any, dict[str, tuple[torch.Tensor, torch.Tensor | None]]]
        ] = {}
        self._deltas: tuple[Any, dict[str, torch.Tensor]] | None = None
        # per group (weight, bias, delta): see _refresh
        self._current: dict[int, Projection] | None = None
        self._made_of: tuple[Any, ...] = ()

    # ------------------------------------------------------------------ grouping

    def per_sample(self, values: torch.Tensor, batch: int) -> torch.Tensor:
        """Each sample's row of a (K, ...) tensor when a batch of ``batch`` is K equal
        contiguous groups: (batch, ...)."""
        k = self.num_concepts
        if batch % k:
            raise ValueError(f"batch {batch} does not split into {k} concepts")
        if k == 1:
            return values.expand(batch, *values.shape[1:])
        return values.repeat_interleave(batch // k, dim=0)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The per-concept output layer: (N, H) → (N, D)."""
        k = self.num_concepts
        grouped = hidden.to(self.head_weight.dtype).reshape(k, -1, hidden.shape[-1])
        out = torch.baddbmm(self.head_bias[:, None], grouped, self.head_weight.transpose(1, 2))
        return out.reshape(hidden.shape[0], -1)

    def word_for(self, batch: int, device: torch.device) -> torch.Tensor:
        return self.per_sample(self.word, batch)

    # ------------------------------------------------------------------ UNet deltas

    def attach(self, unet: nn.Module, offsets: WeightOffsets | None = None) -> ConceptBank:
        """Route ``unet``'s attentions through fused processors reading this bank's weights:
        W0 (+ the frozen domain ``offsets``, folded) + each concept's B·A.

        Each fused processor runs the attention kernel of the processor it replaces
        (:func:`~e4t.models.fused.kernel_for`: sdpa or eager; others are refused). Every
        UNet forward checks the fused processors are still in place: a processor switch
        while attached (``enable_attention_slicing``, ``set_attn_processor``, xformers)
        would silently drop the concepts, so it raises instead."""
        self.detach()
        linears = projection_linears(unet, self.shapes, "concept delta")
        by_attention: dict[str, dict[str, int]] = {}
        for index, group in enumerate(self.groups):
            by_attention.setdefault(group.attention, {})[group.role] = index
        # everything checked before any processor is replaced
        modules = {a: check_plain(a, unet.get_submodule(a)) for a in by_attention}
        kernels = {a: kernel_for(a, m.processor) for a, m in modules.items()}
        object.__setattr__(self, "_unet", unet)
        object.__setattr__(self, "_offsets", offsets)
        self._linears = linears
        for attention, roles in by_attention.items():
            module = modules[attention]
            fused = FusedAttnProcessor(self, roles, module.processor, kernels[attention])
            module.set_processor(fused)
            self._installed[attention] = (module, fused)
        self._handle = unet.register_forward_pre_hook(self._before_forward)
        return self

    def detach(self) -> None:
        """Put back the processors the UNet had before :meth:`attach` (the same objects);
        where a processor was switched since, the switch is left as it is."""
        for module, fused in self._installed.values():
            if module.processor is fused:
                module.set_processor(fused.original)
        if self._handle is not None:
            self._handle.remove()
        object.__setattr__(self, "_unet", None)
        object.__setattr__(self, "_offsets", None)
        self._handle = None
        self._installed.clear()
        self._linears.clear()
        self.invalidate()

    def invalidate(self) -> None:
        """Forget every cached weight stack: the next forward rebuilds them from the UNet's
        and the offsets' current weights. Call after changing weights in place without
        autograd's version counter seeing it (writes through ``.data``)."""
        self._generation += 1
        self._stacks.clear()
        self._deltas = self._current = None
        self._made_of = ()

    def _before_forward(self, *_: Any) -> None:
        """The UNet's forward pre-hook: the fused processors are still in place (a Python
        identity check per attention: no device work), then this forward's weights."""
        switched = [
            a for a, (module, fused) in self._installed.items() if module.processor is not fused
        ]
        if switched:
            raise RuntimeError(
                f"the attention processors of {len(switched)} attention(s) (first: "
                f"{switched[0]}) were replaced while a concept bank is attached "
                "(enable_attention_slicing, set_attn_processor or xformers?): the UNet "
                "would run without the concepts. Detach the concepts "
                "(E4TModel.detach_concepts() or bank.detach()) before switching attention "
                "processors, then attach them again"
            )
        self._refresh()

    def refresh(self) -> None:
        """What the UNet's forward pre-hook does (a compiled feature pass calls the UNet's
        blocks without its forward, so without the hook)."""
        self._before_forward()

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """The deltas off inside the block: the encoder's UNet-feature pass reads the base
        UNet, as it did in pretraining (the domain offsets are off there too)."""
        previous, self._enabled = self._enabled, False
        try:
            yield
        finally:
            self._enabled = previous

    def project(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Group ``index``'s projections of x (B, T, in) → (B, T, Σout), one matmul (three in
        reduced precision); with the deltas on, each concept's contiguous share of the batch
        meets its own weights."""
        if self._current is None:
            self._refresh()
        assert self._current is not None
        weight, bias, delta = self._current[index]
        if weight.dim() == 2 and delta is None:  # deltas off: the base weights
            return F.linear(x, weight, bias)
        if delta is None:  # fp32: W0 + B·A folded per concept, (K, Σout, in)
            grouped = x.reshape(weight.shape[0], -1, x.shape[-1])  # (K, n·T, in)
            if bias is None:
                y = torch.bmm(grouped, weight.transpose(1, 2))
            else:
                y = torch.baddbmm(bias, grouped, weight.transpose(1, 2))
            return y.reshape(*x.shape[:-1], -1)
        # bf16/fp16: rounding W0 + B·A to W0's precision would zero most small deltas, so
        # each concept's term (x·Aᵀ)·Bᵀ is computed beside W0 — low rank, B·A is never
        # made — and summed inside W0's matmul, which accumulates in fp32 and rounds once
        down, up = delta  # (K, j·r, in), (K, j·r, Σout): the group's Bᵀ block-diagonal
        x = x.to(down.dtype)  # once: under autocast each matmul would cast it again
        grouped = x.reshape(down.shape[0], -1, x.shape[-1])  # (K, n·T, in)
        h = torch.bmm(grouped, down.transpose(1, 2))  # (K, n·T, j·r)
        if bias is None:
            low = torch.bmm(h, up)
        else:  # the bias rides in the small term: its rounding is the output's own scale
            low = torch.baddbmm(bias, h, up)
        y = torch.addmm(low.flatten(0, 1), x.reshape(-1, x.shape[-1]), weight.t())
        return y.reshape(*x.shape[:-1], -1)

    def _compute_dtype(self) -> torch.dtype:
        """The dtype the UNet's projections compute in: autocast's, else the weights'."""
        device = self.word.device.type
        if torch.is_autocast_enabled(device):
            return torch.get_autocast_dtype(device)
        return next(iter(self._linears.values())).weight.dtype

    def _low_rank(self, dtype: torch.dtype) -> dict[str, LowRank]:
        """Per class every concept's factors in the compute dtype, as one matmul each reads
        them: A of a group's j projections stacked, (K, n, j·r, in), and their Bᵀ as one
        block-diagonal matrix, (K, n, j·r, j·out) — (x·Aᵀ)·Bᵀ of every projection of the
        group in two matmuls (the zero blocks cost j·r/in of W0's matmul)."""
        out = {}
        for key in self.classes:
            down, up = self.down[key], self.up[key]  # (K, n, j, r, in), (K, n, j, out, r)
            j = up.shape[2]
            eye = torch.eye(j, dtype=dtype, device=up.device).reshape(j, 1, j, 1)
            # (K, n, j, r, 1, out) · δ(j, j') → (K, n, j, r, j', out)
            block = up.transpose(3, 4).to(dtype).unsqueeze(4) * eye
            out[key] = (down.to(dtype).flatten(2, 3), block.flatten(4, 5).flatten(2, 3))
        return out

    def _refresh(self) -> None:
        """The weights of this UNet forward: per group (weight, bias, delta) — deltas off:
        W0 (Σout, in), no delta; fp32: W0 + B·A folded, (K, Σout, in), no delta; reduced
        precision: W0 (Σout, in) and the factors A, B apart, in the compute dtype. In fp32
        rebuilt only when something they are made of changed; in reduced precision at each
        forward (casting the factors: a few small ops per shape class)."""
        assert self._unet is not None
        dtype = self._compute_dtype()
        folded = self._offsets is not None and self._offsets.enabled
        stacks = self._base_stacks(folded, dtype)
        fold = dtype == torch.float32  # W0 + B·A rounds at 2^-24 of W0: exact enough
        deltas: dict[str, Any] | None = None
        if self._enabled:
            deltas = self.delta_weights() if fold else self._low_rank(dtype)
        made_of = (stacks, deltas, dtype)
        if (
            not torch.compiler.is_compiling()  # a compiled step builds them in its graph
            and self._current is not None
            and all(a is b for a, b in zip(self._made_of, made_of, strict=True))
        ):
            return
        current: dict[int, Projection] = {}
        for key, members in self.classes.items():
            weight, bias = stacks[key]
            bases = weight.unbind(0)  # (Σout, in) each
            if deltas is None:
                pieces: tuple[LowRank | None, ...] = (None,) * len(members)
            elif fold:
                bases = (weight + deltas[key]).unbind(1)  # (K, Σout, in) each
                pieces = (None,) * len(members)
            else:
                down, up = deltas[key]  # per group: (K, j·r, in), (K, j·r, Σout)
                pieces = tuple(zip(down.unbind(1), up.unbind(1), strict=True))
            for m, index in enumerate(members):
                current[index] = (bases[m], None if bias is None else bias[m], pieces[m])
        self._current, self._made_of = current, made_of

    def _base_stacks(
        self, folded: bool, dtype: torch.dtype
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """Per class the UNet's weights (n, Σout, in) and biases (n, Σout) or None, with the
        domain offsets folded in when ``folded``; rebuilt when a weight or offset changed."""
        offsets = self._offsets if folded else None
        if torch.compiler.is_compiling():
            # the frozen stacks are the compiled step's inputs, built eagerly beforehand
            # (e4t.training.compile.warm_bank): data_ptr and _version do not trace
            return self._stacks[folded][1]
        key: tuple[Any, ...] = (
            self._generation,
            dtype,
            *((lin.weight.data_ptr(), lin.weight._version) for lin in self._linears.values()),
        )
        if offsets is not None:
            if torch.is_grad_enabled() and any(p.requires_grad for p in offsets.parameters()):
                raise RuntimeError(
                    "concept deltas fold the domain offsets in as constants: freeze the "
                    "offsets (set_trainable) or detach the concepts to train them"
                )
            key += tuple((p.data_ptr(), p._version) for p in offsets.parameters())
        cached = self._stacks.get(folded)
        if cached is not None and cached[0] == key:
            return cached[1]
        stacks = {}
        with torch.no_grad():
            for cls_key, members in self.classes.items():
                weights, biases = [], []
                for index in members:
                    for path in self.groups[index].paths:
                        linear = self._linears[path]
                        w = linear.weight.float()
                        if offsets is not None and path in offsets.config.shapes:
                            w = w + offsets.delta_weight(path, w)
                        weights.append(w)
                        biases.append(
                            torch.zeros_like(w[:, 0])
                            if linear.bias is None
                            else linear.bias.float()
                        )
                n = len(members)
                has_bias = any(
                    self._linears[p].bias is not None for i in members for p in self.groups[i].paths
                )
                stacks[cls_key] = (
                    torch.cat(weights).reshape(n, -1, weights[0].shape[1]).to(dtype),
                    torch.cat(biases).reshape(n, -1).to(dtype) if has_bias else None,
                )
        self._stacks[folded] = (key, stacks)
        return stacks

    def delta_weights(self) -> dict[str, torch.Tensor]:
        """Per class every concept's B·A: (K, n, Σout, in), one matmul each; in fp32 shared
        by the UNet forward's fold and the regulariser while the deltas are unchanged
        (reduced precision never makes it: see :meth:`project`)."""
        if torch.compiler.is_compiling():  # in a compiled step: once per step, in its graph
            return {
                key: torch.matmul(self.up[key], self.down[key]).flatten(2, 3)
                for key in self.classes
            }
        device = self.word.device.type
        key = (
            torch.is_grad_enabled(),
            torch.is_autocast_enabled(device),
            tuple((p.data_ptr(), p._version, p.requires_grad) for p in self.down.values()),
            tuple((p.data_ptr(), p._version, p.requires_grad) for p in self.up.values()),
        )
        if self._deltas is not None and self._deltas[0] == key:
            return self._deltas[1]
        deltas = {}
        for cls_key in self.classes:
            up, down = self.up[cls_key], self.down[cls_key]
            delta = torch.matmul(up, down)  # (K, n, j, out, in)
            deltas[cls_key] = delta.flatten(2, 3)  # (K, n, j·out, in)
            if delta.requires_grad:
                # a backward through it ends its use: the next forward builds it anew
                delta.register_hook(self._spent)
        self._deltas = (key, deltas)
        return deltas

    def _spent(self, grad: torch.Tensor) -> None:
        self._deltas = None

    def delta_weight(self, path: str, index: int = 0) -> torch.Tensor:
        key, m, j = self.where[path]
        return self.up[key][index, m, j] @ self.down[key][index, m, j]

    def squared_norms(self) -> torch.Tensor:
        """Σ‖B_c A_c‖² per concept, (K,). In fp32, one norm over the delta weights the
        forward folds; in reduced precision, where B·A is never made, from the rank × rank
        Gram matrices: ‖B A‖² = Σ (BᵀB) ⊙ (A Aᵀ) (under autocast, its matmuls are bf16 too:
        a regulariser needs no more)."""
        k = self.num_concepts
        if not self.classes:
            return torch.zeros(k, device=self.word.device)
        if self._linears and self._compute_dtype() != torch.float32:
            grams = [
                (self.up[key].transpose(-1, -2) @ self.up[key])
                * (self.down[key] @ self.down[key].transpose(-1, -2))
                for key in self.classes
            ]  # (K, n, j, r, r) each
            return torch.cat([g.reshape(k, -1) for g in grams], dim=1).sum(1, dtype=torch.float32)
        deltas = self.delta_weights()
        flat = torch.cat([d.reshape(k, -1) for d in deltas.values()], dim=1)
        return torch.linalg.vector_norm(flat, dim=1, dtype=torch.float32).square()

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
            self.groups,
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
            key, m, j = self.where[path]
            out[f"delta.{path}.down"] = self.down[key][index, m, j]
            out[f"delta.{path}.up"] = self.up[key][index, m, j]
        return {k: v.detach().to("cpu", dtype).contiguous() for k, v in out.items()}

    def save(
        self, index: int, folder: str | Path, meta: dict[str, Any], dtype: str = "fp16"
    ) -> int:
        """Write concept ``index`` (safetensors + JSON); returns its bytes."""
        out = self.save_tensors(index, folder, dtype).parent
        info = self.concept_config(meta, dtype)
        (out / CONCEPT_CONFIG).write_text(json.dumps(info, indent=1, sort_keys=True))
        return sum(p.stat().st_size for p in out.iterdir() if p.is_file())

    def save_tensors(self, index: int, folder: str | Path, dtype: str = "fp16") -> Path:
        """Write concept ``index``'s ``concept.safetensors`` only (its ``concept.json``, the
        done marker, is the caller's: :meth:`concept_config`); returns the file."""
        torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        save_file(self.tensors_of(index, torch_dtype), str(out / CONCEPT_TENSORS))
        return out / CONCEPT_TENSORS

    def concept_config(self, meta: dict[str, Any], dtype: str = "fp16") -> dict[str, Any]:
        """A concept's ``concept.json`` as written beside its tensors in ``dtype``."""
        return {"format": FORMAT, "rank": self.rank, "dtype": dtype, **meta}

    @classmethod
    def from_tensors(
        cls_,
        items: list[dict[str, torch.Tensor]],
        rank: int,
        device: torch.device,
        groups: list[ProjectionGroup],
    ) -> ConceptBank:
        """A bank of the given concepts' tensors (as :meth:`tensors_of` writes them), on the
        model's projection ``groups``."""
        first = items[0]
        bank = cls_(
            torch.stack([t["image.clip_cls"].float() for t in items]).to(device),
            first["head.weight"].float(),
            first["head.bias"].float(),
            groups,
            rank,
        )
        with torch.no_grad():
            bank.word.copy_(torch.stack([t["word"].float() for t in items]))
            bank.head_weight.copy_(torch.stack([t["head.weight"].float() for t in items]))
            bank.head_bias.copy_(torch.stack([t["head.bias"].float() for t in items]))
            for path, (key, m, j) in bank.where.items():
                for c, t in enumerate(items):
                    bank.down[key][c, m, j].copy_(t[f"delta.{path}.down"].float())
                    bank.up[key][c, m, j].copy_(t[f"delta.{path}.up"].float())
        return bank.to(device)
