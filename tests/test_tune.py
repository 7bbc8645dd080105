"""Personalization: K concepts tuned in one pass equal each tuned alone; tuning helps."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from e4t.config import ModelConfig, TuneConfig
from e4t.data.shards import read_shard
from e4t.data.transforms import face_tensors as face_input
from e4t.generation import GenerationConfig, generate
from e4t.models.e4t_model import E4TModel
from e4t.training.tune import held_out_losses, tune_concepts

CONFIG = TuneConfig(num_steps=6, draws_per_concept=2, resolution_px=32, lr=2e-2)


@pytest.fixture(scope="module")
def model(tiny_dir: Path) -> E4TModel:
    return E4TModel.from_config(ModelConfig(base_model=str(tiny_dir), encoder={"hidden_dim": 32}))


@pytest.fixture(scope="module")
def faces(curated_shards: Path, model: E4TModel) -> list:
    samples = [s for shard in sorted(curated_shards.glob("*.tar")) for s in read_shard(str(shard))]
    assert len(samples) >= 3
    return [
        face_input(
            Image.open(io.BytesIO(s["jpg"])),
            Image.open(io.BytesIO(s["mask.png"])),
            CONFIG.resolution_px,
            model.base.image_processor,
        )
        for s in samples[:3]
    ]


@pytest.mark.slow
def test_batched_tuning_equals_tuning_alone(model: E4TModel, faces: list) -> None:
    seeds = [101, 202, 303]
    together = tune_concepts(model, faces, seeds, CONFIG)
    batched = {k: v.clone() for k, v in together.bank.state_dict().items()}
    alone = tune_concepts(model, faces[1:2], seeds[1:2], CONFIG)
    for name, value in alone.bank.state_dict().items():
        assert torch.allclose(value[0], batched[name][1], atol=1e-4, rtol=1e-3), name
    assert alone.losses[0] == pytest.approx(together.losses[1], rel=1e-4)
    # and the tuning moved something
    assert batched["word"].abs().sum() > 0


@pytest.mark.slow
def test_tuning_lowers_the_held_out_loss(model: E4TModel, faces: list) -> None:
    seeds = [7, 8, 9]
    fresh = model.new_concepts(
        model.clip_cls(torch.stack([f.clip_pixel_values for f in faces])), CONFIG.rank, seeds
    )
    model.attach_concepts(fresh)
    before = held_out_losses(model, faces, seeds, CONFIG)
    tune_concepts(model, faces, seeds, CONFIG.model_copy(update={"num_steps": 10}))
    after = held_out_losses(model, faces, seeds, CONFIG)
    assert all(a < b for a, b in zip(after, before, strict=True)), (before, after)


@pytest.mark.slow
def test_generation_with_the_tuned_concept_differs_from_the_class_word(
    model: E4TModel, faces: list
) -> None:
    result = tune_concepts(model, faces[:1], [5], CONFIG)
    cls = result.bank.cls
    config = GenerationConfig(num_steps=4, batch_size=2)
    tuned = generate(model, cls, ["a photo of {}"], 2, 0, config)
    model.detach_concepts()
    plain = generate(model, cls, ["a photo of face"], 2, 0, config)
    diff = np.mean(
        [
            np.abs(np.asarray(a.image, float) - np.asarray(b.image, float)).mean()
            for a, b in zip(tuned, plain, strict=True)
        ]
    )
    assert diff > 2.0, diff


@pytest.mark.slow
def test_bench_personalize_prints_rates_ratio_and_sizes() -> None:
    import re
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "e4t.cli",
            "bench",
            "personalize",
            "--tune-steps",
            "1",
            "--draws",
            "1",
            "--resolution-px",
            "32",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for label in ("sequential", "K = 4", "K = 8"):
        assert re.search(rf"{label}\s+[\d.]+ s per concept \(throughput × [\d.]+", done.stdout)
    share = float(re.search(r"= ([\d.]+) % of the base UNet", done.stdout)[1])
    assert 0 < share < 1.0  # a concept is under 1 % of the UNet


def test_the_encoder_feature_pass_reads_the_base_unet_with_a_concept_attached(
    model: E4TModel, faces: list
) -> None:
    """Concept deltas act on the denoising UNet, never inside the encoder's feature pass."""
    import torch

    model.set_trainable([])  # as tuning does: concepts fold the frozen offsets in (any order)
    gen = torch.Generator().manual_seed(0)
    z_t = torch.randn(1, 4, 16, 16, generator=gen)
    t = torch.tensor([500])
    alone = [f.clone() for f in model.unet_block_outputs(z_t, t)]
    cls = model.clip_cls(faces[0].clip_pixel_values[None])
    bank = model.attach_concepts(model.new_concepts(cls, rank=2, seeds=[7]))
    try:
        with torch.no_grad():
            for up in bank.up.values():
                up.normal_(0, 1.0, generator=gen)  # a concept that changes the UNet a lot
        attached = model.unet_block_outputs(z_t, t)
        # the base UNet's weights, run as fused matmuls: equal up to float rounding
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(alone, attached, strict=True))
        prompt = model.encode_prompt(["a photo of {}"], model.class_embedding()[None])
        with_deltas = model.base.unet(z_t, t, prompt).sample
        with bank.disabled():
            without = model.base.unet(z_t, t, prompt).sample
        assert not torch.allclose(with_deltas, without)  # the deltas do act on denoising
    finally:
        model.detach_concepts()


def test_tuning_fp16_weights_is_refused(tiny_dir: Path, faces: list) -> None:
    half = E4TModel.from_config(
        ModelConfig(base_model=str(tiny_dir), encoder={"hidden_dim": 32}, dtype="fp16")
    )
    with pytest.raises(ValueError, match="fp16 cannot be trained or tuned"):
        tune_concepts(half, faces[:1], [0], CONFIG)


def test_textual_inversion_tunes_without_running_the_encoder(
    model: E4TModel, faces: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The word alone is tuned, the encoder's output is zero: its pass is skipped (fair
    tuning seconds) and the result is what the zeroed encoder would have given."""
    config = CONFIG.model_copy(update={"trainable": ["word"], "num_steps": 2})
    calls = []
    real = model.encoder.hidden
    monkeypatch.setattr(model.encoder, "hidden", lambda *a: calls.append(1) or real(*a))
    skipped = tune_concepts(model, faces[:2], [5, 6], config, use_encoder=False)
    assert calls == []
    word = skipped.bank.word.detach().clone()
    assert word.abs().sum() > 0
    skipped.bank.use_encoder = True  # the encoder run with the zeroed head: the same offsets
    import torch

    z_t, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 900])
    cls = skipped.bank.cls
    assert calls == [] and torch.equal(model.predict_offset(cls, z_t, t), torch.zeros(2, 32))
    assert len(calls) == 1
    model.detach_concepts()


def test_per_group_rates_and_the_distance_of_v_star_per_step(model: E4TModel, faces: list) -> None:
    from e4t.training.tune import parameter_groups

    config = CONFIG.model_copy(update={"num_steps": 3, "lr_word": 0.5})
    result = tune_concepts(model, faces[:2], [1, 2], config)
    rates = [g["lr"] for g in parameter_groups(result.bank, config)]
    assert rates == [0.5, CONFIG.lr / 10, CONFIG.lr]  # word set, head lr/10, deltas lr
    assert [len(d) for d in result.v_star_distances] == [3, 3]
    # measured in each step's forward: 0 at first (a fresh model's output layer is zero)
    assert all(per[0] >= 0 and per[-1] > 0 for per in result.v_star_distances)
    model.detach_concepts()


def test_bf16_autocast_by_default_on_cuda_with_fp32_trainable_tensors(
    model: E4TModel, faces: list
) -> None:
    import torch

    from e4t.models.precision import autocast_dtype

    assert autocast_dtype("cuda", "auto") == torch.bfloat16
    assert autocast_dtype("cpu", "auto") is None and autocast_dtype("cuda", "off") is None
    seen = []
    handle = model.base.unet.conv_in.register_forward_hook(
        lambda module, inputs, output: seen.append(output.dtype)
    )
    try:  # asked for on this CPU, the same path a GPU takes by default
        result = tune_concepts(
            model, faces[:1], [4], CONFIG.model_copy(update={"num_steps": 2, "autocast": "bf16"})
        )
    finally:
        handle.remove()
    assert torch.bfloat16 in seen  # the frozen fp32 UNet ran its convolutions in bf16
    assert all(p.dtype == torch.float32 for p in result.bank.parameters())
    assert all(map(math.isfinite, result.losses[0]))
    model.detach_concepts()


def test_a_tuning_step_launches_few_ops_and_never_syncs(model: E4TModel, faces: list) -> None:
    """The CPU's proxy for a GPU's launch cost: with fused projections a whole tuning step
    (feature pass, text encoder, UNet forward + backward, deltas, regulariser, clipping,
    optimizer) dispatches under twice the ops of the bare UNet's forward + backward, asks
    the device for no value (no host sync), and 4 concepts cost few more ops than one."""
    from e4t.bench.ops import count_tuning_step_ops, count_unet_ops

    config = TuneConfig(draws_per_concept=2, resolution_px=32, autocast="off")
    one = count_tuning_step_ops(model, faces[:1], config)
    four = count_tuning_step_ops(model, [faces[i % len(faces)] for i in range(4)], config)
    bare, _ = count_unet_ops(model, 2, 32)
    assert one.total < 2 * bare, (one.total, bare, one.counts.most_common(10))
    assert four.total < 1.15 * one.total
    for counter in (one, four):
        assert counter.counts["_local_scalar_dense"] == 0  # no .item()/.any() on the device
        assert counter.counts["_fused_adamw_"] > 0  # the counter saw the whole step


def _tiny(tiny_dir: Path, **overrides: object) -> E4TModel:
    config = {"base_model": str(tiny_dir), "encoder": {"hidden_dim": 32}, **overrides}
    return E4TModel.from_config(ModelConfig.model_validate(config))


def _denoise_inputs(model: E4TModel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    z_t = torch.randn(1, 4, 8, 8, generator=gen).to(model.base.unet.dtype)
    prompt = model.encode_prompt(["a photo of {}"], model.class_embedding()[None])
    return z_t, torch.tensor([500]), prompt


def test_an_attention_switch_under_a_bank_raises_and_detach_gives_back_the_users_own(
    tiny_dir: Path,
) -> None:
    """diffusers' switches (attention slicing, set_attn_processor) replace the fused
    processors: the next forward refuses to run without the concepts and names the fix;
    detach puts back the very processors the UNet had; a processor the fused path cannot
    mirror (slicing set before attaching) is refused at attach."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from e4t.generation import build_pipeline

    model = _tiny(tiny_dir)
    unet = model.base.unet
    own = {name: AttnProcessor2_0() for name in unet.attn_processors}
    unet.set_attn_processor(dict(own))
    bank = model.new_concepts(torch.randn(1, 2, 32), rank=2, seeds=[1])
    z_t, t, prompt = _denoise_inputs(model)
    with torch.no_grad():
        model.attach_concepts(bank)
        unet(z_t, t, prompt)  # in place: runs
        model.detach_concepts()
        assert all(unet.attn_processors[name] is p for name, p in own.items())

        model.attach_concepts(bank)
        build_pipeline(model).enable_attention_slicing()
        with pytest.raises(RuntimeError, match=r"replaced.*detach_concepts\(\)"):
            unet(z_t, t, prompt)
        model.detach_concepts()  # the slicing asked for since is left as it is
        assert {type(p).__name__ for p in unet.attn_processors.values()} == {"SlicedAttnProcessor"}
        with pytest.raises(ValueError, match=r"SlicedAttnProcessor.*disable_attention_slicing"):
            model.attach_concepts(bank)
        assert model.concepts is None

        unet.set_attn_processor(dict(own))
        model.attach_concepts(bank)
        unet.set_attn_processor(AttnProcessor2_0())
        with pytest.raises(RuntimeError, match="replaced"):
            unet(z_t, t, prompt)
        model.detach_concepts()
    assert not any(type(p).__name__ == "FusedAttnProcessor" for p in unet.attn_processors.values())


def test_eager_attention_is_honoured_on_the_fused_path(tiny_dir: Path) -> None:
    """``attention: eager`` runs softmax(q·kᵀ)·v with a bank attached too, with the output
    of the eager UNet; ``sdpa`` keeps scaled_dot_product_attention."""
    from e4t.bench.ops import OpCounter

    ops = {}
    for attention in ("sdpa", "eager"):
        model = _tiny(tiny_dir, attention=attention)
        unet = model.base.unet
        z_t, t, prompt = _denoise_inputs(model)
        with torch.no_grad():
            plain = unet(z_t, t, prompt).sample
            model.attach_concepts(model.new_concepts(torch.randn(1, 2, 32), rank=2))
            with OpCounter() as counter:
                fused = unet(z_t, t, prompt).sample  # zero deltas: the plain UNet's output
            model.detach_concepts()
        assert torch.allclose(fused, plain, atol=1e-5), attention
        ops[attention] = {name for name in counter.counts if "softmax" in name or "dot" in name}
    assert any("scaled_dot_product" in name for name in ops["sdpa"]), ops
    assert not any("scaled_dot_product" in name for name in ops["eager"]), ops
    assert "_softmax" in ops["eager"], ops


def test_weights_written_through_data_are_read_after_invalidate(
    model: E4TModel, faces: list
) -> None:
    """A write through ``.data`` (as PEFT merges do) bumps no version counter: the bank's
    cached stacks serve the old weights until ``invalidate()``; loading the domain weights
    back (restoring_domain_weights) invalidates by itself."""
    unet = model.base.unet
    bank = model.new_concepts(torch.randn(1, 2, 32), rank=2, seeds=[3])
    with torch.no_grad():
        for up in bank.up.values():
            up.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    z_t, t, prompt = _denoise_inputs(model)
    weight = unet.get_submodule(bank.paths[0]).weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            model.attach_concepts(bank)
            before = unet(z_t, t, prompt).sample
            weight.data.mul_(3.0)
            bank.invalidate()
            after = unet(z_t, t, prompt).sample
            model.attach_concepts(bank)  # stacks built afresh: the reference
            want = unet(z_t, t, prompt).sample
            weight.data.copy_(saved)
            with model.restoring_domain_weights():
                pass
            restored = unet(z_t, t, prompt).sample
    finally:
        model.detach_concepts()
        weight.data.copy_(saved)
    assert not torch.allclose(before, want, atol=1e-4)  # the write matters
    assert torch.equal(after, want)
    assert torch.equal(restored, before)


def test_small_deltas_keep_their_precision_on_a_bf16_base(tiny_dir: Path) -> None:
    """On a bf16 UNet, deltas of 0.5 % of the weights (~1e-4 against Stable Diffusion's
    ~0.02, a first tuning step's): rounding W0 + ΔW to bf16 would zero many of them. The
    effective ΔW of the fused projection — fitted by least squares to (projection with the
    concept − the base projection) over many inputs, both as the bf16 model computes them
    — is within 1 % of the fp32 ΔW (what the fp32 model adds, folded exactly)."""
    model = _tiny(tiny_dir, dtype="bf16")
    bank = model.new_concepts(torch.randn(1, 2, 32), rank=4, seeds=[0])
    index = next(i for i, g in enumerate(bank.groups) if len(g.names) == 3)  # q, k, v
    group = bank.groups[index]
    w0 = torch.cat([model.base.unet.get_submodule(p).weight for p in group.paths])
    assert w0.dtype == torch.bfloat16
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for up in bank.up.values():
            up.copy_(torch.randn(up.shape, generator=gen))
        for key, delta in bank.delta_weights().items():
            bank.up[key].mul_(5e-3 * w0.float().abs().mean() / delta.std())
    want = bank.delta_weights()[group.shape_class][0, bank.classes[group.shape_class].index(index)]
    xtx = torch.zeros(group.in_features, group.in_features, dtype=torch.float64)
    xtd = torch.zeros(group.in_features, w0.shape[0], dtype=torch.float64)
    model.attach_concepts(bank)
    try:
        with torch.no_grad():
            for _ in range(8):
                x = torch.randn(1, 50_000, group.in_features, generator=gen).bfloat16()
                diff = bank.project(index, x).double() - F.linear(x, w0).double()
                xtx += x[0].double().T @ x[0].double()
                xtd += x[0].double().T @ diff[0]
    finally:
        model.detach_concepts()
    effective = torch.linalg.solve(xtx, xtd).T.float()
    error = (effective - want).norm() / want.norm()
    assert error < 0.01, float(error)


def test_bf16_bank_never_makes_b_a_and_matches_it(tiny_dir: Path) -> None:
    """In reduced precision the bank keeps each concept's factors apart: its projection is
    (x·Aᵀ)·Bᵀ beside W0 and its regulariser comes from the rank × rank Gram matrices. Both
    agree with the materialized B·A (the fp32 formulas on the same factors), and no tensor
    of the deltas' (K, Σout, in) size is made in the forward."""
    model = _tiny(tiny_dir, dtype="bf16")
    bank = model.new_concepts(torch.randn(2, 2, 32), rank=4, seeds=[0, 1])
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for up in bank.up.values():
            up.copy_(torch.randn(up.shape, generator=gen) * 0.05)
    deltas = bank.delta_weights()  # fp32, before attaching: the reference
    want_norms = torch.stack(
        [sum((d[c].double() ** 2).sum() for d in deltas.values()) for c in range(2)]
    )
    index = next(i for i, g in enumerate(bank.groups) if len(g.names) == 3)  # q, k, v
    group = bank.groups[index]
    key, m = group.shape_class, bank.classes[group.shape_class].index(index)
    w0 = torch.cat([model.base.unet.get_submodule(p).weight for p in group.paths]).double()
    model.attach_concepts(bank)  # (attaching forgets every cached delta)
    try:
        x = torch.randn(2, 16, group.in_features, generator=gen).bfloat16()
        with torch.no_grad():
            y = bank.project(index, x)
        assert bank._current is not None and bank._current[index][2] is not None  # A, B apart
        norms = bank.squared_norms()
        assert bank._deltas is None  # no B·A was made, for the forward or the regulariser
    finally:
        model.detach_concepts()
    want = torch.stack([x[c].double() @ (w0 + deltas[key][c, m].double()).T for c in range(2)])
    error = (y.double() - want).norm() / (want - x.double() @ w0.T).norm()
    assert error < 0.05, float(error)  # of the deltas' own term: bf16 rounding only
    torch.testing.assert_close(norms.double(), want_norms, rtol=1e-4, atol=1e-8)
