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


def per_sample_diffusion_loss(
    prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """(B,) per-sample mean squared error of (B, C, h, w) predictions; with ``weights``
    (B, 1, h, w) each sample's loss is Σ w·(pred − target)² / (C · Σ w), so a small face
    counts as much as a large one."""
    error = (prediction.float() - target.float()) ** 2
    if weights is None:
        return error.mean(dim=(1, 2, 3))
    w = weights.float()
    return (error * w).sum(dim=(1, 2, 3)) / (w.sum(dim=(1, 2, 3)) * error.shape[1]).clamp_min(1e-8)


def diffusion_loss(
    prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """The batch mean of :func:`per_sample_diffusion_loss`."""
    return per_sample_diffusion_loss(prediction, target, weights).mean()


def embedding_penalty(scaled_offset: torch.Tensor) -> torch.Tensor:
    """(B,) ‖s·E‖² per sample: the L2 of the predicted OFFSET (plus a concept's own word
    correction in tuning), not of v*."""
    return (scaled_offset.float() ** 2).sum(dim=-1)
