"""The compiled tuning step (``tune.compile``): zero graph breaks, one compilation per job
(a short last pass padded to K), and the same concept as eager tuning."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from e4t.bench.common import model_config
from e4t.bench.ops import synthetic_faces
from e4t.config import TuneConfig
from e4t.models.architectures import build_base_models
from e4t.models.e4t_model import E4TModel
from e4t.training import compile as compiling
from e4t.training.tune import TuneResult, step_objective, tune_concepts

CONFIG = TuneConfig(
    num_steps=2, draws_per_concept=2, resolution_px=32, autocast="off", compile="default"
)


@pytest.fixture(scope="module")
def model() -> E4TModel:
    config = model_config("tiny", dtype="fp32", device="cpu", gradient_checkpointing=False)
    return E4TModel.from_config(config, base=build_base_models("tiny", config))


@pytest.fixture(scope="module")
def faces(model: E4TModel) -> list:
    return synthetic_faces(model, 3, CONFIG.resolution_px)


@pytest.fixture
def fresh(model: E4TModel) -> Iterator[None]:
    compiling.clear_compiled(model.base.unet)
    yield
    compiling.clear_compiled(model.base.unet)


def _counted() -> dict[str, int]:
    counters = compiling.compiled(step_objective, "default", "count").counters
    return {name: counter.graphs for name, counter in counters.items()}


def test_a_job_with_a_short_last_pass_compiles_each_region_once_without_breaks(
    model: E4TModel, faces: list, fresh: None
) -> None:
    """Pass 1: two concepts; pass 2: one, padded to two with a masked dummy. Dynamo hands
    each region (the forward, the clip, the AdamW update) one graph in the first pass — no
    break — and none more in the second: the padded pass reuses the compilation."""
    with compiling.graph_break_reasons() as reasons:
        tune_concepts(model, faces[:2], [0, 1], CONFIG, pad_to=2, compile_backend="count")
        assert _counted() == {"objective": 1, "clip": 1, "update": 1}
        last = tune_concepts(model, faces[2:], [2], CONFIG, pad_to=2, compile_backend="count")
    assert not reasons, list(reasons)
    assert _counted() == {"objective": 1, "clip": 1, "update": 1}
    # the dummy is dropped: the result is the one real concept, attached
    assert last.bank.num_concepts == 1 and len(last.losses) == 1
    assert model.concepts is last.bank
    # and the padded pass's concept is the one tuned alone, eagerly
    alone = tune_concepts(model, faces[2:], [2], CONFIG.model_copy(update={"compile": "off"}))
    _assert_same_concept(last, alone)


def test_the_bench_prints_zero_graph_breaks_on_tiny(fresh: None) -> None:
    from e4t.bench.personalize import bench_graph_breaks

    result = bench_graph_breaks("tiny", resolution_px=32, draws=1, concepts=2)
    assert result.graph_breaks == 0
    assert "graph breaks: 0" in result.report()
    # the sampling UNet was compiled too, and another bank recompiled nothing
    assert result.sampling_frames >= 1 and result.sampling_recompiled == 0


def _assert_same_concept(a: TuneResult, b: TuneResult) -> None:
    """To the tolerance of a concept tuned in a bank vs alone (test_tune)."""
    ours, theirs = a.bank.state_dict(), b.bank.state_dict()
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        assert torch.allclose(value, theirs[name], atol=1e-4, rtol=1e-3), name
    assert a.losses[0] == pytest.approx(b.losses[0], rel=1e-4)


@pytest.mark.slow
def test_compiled_tuning_gives_the_eager_concept(model: E4TModel, faces: list, fresh: None) -> None:
    """Inductor (C++ code generated with gcc): the same concepts as eager tuning, to float
    tolerance (the fused AdamW eager, the functional foreach one compiled)."""
    compiled = tune_concepts(model, faces[:2], [3, 4], CONFIG, pad_to=2)
    eager = tune_concepts(model, faces[:2], [3, 4], CONFIG.model_copy(update={"compile": "off"}))
    assert compiled.losses[0][-1] != compiled.losses[0][0]  # it tuned
    _assert_same_concept(compiled, eager)


def _previews(model: E4TModel, faces: list, seeds: list[int], **settings: object) -> list:
    """Two concepts' images in one sampling loop (CFG, 2 steps, 32 px), their deltas made
    non-zero so the bank shows."""
    from e4t.generation import GenerationConfig, generate

    cls = model.clip_cls(torch.stack([f.clip_pixel_values for f in faces[:2]]))
    bank = model.attach_concepts(model.new_concepts(cls, rank=4, seeds=seeds))
    with torch.no_grad():
        for up in bank.up.values():
            up.normal_(0, 0.05, generator=torch.Generator().manual_seed(seeds[0]))
    config = GenerationConfig(num_steps=2, batch_size=4, height=32, width=32, **settings)  # type: ignore[arg-type]
    try:
        return generate(model, bank.cls, ["a photo of {}"], 1, 0, config)
    finally:
        model.detach_concepts()


def _max_pixel_difference(a: list, b: list) -> float:
    assert len(a) == len(b) == 2 and [x.concept_index for x in a] == [0, 1]
    return max(
        float(np.abs(np.asarray(x.image, dtype=float) - np.asarray(y.image, dtype=float)).max())
        for x, y in zip(a, b, strict=True)
    )


def test_the_sampling_unet_compiles_once_without_breaks(
    model: E4TModel, faces: list, fresh: None
) -> None:
    """``generate`` with ``compile`` on runs the pipeline's UNet calls through one compiled
    UNet (its forward and, as frames of their own, its hooks: the bank's and the CFG
    regrouping of two concepts): no graph break, and a second call with another bank
    compiles nothing more. The counting backend runs the graphs eagerly: the eager images."""
    eager = _previews(model, faces, [0, 1])
    with compiling.graph_break_reasons() as reasons:
        compiled = _previews(model, faces, [0, 1], compile="default", compile_backend="count")
        counter = compiling.compiled_unet(model.base.unet, "default", "count").counter
        graphs = counter.graphs
        assert graphs >= 1
        _previews(model, faces, [2, 3], compile="default", compile_backend="count")
    assert not reasons, list(reasons)
    assert counter.graphs == graphs
    assert _max_pixel_difference(compiled, eager) == 0.0
    assert model.base.unet.__class__.__name__ == "UNet2DConditionModel"  # still the model's own


@pytest.mark.slow
def test_compiled_sampling_draws_the_eager_images(
    model: E4TModel, faces: list, fresh: None
) -> None:
    """Inductor (C++ code generated with gcc): the same images as eager sampling, to a
    level of 8-bit rounding."""
    eager = _previews(model, faces, [0, 1])
    compiled = _previews(model, faces, [0, 1], compile="default")
    assert compiling.compiled_unet(model.base.unet, "default").counter.graphs == 0  # inductor
    assert _max_pixel_difference(compiled, eager) <= 2.0


def test_a_compiled_sampling_unet_does_not_outlive_its_unet() -> None:
    """The compiled module refers to its UNet; kept on the UNet (not in a process-wide
    map) the pair is freed with it: a worker that loads model after model holds none."""
    import gc
    import weakref

    unet = torch.nn.Linear(2, 2)
    compiled = compiling.compiled_unet(unet, "default", "count")
    assert compiling.compiled_unet(unet, "default", "count") is compiled  # cached
    compiled.module(torch.ones(1, 2))
    assert compiled.counter.graphs == 1
    alive = weakref.ref(unet)
    del unet, compiled
    gc.collect()
    assert alive() is None
