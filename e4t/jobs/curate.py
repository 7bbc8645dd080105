"""The ``curate-domain`` job, written once: plan → partitions → finalize → dataset run.

``e4t curate`` runs it in-process (partitions over worker processes, a progress bar);
the ``curate-domain`` flow runs each step as a Prefect task and maps the partitions over
its task runner. Both build one :class:`CurateRequest` with :func:`request`. Reruns skip
finished partitions; a finished job is only re-checked (plan: same inputs, same config)
and returns its stats.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from e4t import __version__
from e4t.config import CurateConfig, Overrides, config_hash, load_config
from e4t.data import curation
from e4t.jobs.request import config_values
from e4t.jobs.steps import InProcess, StepRunner, StepTable

logger = logging.getLogger(__name__)

STEPS = StepTable("curate-domain")

# flat parameter (the flow's argument, the CLI's dest) → config key. Curation has none
# today: its flat parameters (URLs, workers, experiment, track) are the job's, not the
# config's, and config values come from the preset and overrides.
FLAGS: dict[str, str] = {}


@dataclass(frozen=True)
class CurateRequest:
    """One curation, decided at its entry: the photos (``source_url``), where the shards,
    manifest and stats go (``output_url``; a rerun resumes there), the resolved config,
    the MLflow experiment of the dataset run and whether to log it."""

    source_url: str
    output_url: str
    config: CurateConfig
    experiment: str = "e4t-datasets"
    track: bool = True


def request(
    source_url: str,
    output_url: str,
    *,
    preset: str | None = None,
    overrides: list[str] | Overrides | None = None,
    experiment: str = "e4t-datasets",
    track: bool = True,
    **params: Any,
) -> CurateRequest:
    """The request from an entry point's parameters: ``params`` named in :data:`FLAGS`
    (None = not given) over ``preset`` and ``overrides``."""
    strays = set(params) - set(FLAGS)
    if strays:
        raise TypeError(f"curate: no parameter {', '.join(sorted(strays))} (see FLAGS)")
    config = load_config(
        CurateConfig, "curate", preset, overrides, values=config_values(FLAGS, params)
    )
    return CurateRequest(source_url, output_url, config, experiment, track)


@dataclass(frozen=True)
class CurationPlan:
    """The inputs fixed into partitions; ``done`` when ``stats.json`` is already written."""

    num_inputs: int
    num_partitions: int
    config_hash: str
    e4t_version: str
    done: bool


@dataclass(frozen=True)
class PartitionRecord:
    """One partition's shard and counts, its seconds per stage (``curation.STAGES``), and
    the worker that ran it with that worker's peak resident memory so far."""

    index: int
    shard: str
    num_inputs: int
    num_samples: int
    timings: Mapping[str, float]
    worker: str
    peak_rss_bytes: int


@dataclass(frozen=True)
class CurateResult:
    """``stats`` is ``stats.json``; ``timings`` seconds per stage summed over the partitions
    run now; ``wall_seconds`` 0.0 when ``output_url`` was already finished (nothing was
    curated); ``mlflow_run_id`` None when not tracked."""

    output_url: str
    stats: dict[str, Any]
    mlflow_run_id: str | None
    timings: dict[str, float]
    peak_rss_bytes_by_worker: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0


@STEPS.step("plan-curation", retries=2)
def plan(job: CurateRequest) -> CurationPlan:
    """List the inputs and fix the partitions (a rerun must see the same inputs and config)."""
    fixed = curation.plan_curation(job.source_url, job.output_url, job.config)
    logger.info("%d inputs in %d partitions", len(fixed.inputs), fixed.num_partitions)
    return CurationPlan(
        num_inputs=len(fixed.inputs),
        num_partitions=fixed.num_partitions,
        config_hash=config_hash(job.config),
        e4t_version=__version__,
        done=curation.load_stats(job.output_url) is not None,
    )


@STEPS.step("curate-partition", retries=3, delay_seconds=(2, 10, 30), tags=["e4t-curate"])
def partition(output_url: str, index: int, config: CurateConfig) -> PartitionRecord:
    """One partition → one shard; a done partition returns its record at once."""
    record = curation.curate_partition(output_url, index, config)
    logger.info(
        "partition %d: %d inputs, %d samples", index, record["num_inputs"], record["num_samples"]
    )
    return PartitionRecord(
        index=index,
        shard=record["shard"],
        num_inputs=record["num_inputs"],
        num_samples=record["num_samples"],
        timings=dict(record.get("timings", {})),
        # this worker's peak resident memory so far (benchmarks sum it over workers)
        worker=f"{socket.gethostname()}:{os.getpid()}",
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )


@STEPS.step("finalize-curation", retries=2)
def finalize(job: CurateRequest) -> dict[str, Any]:
    """Cross-partition near-duplicates, manifest, config and ``stats.json`` (last); returns
    ``stats.json``."""
    return curation.finalize_curation(job.output_url, job.config)


@STEPS.step("log-dataset-run", retries=2)
def track(job: CurateRequest, stats: dict[str, Any]) -> str:
    """The dataset's MLflow run (one per dataset: a rerun finds the first)."""
    from e4t.tracking import log_dataset_run

    run_id = log_dataset_run(
        job.output_url, stats, job.config.model_dump(mode="json"), job.experiment
    )
    logger.info("MLflow dataset run %s", run_id)
    return run_id


def run(
    job: CurateRequest,
    steps: StepRunner | None = None,
    *,
    on_partition: Callable[[PartitionRecord], None] | None = None,
) -> CurateResult:
    """The whole job: plan, the partitions not done yet, finalize, the dataset run."""
    steps = steps or InProcess()
    start = time.perf_counter()
    planned = steps.call(plan, job)
    timings = dict.fromkeys(curation.STAGES, 0.0)
    peak_rss: dict[str, int] = {}
    if not planned.done:
        calls = [(job.output_url, i, job.config) for i in range(planned.num_partitions)]
        for record in steps.map(partition, calls):
            for stage, seconds in record.timings.items():
                timings[stage] = timings.get(stage, 0.0) + seconds
            peak_rss[record.worker] = max(peak_rss.get(record.worker, 0), record.peak_rss_bytes)
            if on_partition is not None:
                on_partition(record)
    stats = steps.call(finalize, job)
    run_id = steps.call(track, job, stats) if job.track else None
    return CurateResult(
        output_url=job.output_url,
        stats=stats,
        mlflow_run_id=run_id,
        timings=timings,
        peak_rss_bytes_by_worker=peak_rss,
        wall_seconds=0.0 if planned.done else time.perf_counter() - start,
    )
