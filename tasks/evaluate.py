"""Evaluation tasks: check inputs, evaluate (tune + generate + score), track, promote."""

from __future__ import annotations

import functools
from typing import Any, cast
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from e4t.config import EvaluateConfig, load_config
from e4t.evaluation import evaluate as ev
from e4t.tracking import (
    find_personalization_runs,
    load_domain_model,
    log_evaluation,
    pin_model_uri,
    promote_if_better,
    resolve_model_version,
)
from tasks.retry import retry_transient


def resolve_evaluate_config(preset: str | None, overrides: list[str] | None) -> EvaluateConfig:
    return load_config(EvaluateConfig, "evaluate", preset, overrides)


@functools.lru_cache(maxsize=1)
def _load(model_uri: str, device: str) -> Any:
    return load_domain_model(model_uri, device=device)


def _model(model_uri: str, device: str) -> Any:
    """The domain model, loaded once per worker process and pinned version."""
    return _load(pin_model_uri(model_uri), device)


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
    config = resolve_evaluate_config(preset, overrides)
    ev.check_concepts_url(concepts_url)
    version = resolve_model_version(model_uri)
    key = ev.eval_key(config, concepts_url)
    return {"model": list(version) if version else None, "eval_key": key}


@task(name="evaluate-model", retries=1, retry_delay_seconds=10, retry_condition_fn=retry_transient)
def evaluate(
    model_uri: str,
    concepts_url: str,
    output_url: str,
    device: str,
    preset: str | None,
    overrides: list[str] | None,
    meta: dict[str, Any],
) -> dict[str, Any]:
    config = resolve_evaluate_config(preset, overrides)
    model = _model(model_uri, device)
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

    result, urls = ev.run_evaluation(model, concepts_url, output_url, config, meta, on_progress)
    get_run_logger().info(
        "evaluated %d concepts (%d rejected) → %s",
        len(result.concepts),
        len(result.rejected),
        urls["report"],
    )
    return {
        "summary": ev.clean_json(result.summary),
        "urls": urls,
        "num_concepts": len(result.concepts),
        "num_rejected": len(result.rejected),
    }


@task(name="log-evaluation", retries=2, retry_delay_seconds=5)
def track(
    summary: dict[str, Any],
    urls: dict[str, str],
    params: dict[str, Any],
    tags: dict[str, str],
    concepts_url: str,
    experiment: str,
) -> str:
    parent, children = find_personalization_runs(concepts_url)
    if parent:
        tags = {
            **tags,
            "e4t.personalize_run_id": parent,
            "e4t.concept_run_ids": ",".join(children)[:5000],
        }
    restored = {
        method: {
            int(steps): {k: float("nan") if v is None else v for k, v in values.items()}
            for steps, values in by_steps.items()
        }
        for method, by_steps in summary.items()
    }
    return log_evaluation(restored, urls, params, tags, experiment)


@task(name="promote-if-better")
def promote(
    run_id: str,
    model: list[str] | None,
    summary: dict[str, Any],
    preset: str | None,
    overrides: list[str] | None,
    eval_key: str,
    experiment: str,
) -> dict[str, Any]:
    config = resolve_evaluate_config(preset, overrides)
    method, _, metric = config.promotion.metric.partition(".")
    by_steps = summary.get(method) or {}
    if not by_steps or not metric:
        raise ValueError(
            f"promotion.metric={config.promotion.metric!r}: use <method>.<metric> of an "
            f"evaluated method, e.g. e4t.identity (methods: {', '.join(summary)})"
        )
    final = by_steps[max(by_steps, key=int)]
    if metric not in final:
        raise ValueError(f"promotion.metric: {metric!r} is not one of {', '.join(final)}")
    value = final[metric]
    decision = promote_if_better(
        run_id,
        (model[0], model[1]) if model else None,
        float("nan") if value is None else float(value),
        config.promotion,
        eval_key,
        experiment,
    )
    get_run_logger().info("promotion: %s", decision)
    return decision
