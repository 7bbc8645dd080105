"""One compiled tuning step (``tune.compile``): the whole step in three graphs, no breaks.

The step is the forward — the encoder's UNet-feature pass, the encoder and each concept's
output layer, the text encoder with v* at the placeholder, the UNet with the concept bank,
the per-concept objective — compiled with ``fullgraph=True``; its backward is the graph
AOT autograd derives from it (``.backward()`` itself does not trace); then the per-concept
gradient clip, then the AdamW update, two more ``fullgraph=True`` graphs. What cannot be
traced stays outside, as inputs: the (noise, t) draws from each concept's generator, the
prompts' token ids, the frozen UNet weights stacked per class (:func:`warm_bank`).

Shapes are static per job: a pass of fewer concepts than the job's K is padded with
dummy concepts whose objective is masked to zero (``live``), so one compilation serves
every pass (:func:`e4t.training.tune.tune_concepts`, ``pad_to``). Compilation is cached
per process (the worker); inductor's on-disk cache is ``TORCHINDUCTOR_CACHE_DIR``.

``off`` runs the same objective eagerly, then the clip and the fused AdamW's own step.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
from torch import nn
from torch.optim.adamw import adamw

from e4t.models.concept import ConceptBank
from e4t.models.e4t_model import E4TModel, PromptIds
from e4t.models.precision import AutocastMode, autocast

CompileMode = Literal["off", "default", "reduce-overhead"]
COMPILE_MODES: tuple[str, ...] = ("off", "default", "reduce-overhead")

# (model, latents, noise, t, cls, ids, weights, live, λ_emb, λ_w) → (objective, penalty), (K,)
# each: e4t.training.tune.step_objective
Objective = Callable[..., tuple[torch.Tensor, torch.Tensor]]


class GraphCounter:
    """A ``torch.compile`` backend that counts the graphs handed to it and runs each
    eagerly: over one call of a function, graphs − 1 is its graph breaks; over a job, the
    count is its compilations."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: Any) -> Callable[..., Any]:
        self.graphs += 1
        return gm.forward


@dataclass
class Compiled:
    """The step's two compiled regions and what compiling them took."""

    objective: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    clip: Callable[[E4TModel, float], None]
    update: Callable[[list[AdamWGroup]], None]
    counters: dict[str, GraphCounter] = field(default_factory=dict)


# per (objective function, mode, backend): compiled once per process, reused by every pass
_COMPILED: dict[tuple[Any, ...], Compiled] = {}


def update(bank: ConceptBank, optimizer: torch.optim.Optimizer, max_norm: float) -> None:
    """Each concept's gradient clipped on its own, then the optimizer's step (eager)."""
    bank.clip_grad_norm_(max_norm)
    optimizer.step()


def clip(model: E4TModel, max_norm: float) -> None:
    """Each concept's gradient clipped on its own: the attached bank's, reached through the
    model (a new bank per pass as an argument would invalidate the compilation)."""
    assert model.concepts is not None
    model.concepts.clip_grad_norm_(max_norm)


def adamw_update(groups: list[AdamWGroup]) -> None:
    """The optimizer's step as one graph: ``Optimizer.step`` breaks the graph on purpose
    (before and after itself) and its fused kernel does not trace, so the AdamW update is
    the functional one on the optimizer's own state (:func:`adamw_groups`), each group with
    its rate; the step counts on the device (``capturable``: CUDA graphs). A graph apart
    from :func:`clip`: inductor's C++ code generation fails on the two fused together
    (torch 2.13, CPU: ``KeyError: 'bufN'`` in its outer-loop fusion)."""
    with torch.no_grad():
        for params, exp_avgs, exp_avg_sqs, steps, hyper in groups:
            adamw(
                params,
                [cast(torch.Tensor, p.grad) for p in params],
                exp_avgs,
                exp_avg_sqs,
                [],
                steps,
                foreach=True,
                capturable=True,
                amsgrad=False,
                beta1=hyper["beta1"],
                beta2=hyper["beta2"],
                lr=hyper["lr"],
                weight_decay=hyper["weight_decay"],
                eps=hyper["eps"],
                maximize=False,
            )


# one optimizer group as the compiled update reads it: params, first and second moments,
# step counts, hyperparameters
AdamWGroup = tuple[
    list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], dict[str, float]
]


def adamw_groups(optimizer: torch.optim.Optimizer) -> list[AdamWGroup]:
    """The optimizer's groups as :func:`adamw_update` reads them (parameters with a
    gradient)."""
    out = []
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        states = [optimizer.state[p] for p in params]
        beta1, beta2 = group["betas"]
        hyper = {
            "lr": float(group["lr"]),
            "beta1": float(beta1),
            "beta2": float(beta2),
            "weight_decay": float(group["weight_decay"]),
            "eps": float(group["eps"]),
        }
        out.append(
            (
                params,
                [st["exp_avg"] for st in states],
                [st["exp_avg_sq"] for st in states],
                [st["step"] for st in states],
                hyper,
            )
        )
    return out


def init_adamw_state(optimizer: torch.optim.Optimizer) -> None:
    """AdamW's state of every parameter, made eagerly (the optimizer makes it lazily in its
    first step): zero moments, a zero step count on the parameter's device."""
    for group in optimizer.param_groups:
        if group.get("amsgrad") or group.get("maximize"):
            raise ValueError("the compiled step's AdamW has no amsgrad or maximize")
        for p in group["params"]:
            state = optimizer.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


# inductor's C++ (CPU) code fused wrongly here (torch 2.13): the tiny model's compiled
# backward lost whole gradients (every up-factor gradient of one shape class zero) while
# aot_eager with inductor's decompositions matched eager; without fusion it matches. The
# CPU only checks correctness and counts breaks: speed is the GPU's (Triton, fused).
CPU_INDUCTOR_OPTIONS: dict[str, Any] = {"max_fusion_size": 1}


def compile_options(
    mode: CompileMode, backend: str | None, device_type: str, counter: GraphCounter
) -> dict[str, Any]:
    """``torch.compile``'s arguments for one region: inductor unless ``backend`` is given
    (``aot_eager`` traces without code generation), or ``count``: the region's graphs
    counted by ``counter`` and run eagerly, breaks allowed (so they can be counted).
    Shapes are static per job (``dynamic=False``): a new shape is a new compilation."""
    if backend == "count":
        return {"backend": counter, "fullgraph": False, "dynamic": False}
    if backend not in (None, "inductor"):
        return {"backend": backend, "fullgraph": True, "dynamic": False}
    if device_type == "cpu":  # (mode and options exclude each other)
        return {
            "backend": "inductor",
            "options": CPU_INDUCTOR_OPTIONS,
            "fullgraph": True,
            "dynamic": False,
        }
    return {"backend": "inductor", "mode": mode, "fullgraph": True, "dynamic": False}


def compiled(
    objective: Objective, mode: CompileMode, backend: str | None = None, device_type: str = "cpu"
) -> Compiled:
    """``objective``, :func:`clip` and :func:`adamw_update` compiled with ``fullgraph=True``
    (:func:`compile_options`)."""
    key = (objective, mode, backend, device_type)
    if key not in _COMPILED:
        counters = {"objective": GraphCounter(), "clip": GraphCounter(), "update": GraphCounter()}

        def options(region: str) -> dict[str, Any]:
            return compile_options(mode, backend, device_type, counters[region])

        _COMPILED[key] = Compiled(
            objective=torch.compile(objective, **options("objective")),
            clip=torch.compile(clip, **options("clip")),
            update=torch.compile(adamw_update, **options("update")),
            counters=counters,
        )
    return _COMPILED[key]


@dataclass
class CompiledUNet:
    """A UNet's forward compiled for sampling: ``module`` goes where the pipeline calls
    the UNet; ``counter`` counts its graphs under the ``count`` backend."""

    module: nn.Module
    counter: GraphCounter


# on the UNet itself, per (mode, backend, device type): compiled once per process, reused
# by every generate call. Not a module-level map: the compiled module refers to its UNet, so
# a map would keep every UNet alive; on the UNet the two make a cycle the collector frees.
_SAMPLING_ATTR = "_e4t_compiled_sampling"


def compiled_unet(
    unet: nn.Module, mode: CompileMode, backend: str | None = None, device_type: str = "cpu"
) -> CompiledUNet:
    """``unet`` compiled for the sampling loop (:func:`compile_options`). Dynamo compiles
    its forward and, as frames of their own, its hooks (an attached bank's pre-hook, the
    CFG regrouping of several concepts). The bank's hook, traced, reads the frozen weight
    stacks it finds and does not rebuild them: build them first
    (:func:`warm_bank`, as :func:`e4t.generation.generate` does)."""
    per_unet: dict[tuple[Any, ...], CompiledUNet] = unet.__dict__.setdefault(_SAMPLING_ATTR, {})
    key = (mode, backend, device_type)
    if key not in per_unet:
        counter = GraphCounter()
        module = torch.compile(unet, **compile_options(mode, backend, device_type, counter))
        per_unet[key] = CompiledUNet(cast(nn.Module, module), counter)
    return per_unet[key]


def forget_compiled_unet(unet: nn.Module) -> None:
    """Drop ``unet``'s compiled sampling modules (the next generate call compiles anew)."""
    unet.__dict__.pop(_SAMPLING_ATTR, None)


def warm_bank(bank: ConceptBank, device: torch.device, mode: AutocastMode) -> None:
    """Build the attached bank's frozen weight stacks eagerly (with and without the domain
    offsets folded in, in the step's compute dtype): the compiled step reads them."""
    with autocast(device, mode):
        bank.refresh()
        offsets = bank._offsets
        if offsets is not None:
            with offsets.disabled():
                bank.refresh()


@dataclass
class TuningStep:
    """One tuning step of K concepts, eager (``off``) or compiled: forward, backward, the
    per-concept clip and the optimizer step. Returns the step's (objective, penalty)."""

    model: E4TModel
    bank: ConceptBank
    optimizer: torch.optim.Optimizer
    objective: Objective
    max_norm: float
    lambda_emb: float
    lambda_w: float
    autocast: AutocastMode
    mode: CompileMode = "off"
    backend: str | None = None

    def __post_init__(self) -> None:
        self._compiled: Compiled | None = None
        if self.mode != "off":
            self.model.empty_prompt_embedding(1)  # computed once, eagerly
            warm_bank(self.bank, self.model.base.device, self.autocast)
            init_adamw_state(self.optimizer)
            device_type = self.model.base.device.type
            self._compiled = compiled(self.objective, self.mode, self.backend, device_type)

    def __call__(
        self,
        latents: torch.Tensor,
        noise: torch.Tensor,
        t: torch.Tensor,
        cls: torch.Tensor,
        ids: PromptIds,
        weights: torch.Tensor,
        live: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        objective = self.objective if self._compiled is None else self._compiled.objective
        if self._compiled is not None and not self.bank._stacks:
            # an on_step callback detached the bank (its caches went): build them again
            warm_bank(self.bank, self.model.base.device, self.autocast)
        with autocast(self.model.base.device, self.autocast):  # the forward; backward after
            total, penalty = objective(
                self.model,
                latents,
                noise,
                t,
                cls,
                ids,
                weights,
                live,
                self.lambda_emb,
                self.lambda_w,
            )
        total.sum().backward()  # a sum: each concept's gradient is its own
        if self._compiled is None:
            update(self.bank, self.optimizer, self.max_norm)
        else:
            self._compiled.clip(self.model, self.max_norm)
            self._compiled.update(adamw_groups(self.optimizer))
        self.optimizer.zero_grad(set_to_none=True)
        return total.detach(), penalty.detach()


@contextmanager
def graph_break_reasons() -> Iterator[Counter[str]]:
    """Dynamo's graph-break reasons recorded inside the block."""
    from torch._dynamo.utils import counters

    before = Counter(counters["graph_break"])
    found: Counter[str] = Counter()
    try:
        yield found
    finally:
        found.update(Counter(counters["graph_break"]) - before)


def narrow(bank: ConceptBank, k: int) -> ConceptBank:
    """A detached bank of ``bank``'s first k concepts (a padded pass without its dummies)."""
    out = ConceptBank(bank.cls[:k], bank.head_weight[0], bank.head_bias[0], bank.groups, bank.rank)
    with torch.no_grad():
        out.load_state_dict({name: value[:k] for name, value in bank.state_dict().items()})
    out.use_encoder = bank.use_encoder
    return out.to(bank.word.device)


def clear_compiled(*unets: nn.Module) -> None:
    """Forget every compiled step, the sampling modules of ``unets``, and dynamo's caches:
    the next one compiles afresh."""
    _COMPILED.clear()
    for unet in unets:
        forget_compiled_unet(unet)
    torch._dynamo.reset()
