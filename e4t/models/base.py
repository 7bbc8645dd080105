"""Loading the frozen base models: a diffusers Stable Diffusion checkpoint + a CLIP vision tower.

Hub ids and local folders load the same way (``from_pretrained`` with ``subfolder``); the
tiny preset is an ordinary local folder, so tests run the path real checkpoints take. An
SDXL checkpoint (its ``model_index.json`` names a ``StableDiffusionXL…`` pipeline) brings its
second text encoder and tokenizer (``text_encoder_2``, ``tokenizer_2``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, SchedulerMixin, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from transformers import (
    CLIPImageProcessorPil,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from e4t.config import DEFAULT_IMAGE_ENCODER, ModelConfig

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class BaseModels:
    """Frozen components. ``noise_scheduler`` is the training-time DDPM view of the schedule.
    ``text_encoder_2``/``tokenizer_2``: SDXL's second text encoder (OpenCLIP bigG's text
    tower, with projection: its pooled output conditions the UNet); None on SD 1.x/2.x."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: SchedulerMixin
    scheduler_config: dict[str, Any]
    image_encoder: CLIPVisionModelWithProjection
    image_processor: CLIPImageProcessorPil
    source: str
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: CLIPTokenizer | None = None

    @property
    def is_xl(self) -> bool:
        """The SDXL family: two text encoders, the UNet conditioned on text_time."""
        return self.text_encoder_2 is not None

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


def is_local_source(source: str) -> bool:
    """A base model named by a path (``./x``, ``/x``, a bare name, an existing folder) rather
    than a hub id (``org/name``)."""
    return source.startswith((".", "/", "~")) or "/" not in source or Path(source).exists()


XL_PIPELINE_PREFIX = "StableDiffusionXL"


def is_xl_source(source: str) -> bool:
    """Whether a base model (folder or hub id) is SDXL: its ``model_index.json``'s
    ``_class_name`` names a ``StableDiffusionXL…`` pipeline (as
    stabilityai/stable-diffusion-xl-base-1.0's does). A folder without the file (only
    ``unet/``…) is SD 1.x/2.x."""
    if is_local_source(source):
        index_path = Path(source).expanduser() / "model_index.json"
        if not index_path.exists():
            return False
        index = json.loads(index_path.read_text())
    else:
        from diffusers import DiffusionPipeline

        index = DiffusionPipeline.load_config(source)
    return str(index.get("_class_name", "")).startswith(XL_PIPELINE_PREFIX)


def check_base_model(source: str) -> None:
    """The one base-model check: a local source must be a diffusers Stable Diffusion folder
    (``model_index.json`` or ``unet/``); a hub id is left to ``from_pretrained``."""
    if source.startswith("preset:") or not is_local_source(source):
        return
    folder = Path(source).expanduser()
    if not ((folder / "model_index.json").exists() or (folder / "unet").is_dir()):
        raise FileNotFoundError(
            f"base model {source!r} not found: create a random-weight one with "
            f"`e4t init-model --arch tiny {source}` (or init_arch=tiny in a flow), or give a "
            "hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5"
        )


def prepare_components(
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    image_encoder: CLIPVisionModelWithProjection,
    config: ModelConfig,
    text_encoder_2: CLIPTextModelWithProjection | None = None,
) -> None:
    """The one set-up of the frozen components, loaded or built: attention kernels, frozen
    and in eval mode, on ``config.device`` in ``config.dtype``, gradient checkpointing on
    the UNet and the text encoder when asked (see :func:`enable_text_encoder_checkpointing`;
    the image encoder stays plain: E4T reads every 2nd layer's [CLS] through hooks).
    ``text_encoder_2``: SDXL's second text encoder, set up as the first."""
    dtype = DTYPES[config.dtype]
    attn = "sdpa" if config.attention == "sdpa" else "eager"
    unet.set_attn_processor(AttnProcessor2_0() if attn == "sdpa" else AttnProcessor())
    texts: list[CLIPTextModel | CLIPTextModelWithProjection] = [text_encoder]
    if text_encoder_2 is not None:
        texts.append(text_encoder_2)
    for module in (*texts, image_encoder):
        module.set_attn_implementation(attn)
    for module in (unet, vae, *texts, image_encoder):
        module.requires_grad_(False)
        module.eval()
        module.to(config.device)
        if module.dtype != dtype:  # built in fp32; loaded ones already are in `dtype`
            module.to(dtype=dtype)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        for text in texts:
            enable_text_encoder_checkpointing(text)


def enable_text_encoder_checkpointing(
    text_encoder: CLIPTextModel | CLIPTextModelWithProjection,
) -> None:
    """Recompute the frozen text encoder's layer activations in the backward pass.

    The encoder's weights are frozen, but v* is injected at its input embedding, so the
    diffusion loss back-propagates through every text layer and their activations are kept
    (B × 77 × D per layer input, plus attention and MLP intermediates). transformers
    checkpoints a layer only while ``module.training`` is True, so the encoder is put in
    train mode; that computes exactly what eval mode does only while its dropouts are 0
    (they are in every CLIP text config), which is checked here rather than assumed."""
    dropouts = {
        name: float(getattr(text_encoder.config, name, 0.0))
        for name in ("dropout", "attention_dropout")
    }
    if any(rate > 0 for rate in dropouts.values()):
        raise ValueError(
            f"text encoder has dropout {dropouts}: checkpointing it needs train mode, where "
            "that dropout would make v*'s prompt encoding random; set "
            "model.gradient_checkpointing=false or a text_encoder config with dropout 0"
        )
    text_encoder.activation_checkpointing_enable()  # non-reentrant
    # that also hooks the token embedding to always require grad (for reentrant checkpoints):
    # not needed here, and it would back-propagate through prompts that carry no v*
    text_encoder.disable_input_require_grads()
    text_encoder.train()  # for checkpointing only: with zero dropout, train == eval


def load_base_models(config: ModelConfig) -> BaseModels:
    """Load and freeze every base component with the dtype, device and attention asked for."""
    source = config.base_model
    check_base_model(source)
    dtype = DTYPES[config.dtype]
    attn = "sdpa" if config.attention == "sdpa" else "eager"
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype)
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype)
    text_encoder = CLIPTextModel.from_pretrained(
        source, subfolder="text_encoder", torch_dtype=dtype, attn_implementation=attn
    )
    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", model_max_length=77)
    text_encoder_2, tokenizer_2 = None, None
    if is_xl_source(source):
        text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
            source, subfolder="text_encoder_2", torch_dtype=dtype, attn_implementation=attn
        )
        tokenizer_2 = CLIPTokenizer.from_pretrained(
            source, subfolder="tokenizer_2", model_max_length=77
        )
    scheduler_config = dict(DDPMScheduler.load_config(source, subfolder="scheduler"))
    noise_scheduler = DDPMScheduler.from_config(scheduler_config)
    enc_repo, enc_sub = resolve_image_encoder(config)
    kwargs: dict[str, Any] = {"subfolder": enc_sub} if enc_sub else {}
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(
        enc_repo, torch_dtype=dtype, attn_implementation=attn, **kwargs
    )
    try:
        image_processor = CLIPImageProcessorPil.from_pretrained(
            source if enc_sub else enc_repo, subfolder="feature_extractor" if enc_sub else None
        )
    except OSError:
        image_processor = square_image_processor(image_encoder.config.image_size)
    prepare_components(unet, vae, text_encoder, image_encoder, config, text_encoder_2)
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
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )


def square_image_processor(size: int) -> CLIPImageProcessorPil:
    """CLIP's preprocessing for a vision tower of ``size`` px (resize, centre crop, norm)."""
    return CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
