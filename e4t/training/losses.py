"""E4T losses (E4T §3.3): masked diffusion loss + ‖s·E‖² on the embedding offset + Σ‖Δ‖²."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import SchedulerMixin


def diffusion_target(
    scheduler: SchedulerMixin, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet should predict, as the scheduler's ``prediction_type`` says."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"prediction_type {kind!r} is not supported: use epsilon or v_prediction")


def latent_mask(mask: torch.Tensor, size: tuple[int, int], floor: float = 0.0) -> torch.Tensor:
    """A (B, 1, H, W) mask in [0, 1] → weights at latent size, ``floor`` outside the face."""
    weights = F.interpolate(mask.float(), size=size, mode="area")
    return floor + (1.0 - floor) * weights


def diffusion_loss(
    prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error (B, C, h, w); with ``weights`` (B, 1, h, w) a weighted mean per sample.

    Each sample's loss is Σ w·(pred − target)² / (C · Σ w), then averaged over the batch,
    so a small face counts as much as a large one.
    """
    error = (prediction.float() - target.float()) ** 2
    if weights is None:
        return error.mean()
    w = weights.float()
    per_sample = (error * w).sum(dim=(1, 2, 3)) / (w.sum(dim=(1, 2, 3)) * error.shape[1]).clamp_min(
        1e-8
    )
    return per_sample.mean()


def embedding_regularizer(scaled_offset: torch.Tensor) -> torch.Tensor:
    """‖s·E‖² per sample, averaged: the L2 of the predicted OFFSET, not of v*."""
    return (scaled_offset.float() ** 2).sum(dim=-1).mean()
