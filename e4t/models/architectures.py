"""Model architectures (``--arch``) with seeded random weights, as ordinary diffusers folders.

- ``tiny``: the Stable Diffusion architecture made small (UNet ~1.4 M, VAE ~0.7 M, CLIP
  text ~1.6 M parameters, mostly the real 49,408-token embedding) plus a 4-layer CLIP
  vision tower: the embedded default, what tests and the demo run.
- ``sd15-random``: the full Stable Diffusion 1.5 UNet / VAE / CLIP ViT-L text encoder with
  an OpenCLIP ViT-H/14 vision tower (``vit-h14-random``), random weights, for memory and
  speed benchmarks where real weights cannot be downloaded.
- ``tiny-xl``: the SDXL layout made small: two text encoders (``CLIPTextModel`` of width 32
  and ``CLIPTextModelWithProjection`` of width 48, so the two widths differ), a UNet with
  ``addition_embed_type="text_time"`` and 1–2 transformer layers per block, the tiny VAE
  and vision tower; ``tokenizer_2`` pads with ``!`` as SDXL's does.
- ``sdxl-random``: the SDXL 1.0 base UNet (2.57 B), CLIP ViT-L and OpenCLIP bigG text
  encoders, the SDXL VAE and the ViT-H/14 vision tower, random weights, written in bf16
  (fp32 would be 16 GB): for counts and GPU benchmarks.

The folder holds ``model_index.json`` for ``StableDiffusionPipeline`` (or
``StableDiffusionXLPipeline``) with the vision tower as its ``image_encoder`` component, so
it loads through exactly the path a real checkpoint does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import (
    CLIPImageProcessorPil,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
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
    # the SDXL layout, small: text_time conditioning on (pooled 32 + 6 time ids × 8)
    "tiny-xl": dict(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=32 + 48,  # the two text encoders' hidden states, concatenated
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,
        norm_num_groups=8,
    ),
    # stabilityai/stable-diffusion-xl-base-1.0's unet/config.json (70 transformer blocks,
    # 140 attention modules)
    "sdxl-random": dict(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        cross_attention_dim=2048,
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
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
_VAE["tiny-xl"] = _VAE["tiny"]
# the SDXL VAE: SD 1.5's layout, another latent scale; fp16 overflows in it (force_upcast)
_VAE["sdxl-random"] = {
    **_VAE["sd15-random"],
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
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
_TEXT["tiny-xl"] = _TEXT["tiny"]
_TEXT["sdxl-random"] = _TEXT["sd15-random"]  # SDXL's text_encoder is CLIP ViT-L's
#: SDXL's second text encoder (``text_encoder_2``, a CLIPTextModelWithProjection): the
#: architectures that have one are the SDXL family
_TEXT_2: dict[str, dict[str, Any]] = {
    "tiny-xl": dict(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=32,
        hidden_act="gelu",
    ),
    # OpenCLIP ViT-bigG/14's text tower
    "sdxl-random": dict(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=20,
        projection_dim=1280,
        hidden_act="gelu",
    ),
}
#: the dtype an architecture is built and written in (fp32 unless it would not fit the CPU)
_BUILD_DTYPE: dict[str, torch.dtype] = {"sdxl-random": torch.bfloat16}
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
_VISION_FOR = {
    "tiny": "tiny",
    "sd15-random": "vit-h14-random",
    "tiny-xl": "tiny",
    "sdxl-random": "vit-h14-random",
}


def is_xl_arch(arch: str) -> bool:
    """An architecture of the SDXL family (two text encoders, text_time conditioning)."""
    return arch in _TEXT_2


def _check(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unknown model architecture {arch!r}: use one of {', '.join(ARCHS)}")


def build_unet(arch: str) -> UNet2DConditionModel:
    _check(arch)
    return UNet2DConditionModel(**_UNET[arch])


def build_vae(arch: str) -> AutoencoderKL:
    _check(arch)
    return AutoencoderKL(**_VAE[arch])


def _text_config(pad_token_id: int, **values: Any) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=MODEL_MAX_LENGTH,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=pad_token_id,
        **values,
    )


def build_text_encoder(arch: str) -> CLIPTextModel:
    _check(arch)
    return CLIPTextModel(_text_config(49407, **_TEXT[arch]))


def build_text_encoder_2(arch: str) -> CLIPTextModelWithProjection:
    """SDXL's second text encoder (OpenCLIP's text tower: pads with id 0, ``!``)."""
    _check(arch)
    if not is_xl_arch(arch):
        raise ValueError(f"{arch!r} has one text encoder (not an SDXL architecture)")
    return CLIPTextModelWithProjection(_text_config(0, **_TEXT_2[arch]))


@contextmanager
def _building_in(arch: str) -> Iterator[None]:
    """Modules built inside the block get ``arch``'s build dtype (bf16 for sdxl-random)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(_BUILD_DTYPE.get(arch, torch.float32))
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


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


def pipeline_index(**components: Any) -> dict[str, object]:
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


def xl_pipeline_index(**components: Any) -> dict[str, object]:
    """A ``StableDiffusionXLPipeline`` folder's ``model_index.json`` (what recognises a base
    model as SDXL: :func:`e4t.models.base.is_xl_source`)."""
    index = pipeline_index(
        text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
        tokenizer_2=["transformers", "CLIPTokenizer"],
        force_zeros_for_empty_prompt=True,
        **components,
    )
    for key in ("safety_checker", "requires_safety_checker"):  # not SDXL components
        index.pop(key)
    index["_class_name"] = "StableDiffusionXLPipeline"
    return index


def init_model(
    out_dir: str | Path,
    arch: str = "tiny",
    seed: int = 0,
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
    bpe_path: str | Path | None = None,
) -> Path:
    """Write a complete diffusers-format folder with seeded random weights (safetensors):
    a ``StableDiffusionPipeline`` folder, or a ``StableDiffusionXLPipeline`` one for the
    SDXL family. Components are built and written one at a time (the SDXL UNet alone is
    5 GB in bf16)."""
    _check(arch)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    builders: list[tuple[str, Any]] = [
        ("unet", lambda: build_unet(arch)),
        ("vae", lambda: build_vae(arch)),
        ("text_encoder", lambda: build_text_encoder(arch)),
    ]
    if is_xl_arch(arch):
        builders.append(("text_encoder_2", lambda: build_text_encoder_2(arch)))
    builders.append(("image_encoder", lambda: build_image_encoder(_VISION_FOR[arch])))
    for name, build in builders:
        with _building_in(arch):
            module = build()
        module.save_pretrained(out / name)
        del module
    size = _VISION[_VISION_FOR[arch]]["image_size"]
    CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    ).save_pretrained(out / "feature_extractor")
    build_scheduler(prediction_type).save_pretrained(out / "scheduler")
    tok_dir = write_clip_tokenizer(out / "tokenizer", bpe_path)
    CLIPTokenizer.from_pretrained(tok_dir, model_max_length=MODEL_MAX_LENGTH)  # fail early
    vision_parts = dict(
        feature_extractor=["transformers", "CLIPImageProcessor"],
        image_encoder=["transformers", "CLIPVisionModelWithProjection"],
    )
    if is_xl_arch(arch):
        write_clip_tokenizer(out / "tokenizer_2", bpe_path, pad_token="!")
        index = xl_pipeline_index(**vision_parts)
    else:
        index = pipeline_index(**vision_parts)
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
    xl = is_xl_arch(arch)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(
            write_clip_tokenizer(tmp), model_max_length=MODEL_MAX_LENGTH
        )
        tokenizer_2 = (
            CLIPTokenizer.from_pretrained(
                write_clip_tokenizer(Path(tmp) / "2", pad_token="!"),
                model_max_length=MODEL_MAX_LENGTH,
            )
            if xl
            else None
        )
    with _building_in(arch):
        unet, vae = build_unet(arch), build_vae(arch)
        text, vision = build_text_encoder(arch), build_image_encoder(_VISION_FOR[arch])
        text_2 = build_text_encoder_2(arch) if xl else None
    prepare_components(unet, vae, text, vision, config, text_encoder_2=text_2)
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
        text_encoder_2=text_2,
        tokenizer_2=tokenizer_2,
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
