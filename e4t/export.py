"""Concepts in stock diffusers: a domain base folder + per concept a textual-inversion embedding
and a LoRA, loaded with ``StableDiffusionPipeline.from_pretrained``, ``load_textual_inversion``
and ``load_lora_weights`` (no e4t import needed to generate).

Layout under ``OUT``::

    base-<fingerprint>/           the domain's base, once per domain model: a diffusers folder
                                  whose UNet has the domain offsets folded in (W0 + ΔW)
    <concept>/learned_embeds.safetensors   {"<concept>": v*}: the frozen word (SDXL: the
                                  two encoders' parts, {"clip_l": …, "clip_g": …})
    <concept>/pytorch_lora_weights.safetensors   the concept's deltas B·A (PEFT keys)
    <concept>/export.json         token, adapter name, base folder, how v* was frozen, bytes

Several concepts share one pipeline: each has its own token and loads its LoRA under its
own adapter name (:func:`concept_adapter_name`); ``pipe.set_adapters([name])`` picks one.

What freezing gives up: e4t re-predicts v* at every denoising step from (x, z_t, t); a stock
pipeline takes one fixed token. The frozen v* is the mean of the re-predicted v* along a
sampling trajectory of "a photo of {}" (:func:`e4t.generation.freeze_concept`, the concept
as stored); the evaluation's ``e4t-frozen`` method scores exactly this and measures the
difference.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from e4t import io as eio
from e4t.generation import (
    FROZEN_SEED,
    FROZEN_STEPS,
    check_concept_url,
    freeze_concept,
    staged_concept,
)
from e4t.models.e4t_model import ArtifactError, E4TModel

MARKER = "model_index.json"  # a base folder is complete once this is written (last)
FREEZE_NOTE = (
    "v* frozen as the mean of the encoder's re-predicted v* along a {steps}-step DDIM "
    "trajectory of 'a photo of {{}}' (seed {seed})"
)


def concept_token(concept_id: str) -> str:
    """The token an exported concept is prompted with: ``<id>`` (one per concept, so several
    can share a pipeline)."""
    return "<" + re.sub(r"[^A-Za-z0-9_-]+", "-", concept_id).strip("-") + ">"


def concept_adapter_name(concept_id: str) -> str:
    """The LoRA adapter name an exported concept loads under
    (``pipe.load_lora_weights(folder, adapter_name=...)``): the concept id as PEFT takes it —
    letters, digits, ``_`` and ``-`` (no dots: PEFT keys modules by it), at most 64
    characters, and ``concept-`` before a name that is empty or one of ``nn.ModuleDict``'s
    own attributes (``training``, ``keys``...), which PEFT cannot use."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", concept_id).strip("-")[:64]
    if not name or hasattr(torch.nn.ModuleDict(), name):
        name = f"concept-{name}".strip("-")
    return name


def export_folder_name(concept_id: str) -> str:
    """The concept's folder under the export root, from its id (letters, digits, ``_``,
    ``-``; at most 100 characters), never from its path: a path ending in ``..`` must not
    write beside the export root. Raises ArtifactError for an id with nothing to name it by."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", concept_id).strip("-")[:100]
    if not name:
        raise ArtifactError(
            f"concept id {concept_id[:80]!a} has no letter or digit to name its export "
            "folder: set concept_id in its concept.json"
        )
    return name


@torch.no_grad()
def export_domain_base(model: E4TModel, out_root: str | Path) -> Path:
    """The domain's base as a diffusers folder (UNet with the domain offsets folded in),
    written once per domain model and reused: its fingerprint names the folder, and covers
    the encoder, offsets, base model identity and dtype (:meth:`E4TModel.fingerprint`)."""
    folder = Path(out_root) / f"base-{model.fingerprint()}"
    if (folder / MARKER).exists():
        return folder
    source = model.config.base_model
    if source.startswith("preset:"):
        raise ValueError(
            f"the base model {source!r} is built in memory: export needs a base folder or a "
            "hub id (e4t init-model writes one)"
        )
    from transformers import CLIPTokenizer

    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    unet = model.base.unet
    saved = {}
    try:
        for path in model.offsets.paths:  # fold W0 + ΔW in, save, restore bit-identically
            linear = unet.get_submodule(path)
            saved[path] = linear.weight.detach().clone()
            linear.weight.add_(
                model.offsets.delta_weight(path, saved[path].float()).to(linear.weight.dtype)
            )
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
    finally:
        for path, weight in saved.items():
            unet.get_submodule(path).weight.copy_(weight)
    model.base.vae.save_pretrained(tmp / "vae", safe_serialization=True)
    model.base.text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
    # the base's own tokenizer: the model's copy carries e4t's placeholder token
    CLIPTokenizer.from_pretrained(source, subfolder="tokenizer").save_pretrained(tmp / "tokenizer")
    if model.base.text_encoder_2 is not None:  # SDXL's second text encoder and tokenizer
        model.base.text_encoder_2.save_pretrained(tmp / "text_encoder_2", safe_serialization=True)
        CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2").save_pretrained(
            tmp / "tokenizer_2"
        )
    import diffusers

    diffusers.DDIMScheduler.from_config(model.base.scheduler_config).save_pretrained(
        tmp / "scheduler"
    )

    from e4t.models.architectures import pipeline_index, xl_pipeline_index

    index = xl_pipeline_index() if model.is_xl else pipeline_index()
    (tmp / MARKER).write_text(json.dumps(index, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def textual_inversion_state(
    model: E4TModel, token: str, word: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The frozen word (D_word,) as diffusers' textual-inversion file: ``{token: v*}``, or on
    SDXL ``{"clip_l": v*[:768], "clip_g": v*[768:]}`` (each text encoder's part, the keys
    SDXL embeddings are shared with; loaded with one ``load_textual_inversion`` call per
    encoder, :func:`_use_note`)."""
    if not model.is_xl:
        return {token: word.contiguous()}
    first = model.branches[0].width
    return {"clip_l": word[:first].contiguous(), "clip_g": word[first:].contiguous()}


def _use_note(xl: bool, out: Path, embeds: str, token: str, adapter: str) -> str:
    """export.json's ``use``: the stock diffusers lines that load the concept."""
    lora = (
        f"pipe.load_lora_weights('{out}', adapter_name='{adapter}'); "
        f"pipe.set_adapters(['{adapter}']); "
        f"pipe('a photo of {token}')"
    )
    if not xl:
        return (
            "pipe = StableDiffusionPipeline.from_pretrained(BASE); "
            f"pipe.load_textual_inversion('{out / embeds}'); " + lora
        )
    return (
        "pipe = StableDiffusionXLPipeline.from_pretrained(BASE); "
        f"state = safetensors.torch.load_file('{out / embeds}'); "
        f"pipe.load_textual_inversion(state['clip_l'], token='{token}', "
        "text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer); "
        f"pipe.load_textual_inversion(state['clip_g'], token='{token}', "
        "text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2); " + lora
    )


def lora_state(model: E4TModel, index: int = 0) -> dict[str, torch.Tensor]:
    """The attached concept's deltas as a diffusers/PEFT LoRA state dict: for each
    projection ``unet.<path>.lora_A.weight`` = A (r, in), ``lora_B.weight`` = B (out, r);
    with no alpha stored, diffusers scales by 1, so the layer adds exactly B·A x."""
    bank = model.concepts
    if bank is None:
        raise ValueError("no concept attached: load one with model.load_concept(...)")
    tensors = bank.tensors_of(index, torch.float32)
    out = {}
    for path in bank.paths:
        out[f"unet.{path}.lora_A.weight"] = tensors[f"delta.{path}.down"]
        out[f"unet.{path}.lora_B.weight"] = tensors[f"delta.{path}.up"]
    return out


def export_concept(
    model: E4TModel,
    concept_dir: str | Path,
    out_root: str | Path,
    frozen_steps: int = FROZEN_STEPS,
    seed: int = FROZEN_SEED,
    dtype: torch.dtype | None = None,
    recorded: dict[str, str] | None = None,
    allow_model_mismatch: bool = False,
) -> dict[str, Any]:
    """Export one concept (and, once, its domain's base) for stock diffusers; ``dtype`` of
    the files: None = the dtype the concept is stored in (what e4t-frozen scores).

    ``concept_dir``: a folder or any URL (``s3://``...: read from a local copy);
    ``recorded``: more export.json fields, e.g. ``model_uri`` and ``model_version_uri``."""
    url = str(concept_dir)
    if not eio.is_local(url):  # checked and copied before any heavy work (the base)
        with staged_concept(url) as local:
            recorded = {**(recorded or {}), "source_concept": url}
            return export_concept(
                model, local, out_root, frozen_steps, seed, dtype, recorded, allow_model_mismatch
            )
    check_concept_url(url)
    concept_dir = Path(eio.get_fs(url)[1])  # a path or file://
    # refused (another domain model: check_concept_binding) before the base is written
    tensors, stored = model.read_concept(concept_dir, allow_model_mismatch)
    base = export_domain_base(model, out_root)
    try:
        frozen = freeze_concept(model, tensors, int(stored.get("rank", 4)), frozen_steps, seed)
        file_dtype = dtype or frozen.word.dtype
        meta = json.loads((concept_dir / "concept.json").read_text())
        concept_id = str(meta.get("concept_id") or concept_dir.resolve().name)
        token, adapter = concept_token(concept_id), concept_adapter_name(concept_id)
        out = Path(out_root) / export_folder_name(concept_id)  # never the concept's path
        out.mkdir(parents=True, exist_ok=True)
        save_file(
            textual_inversion_state(model, token, frozen.word.to(file_dtype)),
            str(out / "learned_embeds.safetensors"),
        )
        lora = {k: v.to(file_dtype).contiguous() for k, v in lora_state(model).items()}
        save_file(lora, str(out / "pytorch_lora_weights.safetensors"))
    finally:
        model.detach_concepts()
    files = ("learned_embeds.safetensors", "pytorch_lora_weights.safetensors")
    info = {
        "concept_id": concept_id,
        "token": token,
        "adapter_name": adapter,
        "base": str(Path("..") / base.name),
        "domain_fingerprint": stored.get("domain_fingerprint"),  # the concept's
        "model_fingerprint": model.fingerprint(),  # the model it was exported with (base-*)
        "frozen_v_star": FREEZE_NOTE.format(steps=frozen_steps, seed=seed),
        "dtype": str(file_dtype).removeprefix("torch."),
        "bytes": {name: (out / name).stat().st_size for name in files},
        "source_concept": str(concept_dir),
        **(recorded or {}),
        "use": _use_note(model.is_xl, out, files[0], token, adapter),
    }
    (out / "export.json").write_text(json.dumps(info, indent=1))
    return {**info, "folder": str(out), "base_folder": str(base)}
