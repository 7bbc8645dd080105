"""The compiled tuning step (``tune.compile``): zero graph breaks, one compilation per job
(a short last pass padded to K), and the same concept as eager tuning."""

from __future__ import annotations

from collections.abc import Iterator

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
def fresh() -> Iterator[None]:
    compiling.clear_compiled()
    yield
    compiling.clear_compiled()


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
