"""``make demo``'s own presets: less work than the tiny presets the tests run, never less of
the pipeline — every stage, the previews, the baselines and the budgets compared stay."""

from __future__ import annotations

from typing import Any

from e4t.config import (
    EVAL_METHODS,
    EvaluateConfig,
    PretrainConfig,
    flatten,
    load_config,
)
from flows.demo import DEMO_STAGE_PRESETS

CONFIGS: dict[str, Any] = {"pretrain": PretrainConfig, "evaluate": EvaluateConfig}

#: the amounts of work the demo may cut; anything else differing from tiny is drift
AMOUNTS = {
    "pretrain": {"train.num_steps", "train.checkpoint_every", "train.preview_every"},
    "evaluate": {"steps", "max_concepts"},
}


def test_demo_presets_differ_from_tiny_only_in_amounts_of_work() -> None:
    assert set(DEMO_STAGE_PRESETS) <= set(CONFIGS)
    for stage, preset in DEMO_STAGE_PRESETS.items():
        tiny = flatten(load_config(CONFIGS[stage], stage, "tiny").model_dump(mode="json"))
        demo = flatten(load_config(CONFIGS[stage], stage, preset).model_dump(mode="json"))
        differing = {key for key in tiny if tiny[key] != demo[key]}
        assert differing <= AMOUNTS[stage], (stage, differing - AMOUNTS[stage])


def test_demo_evaluation_still_compares_every_baseline_across_budgets_and_seeds() -> None:
    config = load_config(EvaluateConfig, "evaluate", DEMO_STAGE_PRESETS["evaluate"])
    assert config.methods == list(EVAL_METHODS)  # e4t, textual inversion, no pretraining
    assert 0 in config.steps and max(config.steps) > 0  # untuned against tuned
    assert len(config.seeds) >= 2  # diversity is measured across seeds
    assert config.max_concepts >= 2 and len(config.prompts) >= 2
    assert config.promotion.min_face_rate == 0  # the tiny model draws no faces: a champion


def test_demo_pretraining_checkpoints_before_the_end_and_previews() -> None:
    config = load_config(PretrainConfig, "pretrain", DEMO_STAGE_PRESETS["pretrain"])
    # a preview grid is always made at the last step; the held-out faces feed it
    assert config.data.num_preview >= 1 and config.train.preview_steps >= 1
    assert 0 < config.train.checkpoint_every < config.train.num_steps  # a resumable schedule
