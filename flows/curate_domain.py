"""``curate-domain``: photos (folder or s3:// prefix) → aligned WebDataset shards + manifest.

plan → map ``curate-partition`` over partitions (on the chosen task runner) → finalize →
MLflow dataset run → Prefect table + progress artifacts. Reruns skip finished partitions.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed

from flows.runners import RunnerKind, make_task_runner
from tasks import curate as t

ARTIFACT_KEY = "curate-domain-stats"


@flow(name="curate-partitions")
def curate_partitions(
    output_url: str, num_partitions: int, preset: str | None, overrides: list[str] | None
) -> list[dict[str, Any]]:
    """Map the partition task and report progress as partitions finish."""
    progress_id = create_progress_artifact(
        progress=0.0,
        key="curate-domain-progress",
        description=f"curation of {output_url}: partitions done (%)",
    )
    futures = [
        t.curate_partition.submit(output_url, i, preset, overrides) for i in range(num_partitions)
    ]
    results = []
    for done, future in enumerate(as_completed(futures), start=1):
        results.append(future.result())
        update_progress_artifact(progress_id, progress=100.0 * done / max(1, num_partitions))
    return sorted(results, key=lambda r: r["index"])


@flow(name="curate-domain", log_prints=True)
def curate_domain(
    source_url: str,
    output_url: str,
    preset: str | None = None,
    overrides: list[str] | None = None,
    task_runner: RunnerKind = "threads",
    max_workers: int = 2,
    dask_address: str | None = None,
    experiment: str = "e4t-datasets",
    track: bool = True,
) -> dict[str, Any]:
    """Curate ``source_url`` into ``output_url``; returns the output URL, stats and MLflow run.

    ``overrides`` are ``key=value`` strings (``["align.resolution_px=256"]``);
    ``task_runner`` is ``threads`` or ``processes`` here, ``dask`` (with ``dask_address``,
    or a local cluster) to fan partitions out over a Dask cluster.
    """
    logger = get_run_logger()
    plan = t.plan_curation(source_url, output_url, preset, overrides)
    runner = make_task_runner(task_runner, max_workers, dask_address)
    curate_partitions.with_options(task_runner=runner)(
        output_url, plan["num_partitions"], preset, overrides
    )
    stats = t.finalize_curation(output_url, preset, overrides)
    run_id = t.log_dataset(output_url, stats, preset, overrides, experiment) if track else None

    rows = [
        {"measure": k, "value": stats[k]}
        for k in ("num_inputs", "num_accepted_inputs", "num_rejected_inputs", "num_samples")
    ]
    rows.append({"measure": "num_shards", "value": len(stats["shards"])})
    rows += [
        {"measure": f"rejected: {r}", "value": n} for r, n in stats["rejection_reasons"].items()
    ]
    create_table_artifact(
        table=rows, key=ARTIFACT_KEY, description=f"Curation of {source_url} into {output_url}"
    )
    logger.info(
        "curated %d inputs → %d samples in %d shards at %s",
        stats["num_inputs"],
        stats["num_samples"],
        len(stats["shards"]),
        output_url,
    )
    return {"output_url": output_url, "stats": stats, "mlflow_run_id": run_id}
