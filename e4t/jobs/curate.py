"""The ``curate-domain`` job, written once: plan → partitions → finalize → dataset run.

``e4t curate`` runs it in-process (partitions over worker processes, a progress bar);
the ``curate-domain`` flow runs each step as a Prefect task and maps the partitions over
its task runner. Reruns skip finished partitions; a finished job is only re-checked
(plan: same inputs, same config) and returns its stats.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import time
from collections.abc import Callable
from typing import Any

from e4t import __version__
from e4t.config import CurateConfig, config_hash
from e4t.data import curation
from e4t.jobs.steps import InProcess, StepRunner, StepTable

logger = logging.getLogger(__name__)

STEPS = StepTable("curate-domain")


@STEPS.step("plan-curation", retries=2)
def plan(source_url: str, output_url: str, config: CurateConfig) -> dict[str, Any]:
    """List the inputs and fix the partitions (a rerun must see the same inputs and config)."""
    fixed = curation.plan_curation(source_url, output_url, config)
    logger.info("%d inputs in %d partitions", len(fixed.inputs), fixed.num_partitions)
    return {
        "num_inputs": len(fixed.inputs),
        "num_partitions": fixed.num_partitions,
        "config_hash": config_hash(config),
        "e4t_version": __version__,
        "done": curation.load_stats(output_url) is not None,
    }


@STEPS.step("curate-partition", retries=3, delay_seconds=(2, 10, 30), tags=["e4t-curate"])
def partition(output_url: str, index: int, config: CurateConfig) -> dict[str, Any]:
    """One partition → one shard; a done partition returns its record at once."""
    record = curation.curate_partition(output_url, index, config)
    logger.info(
        "partition %d: %d inputs, %d samples", index, record["num_inputs"], record["num_samples"]
    )
    return {
        "index": index,
        "shard": record["shard"],
        "num_inputs": record["num_inputs"],
        "num_samples": record["num_samples"],
        "timings": record.get("timings", {}),
        # this worker's peak resident memory so far (benchmarks sum it over workers)
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


@STEPS.step("finalize-curation", retries=2)
def finalize(output_url: str, config: CurateConfig) -> dict[str, Any]:
    """Cross-partition near-duplicates, manifest, config and ``stats.json`` (last)."""
    return curation.finalize_curation(output_url, config)


@STEPS.step("log-dataset-run", retries=2)
def track(output_url: str, stats: dict[str, Any], config: CurateConfig, experiment: str) -> str:
    """The dataset's MLflow run (one per dataset: a rerun finds the first)."""
    from e4t.tracking import log_dataset_run

    run_id = log_dataset_run(output_url, stats, config.model_dump(mode="json"), experiment)
    logger.info("MLflow dataset run %s", run_id)
    return run_id


def run(
    source_url: str,
    output_url: str,
    config: CurateConfig,
    steps: StepRunner | None = None,
    *,
    track_run: bool = True,
    experiment: str = "e4t-datasets",
    on_partition: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """The whole job. Returns ``output_url``, ``stats`` (``stats.json``), ``mlflow_run_id``,
    ``timings`` (seconds per stage, summed over the partitions run now) and ``wall_seconds``
    (0.0 when ``output_url`` was already finished: nothing was curated)."""
    steps = steps or InProcess()
    start = time.perf_counter()
    planned = steps.call(plan, source_url, output_url, config)
    timings = dict.fromkeys(curation.STAGES, 0.0)
    peak_rss: dict[str, int] = {}
    if not planned["done"]:
        calls = [(output_url, i, config) for i in range(planned["num_partitions"])]
        for record in steps.map(partition, calls):
            for stage, seconds in record.get("timings", {}).items():
                timings[stage] = timings.get(stage, 0.0) + seconds
            worker = str(record.get("worker"))
            peak_rss[worker] = max(peak_rss.get(worker, 0), int(record.get("peak_rss_bytes", 0)))
            if on_partition is not None:
                on_partition(record)
    stats = steps.call(finalize, output_url, config)
    run_id = steps.call(track, output_url, stats, config, experiment) if track_run else None
    return {
        "output_url": output_url,
        "stats": stats,
        "mlflow_run_id": run_id,
        "timings": timings,
        "peak_rss_bytes_by_worker": peak_rss,
        "wall_seconds": 0.0 if planned["done"] else time.perf_counter() - start,
    }
