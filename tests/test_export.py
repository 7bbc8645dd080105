"""A concept in stock diffusers: the export loads into a plain StableDiffusionPipeline
(load_textual_inversion + load_lora_weights) and gives e4t's own frozen-concept images."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
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


@pytest.mark.slow
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


def test_export_is_bound_to_the_concepts_domain_model(tiny_dir: Path, tmp_path: Path) -> None:
    """Equal encoder and offsets on another base are another domain model: its export of the
    concept is refused (no base written) unless asked for; export.json records the concept's
    fingerprint, and each model's base folder is named by its own full identity."""
    from e4t.models.architectures import init_model
    from e4t.models.e4t_model import ConceptModelMismatch

    def on(base: Path) -> E4TModel:
        config = ModelConfig(base_model=str(base), encoder={"hidden_dim": 32})
        model = E4TModel.from_config(config)
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for p in model.trainable_parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        return model

    tuned, other = on(tiny_dir), on(init_model(tmp_path / "tiny-seed1", arch="tiny", seed=1))
    cls = torch.randn(1, len(tuned.encoder.layer_indices), tuned.encoder.config.clip_hidden_size)
    bank = tuned.new_concepts(cls, rank=4, seeds=[0])
    meta = tuned.concept_meta({"concept_id": "ada", "model_uri": "models:/e4t-faces/1"})
    bank.save(0, tmp_path / "concepts" / "ada", meta)

    with pytest.raises(ConceptModelMismatch, match="--allow-model-mismatch"):
        export_concept(other, tmp_path / "concepts" / "ada", tmp_path / "export", frozen_steps=2)
    assert not (tmp_path / "export").exists() or not any((tmp_path / "export").iterdir())

    info = export_concept(
        other,
        tmp_path / "concepts" / "ada",
        tmp_path / "export",
        frozen_steps=2,
        allow_model_mismatch=True,
    )
    recorded = json.loads((Path(info["folder"]) / "export.json").read_text())
    assert recorded["domain_fingerprint"] == tuned.fingerprint() != other.fingerprint()
    assert recorded["model_fingerprint"] == other.fingerprint()
    assert Path(info["base_folder"]).name == f"base-{other.fingerprint()}"
    mine = export_concept(tuned, tmp_path / "concepts" / "ada", tmp_path / "export", frozen_steps=2)
    assert Path(mine["base_folder"]).name == f"base-{tuned.fingerprint()}"
    assert mine["base_folder"] != info["base_folder"]  # one base folder per base identity


# ------------------------------------------------------------ concepts as untrusted files


@pytest.fixture(scope="module")
def tiny_model(tiny_dir: Path) -> E4TModel:
    return E4TModel.from_config(ModelConfig(base_model=str(tiny_dir), encoder={"hidden_dim": 32}))


def _save_concept(model: E4TModel, folder: Path, concept_id: str | None = "ada-1a2b") -> Path:
    cls = torch.randn(1, len(model.encoder.layer_indices), model.encoder.config.clip_hidden_size)
    extra = {"concept_id": concept_id} if concept_id else {}
    model.new_concepts(cls, rank=4, seeds=[0]).save(0, folder, model.concept_meta(extra), "fp32")
    return folder


@pytest.mark.parametrize(
    ("value", "says"),
    [(float("nan"), "NaN or Inf"), (float("inf"), "NaN or Inf"), (None, "int8, not floating")],
    ids=["nan", "inf", "int8"],
)
def test_concept_tensors_must_be_finite_floats(
    tiny_model: E4TModel, tmp_path: Path, value: float | None, says: str
) -> None:
    from safetensors.torch import save_file

    from e4t.models.e4t_model import ArtifactError

    folder = _save_concept(tiny_model, tmp_path / "concept")
    tensors = load_file(str(folder / "concept.safetensors"))
    if value is None:
        tensors["word"] = tensors["word"].to(torch.int8)
    else:
        tensors["word"][3] = value
    save_file(tensors, str(folder / "concept.safetensors"))
    with pytest.raises(ArtifactError) as err:
        tiny_model.read_concept(folder)
    message = str(err.value)
    assert says in message and "'word'" in message
    assert str(folder / "concept.safetensors") in message


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (lambda raw: raw[: len(raw) // 2], "is not valid JSON"),
        (lambda raw: b"[" + raw + b"]", "holds a JSON list, not an object"),
        (lambda raw: raw.replace(b'"face"', b'"f\xe9ce"'), "is not UTF-8 text"),
        (lambda raw: raw.replace(b'"rank": 4', b'"rank": "four"'), "rank 'four' is not an integer"),
        (lambda raw: raw.replace(b'"rank": 4', b'"rank": 4.5'), "rank '4.5' is not an integer"),
        (lambda raw: b"[" * 100_000 + b"]" * 100_000, "not JSON a reader can take"),
        (lambda raw: b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "not JSON a reader can take"),
        (lambda raw: raw.replace(b'"rank": 4', b'"rank": ' + b"9" * 5000), "not JSON a reader"),
    ],
    ids=["truncated", "list", "not-utf8", "rank-four", "rank-float", "deep", "deep-obj", "huge"],
)
def test_an_unreadable_concept_json_is_an_artifact_error(
    tiny_model: E4TModel, tmp_path: Path, edit: Callable[[bytes], bytes], says: str
) -> None:
    from e4t.models.e4t_model import ArtifactError

    folder = _save_concept(tiny_model, tmp_path / "concept")
    raw = (folder / "concept.json").read_bytes()
    changed = edit(raw)
    assert changed != raw
    (folder / "concept.json").write_bytes(changed)
    with pytest.raises(ArtifactError, match=r"concept\.json") as err:
        tiny_model.read_concept(folder)
    assert says in str(err.value)


def test_a_fifo_in_a_concept_folder_is_refused_not_waited_on(
    tiny_model: E4TModel, tmp_path: Path
) -> None:
    """A FIFO in place of concept.json or concept.safetensors is an ArtifactError at once
    (opened non-blocking, regular files only), never a read that waits for a writer."""
    import os

    from e4t.models.e4t_model import ArtifactError

    for name in ("concept.json", "concept.safetensors"):
        folder = _save_concept(tiny_model, tmp_path / name.replace(".", "-"))
        (folder / name).unlink()
        os.mkfifo(folder / name)
        with pytest.raises(ArtifactError, match="not a regular file"):
            tiny_model.read_concept(folder)


@pytest.mark.slow
def test_an_export_of_a_path_ending_in_dotdot_stays_under_out_named_from_the_id(
    tiny_model: E4TModel, tmp_path: Path
) -> None:
    from e4t.export import export_folder_name
    from e4t.models.e4t_model import ArtifactError

    concept = _save_concept(tiny_model, tmp_path / "concepts" / "ada-1a2b")
    (concept / "inner").mkdir()
    work = tmp_path / "work"
    work.mkdir()
    info = export_concept(tiny_model, concept / "inner" / "..", work / "export", frozen_steps=2)
    assert Path(info["folder"]) == work / "export" / "ada-1a2b"
    assert info["token"] == "<ada-1a2b>"
    assert [p.name for p in work.iterdir()] == ["export"]  # nothing beside --out
    assert (work / "export" / "ada-1a2b" / "learned_embeds.safetensors").exists()
    # no concept_id: the folder's real name, not ".."
    anon = _save_concept(tiny_model, tmp_path / "concepts" / "bob", concept_id=None)
    (anon / "inner").mkdir()
    info = export_concept(tiny_model, anon / "inner" / "..", work / "export", frozen_steps=2)
    assert Path(info["folder"]) == work / "export" / "bob" and info["token"] == "<bob>"
    assert export_folder_name("../../etc") == "etc"
    with pytest.raises(ArtifactError, match="no letter or digit"):
        export_folder_name("../..")


def _tuned_concept(model: E4TModel, folder: Path, concept_id: str, seed: int) -> Path:
    """A "tuned" concept saved as personalization saves it (fp16)."""
    gen = torch.Generator().manual_seed(seed)
    cls = torch.randn(
        1, len(model.encoder.layer_indices), model.encoder.config.clip_hidden_size, generator=gen
    )
    bank = model.new_concepts(cls, rank=4, seeds=[seed])
    with torch.no_grad():
        for p in bank.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    bank.save(0, folder, model.concept_meta({"concept_id": concept_id}))
    return folder


@pytest.mark.slow
def test_two_exported_concepts_share_a_stock_pipeline_under_their_adapter_names(
    tiny_dir: Path, tmp_path: Path
) -> None:
    """Each export loads under its own adapter name (its concept id); set_adapters picks one
    and the pipeline then gives that concept's images, as if it were loaded alone."""
    from diffusers import StableDiffusionPipeline

    model = E4TModel.from_config(ModelConfig(base_model=str(tiny_dir), encoder={"hidden_dim": 32}))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    infos = [
        export_concept(
            model, _tuned_concept(model, tmp_path / "c" / cid, cid, seed), tmp_path / "export"
        )
        for cid, seed in (("ada-1a2b", 1), ("bo.b 7", 2))
    ]
    assert [i["adapter_name"] for i in infos] == ["ada-1a2b", "bo-b-7"]
    for info in infos:  # what the export writes says how to load it
        written = json.loads((Path(info["folder"]) / "export.json").read_text())
        assert written["adapter_name"] == info["adapter_name"]
        assert f"adapter_name='{info['adapter_name']}'" in written["use"]
        assert f"set_adapters(['{info['adapter_name']}'])" in written["use"]

    def pipeline(*loaded: dict) -> StableDiffusionPipeline:
        pipe = StableDiffusionPipeline.from_pretrained(infos[0]["base_folder"], safety_checker=None)
        pipe.set_progress_bar_config(disable=True)
        for info in loaded:
            pipe.load_textual_inversion(str(Path(info["folder"]) / "learned_embeds.safetensors"))
            pipe.load_lora_weights(info["folder"], adapter_name=info["adapter_name"])
        return pipe

    def image(pipe: StableDiffusionPipeline, info: dict) -> np.ndarray:
        return pipe(
            f"a photo of {info['token']}",
            num_inference_steps=2,
            generator=torch.Generator("cpu").manual_seed(0),
            output_type="np",
        ).images[0]

    both = pipeline(*infos)
    assert set(both.get_list_adapters()["unet"]) == {"ada-1a2b", "bo-b-7"}
    summed = image(both, infos[0])  # both adapters active: their deltas add up
    for info in infos:
        both.set_adapters([info["adapter_name"]])
        alone = image(pipeline(info), info)
        assert np.abs(image(both, info) - alone).max() <= 1e-5
    assert np.abs(summed - image(pipeline(infos[0]), infos[0])).max() > 2 / 255
