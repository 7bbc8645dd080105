"""Pipeline-level checks: bad parameters fail before any stage starts."""

from __future__ import annotations

from prefect import get_run_logger, task

from e4t import io as eio
from e4t.config import (
    CurateConfig,
    EvaluateConfig,
    PersonalizeConfig,
    PretrainConfig,
    load_config,
)
from e4t.data.decode import is_image_name
from e4t.models.base import check_base_model
from tasks.retry import retry_transient

STAGES = {
    "curate": CurateConfig,
    "pretrain": PretrainConfig,
    "personalize": PersonalizeConfig,
    "evaluate": EvaluateConfig,
}


def stage_preset(
    stage: str, preset: str | None, stage_presets: dict[str, str] | None
) -> str | None:
    return (stage_presets or {}).get(stage, preset)


@task(
    name="validate-pipeline", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_transient
)
def validate(
    photos_url: str,
    images_url: str | None,
    preset: str | None,
    stage_presets: dict[str, str] | None,
    base_model: str,
    init_arch: str | None,
) -> int:
    """Every stage's preset resolves, the photo folders hold images, the base model exists
    (or will be created): otherwise a clear error before any heavy work."""
    unknown = set(stage_presets or {}) - set(STAGES)
    if unknown:
        raise ValueError(f"stage_presets: unknown stages {sorted(unknown)}; use {sorted(STAGES)}")
    for stage, model in STAGES.items():
        chosen = stage_preset(stage, preset, stage_presets)
        if chosen:
            load_config(model, stage, chosen)
    count = 0
    for url in dict.fromkeys([photos_url, images_url or photos_url]):
        images = [u for u in eio.list_files(url) if is_image_name(u)]
        if not images:
            raise FileNotFoundError(f"{url}: no images (.jpg, .png, .webp …) to work on")
        count = max(count, len(images))
    if init_arch is None:  # else pretrain-domain writes it
        check_base_model(base_model)
    get_run_logger().info("inputs valid: %d photos", count)
    return count
