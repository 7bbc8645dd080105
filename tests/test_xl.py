"""E4T on the SDXL family (CPU, ``tiny-xl``): the folder, both text encoders' v*, the pooled
embedding and add_time_ids, pretraining, tuning, generation and the artifacts' round trips.
``sdxl-random`` is only counted here, on the meta device (no weights are made)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image

from e4t.config import LossConfig, ModelConfig, TuneConfig
from e4t.data.transforms import face_tensors
from e4t.generation import GenerationConfig, generate
from e4t.models import architectures
from e4t.models.architectures import init_model, is_xl_arch
from e4t.models.base import is_xl_source
from e4t.models.e4t_model import E4TModel
from e4t.models.offsets import find_projections
from e4t.training.step import Batch, compute_loss
from e4t.training.tune import tune_concepts

TUNE = TuneConfig(num_steps=3, draws_per_concept=2, resolution_px=32, lr=2e-2)


@pytest.fixture(scope="module")
def tiny_xl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_model(tmp_path_factory.mktemp("models") / "tiny-xl", arch="tiny-xl", seed=0)


def make_model(base: Path, seed: int | None = 0) -> E4TModel:
    config = ModelConfig.model_validate({"base_model": str(base), "encoder": {"hidden_dim": 32}})
    return E4TModel.from_config(config, seed=seed)


@pytest.fixture(scope="module")
def model(tiny_xl_dir: Path) -> E4TModel:
    return make_model(tiny_xl_dir)


def _faces(model: E4TModel, n: int, size: int = 32) -> list:
    rng = np.random.default_rng(0)
    return [
        face_tensors(
            Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)),
            None,
            size,
            model.base.image_processor,
        )
        for _ in range(n)
    ]


def test_tiny_xl_is_a_stock_sdxl_folder_and_recognised_by_its_index(
    tiny_xl_dir: Path, tiny_dir: Path
) -> None:
    index = json.loads((tiny_xl_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert is_xl_source(str(tiny_xl_dir)) and not is_xl_source(str(tiny_dir))
    assert is_xl_arch("tiny-xl") and is_xl_arch("sdxl-random") and not is_xl_arch("tiny")
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_xl_dir))
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.text_encoder_2.config.hidden_size == 48  # the widths differ on purpose
    assert pipe.tokenizer_2.pad_token == "!" and pipe.tokenizer_2.pad_token_id == 0
    image = pipe(
        "a photo of a face", num_inference_steps=2, height=64, width=64, output_type="np"
    ).images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


def test_sdxl_random_is_the_sdxl_1_0_layout() -> None:
    """Counted on the meta device: no weights are made."""
    with torch.device("meta"):
        unet = architectures.build_unet("sdxl-random")
        text = architectures.build_text_encoder("sdxl-random")
        text_2 = architectures.build_text_encoder_2("sdxl-random")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(unet) == 2_567_463_684  # stabilityai/stable-diffusion-xl-base-1.0's UNet
    assert count(text) == 123_060_480 and count(text_2) == 694_659_840
    found = find_projections(unet, ("attn1", "attn2"), ("to_q",))
    assert len(found) == 140  # every attention module of the SDXL UNet
    assert unet.config.projection_class_embeddings_input_dim == 6 * 256 + 1280


def test_v_star_spans_both_encoders_each_slice_reaching_only_its_own(model: E4TModel) -> None:
    assert model.is_xl and model.encoder.config.embed_dim == 32 + 48
    base = model.class_embedding().detach()[None]
    assert base.shape == (1, 80)
    with torch.no_grad():
        plain = model.condition(["a photo of face"])
        at_class = model.condition(["a photo of {}"], base)
        first = base.clone()
        first[:, :32] += 1.0
        moved_1 = model.condition(["a photo of {}"], first)
        second = base.clone()
        second[:, 32:] += 1.0
        moved_2 = model.condition(["a photo of {}"], second)
    assert plain.hidden.shape == (1, 77, 80) and plain.pooled is not None
    assert plain.pooled.shape == (1, 32)
    assert torch.equal(at_class.hidden, plain.hidden) and torch.equal(at_class.pooled, plain.pooled)
    # the first encoder's slice moves the first 32 channels only, never the pooled vector
    assert not torch.allclose(moved_1.hidden[..., :32], plain.hidden[..., :32])
    assert torch.equal(moved_1.hidden[..., 32:], plain.hidden[..., 32:])
    assert torch.equal(moved_1.pooled, plain.pooled)
    # the second's moves the last 48 channels and the pooled embedding (from its sequence)
    assert torch.equal(moved_2.hidden[..., :32], plain.hidden[..., :32])
    assert not torch.allclose(moved_2.hidden[..., 32:], plain.hidden[..., 32:])
    assert not torch.allclose(moved_2.pooled, plain.pooled)


def test_the_unet_reads_time_ids_and_the_encoder_reads_down_and_mid_blocks(
    model: E4TModel,
) -> None:
    z = torch.randn(2, 4, 32, 32)  # the tiny VAE halves: 64 px
    assert model.time_ids(z).tolist() == [[64, 64, 0, 0, 64, 64]] * 2
    blocks = model.unet_block_outputs(z, torch.tensor([10, 500]))
    unet = model.base.unet
    assert len(blocks) == len(unet.down_blocks) + 1
    assert [b.shape[1] for b in blocks] == [32, 64, 64]
    cond = model.condition(["a photo of face"] * 2)
    with torch.no_grad():
        small = model.predict_noise(z, torch.tensor([10, 10]), cond)
        kwargs = model.unet_kwargs(z, cond)
        kwargs["added_cond_kwargs"]["time_ids"] = kwargs["added_cond_kwargs"]["time_ids"] * 2
        other_size = unet(z, torch.tensor([10, 10]), **kwargs).sample
    assert not torch.allclose(small, other_size)  # the size conditioning is read


def test_a_pretraining_step_trains_encoder_and_offsets_on_tiny_xl(tiny_xl_dir: Path) -> None:
    model = make_model(tiny_xl_dir)
    model.set_trainable(["encoder", "offsets"])
    params = list(model.trainable_parameters())
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    batch = Batch(
        pixel_values=torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1,
        clip_pixel_values=torch.randn(2, 3, 32, 32, generator=gen),
        prompts=["a photo of {}", "{} smiling"],
        mask=(torch.rand(2, 1, 64, 64, generator=gen) > 0.5).float(),
    )
    for _ in range(2):  # the encoder's zero output layer moves first, the rest after
        out = compute_loss(model, batch, LossConfig(), generator=gen)
        assert torch.isfinite(out.loss)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    changed = [not torch.equal(b, p) for b, p in zip(before, params, strict=True)]
    assert sum(changed) > len(params) // 2
    assert not torch.equal(model.encoder.output_layer.weight, torch.zeros_like(before[0][:0]))


def test_tuning_generation_and_concept_round_trip_on_tiny_xl(
    tiny_xl_dir: Path, tmp_path: Path
) -> None:
    model = make_model(tiny_xl_dir)
    faces = _faces(model, 2)
    result = tune_concepts(model, faces, [0, 1], TUNE)
    assert len(result.losses) == 2 and all(np.isfinite(loss).all() for loss in result.losses)
    bank = result.bank
    assert bank.word.shape == (2, 80)
    assert bank.word.abs().sum() > 0  # the word was tuned
    domain = model.save_pretrained(tmp_path / "domain")
    bank.save(1, tmp_path / "concept", model.concept_meta(), "fp32")
    config = GenerationConfig(num_steps=2, height=64, width=64, guidance_scale=3.0)
    images = generate(model, bank.cls, ["a photo of {}"], 1, 0, config)
    assert len(images) == 2 and images[0].image.size == (64, 64)
    one = model.load_concept(tmp_path / "concept")
    expected = generate(model, one, ["a photo of {}"], 1, 0, config)[0].image
    # concept 1 alone (read back) gives the image it got in the bank of two, to a level
    pixels = lambda image: np.asarray(image, dtype=np.int16)  # noqa: E731
    assert np.abs(pixels(images[1].image) - pixels(expected)).max() <= 1
    assert np.abs(pixels(images[0].image) - pixels(expected)).mean() > 1  # another concept
    # the domain model and the concept reload into a fresh process' model
    loaded = E4TModel.from_pretrained(domain)
    assert loaded.fingerprint() == model.fingerprint()
    cls = loaded.load_concept(tmp_path / "concept")
    again = generate(loaded, cls, ["a photo of {}"], 1, 0, config)[0].image
    assert np.array_equal(pixels(again), pixels(expected))


def test_sdxl_presets_load_and_sdxl_faces_says_its_batch() -> None:
    import re

    from e4t.config import (
        REPO_CONFIGS,
        CurateConfig,
        PersonalizeConfig,
        PretrainConfig,
        for_world,
        load_config,
    )

    text = (REPO_CONFIGS / "pretrain" / "sdxl-faces.yaml").read_text()
    stated = int(re.search(r"global batch (\d+) =", text)[1])
    config = load_config(PretrainConfig, "pretrain", "sdxl-faces")
    assert config.model.dtype == "bf16" and config.model.gradient_checkpointing
    assert config.data.resolution_px == 1024
    for gpus, accum in ((1, 8), (2, 4), (4, 2), (8, 1)):
        on = for_world(config, gpus)
        assert stated == 16 == on.train.batch_size * on.optim.grad_accum * gpus
        assert on.optim.grad_accum == accum
    assert load_config(PretrainConfig, "pretrain", "tiny-xl").model.base_model.endswith("tiny-xl")
    xl = load_config(PersonalizeConfig, "personalize", "sdxl")
    assert xl.tune.resolution_px == 1024 and xl.tune.compile == "default"  # a GPU job
    assert load_config(CurateConfig, "curate", "sdxl-1024").align.resolution_px == 1024
    model = load_config(ModelConfig, "model", "sdxl")
    assert model.base_model == "stabilityai/stable-diffusion-xl-base-1.0"


def _stock_xl_images(base: Path, folder: Path, token: str, seeds: list[int]) -> list[np.ndarray]:
    """Generation with diffusers alone, the way SDXL embeddings load: one textual-inversion
    call per text encoder with its part of the file."""
    from safetensors.torch import load_file

    pipe = StableDiffusionXLPipeline.from_pretrained(base, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    state = load_file(str(folder / "learned_embeds.safetensors"))
    pipe.load_textual_inversion(
        state["clip_l"], token=token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
    )
    pipe.load_textual_inversion(
        state["clip_g"], token=token, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
    )
    pipe.load_lora_weights(str(folder))
    return [
        pipe(
            f"a photo of {token}",
            num_inference_steps=3,
            guidance_scale=7.5,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np",
        ).images[0]
        for seed in seeds
    ]


def test_an_exported_xl_concept_gives_the_frozen_concepts_images_in_a_stock_sdxl_pipeline(
    tiny_xl_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from e4t.export import export_concept

    model = make_model(tiny_xl_dir)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a "pretrained" domain model: offsets and encoder not zero
        for p in model.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    cls = torch.randn(1, len(model.encoder.layer_indices), model.encoder.config.clip_hidden_size)
    bank = model.new_concepts(cls, rank=4, seeds=[0])
    with torch.no_grad():  # a "tuned" concept: deltas, word and head moved
        for p in bank.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    concept = tmp_path / "concepts" / "ada"
    bank.save(0, concept, model.concept_meta({"concept_id": "ada"}))

    info = export_concept(model, concept, tmp_path / "export")
    folder, base = Path(info["folder"]), Path(info["base_folder"])
    assert json.loads((base / "model_index.json").read_text())["_class_name"] == (
        "StableDiffusionXLPipeline"
    )
    embeds = load_file(str(folder / "learned_embeds.safetensors"))
    assert embeds["clip_l"].shape == (32,) and embeds["clip_g"].shape == (48,)
    assert "text_encoder_2" in info["use"]

    seeds = [0, 1]
    stock = _stock_xl_images(base, folder, info["token"], seeds)
    frozen = torch.cat([embeds["clip_l"], embeds["clip_g"]]).float()
    concept_cls = model.load_concept(concept)
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


@pytest.mark.slow
def test_pretraining_under_torchrun_on_tiny_xl(
    curated_shards: Path, tiny_xl_dir: Path, tmp_path: Path
) -> None:
    """Two processes (gloo) pretrain the tiny SDXL layout with the tiny-xl preset; the
    domain model they write loads and carries v* of both encoders' widths."""
    from e4t.config import LaunchConfig, PretrainConfig, load_config
    from e4t.training.launch import run_pretraining

    sets = {
        "data.shards": str(curated_shards),
        "model.base_model": str(tiny_xl_dir),
        "train.num_steps": 6,
        "train.checkpoint_every": 0,
        "train.preview_every": 0,
        "data.num_preview": 0,
    }
    config = load_config(PretrainConfig, "pretrain", "tiny-xl", sets)
    events: list[dict] = []
    result = run_pretraining(
        config,
        str(tmp_path / "out"),
        LaunchConfig(nproc_per_node=2),
        track=False,
        on_event=events.append,
    )
    losses = [e["loss"] for e in events if e.get("event") == "step"]
    assert len(losses) == 6 and all(np.isfinite(losses))
    ranks = [json.loads(p.read_text()) for p in sorted((tmp_path / "out" / "ranks").glob("*.json"))]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["fingerprint"] == ranks[1]["fingerprint"] == result["result"]["fingerprint"]
    trained = E4TModel.from_pretrained(tmp_path / "out" / "model")
    assert trained.is_xl and trained.encoder.output_layer.out_features == 80
    assert trained.encoder.output_layer.weight.abs().sum() > 0  # it trained


@pytest.mark.slow
def test_personalize_and_evaluate_commands_on_tiny_xl(
    photos_dir: Path, tiny_xl_dir: Path, tmp_path: Path
) -> None:
    """The CLI's personalize and evaluate (with the baselines) on an SDXL-family model."""
    import shutil
    import subprocess
    import sys

    folder = make_model(tiny_xl_dir, seed=3).save_pretrained(tmp_path / "domain")
    images = tmp_path / "faces"
    images.mkdir()
    shutil.copyfile(photos_dir / "obama.jpg", images / "obama.jpg")
    common = ["--model", str(folder), "--preset", "tiny", "--no-track"]
    personalize = [
        sys.executable, "-m", "e4t.cli", "personalize", str(images), *common,
        "--out", str(tmp_path / "concepts"),
    ]  # fmt: skip
    done = subprocess.run(personalize, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (concept,) = [p.parent for p in (tmp_path / "concepts").rglob("concept.json")]
    loaded = E4TModel.from_pretrained(folder)
    tensors, _ = loaded.read_concept(concept)
    assert tensors["word"].shape == (80,)
    evaluate = [
        sys.executable, "-m", "e4t.cli", "evaluate", str(images), *common,
        "--out", str(tmp_path / "eval"), "--tune-steps", "0", "1", "--seeds", "0",
        "--prompt", "a photo of {}", "--baselines", "textual-inversion", "no-pretraining",
        "e4t-frozen",
    ]  # fmt: skip
    done = subprocess.run(evaluate, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(results["summary"]) == {"e4t", "textual-inversion", "no-pretraining", "e4t-frozen"}
    assert (tmp_path / "eval" / "report.html").exists()


def test_tuning_flops_are_counted_on_the_meta_device() -> None:
    """No weights are made: the count is what a step would compute (SDXL at 1024 px in
    docs/benchmarks.md comes from this function)."""
    from e4t.bench.flops import count_tuning_flops

    flops = count_tuning_flops("tiny-xl", resolution_px=64, draws=4)
    # the step is the UNet's forward + backward, plus the encoder's feature pass (down and
    # mid blocks) and the text encoders: more than the bare UNet, less than twice it
    assert flops.unet_forward_backward < flops.tuning_step < 2 * flops.unet_forward_backward
    assert 1.8 < flops.unet_forward_backward / flops.unet_forward < 2.5
    assert flops.per_draw == flops.tuning_step / 4
    assert (
        flops.unet_forward_backward_ops
        < flops.tuning_step_ops
        < 2 * (flops.unet_forward_backward_ops)
    )  # the goal: a tuning step dispatches at most twice the bare UNet's ops


@pytest.mark.slow
def test_the_pipeline_flow_runs_on_tiny_xl(
    prefect_server: None, photos_dir: Path, tmp_path: Path
) -> None:
    """e4t-pipeline on the tiny SDXL layout: curate → pretrain (torchrun) → personalize →
    evaluate, the base written by init_arch."""
    from flows.pipeline import e4t_pipeline

    base = tmp_path / "tiny-xl"
    result = e4t_pipeline(
        photos_url=str(photos_dir),
        work_url=str(tmp_path / "work"),
        base_model=str(base),
        init_arch="tiny-xl",
        pretrain_steps=4,
        domain="faces-xl",
    )
    assert is_xl_source(str(base))
    assert result["num_evaluated"] and result["report_url"]
    (concept,) = [p.parent for p in Path(result["concepts_url"]).rglob("concept.json")][:1]
    from e4t.tracking import cached_domain_model

    model = cached_domain_model(result["model_uri"], "cpu")
    assert model.is_xl and model.read_concept(concept)[0]["word"].shape == (80,)
