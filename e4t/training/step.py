"""One E4T training step on a batch, shared by pretraining and per-concept tuning."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from e4t.config import LossConfig
from e4t.models.e4t_model import E4TModel
from e4t.training.losses import (
    diffusion_loss,
    diffusion_target,
    embedding_regularizer,
    latent_mask,
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


def compute_loss(
    model: E4TModel,
    batch: Batch,
    losses: LossConfig,
    generator: torch.Generator | None = None,
    cls: torch.Tensor | None = None,
) -> StepOutput:
    """The E4T objective on one batch: draw t and noise, predict v*, denoise, score.

    ``cls`` (B, L, C) skips the CLIP tower when the image's [CLS] tokens are known already.
    """
    device = model.base.device
    latents = encode_latents(model, batch.pixel_values, generator)
    noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    scheduler = model.base.noise_scheduler
    timesteps = torch.randint(
        0,
        scheduler.config.num_train_timesteps,
        (latents.shape[0],),
        generator=generator,
        device=device,
    )
    z_t = scheduler.add_noise(latents, noise, timesteps)
    if cls is None:
        clip_trains = any(p.requires_grad for p in model.image_encoder.parameters())
        with torch.set_grad_enabled(clip_trains and torch.is_grad_enabled()):
            cls = model.clip_cls(batch.clip_pixel_values)
    offset = model.predict_offset(cls, z_t, timesteps)
    v_star = model.word_embedding(offset)
    prompt_embeds = model.encode_prompt(batch.prompts, v_star)
    prediction = model.base.unet(z_t, timesteps, prompt_embeds).sample
    target = diffusion_target(scheduler, latents, noise, timesteps)
    weights = None
    if losses.use_mask and batch.mask is not None:
        weights = latent_mask(
            batch.mask.to(device), (latents.shape[-2], latents.shape[-1]), losses.mask_floor
        )
    diff = diffusion_loss(prediction, target, weights)
    emb = embedding_regularizer(model.config.embedding_scale * offset)
    wreg = model.offsets.squared_norm()
    total = diff + losses.lambda_emb * emb + losses.lambda_w * wreg
    return StepOutput(loss=total, diffusion=diff, embedding_reg=emb, weight_reg=wreg)
