"""Typed config: presets, overrides, strictness."""

from __future__ import annotations

from pathlib import Path

import pytest

from e4t.config import ConfigError, CurateConfig, config_hash, flatten, load_config


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
