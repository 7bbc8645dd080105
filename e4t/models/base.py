"""Loading the frozen base models: a diffusers Stable Diffusion checkpoint + a CLIP vision tower.

Hub ids and local folders load the same way (``from_pretrained`` with ``subfolder``); the
tiny preset is an ordinary local folder, so tests run the path real checkpoints take.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, SchedulerMixin, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from e4t.config import DEFAULT_IMAGE_ENCODER, ModelConfig

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class BaseModels:
    """Frozen components. ``noise_scheduler`` is the training-time DDPM view of the schedule."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: SchedulerMixin
    scheduler_config: dict[str, Any]
    image_encoder: CLIPVisionModelWithProjection
    image_processor: CLIPImageProcessor
    source: str

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype


def resolve_image_encoder(config: ModelConfig) -> tuple[str, str | None]:
    """(repo or folder, subfolder) of the vision tower."""
    if config.image_encoder:
        return config.image_encoder, None
    local = Path(config.base_model)
    if (local / "image_encoder" / "config.json").exists():
        return config.base_model, "image_encoder"
    return DEFAULT_IMAGE_ENCODER, None


def load_base_models(config: ModelConfig) -> BaseModels:
    """Load and freeze every base component with the dtype, device and attention asked for."""
    source = config.base_model
    local = Path(source)
    if ("/" not in source or source.startswith((".", "/"))) and not local.exists():
        raise FileNotFoundError(
            f"base model {source!r} is neither a folder nor a hub id: "
            f"create one with `e4t init-model --preset tiny {source}`"
        )
    dtype = DTYPES[config.dtype]
    attn = "sdpa" if config.attention == "sdpa" else "eager"
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype)
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype)
    text_encoder = CLIPTextModel.from_pretrained(
        source, subfolder="text_encoder", torch_dtype=dtype, attn_implementation=attn
    )
    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", model_max_length=77)
    scheduler_config = dict(DDPMScheduler.load_config(source, subfolder="scheduler"))
    noise_scheduler = DDPMScheduler.from_config(scheduler_config)
    enc_repo, enc_sub = resolve_image_encoder(config)
    kwargs: dict[str, Any] = {"subfolder": enc_sub} if enc_sub else {}
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(
        enc_repo, torch_dtype=dtype, attn_implementation=attn, **kwargs
    )
    try:
        image_processor = CLIPImageProcessor.from_pretrained(
            source if enc_sub else enc_repo, subfolder="feature_extractor" if enc_sub else None
        )
    except OSError:
        size = image_encoder.config.image_size
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        )
    unet.set_attn_processor(AttnProcessor2_0() if config.attention == "sdpa" else AttnProcessor())
    for module in (unet, vae, text_encoder, image_encoder):
        module.requires_grad_(False)
        module.eval()
        module.to(config.device)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        text_encoder.gradient_checkpointing_enable()
    return BaseModels(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        noise_scheduler=noise_scheduler,
        scheduler_config=scheduler_config,
        image_encoder=image_encoder,
        image_processor=image_processor,
        source=source,
    )
