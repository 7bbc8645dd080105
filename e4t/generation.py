"""Generation with a concept: a stock diffusers ``StableDiffusionPipeline`` whose prompt
embedding is re-predicted at every denoising step (v* depends on z_t and t, E4T §3.1).

The pipeline runs unchanged; ``callback_on_step_end`` hands it the next step's prompt
embeddings. Also: freezing a concept into a plain pipeline (a textual-inversion token +
offsets merged into the UNet's weights), for tools that only know stock diffusers.
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from e4t.models.concept import ConceptBank
from e4t.models.e4t_model import E4TModel, PromptConditioning
from e4t.models.precision import AutocastMode, autocast
from e4t.training.compile import CompileMode

logger = logging.getLogger(__name__)

SCHEDULERS: dict[str, Any] = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "pndm": PNDMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-a": EulerAncestralDiscreteScheduler,
    "dpm++": DPMSolverMultistepScheduler,
}


@dataclass
class GenerationConfig:
    num_steps: int = 30
    guidance_scale: float = 7.5
    negative_prompt: str = ""
    scheduler: str = "ddim"
    height: int | None = None
    width: int | None = None
    batch_size: int = 4
    autocast: AutocastMode = "auto"  # bf16 on CUDA (e4t.models.precision)
    # the sampling loop's UNet compiled (tune.compile's switch: e4t.training.compile);
    # compile_backend: inductor unless given ("count": graphs counted, run eagerly)
    compile: CompileMode = "off"
    compile_backend: str | None = None


@dataclass
class GeneratedImage:
    image: Image.Image
    prompt: str
    seed: int
    v_star_history: list[torch.Tensor] = field(default_factory=list, repr=False)
    concept_index: int = 0  # the row of ``cls`` (the attached bank's concept) it shows


def clip_pixels(model: E4TModel, image: Image.Image) -> torch.Tensor:
    """One RGB image → CLIP pixel values (1, 3, S, S) with the vision tower's processor."""
    pixels = model.base.image_processor(images=image.convert("RGB"), return_tensors="pt")
    return pixels.pixel_values.to(model.base.device, model.image_encoder.dtype)


def build_pipeline(
    model: E4TModel, scheduler: str = "ddim"
) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """A stock pipeline on the model's base components: ``StableDiffusionXLPipeline`` for
    the SDXL family (no watermarker), else ``StableDiffusionPipeline``."""
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler {scheduler!r}: use one of {', '.join(SCHEDULERS)}")
    sched = SCHEDULERS[scheduler].from_config(model.base.scheduler_config)
    if model.is_xl:
        xl = StableDiffusionXLPipeline(
            vae=model.base.vae,
            text_encoder=model.base.text_encoder,
            text_encoder_2=model.base.text_encoder_2,
            tokenizer=model.base.tokenizer,
            tokenizer_2=model.base.tokenizer_2,
            unet=model.base.unet,
            scheduler=sched,
            add_watermarker=False,
        )
        xl.set_progress_bar_config(disable=True)
        return xl
    pipe = StableDiffusionPipeline(
        vae=model.base.vae,
        text_encoder=model.base.text_encoder,
        tokenizer=model.base.tokenizer,
        unet=model.base.unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(
    model: E4TModel,
    cls: torch.Tensor,
    prompts: list[str],
    num_images: int = 1,
    seed: int = 0,
    config: GenerationConfig | None = None,
    keep_v_star: bool = False,
    frozen_v_star: torch.Tensor | None = None,
) -> list[GeneratedImage]:
    """Images for each prompt (``{}`` = the concept), ``num_images`` seeds each, for each
    of the K concepts in ``cls``.

    cls: the concepts' CLIP [CLS] tokens (K, L, C), one row per concept of the attached
    bank (K = 1 without one). All K concepts run in one sampling loop: each UNet batch is K
    equal contiguous groups, concept k's CFG rows (unconditional and conditional) inside its
    group. Image j of a prompt uses seed + j for every concept, so any batch size and any K
    give the images each concept gets alone (stochastic schedulers too: each image draws its
    step noise from its own generator). Returned concept by concept (``concept_index``),
    then prompt by prompt. ``config.batch_size`` counts images of all concepts together.
    ``frozen_v_star`` (D,): one fixed word instead of re-predicting v* at every step — what
    an exported concept gives a stock pipeline (:mod:`e4t.export`); one concept only.
    """
    num_concepts = cls.shape[0]
    attached = model.concepts.num_concepts if model.concepts is not None else 1
    if num_concepts != attached:
        raise ValueError(
            f"generate got [CLS] tokens of {num_concepts} concept(s) but {attached} are "
            "attached: pass cls (K, L, C) with one concept's row per attached concept "
            "(bank.cls), or attach bank.subset(i) for concept i"
        )
    if frozen_v_star is not None and num_concepts > 1:
        raise ValueError(
            f"frozen_v_star is one concept's word; {num_concepts} concepts are attached: "
            "attach bank.subset(i) for concept i"
        )
    config = config or GenerationConfig()
    pipe = build_pipeline(model, config.scheduler)
    if config.compile != "off":
        _compile_sampling(model, pipe, config)
    unet = model.base.unet
    height = config.height or unet.config.sample_size * pipe.vae_scale_factor
    width = config.width or unet.config.sample_size * pipe.vae_scale_factor
    jobs = [(p, seed + k) for p in prompts for k in range(num_images)]
    per_chunk = max(1, config.batch_size // num_concepts)  # each concept's share of a batch
    by_concept: list[list[GeneratedImage]] = [[] for _ in range(num_concepts)]
    for start in range(0, len(jobs), per_chunk):
        chunk = jobs[start : start + per_chunk]
        with autocast(model.base.device, config.autocast):
            images = _generate_chunk(
                model, pipe, cls, chunk, height, width, config, keep_v_star, frozen_v_star
            )
        for k in range(num_concepts):
            by_concept[k] += images[k * len(chunk) : (k + 1) * len(chunk)]
    return [item for items in by_concept for item in items]


def _compile_sampling(model: E4TModel, pipe: Any, config: GenerationConfig) -> None:
    """The pipeline's UNet calls go through the compiled UNet (compiled once per process
    and shape); the encoder's feature pass stays eager. An attached bank's frozen weight
    stacks are built first, as for the compiled tuning step: its pre-hook, traced with the
    UNet, reads them without rebuilding them."""
    from e4t.training.compile import compiled_unet, warm_bank

    if model.concepts is not None:
        warm_bank(model.concepts, model.base.device, config.autocast)
    device_type = model.base.device.type
    unet = compiled_unet(model.base.unet, config.compile, config.compile_backend, device_type)
    pipe.unet = unet.module


@contextlib.contextmanager
def _cfg_rows_grouped(unet: torch.nn.Module, num_concepts: int) -> Iterator[list[bool]]:
    """Inside the block, the pipeline's CFG batch [uncond rows; cond rows] (each concept-major:
    K groups of n) enters the UNet as K contiguous groups [uncond_k; cond_k] — the layout a
    bank of K concepts reads — and its output comes back in the pipeline's order.

    Yields a switch: ``[False]`` while another UNet call (the encoder's feature pass) runs."""
    active = [True]

    def order(batch: int) -> torch.Tensor:
        n = batch // (2 * num_concepts)
        rows = [
            list(range(half * batch // 2 + k * n, half * batch // 2 + (k + 1) * n))
            for k in range(num_concepts)
            for half in (0, 1)
        ]
        return torch.tensor([r for group in rows for r in group])

    def permuted(value: Any, index: torch.Tensor, batch: int) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
            return value[index.to(value.device)]
        if isinstance(value, dict):  # SDXL's added_cond_kwargs: text_embeds, time_ids
            return {key: permuted(v, index, batch) for key, v in value.items()}
        return value

    def before(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not active[0]:
            return None
        sample = args[0] if args else kwargs["sample"]
        batch = sample.shape[0]
        if batch % (2 * num_concepts):
            raise ValueError(f"CFG batch {batch} does not split into {num_concepts} concepts")
        index = order(batch)
        args = tuple(permuted(a, index, batch) for a in args)
        kwargs = {key: permuted(v, index, batch) for key, v in kwargs.items()}
        return args, kwargs

    def after(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        if not active[0]:
            return None
        sample = output[0] if isinstance(output, tuple) else output.sample
        inverse = torch.argsort(order(sample.shape[0])).to(sample.device)
        if isinstance(output, tuple):
            return (sample[inverse], *output[1:])
        output.sample = sample[inverse]
        return output

    handles = [
        unet.register_forward_pre_hook(before, with_kwargs=True),
        unet.register_forward_hook(after, with_kwargs=True),
    ]
    try:
        yield active
    finally:
        for handle in handles:
            handle.remove()


def _negative_conditioning(model: E4TModel, prompt: str, batch: int) -> PromptConditioning:
    """CFG's unconditional rows. On SDXL no negative prompt is zero conditioning, not the
    empty prompt's encoding, as the SDXL pipeline does (``force_zeros_for_empty_prompt``)."""
    negative = model.condition([prompt] * batch)
    if not (model.is_xl and not prompt):
        return negative
    pooled = None if negative.pooled is None else torch.zeros_like(negative.pooled)
    return PromptConditioning(torch.zeros_like(negative.hidden), pooled)


def _first_embeds(negative: PromptConditioning, first: PromptConditioning) -> dict[str, Any]:
    """The pipeline call's prompt arguments (SDXL: the pooled ones too)."""
    kwargs: dict[str, Any] = {
        "prompt_embeds": first.hidden,
        "negative_prompt_embeds": negative.hidden,
    }
    if first.pooled is not None:
        kwargs["pooled_prompt_embeds"] = first.pooled
        kwargs["negative_pooled_prompt_embeds"] = negative.pooled
    return kwargs


def _step_embeds(
    negative: PromptConditioning, nxt: PromptConditioning, guided: bool
) -> dict[str, torch.Tensor]:
    """What ``callback_on_step_end`` hands the pipeline for the next step: its prompt
    embeddings (with CFG: [uncond; cond]) and on SDXL its pooled ``add_text_embeds``."""
    step = {"prompt_embeds": torch.cat([negative.hidden, nxt.hidden]) if guided else nxt.hidden}
    if nxt.pooled is not None and negative.pooled is not None:
        step["add_text_embeds"] = torch.cat([negative.pooled, nxt.pooled]) if guided else nxt.pooled
    return step


def _generate_chunk(
    model: E4TModel,
    pipe: StableDiffusionPipeline | StableDiffusionXLPipeline,
    cls: torch.Tensor,
    jobs: list[tuple[str, int]],
    height: int,
    width: int,
    config: GenerationConfig,
    keep_v_star: bool,
    frozen_v_star: torch.Tensor | None = None,
) -> list[GeneratedImage]:
    """``jobs`` for each of the K concepts of ``cls`` (K, L, C), in one batch of K·len(jobs)
    images: concept-major, concept k's rows together."""
    device, dtype = model.base.device, model.base.unet.dtype
    num_concepts = cls.shape[0]
    shape = (
        1,
        model.base.unet.config.in_channels,
        height // pipe.vae_scale_factor,
        width // pipe.vae_scale_factor,
    )
    rows = [(k, p, s) for k in range(num_concepts) for p, s in jobs]
    latents = torch.cat(
        [
            torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s), dtype=torch.float32)
            for _, _, s in rows
        ]
    ).to(device, dtype)
    batch = len(rows)
    prompts = [p for _, p, _ in rows]
    cls_b = (
        cls.repeat_interleave(len(jobs), dim=0) if num_concepts > 1 else cls.expand(batch, -1, -1)
    )
    history: list[torch.Tensor] = []
    guided = config.guidance_scale > 1.0
    grouping = (
        _cfg_rows_grouped(model.base.unet, num_concepts)
        if guided and num_concepts > 1
        else contextlib.nullcontext([False])
    )

    with grouping as regrouping:
        regroup = regrouping[0]

        def prompt_embeds_at(z: torch.Tensor, t: torch.Tensor) -> PromptConditioning:
            t_b = t.reshape(1).expand(batch).to(device)
            z_in = pipe.scheduler.scale_model_input(z, t)
            if frozen_v_star is not None:
                v_star = frozen_v_star.to(device, torch.float32).reshape(1, -1).expand(batch, -1)
            else:
                regrouping[0] = False  # the encoder's UNet pass: B rows, concept-major already
                try:
                    v_star = model.word_embedding(model.predict_offset(cls_b, z_in, t_b))
                finally:
                    regrouping[0] = regroup
            if keep_v_star:
                history.append(v_star.detach().float().cpu())
            return model.condition(prompts, v_star).to(dtype)

        pipe.scheduler.set_timesteps(config.num_steps, device=device)
        timesteps = pipe.scheduler.timesteps
        negative = _negative_conditioning(model, config.negative_prompt, batch).to(dtype)
        first = prompt_embeds_at(latents * pipe.scheduler.init_noise_sigma, timesteps[0])

        def on_step_end(
            pipeline: Any, i: int, t: Any, kwargs: dict[str, torch.Tensor]
        ) -> dict[str, torch.Tensor]:
            if i + 1 >= len(pipeline.scheduler.timesteps):
                return {}
            nxt = prompt_embeds_at(kwargs["latents"], pipeline.scheduler.timesteps[i + 1])
            return _step_embeds(negative, nxt, guided)

        out = pipe(
            **_first_embeds(negative, first),
            latents=latents,
            num_inference_steps=config.num_steps,
            guidance_scale=config.guidance_scale,
            height=height,
            width=width,
            output_type="pil",
            callback_on_step_end=on_step_end,
            callback_on_step_end_tensor_inputs=["latents"],
            # step noise (ddpm, euler-a) per image from its own seed: batch-size independent
            generator=[torch.Generator("cpu").manual_seed(s + 1_000_003) for _, _, s in rows],
        )
    return [
        GeneratedImage(
            image=img, prompt=p, seed=s, v_star_history=[h[i] for h in history], concept_index=k
        )
        for i, (img, (k, p, s)) in enumerate(zip(out.images, rows, strict=True))
    ]


def absolute_url(url: str) -> str:
    """A local path made absolute (an image is traced from anywhere); URLs unchanged."""
    return url if "://" in url else str(Path(url).resolve())


def model_provenance(
    model_uri: str, fingerprint: str, model_version_uri: str | None = None
) -> dict[str, str]:
    """The domain model's part of an image's provenance: the URI as asked for
    (``models:/e4t-faces@candidate``, a folder), ``model_version_uri``: the
    ``models:/NAME/VERSION`` it named at generation time (a folder: its absolute path; pass
    the job's, :func:`e4t.tracking.registry.resolve_model_version_uri`, resolved once per
    job; resolved here when not given) and the encoder + offsets weights' fingerprint.
    ``model_version`` repeats the pinned version for a registered model ("" for a folder)."""
    from e4t.tracking.registry import resolve_model_version_uri

    registered = model_uri.startswith(("models:/", "runs:/"))
    pinned = model_version_uri or resolve_model_version_uri(model_uri)
    return {
        "model_uri": model_uri if registered else absolute_url(model_uri),
        "model_version": pinned if model_uri.startswith("models:/") else "",
        "model_version_uri": pinned,
        "domain_fingerprint": fingerprint,
    }


CONCEPT_MAX_BYTES = {"concept.json": 2**20, "concept.safetensors": 2**30}


def check_concept_url(url: str) -> None:
    """Fail fast, naming the URL, when ``url`` (a path, ``file://``, ``s3://``...) holds no
    concept folder: call it before loading any model."""
    from e4t import io as eio

    for name in CONCEPT_MAX_BYTES:
        if not eio.exists(eio.join(url, name)):
            raise FileNotFoundError(
                f"{url}: no E4T concept there ({name} missing): pass a concept folder or URL "
                "(personalize writes OUT/concepts/<id>; e4t download copies one)"
            )


@contextlib.contextmanager
def staged_concept(url: str) -> Iterator[Path]:
    """A local concept folder for the one at ``url``: the folder itself when local, else its
    two files (size-capped) copied into a temporary folder of the same name, removed on
    exit."""
    from e4t import io as eio

    check_concept_url(url)
    if eio.is_local(url):
        yield Path(eio.get_fs(url)[1])
        return
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", url.rstrip("/").rsplit("/", 1)[-1]).strip(".-")
    with tempfile.TemporaryDirectory(prefix="e4t-concept-") as tmp:
        local = Path(tmp) / (name or "concept")
        for file, cap in CONCEPT_MAX_BYTES.items():
            eio.download_to(url, local, names=[file], max_bytes=cap)
        yield local


def provenance(concept_id: str, concept_uri: str, model: dict[str, str]) -> dict[str, str]:
    """The text chunks that let ``e4t trace`` walk from an image back to its photo: the
    concept's id and folder (local path or s3://...) + :func:`model_provenance`."""
    return {"concept_id": concept_id, "concept_uri": absolute_url(concept_uri), **model}


def save_images(
    images: list[GeneratedImage],
    out_dir: str | Path,
    config: GenerationConfig | None = None,
    origin: dict[str, str] | None = None,
) -> list[Path]:
    """PNG files with the prompt, seed and settings in their text chunks, and ``origin``
    (:func:`provenance`: concept, domain model) as ``e4t.*`` chunks."""
    from e4t import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = config or GenerationConfig()
    paths = []

    def text(value: str) -> str:  # a PNG text chunk may hold no NUL (prompts are untrusted)
        return value.replace("\x00", "\\x00")

    for i, item in enumerate(images):
        info = PngInfo()
        info.add_text("e4t.version", __version__)
        for key, value in (origin or {}).items():
            info.add_text(f"e4t.{key}", text(value))
        info.add_text("prompt", text(item.prompt))
        info.add_text("seed", str(item.seed))
        info.add_text("negative_prompt", text(config.negative_prompt))
        info.add_text("steps", str(config.num_steps))
        info.add_text("guidance_scale", str(config.guidance_scale))
        info.add_text("scheduler", config.scheduler)
        slug = re.sub(r"[^A-Za-z0-9]+", "_", item.prompt.replace("{}", "S")).strip("_")[:60]
        path = out / f"{i:03d}-{slug}-seed{item.seed}.png"
        item.image.save(path, pnginfo=info)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------- stock pipelines


# The one trajectory a concept is frozen along: the export (e4t.export) and the
# evaluation's e4t-frozen both freeze through :func:`freeze_concept` with these.
FROZEN_STEPS = 20
FROZEN_SEED = 0


@torch.no_grad()
def frozen_word_embedding(
    model: E4TModel, cls: torch.Tensor, num_steps: int = FROZEN_STEPS, seed: int = FROZEN_SEED
) -> torch.Tensor:
    """One fixed v* (D,): the mean of v* along a sampling trajectory of "a photo of {}".

    A stock pipeline cannot re-predict v* per step, so this is the closest fixed token.
    """
    config = GenerationConfig(num_steps=num_steps, batch_size=1)
    (item,) = generate(model, cls, ["a photo of {}"], 1, seed, config, keep_v_star=True)
    return torch.stack(item.v_star_history).mean(dim=0)


@dataclass
class FrozenConcept:
    """A concept as a stock pipeline runs it (one fixed word + its deltas)."""

    word: torch.Tensor  # (D,) the frozen v*, in the dtype the concept is stored in
    cls: torch.Tensor  # (1, L, C) the concept's [CLS] tokens as stored
    bank: ConceptBank  # the stored concept, attached to the model (its deltas: the LoRA)


@torch.no_grad()
def freeze_concept(
    model: E4TModel,
    tensors: dict[str, torch.Tensor],
    rank: int,
    num_steps: int = FROZEN_STEPS,
    seed: int = FROZEN_SEED,
) -> FrozenConcept:
    """Freeze a concept given as stored (``tensors``: what :meth:`ConceptBank.tensors_of`
    returns in the concept's storage dtype, as saved or read back): attach it, and take
    :func:`frozen_word_embedding` on its trajectory, rounded to that dtype.

    The one freezing the export writes and the evaluation's ``e4t-frozen`` scores. Leaves
    the stored concept attached (``model.detach_concepts()`` when done).
    """
    bank = ConceptBank.from_tensors([tensors], rank, model.base.device, model.projection_groups())
    model.attach_concepts(bank)
    cls = bank.cls.to(model.image_encoder.dtype)
    word = frozen_word_embedding(model, cls, num_steps, seed)
    return FrozenConcept(word.to(tensors["word"].dtype), cls, bank)


@torch.no_grad()
def apply_concept_to_pipeline(
    pipe: StableDiffusionPipeline | StableDiffusionXLPipeline,
    model: E4TModel,
    cls: torch.Tensor,
    token: str | None = None,
) -> str:
    """Freeze a loaded concept into a stock pipeline of the same base model.

    Adds a textual-inversion token carrying :func:`frozen_word_embedding` and merges the
    weight offsets into ``pipe.unet`` (W ← W0 + ΔW, in place). Returns the token to use in
    prompts. ``model`` must hold the concept (:meth:`E4TModel.load_concept`).
    """
    token = token or model.config.placeholder_token
    vector = frozen_word_embedding(model, cls)
    for branch, text_encoder, tokenizer in zip(
        model.branches,
        (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)),
        (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)),
        strict=False,
    ):  # on SDXL each text encoder gets its part of v*
        part = vector[branch.start : branch.start + branch.width].to(text_encoder.dtype)
        pipe.load_textual_inversion(
            part, token=token, text_encoder=text_encoder, tokenizer=tokenizer
        )
    for path in model.offsets.paths:
        linear = pipe.unet.get_submodule(path)
        delta = model.offsets.delta_weight(path, linear.weight.detach().float())
        if model.concepts is not None:
            delta = delta + model.concepts.delta_weight(path, 0).float()
        linear.weight.add_(delta.to(linear.weight.device, linear.weight.dtype))
    return token
