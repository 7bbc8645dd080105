"""Curation tasks. Config travels as (preset, overrides) and is resolved inside each task."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from e4t import __version__
from e4t.config import CurateConfig, config_hash, load_config
from e4t.data import curation
from e4t.tracking import log_dataset_run


def resolve_curate_config(preset: str | None, overrides: list[str] | None) -> CurateConfig:
    return load_config(CurateConfig, "curate", preset, overrides)


@task(name="plan-curation", retries=2, retry_delay_seconds=5)
def plan_curation(
    source_url: str, output_url: str, preset: str | None, overrides: list[str] | None
) -> dict[str, Any]:
    config = resolve_curate_config(preset, overrides)
    plan = curation.plan_curation(source_url, output_url, config)
    get_run_logger().info("%d inputs in %d partitions", len(plan.inputs), plan.num_partitions)
    return {
        "num_inputs": len(plan.inputs),
        "num_partitions": plan.num_partitions,
        "config_hash": config_hash(config),
        "e4t_version": __version__,
    }


@task(name="curate-partition", retries=3, retry_delay_seconds=[2, 10, 30], tags=["e4t-curate"])
def curate_partition(
    output_url: str, index: int, preset: str | None, overrides: list[str] | None
) -> dict[str, Any]:
    """One partition → one shard. Idempotent: a done partition returns its record at once."""
    record = curation.curate_partition(output_url, index, resolve_curate_config(preset, overrides))
    accepted = sum(r["status"] == "accepted" for r in record["rows"])
    get_run_logger().info(
        "partition %d: %d inputs, %d samples", index, record["num_inputs"], accepted
    )
    return {
        "index": index,
        "shard": record["shard"],
        "num_inputs": record["num_inputs"],
        "num_samples": record["num_samples"],
        "timings": record.get("timings", {}),
    }


@task(name="finalize-curation", retries=2, retry_delay_seconds=5)
def finalize_curation(
    output_url: str, preset: str | None, overrides: list[str] | None
) -> dict[str, Any]:
    return curation.finalize_curation(output_url, resolve_curate_config(preset, overrides))


@task(name="log-dataset-run", retries=2, retry_delay_seconds=5)
def log_dataset(
    output_url: str,
    stats: dict[str, Any],
    preset: str | None,
    overrides: list[str] | None,
    experiment: str,
) -> str:
    config = resolve_curate_config(preset, overrides)
    run_id = log_dataset_run(output_url, stats, config.model_dump(mode="json"), experiment)
    get_run_logger().info("MLflow dataset run %s", run_id)
    return run_id
