"""Personalization tasks: plan passes, tune a pass, write results, log MLflow runs."""

from __future__ import annotations

import dataclasses
from typing import Any

from prefect import get_run_logger, task

from e4t.config import PersonalizeConfig, load_config
from e4t.tracking import log_personalization
from e4t.training import bulk
from tasks.models import domain_model
from tasks.retry import retry_transient


def resolve_personalize_config(
    preset: str | None, overrides: list[str] | None
) -> PersonalizeConfig:
    return load_config(PersonalizeConfig, "personalize", preset, overrides)


@task(name="plan-personalization")
def plan(
    images_url: str, preset: str | None, overrides: list[str] | None
) -> list[list[dict[str, Any]]]:
    """Concepts (id, sources, prompts) in passes of ``concepts_per_pass``; the folder is
    listed once here and fails fast when missing or empty."""
    config = resolve_personalize_config(preset, overrides)
    specs = [dataclasses.asdict(spec) for spec in bulk.discover_concepts(images_url)]
    if not specs:
        raise FileNotFoundError(f"{images_url}: no images to personalize")
    n = config.concepts_per_pass
    get_run_logger().info("%d concepts in passes of %d", len(specs), n)
    return [specs[i : i + n] for i in range(0, len(specs), n)]


@task(name="check-model", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_transient)
def check_model(model_uri: str, device: str) -> str:
    """Load the domain model once up front: an unknown URI fails before any tuning."""
    return domain_model(model_uri, device).fingerprint()


@task(
    name="personalize-pass",
    retries=1,
    retry_delay_seconds=5,
    tags=["e4t-personalize"],
    retry_condition_fn=retry_transient,
)
def personalize_pass(
    output_url: str,
    specs: list[dict[str, Any]],
    model_uri: str,
    device: str,
    preset: str | None,
    overrides: list[str] | None,
) -> list[dict[str, Any]]:
    config = resolve_personalize_config(preset, overrides)
    rows = bulk.personalize_pass(
        domain_model(model_uri, device),
        [bulk.ConceptSpec(**spec) for spec in specs],
        output_url,
        config.curate,
        config.tune,
        config.seed,
        config.preview_steps,
        model_uri,
    )
    done = sum(r["status"] == "done" for r in rows)
    get_run_logger().info("pass of %d concepts: %d done", len(specs), done)
    return rows


@task(name="write-results")
def write_results(
    output_url: str, rows: list[dict[str, Any]], extra: dict[str, Any]
) -> dict[str, Any]:
    return bulk.write_results(output_url, rows, extra)


@task(name="log-personalization", retries=2, retry_delay_seconds=5)
def log_runs(
    output_url: str,
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    params: dict[str, Any],
    experiment: str,
) -> str:
    return log_personalization(output_url, rows, summary, params, experiment)
