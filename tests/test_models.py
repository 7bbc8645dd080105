"""The E4T model on the tiny preset (CPU): presets, encoder, offsets, losses, artifacts."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image

from e4t.config import LossConfig, ModelConfig
from e4t.generation import GenerationConfig, apply_concept_to_pipeline, clip_pixels, generate
from e4t.models.architectures import init_model
from e4t.models.e4t_model import ArtifactError, E4TModel
from e4t.models.encoder import E4TEncoder
from e4t.models.offsets import find_projections
from e4t.models.tokenizer import write_clip_tokenizer
from e4t.training.losses import diffusion_loss, diffusion_target, latent_mask
from e4t.training.step import Batch, compute_loss


@pytest.fixture(scope="session")
def tiny_v_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_model(
        tmp_path_factory.mktemp("models") / "tiny-v",
        arch="tiny",
        seed=0,
        prediction_type="v_prediction",
    )


def make_model(base: Path, **overrides: object) -> E4TModel:
    config = ModelConfig.model_validate(
        {"base_model": str(base), "encoder": {"hidden_dim": 32}, **overrides}
    )
    return E4TModel.from_config(config)


def randomize(model: E4TModel, seed: int = 1) -> None:
    """Nonzero offsets and encoder output (a 'trained' model)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def _batch(n: int = 2, size: int = 64, clip: int = 32, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    return Batch(
        pixel_values=torch.rand(n, 3, size, size, generator=gen) * 2 - 1,
        clip_pixel_values=torch.randn(n, 3, clip, clip, generator=gen),
        prompts=["a photo of {}", "{} smiling"][:n] * (n // 2 or 1),
        mask=(torch.rand(n, 1, size, size, generator=gen) > 0.5).float(),
    )


def _unet_inputs(model: E4TModel, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(2, 4, 32, 32, generator=gen)
    t = torch.tensor([10, 700])
    emb = model.encode_prompt(["a photo of a face", "a dog"])
    return z, t, emb


def test_real_clip_tokenizer(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path), model_max_length=77)
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408


def test_tiny_preset_is_a_normal_diffusers_folder(tiny_dir: Path) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir)
    assert pipe.image_encoder is not None and pipe.image_encoder.config.num_hidden_layers == 4
    assert len(pipe.tokenizer) == 49408
    assert (tiny_dir / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert not list(tiny_dir.rglob("*.bin"))  # no pickles


def test_zero_offsets_equal_the_base_unet_exactly(tiny_dir: Path) -> None:
    model = make_model(tiny_dir)
    base = UNet2DConditionModel.from_pretrained(tiny_dir, subfolder="unet")
    z, t, emb = _unet_inputs(model)
    with torch.no_grad():
        assert torch.equal(model.base.unet(z, t, emb).sample, base(z, t, emb).sample)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["multiplicative", "lowrank"])
def test_nonzero_offsets_change_only_the_chosen_projections(tiny_dir: Path, form: str) -> None:
    model = make_model(
        tiny_dir, offsets={"form": form, "targets": ["attn2"], "projections": ["to_k", "to_v"]}
    )
    randomize(model)
    chosen = set(model.offsets.paths)
    everything = find_projections(
        model.base.unet, ("attn1", "attn2"), ("to_q", "to_k", "to_v", "to_out.0")
    )
    assert chosen and chosen < set(everything)
    for path, linear in everything.items():
        x = torch.randn(3, linear.in_features)
        with torch.no_grad():
            changed = not torch.equal(linear(x), F.linear(x, linear.weight, linear.bias))
        assert changed == (path in chosen), path
    z, t, emb = _unet_inputs(model)
    with torch.no_grad():
        on = model.base.unet(z, t, emb).sample
        with model.offsets.disabled():
            off = model.base.unet(z, t, emb).sample
    assert not torch.allclose(on, off)


def test_encoder_shapes_sd15_like_and_tiny() -> None:
    enc = E4TEncoder(
        clip_hidden_size=1280,
        clip_num_layers=32,
        unet_block_channels=[320, 640, 1280, 1280, 1280],
        embed_dim=768,
    )
    assert enc.layer_indices == list(range(2, 33, 2)) and len(enc.layer_indices) == 16
    hidden = [torch.randn(2, 257, 1280) for _ in range(33)]
    blocks = [
        torch.randn(2, c, s, s) for c, s in [(320, 32), (640, 16), (1280, 8), (1280, 8), (1280, 8)]
    ]
    out = enc(enc.clip_features(enc.select_cls(hidden)), blocks)
    assert out.shape == (2, 768)
    tiny = E4TEncoder(
        clip_hidden_size=32,
        clip_num_layers=4,
        unet_block_channels=[32, 64, 64],
        embed_dim=32,
        hidden_dim=16,
    )
    assert tiny.layer_indices == [2, 4]


def test_encoder_reads_the_cls_of_every_second_layer(tiny_dir: Path, photos_dir: Path) -> None:
    model = make_model(tiny_dir)
    pixels = clip_pixels(model, Image.open(photos_dir / "obama.jpg"))
    hidden = model.image_encoder(pixels, output_hidden_states=True).hidden_states
    assert len(hidden) == 5  # embeddings + 4 layers
    expected = torch.stack([hidden[2][:, 0], hidden[4][:, 0]], dim=1)
    assert torch.equal(model.clip_cls(pixels), expected)


def test_embedding_depends_on_t_and_z_t(tiny_dir: Path) -> None:
    model = make_model(tiny_dir)
    randomize(model)
    cls = torch.randn(1, 2, 32)
    z = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        a = model.predict_offset(cls, z, torch.tensor([100]))
        b = model.predict_offset(cls, z, torch.tensor([800]))
        c = model.predict_offset(cls, torch.randn(1, 4, 32, 32), torch.tensor([100]))
        again = model.predict_offset(cls, z, torch.tensor([100]))
    assert torch.equal(a, again)
    assert not torch.allclose(a, b) and not torch.allclose(a, c)


def test_fresh_model_starts_at_the_class_word(tiny_dir: Path) -> None:
    model = make_model(tiny_dir)
    with torch.no_grad():
        offset = model.predict_offset(
            torch.randn(1, 2, 32), torch.randn(1, 4, 32, 32), torch.tensor([500])
        )
        v_star = model.word_embedding(offset)
        with_placeholder = model.encode_prompt(["a photo of {}"], v_star)
    assert torch.equal(offset, torch.zeros_like(offset))
    assert torch.equal(with_placeholder, model.encode_prompt(["a photo of face"]))


@pytest.mark.slow
@pytest.mark.parametrize("form", ["multiplicative", "lowrank"])
def test_gradients_reach_exactly_encoder_and_offsets(tiny_dir: Path, form: str) -> None:
    model = make_model(tiny_dir, offsets={"form": form})
    out = compute_loss(model, _batch(), LossConfig(), torch.Generator().manual_seed(0))
    assert out.weight_reg.item() == 0.0 and out.embedding_reg.item() == 0.0  # zero at init
    out.loss.backward()
    trainable = {id(p) for p in model.trainable_parameters()}
    for name, p in model.named_parameters():
        if id(p) in trainable:
            assert p.grad is not None, name
        else:
            assert p.grad is None and not p.requires_grad, name
    # the output layer, and through it the offsets, get a signal at the first step
    assert model.encoder.head[-1].weight.grad.abs().sum() > 0
    grads = [p.grad.abs().sum() for p in model.offsets.parameters()]
    assert sum(grads) > 0


def test_loss_matches_a_hand_computation() -> None:
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    weights = torch.zeros(2, 1, 8, 8)
    weights[0, :, :4] = 1.0
    weights[1] = 1.0
    by_hand = (((pred[0] - target[0]) ** 2)[:, :4].mean() + ((pred[1] - target[1]) ** 2).mean()) / 2
    assert diffusion_loss(pred, target, weights).item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert diffusion_loss(pred, target).item() == pytest.approx(
        ((pred - target) ** 2).mean().item()
    )
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :32, :] = 1.0
    assert latent_mask(mask, (8, 8), floor=0.1)[0, 0, :, 0].tolist() == pytest.approx(
        [1.0] * 4 + [0.1] * 4
    )


def test_v_prediction_target(tiny_v_dir: Path) -> None:
    model = make_model(tiny_v_dir)
    sched = model.base.noise_scheduler
    assert sched.config.prediction_type == "v_prediction"
    x0, noise, t = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), torch.tensor([300])
    abar = sched.alphas_cumprod[300]
    expected = abar.sqrt() * noise - (1 - abar).sqrt() * x0
    assert torch.allclose(diffusion_target(sched, x0, noise, t), expected, atol=1e-6)


@pytest.mark.slow
def test_total_loss_combines_the_terms(tiny_dir: Path) -> None:
    model = make_model(tiny_dir)
    randomize(model)
    losses = LossConfig(lambda_emb=0.5, lambda_w=0.25)
    out = compute_loss(model, _batch(), losses, torch.Generator().manual_seed(3))
    expected = out.diffusion + 0.5 * out.embedding_reg + 0.25 * out.weight_reg
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    by_hand = sum((p**2).sum() for p in model.offsets.parameters())
    assert out.weight_reg.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_lowrank_norm_equals_the_dense_product(tiny_dir: Path) -> None:
    model = make_model(tiny_dir, offsets={"form": "lowrank", "rank": 3})
    randomize(model)
    dense = sum(
        ((model.offsets.up[k] @ model.offsets.down[k]) ** 2).sum() for k in model.offsets.up
    )
    assert model.offsets.squared_norm().item() == pytest.approx(dense.item(), rel=1e-5)


def test_class_word_must_be_one_token(tiny_dir: Path) -> None:
    with pytest.raises(ValueError, match="one token"):
        make_model(tiny_dir, class_word="photorealistic")


def test_domain_model_round_trip(tiny_dir: Path, tmp_path: Path) -> None:
    model = make_model(tiny_dir)
    randomize(model)
    model.save_pretrained(tmp_path / "domain")
    loaded = E4TModel.from_pretrained(tmp_path / "domain")
    assert loaded.fingerprint() == model.fingerprint()
    cls, z, t = torch.randn(1, 2, 32), torch.randn(1, 4, 32, 32), torch.tensor([250])
    with torch.no_grad():
        assert torch.equal(model.predict_offset(cls, z, t), loaded.predict_offset(cls, z, t))
        zz, tt, emb = _unet_inputs(model)
        assert torch.equal(
            model.base.unet(zz, tt, emb).sample, loaded.base.unet(zz, tt, emb).sample
        )


def _random_bank(model: E4TModel, k: int = 1, seed: int = 5):
    bank = model.new_concepts(torch.randn(k, 2, 32), rank=4, seeds=list(range(k)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in bank.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return bank


def test_concept_round_trip(tiny_dir: Path, tmp_path: Path) -> None:
    model = make_model(tiny_dir)
    randomize(model)
    model.save_pretrained(tmp_path / "domain")
    bank = model.attach_concepts(_random_bank(model))  # a "tuned" concept
    meta = model.concept_meta()
    bank.save(0, tmp_path / "c32", meta, dtype="fp32")
    bank.save(0, tmp_path / "c16", meta)
    assert (tmp_path / "c16" / "concept.safetensors").stat().st_size < (
        tmp_path / "c32" / "concept.safetensors"
    ).stat().st_size
    z, t = torch.randn(1, 4, 32, 32), torch.tensor([400])
    zz, tt, _ = _unet_inputs(model)
    with torch.no_grad():
        want = model.word_embedding(model.predict_offset(bank.cls, z, t))
        want_unet = model.base.unet(
            zz[:1], tt[:1], model.encode_prompt(["a photo of {}"], want)
        ).sample
    for name, tol in (("c32", 1e-6), ("c16", 2e-2)):
        fresh = E4TModel.from_pretrained(tmp_path / "domain")
        cls = fresh.load_concept(tmp_path / name)
        with torch.no_grad():
            got = fresh.word_embedding(fresh.predict_offset(cls, z, t))
            got_unet = fresh.base.unet(
                zz[:1], tt[:1], fresh.encode_prompt(["a photo of {}"], got)
            ).sample
        assert torch.allclose(want, got, atol=tol, rtol=tol), name
        assert torch.allclose(want_unet, got_unet, atol=tol * 5, rtol=tol * 5), name
    saved = json.loads((tmp_path / "c16" / "concept.json").read_text())
    assert saved["class_word"] == "face" and saved["dtype"] == "fp16"
    assert saved["domain_fingerprint"] == model.fingerprint()


@pytest.mark.slow
def test_zero_step_concept_is_the_domain_model(tiny_dir: Path, tmp_path: Path) -> None:
    model = make_model(tiny_dir)
    randomize(model)
    cls, z, t = torch.randn(1, 2, 32), torch.randn(1, 4, 32, 32), torch.tensor([600])
    with torch.no_grad():
        plain = model.word_embedding(model.predict_offset(cls, z, t))
        model.attach_concepts(model.new_concepts(cls))
        with_concept = model.word_embedding(model.predict_offset(cls, z, t))
        zz, tt, emb = _unet_inputs(model)
        unet_with = model.base.unet(zz, tt, emb).sample
        model.detach_concepts()
        unet_without = model.base.unet(zz, tt, emb).sample
    assert torch.allclose(plain, with_concept, atol=1e-6)
    assert torch.allclose(unet_with, unet_without, atol=1e-6)  # fused matmuls, same weights


def test_corrupted_and_mismatched_files_are_refused(tiny_dir: Path, tmp_path: Path) -> None:
    model = make_model(tiny_dir)
    model.save_pretrained(tmp_path / "domain")
    model.save_concept(tmp_path / "concept", torch.randn(1, 2, 32))

    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "domain", broken)
    weights = broken / "encoder" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="corrupted"):
        E4TModel.from_pretrained(broken)

    cross_only = make_model(tiny_dir, offsets={"targets": ["attn2"]})
    with pytest.raises(ArtifactError, match="unknown tensors"):
        cross_only.load_concept(tmp_path / "concept")

    wider = make_model(tiny_dir, encoder={"hidden_dim": 48})
    with pytest.raises(ArtifactError, match="shape mismatches"):
        wider.load_concept(tmp_path / "concept")

    cat = make_model(tiny_dir, class_word="cat")
    with pytest.raises(ArtifactError, match="class word"):
        cat.load_concept(tmp_path / "concept")

    concept = tmp_path / "concept" / "concept.safetensors"
    concept.write_bytes(concept.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="corrupted"):
        model.load_concept(tmp_path / "concept")


@pytest.mark.slow
@pytest.mark.parametrize("which", ["epsilon", "v_prediction"])
def test_generation_end_to_end(
    tiny_dir: Path, tiny_v_dir: Path, photos_dir: Path, which: str
) -> None:
    model = make_model(tiny_dir if which == "epsilon" else tiny_v_dir)
    randomize(model)
    cls = model.clip_cls(clip_pixels(model, Image.open(photos_dir / "obama.jpg")))
    config = GenerationConfig(
        num_steps=4, batch_size=3, scheduler="euler" if which == "epsilon" else "ddim"
    )
    images = generate(
        model, cls, ["a photo of {}", "{} as an astronaut"], 2, 7, config, keep_v_star=True
    )
    assert [(i.prompt, i.seed) for i in images] == [
        ("a photo of {}", 7),
        ("a photo of {}", 8),
        ("{} as an astronaut", 7),
        ("{} as an astronaut", 8),
    ]
    assert all(i.image.size == (64, 64) for i in images)
    assert len(images[0].v_star_history) == 4
    assert not torch.allclose(images[0].v_star_history[0], images[0].v_star_history[-1])
    pixels = [np.asarray(i.image, dtype=float) for i in images]
    assert np.abs(pixels[0] - pixels[1]).mean() > 1  # seeds differ
    assert np.abs(pixels[0] - pixels[2]).mean() > 0  # prompts differ


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["ddpm", "euler-a"])
def test_stochastic_schedulers_give_a_seed_its_image_at_any_batch_size(
    tiny_dir: Path, photos_dir: Path, scheduler: str
) -> None:
    model = make_model(tiny_dir)
    randomize(model)
    cls = model.clip_cls(clip_pixels(model, Image.open(photos_dir / "obama.jpg")))

    def run(batch: int) -> list[np.ndarray]:
        config = GenerationConfig(num_steps=3, batch_size=batch, scheduler=scheduler)
        images = generate(model, cls, ["a photo of {}"], 3, 11, config)
        return [np.asarray(i.image, dtype=float) for i in images]

    alone, together = run(1), run(3)
    assert all(np.abs(a - b).max() <= 1 for a, b in zip(alone, together, strict=True))
    assert np.abs(alone[0] - alone[1]).mean() > 1  # seeds still differ


@pytest.mark.slow
def test_generate_refuses_a_bank_of_several_concepts(tiny_dir: Path, photos_dir: Path) -> None:
    model = make_model(tiny_dir)
    cls = model.clip_cls(clip_pixels(model, Image.open(photos_dir / "obama.jpg")))
    bank = model.attach_concepts(model.new_concepts(cls.expand(2, -1, -1).clone()))
    try:
        with pytest.raises(ValueError, match="one concept"):
            generate(model, cls, ["a photo of {}"], 1, 0, GenerationConfig(num_steps=2))
        model.attach_concepts(bank.subset(1))
        assert len(generate(model, cls, ["{}"], 1, 0, GenerationConfig(num_steps=2))) == 1
    finally:
        model.detach_concepts()


@pytest.mark.slow
def test_concept_in_a_stock_pipeline(tiny_dir: Path, photos_dir: Path) -> None:
    model = make_model(tiny_dir, offsets={"form": "lowrank"})
    randomize(model)
    cls = model.clip_cls(clip_pixels(model, Image.open(photos_dir / "biden.jpg")))
    bank = _random_bank(model)
    bank.cls.copy_(cls.float())
    model.attach_concepts(bank)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir)
    pipe.set_progress_bar_config(disable=True)
    z, t, emb = _unet_inputs(model)
    with torch.no_grad():
        before = pipe.unet(z, t, emb).sample
        token = apply_concept_to_pipeline(pipe, model, cls)
        # merged weights reproduce the hooked UNet
        assert torch.allclose(
            pipe.unet(z, t, emb).sample, model.base.unet(z, t, emb).sample, atol=1e-5
        )
        assert not torch.allclose(before, pipe.unet(z, t, emb).sample)
    token_id = pipe.tokenizer.convert_tokens_to_ids(token)
    assert token_id == len(pipe.tokenizer) - 1
    image = pipe(
        f"a photo of {token}", num_inference_steps=3, generator=torch.Generator().manual_seed(0)
    ).images[0]
    assert image.size == (64, 64)


@pytest.mark.parametrize(("dtype", "which"), [("bf16", "epsilon"), ("fp32", "v_prediction")])
def test_training_step_in_bf16_and_v_prediction(
    tiny_dir: Path, tiny_v_dir: Path, dtype: str, which: str
) -> None:
    model = make_model(tiny_dir if which == "epsilon" else tiny_v_dir, dtype=dtype)
    assert model.base.unet.dtype == (torch.bfloat16 if dtype == "bf16" else torch.float32)
    randomize(model)
    out = compute_loss(model, _batch(), LossConfig(), torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    # trainable weights stay fp32 (the optimiser's master copy) and get finite gradients
    for p in model.trainable_parameters():
        assert p.dtype == torch.float32 and p.grad is not None and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("form", ["multiplicative", "lowrank"])
def test_fused_concept_weights_match_weights_merged_by_hand_and_leave_the_unet_untouched(
    tiny_dir: Path, form: str
) -> None:
    """With a concept attached, every projection runs on W0 + domain offset + B·A built in
    stacks; a copy of the UNet whose weights are merged by hand (no hooks, no processors)
    gives the same output, the feature pass still reads the base UNet, and the UNet's own
    weights are never written."""
    model = make_model(tiny_dir, offsets={"form": form, "rank": 3})
    randomize(model)
    model.set_trainable([])
    unet = model.base.unet
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    z_t, t = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([100, 700])
    prompt = model.encode_prompt(["a photo of {}"] * 2, model.class_embedding()[None].expand(2, -1))
    model.offsets.detach()
    merged = copy.deepcopy(unet)  # plain linears: no offset hooks, no fused processors
    model.offsets.attach(unet)
    bank = _random_bank(model)
    with torch.no_grad():
        features = model.unet_block_outputs(z_t, t)
        model.attach_concepts(bank)
        fused = unet(z_t, t, prompt).sample
        fused_features = model.unet_block_outputs(z_t, t)
        for path in model.offsets.paths:
            linear = merged.get_submodule(path)
            w0 = linear.weight.clone()
            linear.weight.add_(model.offsets.delta_weight(path, w0) + bank.delta_weight(path))
        by_hand = merged(z_t, t, prompt).sample
    model.detach_concepts()
    assert torch.allclose(fused, by_hand, atol=1e-5, rtol=1e-4)
    assert all(
        torch.allclose(a, b, atol=1e-6) for a, b in zip(features, fused_features, strict=True)
    )
    after = unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical
    # the processors are the model's own again
    assert not any(type(p).__name__ == "FusedAttnProcessor" for p in unet.attn_processors.values())
    model.set_trainable(["offsets"])
    model.attach_concepts(bank)
    with pytest.raises(RuntimeError, match="freeze the offsets"):
        unet(z_t, t, prompt)
    with torch.no_grad():  # generating while offsets train (a preview) is fine
        unet(z_t, t, prompt)
    model.detach_concepts()


@pytest.mark.slow
def test_trainable_clip_is_what_the_encoder_reads_in_fp32_and_saved_with_the_model(
    tiny_dir: Path, tmp_path: Path
) -> None:
    model = make_model(tiny_dir, dtype="bf16")
    params = model.set_trainable(["encoder", "offsets", "clip"])
    clip = model.clip_state()
    vision = model.image_encoder.vision_model
    assert clip and all(p.dtype == torch.float32 for p in clip.values())  # master weights
    frozen = [
        *vision.post_layernorm.parameters(),
        *model.image_encoder.visual_projection.parameters(),
    ]
    assert frozen and not any(p.requires_grad for p in frozen)
    out = compute_loss(model, _batch(), LossConfig(), torch.Generator().manual_seed(0))
    out.loss.backward()
    # what DDP with find_unused_parameters=False needs: every trainable tensor has a gradient
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing and len(params) > len(clip)
    with torch.no_grad():
        for p in clip.values():
            p.add_(0.25)  # "trained"
    model.save_pretrained(tmp_path / "domain")
    assert (tmp_path / "domain" / "clip" / "model.safetensors").exists()
    loaded = E4TModel.from_pretrained(tmp_path / "domain")
    assert loaded.clip_trained and loaded.fingerprint() == model.fingerprint()
    for name, value in loaded.clip_state().items():
        assert torch.allclose(value.float(), clip[name].float(), atol=1e-2), name
    fresh = make_model(tiny_dir)
    assert not fresh.clip_trained and fresh.fingerprint() != model.fingerprint()


def test_a_checkpoint_keeps_the_fp16_loss_scaler_state(tmp_path: Path) -> None:
    """fp32 weights + train.mixed_precision=fp16 train with a GradScaler: its scale and
    growth tracker are part of the checkpoint, so a resumed run scales as before."""
    from diffusers.optimization import get_scheduler

    from e4t.training import checkpoint as ckpt

    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    schedule = get_scheduler("constant", optimizer)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=2)
    for _ in range(3):  # every 2 finite steps the scale doubles
        scaler.scale(weight.sum()).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    state = scaler.state_dict()
    assert state["scale"] == 2.0**13 and state["_growth_tracker"] == 1
    root = str(tmp_path / "ck")
    gen = torch.Generator().manual_seed(0)
    ckpt.save_checkpoint(root, 3, 0, {"w": weight.detach()}, optimizer, schedule, gen, "h", scaler)
    ckpt.commit_checkpoint(root, 3, keep=2)
    loaded = ckpt.load_checkpoint(root, 3, 0, "h")
    again = torch.amp.GradScaler("cpu")
    again.load_state_dict(loaded["scaler"])
    assert again.state_dict() == state
    assert again.get_scale() == scaler.get_scale()


@pytest.mark.slow
def test_held_out_loss_uses_fixed_draws(tiny_dir: Path) -> None:
    """The same faces give the same figure whatever the global RNG did in between (so two
    runs' curves compare), and a changed model gives another figure."""
    from e4t.training.step import held_out_loss

    model = make_model(tiny_dir)
    batch = _batch(n=2)
    first = held_out_loss(model, batch, LossConfig())
    torch.manual_seed(123)
    torch.randn(1000)
    assert held_out_loss(model, batch, LossConfig()) == first
    assert held_out_loss(model, batch, LossConfig(), seed=1) != first
    randomize(model)
    assert held_out_loss(model, batch, LossConfig()) != first


@pytest.mark.parametrize(("checkpointing", "layer_calls"), [(False, 1), (True, 2)])
def test_text_encoder_checkpointing_recomputes_its_layers_with_the_same_gradient(
    tiny_dir: Path, checkpointing: bool, layer_calls: int
) -> None:
    """v* enters at the text encoder's input, so the loss back-propagates through its frozen
    layers: with checkpointing, the backward pass runs each layer again (transformers does
    so only in train mode), and v* gets the gradient it gets without."""
    model = make_model(tiny_dir, gradient_checkpointing=checkpointing)
    calls = []
    layer = model.text_encoder.encoder.layers[0]
    # a pre-hook: torch's recompute stops as soon as the last saved tensor is back, before
    # the MLP returns, so a forward hook on it would not see the second run
    layer.mlp.register_forward_pre_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    v_star = model.class_embedding().detach().clone()[None].requires_grad_(True)
    hidden = model.encode_prompt(["a photo of {}"], v_star)
    assert len(calls) == 1
    (hidden**2).mean().backward()
    assert len(calls) == layer_calls
    plain = make_model(tiny_dir)
    v_plain = v_star.detach().clone().requires_grad_(True)
    (plain.encode_prompt(["a photo of {}"], v_plain) ** 2).mean().backward()
    assert v_star.grad is not None and v_star.grad.abs().sum() > 0
    torch.testing.assert_close(v_star.grad, v_plain.grad)


def test_text_encoder_checkpointing_refuses_a_text_encoder_with_dropout() -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    from e4t.models.base import enable_text_encoder_checkpointing

    small = {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1}
    small |= {"num_attention_heads": 2, "vocab_size": 10, "max_position_embeddings": 8}
    small |= {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    enable_text_encoder_checkpointing(CLIPTextModel(CLIPTextConfig(**small)))
    with pytest.raises(ValueError, match="dropout"):
        enable_text_encoder_checkpointing(
            CLIPTextModel(CLIPTextConfig(**small, attention_dropout=0.1))
        )


# ---------------------------------------------------------------- a concept's domain model


@pytest.fixture(scope="module")
def other_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny architecture from another seed: the same shapes, other base weights."""
    return init_model(tmp_path_factory.mktemp("models") / "tiny-seed1", arch="tiny", seed=1)


def twin_on(base: Path, model: E4TModel, **overrides: object) -> E4TModel:
    """A domain model with ``model``'s encoder and offsets weights on another base."""
    twin = make_model(base, **overrides)
    twin.encoder.load_state_dict(model.encoder.state_dict())
    twin.offsets.load_state_dict(model.offsets.state_dict())
    return twin


def test_fingerprint_covers_the_base_model_and_dtype(
    tiny_dir: Path, other_base_dir: Path, tmp_path: Path
) -> None:
    model = make_model(tiny_dir)
    randomize(model)
    same_files = shutil.copytree(tiny_dir, tmp_path / "copy")  # identity is content, not path
    assert twin_on(same_files, model).fingerprint() == model.fingerprint()
    assert twin_on(other_base_dir, model).fingerprint() != model.fingerprint()
    assert twin_on(tiny_dir, model, dtype="bf16").fingerprint() != model.fingerprint()


def test_a_concept_is_refused_by_a_model_it_was_not_tuned_against(
    tiny_dir: Path, other_base_dir: Path, tmp_path: Path
) -> None:
    from e4t.models.e4t_model import ConceptModelMismatch

    model = make_model(tiny_dir)
    randomize(model)
    bank = model.attach_concepts(_random_bank(model))
    meta = model.concept_meta({"model_uri": "models:/e4t-faces/3"})
    bank.save(0, tmp_path / "concept", meta, dtype="fp32")
    model.detach_concepts()
    assert model.load_concept(tmp_path / "concept").shape == bank.cls.shape  # its own model

    other = twin_on(other_base_dir, model)  # same encoder and offsets, another base
    with pytest.raises(ConceptModelMismatch) as refused:
        other.load_concept(tmp_path / "concept")
    message = str(refused.value)
    for part in (model.fingerprint(), other.fingerprint(), "models:/e4t-faces/3"):
        assert part in message
    assert "--allow-model-mismatch" in message
    assert other.concepts is None  # nothing attached

    cls = other.load_concept(tmp_path / "concept", allow_model_mismatch=True)  # deliberately
    assert torch.equal(cls.float(), bank.cls.float()) and other.concepts is not None


@pytest.mark.slow
def test_generate_and_export_commands_refuse_a_mismatch_unless_flagged(
    tiny_dir: Path, other_base_dir: Path, tmp_path: Path
) -> None:
    from e4t.cli import build_parser
    from e4t.models.e4t_model import ConceptModelMismatch

    model = make_model(tiny_dir)
    randomize(model)
    model.save_pretrained(tmp_path / "a")
    twin_on(other_base_dir, model).save_pretrained(tmp_path / "b")
    concept = tmp_path / "concept"
    model.save_concept(concept, torch.randn(1, 2, 32), extra={"model_uri": str(tmp_path / "a")})
    common = ["--model", str(tmp_path / "b"), "--sample-steps", "2"]
    images = ["--out", str(tmp_path / "images"), "-n", "1", "--batch-size", "1"]
    commands = {
        "generate": ["generate", "--concept", str(concept), "--prompt", "{}", *images, *common],
        "export-concept": ["export-concept", str(concept), "--out", str(tmp_path / "x"), *common],
    }
    for name, argv in commands.items():
        args = build_parser().parse_args(argv)
        with pytest.raises(ConceptModelMismatch, match="--allow-model-mismatch") as refused:
            args.func(args)
        assert str(tmp_path / "a") in str(refused.value), name  # the concept's model_uri
        args = build_parser().parse_args([*argv, "--allow-model-mismatch"])
        assert args.func(args) == 0, name
    assert len(list((tmp_path / "images").glob("*.png"))) == 1
    assert (tmp_path / "x" / "concept" / "export.json").exists()
