"""Model architectures (``--arch``) with seeded random weights, as ordinary diffusers folders.

- ``tiny``: the Stable Diffusion architecture made small (UNet ~1.4 M, VAE ~0.7 M, CLIP
  text ~1.6 M parameters, mostly the real 49,408-token embedding) plus a 4-layer CLIP
  vision tower: the embedded default, what tests and the demo run.
- ``sd15-random``: the full Stable Diffusion 1.5 UNet / VAE / CLIP ViT-L text encoder with
  an OpenCLIP ViT-H/14 vision tower (``vit-h14-random``), random weights, for memory and
  speed benchmarks where real weights cannot be downloaded.

The folder holds ``model_index.json`` for ``StableDiffusionPipeline`` with the vision tower
as its ``image_encoder`` component, so it loads through exactly the path a real
checkpoint does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import (
    CLIPImageProcessorPil,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from e4t.models.arch_names import ARCH_NAMES
from e4t.models.tokenizer import MODEL_MAX_LENGTH, VOCAB_SIZE, write_clip_tokenizer

ARCHS: tuple[str, ...] = ARCH_NAMES  # each name's entries below (tests/test_cli.py checks)

_UNET: dict[str, dict[str, Any]] = {
    "tiny": dict(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    ),
    "sd15-random": dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=(
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    ),
}
_VAE: dict[str, dict[str, Any]] = {
    "tiny": dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    ),
    "sd15-random": dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=0.18215,
    ),
}
_TEXT: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=32,
    ),
    "sd15-random": dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        projection_dim=768,
        hidden_act="quick_gelu",
    ),
}
_VISION: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    ),
    # OpenCLIP ViT-H/14 (laion/CLIP-ViT-H-14-laion2B-s32B-b79K): 32 layers of width 1280
    "vit-h14-random": dict(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        projection_dim=1024,
        hidden_act="gelu",
    ),
}
_VISION_FOR = {"tiny": "tiny", "sd15-random": "vit-h14-random"}


def _check(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unknown model architecture {arch!r}: use one of {', '.join(ARCHS)}")


def build_unet(arch: str) -> UNet2DConditionModel:
    _check(arch)
    return UNet2DConditionModel(**_UNET[arch])


def build_vae(arch: str) -> AutoencoderKL:
    _check(arch)
    return AutoencoderKL(**_VAE[arch])


def build_text_encoder(arch: str) -> CLIPTextModel:
    _check(arch)
    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=MODEL_MAX_LENGTH,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        **_TEXT[arch],
    )
    return CLIPTextModel(config)


def build_image_encoder(name: str) -> CLIPVisionModelWithProjection:
    if name not in _VISION:
        raise ValueError(f"unknown vision arch {name!r}: use one of {', '.join(_VISION)}")
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**_VISION[name]))


def build_scheduler(prediction_type: str = "epsilon") -> DDIMScheduler:
    """Stable Diffusion 1.x's noise schedule (scaled-linear betas, 1000 steps)."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def pipeline_index(**components: list[str | None]) -> dict[str, object]:
    """A ``StableDiffusionPipeline`` folder's ``model_index.json``: the SD components, no
    safety checker, ``components`` added or replaced (e.g. an image encoder)."""
    import diffusers

    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        **components,
    }


def init_model(
    out_dir: str | Path,
    arch: str = "tiny",
    seed: int = 0,
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
    bpe_path: str | Path | None = None,
) -> Path:
    """Write a complete diffusers-format folder with seeded random weights (safetensors)."""
    _check(arch)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    build_unet(arch).save_pretrained(out / "unet")
    build_vae(arch).save_pretrained(out / "vae")
    build_text_encoder(arch).save_pretrained(out / "text_encoder")
    vision = build_image_encoder(_VISION_FOR[arch])
    vision.save_pretrained(out / "image_encoder")
    size = vision.config.image_size
    CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    ).save_pretrained(out / "feature_extractor")
    build_scheduler(prediction_type).save_pretrained(out / "scheduler")
    tok_dir = write_clip_tokenizer(out / "tokenizer", bpe_path)
    CLIPTokenizer.from_pretrained(tok_dir, model_max_length=MODEL_MAX_LENGTH)  # fail early
    index = pipeline_index(
        feature_extractor=["transformers", "CLIPImageProcessor"],
        image_encoder=["transformers", "CLIPVisionModelWithProjection"],
    )
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    (out / "e4t_arch.json").write_text(
        json.dumps(
            {
                "arch": arch,
                "seed": seed,
                "prediction_type": prediction_type,
                "image_encoder": _VISION_FOR[arch],
            },
            indent=2,
        )
    )
    return out


def build_base_models(arch: str, config: Any, seed: int = 0) -> Any:
    """The arch's base models in memory (no folder written): for benchmarks. Set up by
    :func:`e4t.models.base.prepare_components`, as loaded models are.

    config: a :class:`e4t.config.ModelConfig` (dtype, device, attention, checkpointing).
    """
    import tempfile

    from diffusers import DDPMScheduler

    from e4t.models.base import BaseModels, prepare_components, square_image_processor

    _check(arch)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(
            write_clip_tokenizer(tmp), model_max_length=MODEL_MAX_LENGTH
        )
    unet, vae = build_unet(arch), build_vae(arch)
    text, vision = build_text_encoder(arch), build_image_encoder(_VISION_FOR[arch])
    prepare_components(unet, vae, text, vision, config)
    scheduler_config = dict(build_scheduler().config)
    return BaseModels(
        unet=unet,
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        noise_scheduler=DDPMScheduler.from_config(scheduler_config),
        scheduler_config=scheduler_config,
        image_encoder=vision,
        image_processor=square_image_processor(vision.config.image_size),
        source=f"arch:{arch}",
    )


def ensure_base_model(source: str, init_arch: str | None = None) -> str:
    """The base model at ``source``, first written with random weights of ``init_arch``
    when that is given and ``source`` is a missing local folder; then the one check
    (:func:`e4t.models.base.check_base_model`)."""
    from e4t.models.base import check_base_model, is_local_source

    if init_arch is not None:
        _check(init_arch)
        folder = Path(source)
        if is_local_source(source) and not (folder / "model_index.json").exists():
            init_model(folder, arch=init_arch)
    check_base_model(source)
    return source
