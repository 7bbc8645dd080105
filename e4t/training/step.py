"""The E4T objective (E4T §3.3), written once: pretraining and per-concept tuning differ only
in how they draw (noise, t, prompt) and how they reduce the per-sample terms.

    z_t = add_noise(x0, ε, t)                      # the scheduler's forward process
    v*  = e(class) + s·E(x, z_t, t) (+ word_c)     # the encoder's word, per sample
    L   = w-masked ‖UNet(z_t, t, prompt(v*)) − target‖²   per sample
          (on SDXL the UNet also reads the pooled prompt and add_time_ids)
    R   = ‖s·E (+ word_c)‖²                        per sample

:func:`objective_terms` computes (L, R) per sample; :func:`compute_loss` is pretraining's
reduction (batch means + λ_w·Σ‖Δ‖² of the domain offsets); tuning reduces per concept
(:func:`e4t.training.tune.concept_losses`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from e4t.config import LossConfig
from e4t.models.e4t_model import E4TModel, PromptIds
from e4t.training.losses import (
    diffusion_target,
    embedding_penalty,
    latent_mask,
    per_sample_diffusion_loss,
)


@dataclass
class Batch:
    """pixel_values: (B, 3, H, W) in [−1, 1]; clip_pixel_values: (B, 3, S, S) normalised for
    CLIP; mask: (B, 1, H, W) in [0, 1] or None; prompts: B strings with ``{}``."""

    pixel_values: torch.Tensor
    clip_pixel_values: torch.Tensor
    prompts: list[str]
    mask: torch.Tensor | None = None


@dataclass
class ObjectiveTerms:
    """Per-sample terms, each (B,): the masked diffusion loss and the embedding penalty."""

    diffusion: torch.Tensor
    embedding: torch.Tensor


@dataclass
class StepOutput:
    loss: torch.Tensor
    diffusion: torch.Tensor
    embedding_reg: torch.Tensor
    weight_reg: torch.Tensor


def encode_latents(
    model: E4TModel, pixel_values: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    vae = model.base.vae
    with torch.no_grad():
        dist = vae.encode(pixel_values.to(model.base.device, vae.dtype)).latent_dist
        return dist.sample(generator) * vae.config.scaling_factor


def objective_terms(
    model: E4TModel,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    cls: torch.Tensor,
    prompts: list[str] | PromptIds,
    weights: torch.Tensor | None = None,
) -> ObjectiveTerms:
    """The objective on B draws. latents, noise: (B, 4, h, w); timesteps: (B,); cls: the
    image's [CLS] tokens (B, L, C); prompts: B strings or their ids
    (:meth:`E4TModel.prompt_ids`); weights: (B, 1, h, w) latent-size mask weights or None.

    With concepts attached, each draw's word correction joins the penalty, so a concept's
    v* stays near what the domain encoder predicts (the paper's λ_emb term)."""
    scheduler = model.base.noise_scheduler
    z_t = scheduler.add_noise(latents, noise, timesteps)
    offset = model.predict_offset(cls, z_t, timesteps)
    v_star = model.word_embedding(offset)
    prediction = model.predict_noise(z_t, timesteps, model.condition(prompts, v_star))
    target = diffusion_target(scheduler, latents, noise, timesteps)
    scaled = model.config.embedding_scale * offset
    if model.concepts is not None:
        scaled = scaled + model.concepts.word_for(offset.shape[0], offset.device)
    return ObjectiveTerms(
        diffusion=per_sample_diffusion_loss(prediction, target, weights),
        embedding=embedding_penalty(scaled),
    )


def compute_loss(
    model: E4TModel,
    batch: Batch,
    losses: LossConfig,
    generator: torch.Generator | None = None,
    cls: torch.Tensor | None = None,
) -> StepOutput:
    """Pretraining's step: draw a latent sample, noise and t per image, then batch means.

    ``cls`` (B, L, C) skips the CLIP tower when the image's [CLS] tokens are known already.
    """
    device = model.base.device
    latents = encode_latents(model, batch.pixel_values, generator)
    noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    timesteps = torch.randint(
        0,
        model.base.noise_scheduler.config.num_train_timesteps,
        (latents.shape[0],),
        generator=generator,
        device=device,
    )
    if cls is None:
        clip_trains = any(p.requires_grad for p in model.image_encoder.parameters())
        with torch.set_grad_enabled(clip_trains and torch.is_grad_enabled()):
            cls = model.clip_cls(batch.clip_pixel_values)
    weights = None
    if losses.use_mask and batch.mask is not None:
        weights = latent_mask(
            batch.mask.to(device), (latents.shape[-2], latents.shape[-1]), losses.mask_floor
        )
    terms = objective_terms(model, latents, noise, timesteps, cls, batch.prompts, weights)
    diff = terms.diffusion.mean()
    emb = terms.embedding.mean()
    wreg = model.offsets.squared_norm()
    total = diff + losses.lambda_emb * emb + losses.lambda_w * wreg
    return StepOutput(loss=total, diffusion=diff, embedding_reg=emb, weight_reg=wreg)


@torch.no_grad()
def held_out_loss(
    model: E4TModel, batch: Batch, losses: LossConfig, num_timesteps: int = 8, seed: int = 0
) -> float:
    """The masked diffusion loss on held-out faces at FIXED draws: each face at
    ``num_timesteps`` evenly spaced timesteps, latents and noise from a generator seeded
    with ``seed`` alone, so the figure is comparable across steps and across runs."""
    device = model.base.device
    generator = torch.Generator(device).manual_seed(seed)
    latents = encode_latents(model, batch.pixel_values, generator)
    n = latents.shape[0]
    total = model.base.noise_scheduler.config.num_train_timesteps
    steps = ((torch.arange(num_timesteps, device=device) + 0.5) * total / num_timesteps).long()
    latents = latents.repeat_interleave(num_timesteps, dim=0)
    timesteps = steps.repeat(n)
    noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    cls = model.clip_cls(batch.clip_pixel_values).repeat_interleave(num_timesteps, dim=0)
    weights = None
    if losses.use_mask and batch.mask is not None:
        weights = latent_mask(
            batch.mask.to(device), (latents.shape[-2], latents.shape[-1]), losses.mask_floor
        ).repeat_interleave(num_timesteps, dim=0)
    prompts = [p for p in batch.prompts for _ in range(num_timesteps)]
    terms = objective_terms(model, latents, noise, timesteps, cls, prompts, weights)
    return float(terms.diffusion.mean())
