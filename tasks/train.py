"""Pretraining tasks: prepare the base model, run torchrun, stream its log into Prefect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from e4t.config import PretrainConfig, load_config
from e4t.models.architectures import PRESETS, init_model
from e4t.training.launch import run_pretraining, validate_inputs


def resolve_pretrain_config(preset: str | None, overrides: list[str] | None) -> PretrainConfig:
    return load_config(PretrainConfig, "pretrain", preset, overrides)


@task(name="prepare-base-model", retries=1)
def prepare_base_model(base_model: str, init_preset: str | None) -> str:
    """Create a random-weight preset folder when asked and missing (the offline default)."""
    folder = Path(base_model)
    if init_preset and not (folder / "model_index.json").exists():
        if init_preset not in PRESETS:
            raise ValueError(f"init_preset={init_preset!r}: use one of {', '.join(PRESETS)}")
        init_model(folder, preset=init_preset)
        get_run_logger().info("wrote the %s preset to %s", init_preset, folder)
    return base_model


@task(name="validate-pretraining")
def validate(preset: str | None, overrides: list[str] | None) -> int:
    """Fail fast on a bad preset, shards URL or base model, before torchrun starts."""
    return len(validate_inputs(resolve_pretrain_config(preset, overrides)))


@task(name="pretrain", retries=1, retry_delay_seconds=10, timeout_seconds=None)
def pretrain(
    preset: str | None,
    overrides: list[str] | None,
    output_url: str,
    nproc_per_node: int,
    nnodes: int,
    node_rank: int,
    rdzv_endpoint: str | None,
) -> dict[str, Any]:
    """torchrun the ranks; each output line goes to the run log. A retry resumes from the
    latest checkpoint in ``output_url``."""
    config = resolve_pretrain_config(preset, overrides)
    logger = get_run_logger()
    progress = create_progress_artifact(
        0.0, description=f"pretraining steps done (%) → {output_url}"
    )

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "step":
            update_progress_artifact(progress, 100.0 * event["step"] / event["num_steps"])

    result = run_pretraining(
        config,
        output_url,
        nproc_per_node,
        nnodes,
        node_rank,
        rdzv_endpoint,
        on_line=logger.info,
        on_event=on_event,
    )
    update_progress_artifact(progress, 100.0)
    return {
        k: result.get(k)
        for k in ("output_url", "run_id", "name", "version", "model_uri", "alias_uri")
    } | {"final": result.get("result", {})}
