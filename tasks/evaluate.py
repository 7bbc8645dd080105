"""Evaluation tasks: check inputs, evaluate (tune + generate + score), track, promote."""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from e4t.config import EvaluateConfig, load_config
from e4t.evaluation import job
from tasks.models import domain_model
from tasks.retry import retry_transient


def resolve_evaluate_config(preset: str | None, overrides: list[str] | None) -> EvaluateConfig:
    return load_config(EvaluateConfig, "evaluate", preset, overrides)


@task(
    name="check-evaluation-inputs",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_transient,
)
def check_inputs(
    model_uri: str, concepts_url: str, preset: str | None, overrides: list[str] | None
) -> dict[str, Any]:
    """Config, concepts and model version resolve before any heavy work (fails fast)."""
    return job.check_inputs(model_uri, concepts_url, resolve_evaluate_config(preset, overrides))


@task(name="previous-evaluation")
def previous_result(output_url: str, checked: dict[str, Any]) -> dict[str, Any] | None:
    return job.previous_result(output_url, checked)


@task(name="evaluate-model", retries=1, retry_delay_seconds=10, retry_condition_fn=retry_transient)
def evaluate(
    model_uri: str,
    concepts_url: str,
    output_url: str,
    device: str,
    preset: str | None,
    overrides: list[str] | None,
    checked: dict[str, Any],
) -> dict[str, Any]:
    config = resolve_evaluate_config(preset, overrides)
    progress = cast(
        UUID, create_progress_artifact(0.0, description=f"evaluation of {model_uri} (%)")
    )
    logger = get_run_logger()
    logged = [0]

    def on_progress(fraction: float) -> None:
        update_progress_artifact(progress, round(100.0 * fraction, 1))
        if int(fraction * 10) > logged[0]:  # a line every 10 %: the CLI's progress
            logged[0] = int(fraction * 10)
            logger.info("evaluation %3.0f%% done", 100 * fraction)

    out = job.evaluate(
        domain_model(model_uri, device),
        model_uri,
        concepts_url,
        output_url,
        config,
        checked,
        on_progress,
    )
    logger.info(
        "evaluated %d concepts (%d rejected) → %s",
        out["num_concepts"],
        out["num_rejected"],
        out["urls"]["report"],
    )
    return out


@task(name="log-evaluation", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_transient)
def track(
    out: dict[str, Any],
    model_uri: str,
    concepts_url: str,
    output_url: str,
    preset: str | None,
    overrides: list[str] | None,
    checked: dict[str, Any],
    experiment: str,
) -> str:
    config = resolve_evaluate_config(preset, overrides)
    return job.track(out, model_uri, concepts_url, output_url, config, checked, preset, experiment)


@task(name="promote-if-better")
def promote(
    run_id: str,
    summary: dict[str, Any],
    preset: str | None,
    overrides: list[str] | None,
    checked: dict[str, Any],
    experiment: str,
) -> dict[str, Any]:
    config = resolve_evaluate_config(preset, overrides)
    decision = job.promote(run_id, summary, config, checked, experiment)
    get_run_logger().info("promotion: %s", decision)
    return decision


@task(name="record-evaluation")
def record_done(output_url: str, checked: dict[str, Any], result: dict[str, Any]) -> None:
    job.record_done(output_url, checked, result)
