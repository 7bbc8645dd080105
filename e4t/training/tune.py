"""Personalization (E4T §3.4 "domain tuning"): K concepts tuned together in a few steps.

Each concept starts from the pretrained domain model (a fresh :class:`ConceptBank` entry:
zero deltas, the domain's output layer) and takes ``num_steps`` steps on its one image,
each step a batch of ``draws_per_concept`` (noise, t, prompt) draws. Concepts share the
forward pass but nothing else: every draw of concept c comes from c's own generator, its
loss is its own mean, the total is the SUM over concepts, and gradients are clipped per
concept — so a concept tuned in a bank of 8 ends where it would alone (float tolerance).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from e4t.config import FP16_REFUSAL, TuneConfig
from e4t.data.transforms import FaceInput
from e4t.models.concept import ConceptBank
from e4t.models.e4t_model import E4TModel, PromptIds
from e4t.models.precision import autocast
from e4t.training.compile import TuningStep, narrow
from e4t.training.losses import latent_mask
from e4t.training.step import objective_terms


@dataclass
class TuneResult:
    bank: ConceptBank
    losses: list[list[float]]  # per concept, per step (the objective)
    seconds: float
    num_steps: int
    # per concept, per step: ‖v* − e(class)‖ (root mean square over the step's draws)
    v_star_distances: list[list[float]] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)


def _stack(faces: list[FaceInput], device: torch.device) -> tuple[torch.Tensor, ...]:
    pixels = torch.stack([f.pixel_values for f in faces]).to(device)
    clip = torch.stack([f.clip_pixel_values for f in faces]).to(device)
    masks = torch.stack(
        [f.mask if f.mask is not None else torch.ones_like(f.pixel_values[:1]) for f in faces]
    ).to(device)
    return pixels, clip, masks


def _draws(
    model: E4TModel, latents: torch.Tensor, gens: list[torch.Generator], n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """n (noise, t) draws per concept from that concept's generator; grouped by concept."""
    steps = model.base.noise_scheduler.config.num_train_timesteps
    noise = torch.cat([torch.randn((n, *latents.shape[1:]), generator=g) for g in gens])
    t = torch.cat([torch.randint(0, steps, (n,), generator=g) for g in gens])
    return noise.to(latents.device, latents.dtype), t.to(latents.device)


def concept_losses(
    model: E4TModel,
    latents: torch.Tensor,
    cls: torch.Tensor,
    weights: torch.Tensor,
    gens: list[torch.Generator],
    n: int,
    prompts: list[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-concept masked diffusion loss (K,) and embedding penalty (K,): the shared
    objective (:func:`e4t.training.step.objective_terms`) on n draws per concept, each
    concept's terms the mean of its own draws."""
    noise, t = _draws(model, latents, gens, n)
    return draw_losses(model, latents, noise, t, cls, weights, prompts)


def draw_losses(
    model: E4TModel,
    latents: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    cls: torch.Tensor,
    weights: torch.Tensor,
    prompts: list[str] | PromptIds,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`concept_losses` on given draws: noise (K·n, ...), t (K·n,), grouped by concept."""
    k = latents.shape[0]
    n = noise.shape[0] // k
    terms = objective_terms(
        model,
        latents.repeat_interleave(n, dim=0),
        noise,
        t,
        cls.repeat_interleave(n, dim=0),
        prompts,
        weights.repeat_interleave(n, dim=0),
    )
    return terms.diffusion.reshape(k, n).mean(dim=1), terms.embedding.reshape(k, n).mean(dim=1)


def step_objective(
    model: E4TModel,
    latents: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    cls: torch.Tensor,
    ids: PromptIds,
    weights: torch.Tensor,
    live: torch.Tensor | None,
    lambda_emb: float,
    lambda_w: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's objective per concept (K,) and its embedding penalty (K,); ``live`` (K,)
    zeroes the objective of a padded pass's dummy concepts. What ``tune.compile``
    compiles (:mod:`e4t.training.compile`)."""
    assert model.concepts is not None
    diff, emb = draw_losses(model, latents, noise, t, cls, weights, ids)
    objective = diff + lambda_emb * emb + lambda_w * model.concepts.squared_norms()
    return (objective if live is None else objective * live), emb


def _prompts(templates: list[str], seeds: list[int], step: int, n: int) -> list[str]:
    out = []
    for seed in seeds:
        rng = random.Random(seed * 100_003 + step)
        out += [rng.choice(templates) for _ in range(n)]
    return out


@torch.no_grad()
def _prepare(
    model: E4TModel, faces: list[FaceInput], config: TuneConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    device = model.base.device
    pixels, clip, masks = _stack(faces, device)
    vae = model.base.vae
    # the latent mean: deterministic, so a concept's inputs do not depend on its batch-mates
    latents = vae.encode(pixels.to(vae.dtype)).latent_dist.mean * vae.config.scaling_factor
    cls = model.clip_cls(clip)
    weights = (
        latent_mask(masks, (latents.shape[-2], latents.shape[-1]), config.mask_floor)
        if config.use_mask
        else torch.ones_like(latents[:, :1])
    )
    return latents, cls, weights


def tune_concepts(
    model: E4TModel,
    faces: list[FaceInput],
    seeds: list[int],
    config: TuneConfig,
    on_step: Callable[[int, ConceptBank, float], None] | None = None,
    use_encoder: bool = True,
    pad_to: int | None = None,
    compile_backend: str | None = None,
) -> TuneResult:
    """Tune one concept per face, all in the same passes. The bank stays attached.

    on_step(step, bank, seconds) runs before the first step (step 0) and after each step,
    with the tuning seconds so far (its own time excluded). ``use_encoder=False`` zeroes
    each concept's encoder output layer, so v* = e(class word) + word: with
    ``trainable=["word"]`` that is Textual Inversion started from the class word.

    With ``config.compile`` on, a pass of fewer faces than ``pad_to`` is padded with dummy
    concepts (copies of the first, their objective masked to zero, dropped from the
    result), so every pass of a job has one shape and one compilation;
    ``compile_backend``: see :func:`e4t.training.compile.compiled`.
    """
    if len(faces) != len(seeds):
        raise ValueError(f"{len(faces)} faces but {len(seeds)} seeds")
    if model.base.dtype == torch.float16:
        raise ValueError(FP16_REFUSAL)
    real = len(faces)
    live = None
    if config.compile != "off":
        dummies = max(0, (pad_to or real) - real)
        faces, seeds = faces + faces[:1] * dummies, seeds + seeds[:1] * dummies
        live = torch.tensor([1.0] * real + [0.0] * dummies, device=model.base.device)
    start = time.perf_counter()
    latents, cls, weights = _prepare(model, faces, config)
    bank = model.attach_concepts(model.new_concepts(cls, config.rank, seeds))
    if not use_encoder:
        with torch.no_grad():
            bank.head_weight.zero_()
            bank.head_bias.zero_()
        # its output is zero whatever the image and step: skip the pass, so Textual
        # Inversion's tuning seconds are its own (unless the head itself is tuned)
        bank.use_encoder = "head" in config.trainable
    excluded = 0.0

    def report(step: int) -> None:
        nonlocal excluded
        if on_step is None:
            return
        began = time.perf_counter()
        on_step(step, bank, began - start - excluded)
        if model.concepts is not bank:  # the callback attached others: put the bank back
            model.attach_concepts(bank)
        excluded += time.perf_counter() - began

    model.requires_grad_(False)
    groups = parameter_groups(bank, config)
    params = [p for group in groups for p in group["params"]]
    for p in params:
        p.requires_grad_(True)
    # fused: one multi-tensor kernel per step (no per-tensor loop, no host sync for the step)
    optimizer = torch.optim.AdamW(
        groups, lr=config.lr, weight_decay=config.weight_decay, fused=True
    )
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    history: list[torch.Tensor] = []  # per step: (2, K) objective and ‖v* − e(class)‖
    run_step = TuningStep(
        model,
        bank,
        optimizer,
        step_objective,
        config.max_grad_norm,
        config.lambda_emb,
        config.lambda_w,
        config.autocast,
        config.compile,
        compile_backend,
    )
    report(0)
    n = config.draws_per_concept
    for step in range(config.num_steps):
        noise, t = _draws(model, latents, gens, n)
        ids = model.prompt_ids(_prompts(config.templates, seeds, step, n))
        objective, emb = run_step(latents, noise, t, cls, ids, weights, live)
        # kept on the device: no host sync inside the step loop
        history.append(torch.stack([objective, emb.sqrt()]))
        report(step + 1)
    for p in params:
        p.requires_grad_(False)
    if len(faces) > real:  # a padded pass: its dummies dropped
        bank = model.attach_concepts(narrow(bank, real))
    per_step = torch.stack(history).cpu().tolist() if history else []  # (steps, 2, K)
    return TuneResult(
        bank=bank,
        losses=[[row[0][c] for row in per_step] for c in range(real)],
        seconds=time.perf_counter() - start - excluded,
        num_steps=config.num_steps,
        v_star_distances=[[row[1][c] for row in per_step] for c in range(real)],
    )


def parameter_groups(bank: ConceptBank, config: TuneConfig) -> list[dict[str, Any]]:
    """The trainable tensors of ``config.trainable`` in AdamW groups with their rates."""
    groups = []
    if "word" in config.trainable:
        groups.append({"params": [bank.word], "lr": config.lr_word or config.lr})
    if "head" in config.trainable:
        lr_head = config.lr_head or config.lr / 10
        groups.append({"params": [bank.head_weight, bank.head_bias], "lr": lr_head})
    if "offsets" in config.trainable:
        deltas = list(bank.down.values()) + list(bank.up.values())
        groups.append({"params": deltas, "lr": config.lr_deltas or config.lr})
    return groups


@torch.no_grad()
def held_out_losses(
    model: E4TModel,
    faces: list[FaceInput],
    seeds: list[int],
    config: TuneConfig,
    num_draws: int = 16,
) -> list[float]:
    """Each attached concept's diffusion loss on draws tuning never saw (other seeds)."""
    latents, cls, weights = _prepare(model, faces, config)
    gens = [torch.Generator().manual_seed(10**9 + int(s)) for s in seeds]
    prompts = [config.templates[0]] * (num_draws * len(faces))
    diff, _ = concept_losses(model, latents, cls, weights, gens, num_draws, prompts)
    return diff.tolist()


def tune_full(
    model: E4TModel,
    face: FaceInput,
    seed: int,
    config: TuneConfig,
    lr: float,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """The paper's own domain tuning (E4T §3.4), one concept at a time: the encoder and the
    domain offsets themselves are tuned on the one image, ``config.num_steps`` steps of
    ``config.draws_per_concept`` draws. The reference that batched low-rank tuning is
    measured against. Call inside :meth:`E4TModel.restoring_domain_weights`.

    on_step(step, seconds) runs before the first step and after each one (its own time
    excluded from the seconds). Returns the objective per step.
    """
    if model.base.dtype == torch.float16:
        raise ValueError(FP16_REFUSAL)
    start = time.perf_counter()
    model.detach_concepts()
    latents, cls, weights = _prepare(model, [face], config)
    params = model.set_trainable(["encoder", "offsets"])
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay, fused=True)
    gens = [torch.Generator().manual_seed(int(seed))]
    n = config.draws_per_concept
    excluded = 0.0

    def report(step: int) -> None:
        nonlocal excluded
        if on_step is not None:
            began = time.perf_counter()
            on_step(step, began - start - excluded)
            excluded += time.perf_counter() - began

    history: list[torch.Tensor] = []
    report(0)
    for step in range(config.num_steps):
        with autocast(model.base.device, config.autocast):
            diff, emb = concept_losses(
                model, latents, cls, weights, gens, n, _prompts(config.templates, [seed], step, n)
            )
            offsets_norm = model.offsets.squared_norm()
            objective = diff + config.lambda_emb * emb + config.lambda_w * offsets_norm
        objective.sum().backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append(objective.detach())
        report(step + 1)
    model.set_trainable([])
    return torch.cat(history).cpu().tolist() if history else []
