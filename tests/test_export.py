"""A concept in stock diffusers: the export loads into a plain StableDiffusionPipeline
(load_textual_inversion + load_lora_weights) and gives e4t's own frozen-concept images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from e4t.config import ModelConfig
from e4t.export import export_concept
from e4t.generation import GenerationConfig, generate
from e4t.models.e4t_model import E4TModel


def _stock_images(base: Path, folder: Path, token: str, seeds: list[int]) -> list[np.ndarray]:
    """Generation with diffusers alone: nothing of e4t is imported here."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_textual_inversion(str(folder / "learned_embeds.safetensors"))
    pipe.load_lora_weights(str(folder))
    images = []
    for seed in seeds:
        out = pipe(
            f"a photo of {token}",
            num_inference_steps=3,
            guidance_scale=7.5,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np",
        )
        images.append(out.images[0])
    return images


def test_an_exported_concept_gives_the_frozen_concepts_images_in_stock_diffusers(
    tiny_dir: Path, tmp_path: Path
) -> None:
    model = E4TModel.from_config(ModelConfig(base_model=str(tiny_dir), encoder={"hidden_dim": 32}))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a "pretrained" domain model: offsets and encoder not zero
        for p in model.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    cls = torch.randn(1, len(model.encoder.layer_indices), model.encoder.config.clip_hidden_size)
    bank = model.new_concepts(cls, rank=4, seeds=[0])
    with torch.no_grad():  # a "tuned" concept: deltas, word and head moved
        for p in bank.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    bank.save(0, tmp_path / "concepts" / "ada-1a2b", model.concept_meta({"concept_id": "ada-1a2b"}))

    info = export_concept(model, tmp_path / "concepts" / "ada-1a2b", tmp_path / "export")
    folder, base = Path(info["folder"]), Path(info["base_folder"])
    assert info["token"] == "<ada-1a2b>" and base.name == f"base-{model.fingerprint()}"
    # the base is written once per domain model and reused
    stamp = (base / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    export_concept(model, tmp_path / "concepts" / "ada-1a2b", tmp_path / "export")
    assert (base / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp
    assert (
        json.loads((folder / "export.json").read_text())["bytes"]["learned_embeds.safetensors"] > 0
    )

    seeds = [0, 1]
    stock = _stock_images(base, folder, info["token"], seeds)
    # e4t's own generation with the same frozen word (as exported) and the concept attached
    frozen = load_file(str(folder / "learned_embeds.safetensors"))[info["token"]].float()
    concept_cls = model.load_concept(tmp_path / "concepts" / "ada-1a2b")
    config = GenerationConfig(num_steps=3, batch_size=1)
    ours = [
        np.asarray(item.image, dtype=np.float32) / 255
        for seed in seeds
        for item in generate(
            model, concept_cls, ["a photo of {}"], 1, seed, config, frozen_v_star=frozen
        )
    ]
    model.detach_concepts()
    for a, b in zip(stock, ours, strict=True):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 2 / 255, np.abs(a - b).max()
    assert np.abs(stock[0] - stock[1]).mean() > 0.01  # seeds still differ
    # without the LoRA the stock image is another one: the deltas travel in the export
    from diffusers import StableDiffusionPipeline

    plain = StableDiffusionPipeline.from_pretrained(base, safety_checker=None)
    plain.set_progress_bar_config(disable=True)
    plain.load_textual_inversion(str(folder / "learned_embeds.safetensors"))
    no_lora = plain(
        f"a photo of {info['token']}",
        num_inference_steps=3,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="np",
    ).images[0]
    assert np.abs(no_lora - stock[0]).max() > 2 / 255
