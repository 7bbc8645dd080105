"""Typed config: presets, overrides, strictness."""

from __future__ import annotations

from pathlib import Path

import pytest

from e4t.config import (
    ConfigError,
    CurateConfig,
    PretrainConfig,
    config_hash,
    flatten,
    for_world,
    load_config,
)


def test_defaults_preset_and_overrides(tmp_path: Path) -> None:
    assert load_config(CurateConfig, "curate").align.resolution_px == 512
    preset = tmp_path / "p.yaml"
    preset.write_text("align:\n  resolution_px: 256\nquality:\n  multiple_faces: each\n")
    config = load_config(CurateConfig, "curate", str(preset), ["align.resolution_px=128"])
    assert config.align.resolution_px == 128
    assert config.quality.multiple_faces == "each"
    assert config_hash(config) != config_hash(CurateConfig())


def test_named_preset_from_configs_folder() -> None:
    config = load_config(CurateConfig, "curate", "tiny")
    assert config.align.resolution_px < 512


@pytest.mark.parametrize(
    "override",
    ["align.resolution=3", "quality.multiple_faces=some", "nokey", "align.resolution_px=-1"],
)
def test_bad_overrides_fail_with_a_clear_error(override: str) -> None:
    with pytest.raises(ConfigError):
        load_config(CurateConfig, "curate", None, [override])


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="tiny"):
        load_config(CurateConfig, "curate", "no-such-preset")


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_sd15_faces_preset_says_its_batch() -> None:
    """The preset's comment states the paper's batch of 16; its numbers must make 16."""
    import re

    from e4t.config import REPO_CONFIGS

    text = (REPO_CONFIGS / "pretrain" / "sd15-faces.yaml").read_text()
    stated = int(re.search(r"batch (\d+) =", text)[1])
    config = load_config(PretrainConfig, "pretrain", "sd15-faces")
    for gpus, accum in ((1, 4), (2, 2), (4, 1)):
        on = for_world(config, gpus)
        assert on.optim.grad_accum == accum
        assert stated == 16 == on.train.batch_size * on.optim.grad_accum * gpus
    with pytest.raises(ConfigError, match="not a multiple"):
        for_world(config, 3)
    tiny = load_config(PretrainConfig, "pretrain", "tiny")
    assert for_world(tiny, 4) is tiny  # no global_batch: the accumulation as configured


def test_flat_values_and_mapping_overrides_resolve_once() -> None:
    """A flow's flat parameters and overrides mapping land in the typed config; None keeps
    the preset's value; a nested mapping merges into its section."""
    config = load_config(
        PretrainConfig,
        "pretrain",
        "tiny",
        {"train": {"batch_size": 8}, "optim.lr": 0.5},
        values={"train.num_steps": 7, "model.device": None},
    )
    assert config.train.batch_size == 8 and config.train.num_steps == 7
    assert config.train.checkpoint_every == 10  # from the preset, kept by the nested merge
    assert config.optim.lr == 0.5 and config.model.device == "cpu"


def test_fp16_weights_are_refused_for_training_with_the_way_out() -> None:
    with pytest.raises(ConfigError, match="fp16 cannot be trained") as refused:
        load_config(PretrainConfig, "pretrain", "tiny", {"model.dtype": "fp16"})
    assert "bf16" in str(refused.value) and "mixed_precision=fp16" in str(refused.value)
    bf16 = load_config(PretrainConfig, "pretrain", "tiny", {"model.dtype": "bf16"})
    assert bf16.model.dtype == "bf16"
