"""``curate-domain``: photos (folder or s3:// prefix) → aligned WebDataset shards + manifest.

The job is :mod:`e4t.jobs.curate` (plan → partitions → finalize → MLflow dataset run), run
here with each step a Prefect task and the partitions mapped over the chosen task runner;
this flow adds the table artifact. Reruns skip finished partitions.
"""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import Field

from e4t.config import Overrides
from e4t.data.curation import COUNT_KEYS
from e4t.jobs import curate as job
from flows.runners import RunnerKind, make_task_runner
from flows.steps import PrefectSteps
from tasks import curate as t

ARTIFACT_KEY = "curate-domain-stats"


@flow(name="curate-domain", log_prints=True)
def curate_domain(
    source_url: str,
    output_url: str,
    preset: str | None = None,
    overrides: Overrides | None = None,
    task_runner: RunnerKind = "threads",
    max_workers: Annotated[int, Field(ge=1)] = 2,
    dask_address: str | None = None,
    experiment: str = "e4t-datasets",
    track: bool = True,
) -> dict[str, Any]:
    """Curate ``source_url`` into ``output_url``; returns the output URL, stats and MLflow run.

    Args:
        source_url: Folder or URL (local, file://, s3://) of the photos.
        output_url: Folder or URL for the shards, manifest.jsonl and stats.json.
        preset: A preset under configs/curate/ (e.g. tiny, ffhq-1024) or a YAML path.
        overrides: Config values by dotted key, e.g. {"align.resolution_px": 256}.
        task_runner: threads or processes on this machine; dask for a Dask cluster.
        max_workers: Workers of the task runner (Dask: local cluster size).
        dask_address: tcp://HOST:8786 of an existing Dask scheduler (task_runner=dask).
        experiment: MLflow experiment of the dataset run.
        track: Log the dataset run to MLflow.
    """
    request = job.request(
        source_url,
        output_url,
        preset=preset,
        overrides=overrides,
        experiment=experiment,
        track=track,
        **{name: value for name, value in locals().items() if name in job.FLAGS},
    )
    steps = PrefectSteps(
        t.STEPS,
        make_task_runner(task_runner, max_workers, dask_address),
        map_names={job.partition: "curate-partitions"},
        progress_key="curate-domain-progress",
        progress_description=f"curation of {output_url}: partitions done (%)",
    )
    result = job.run(request, steps)
    stats = result.stats
    rows = [{"measure": k, "value": stats[k]} for k in COUNT_KEYS]
    rows.append({"measure": "num_shards", "value": len(stats["shards"])})
    rows += [
        {"measure": f"rejected: {r}", "value": n} for r, n in stats["rejection_reasons"].items()
    ]
    rows += [{"measure": f"skipped: {r}", "value": n} for r, n in stats["skip_reasons"].items()]
    create_table_artifact(
        table=rows, key=ARTIFACT_KEY, description=f"Curation of {source_url} into {output_url}"
    )
    get_run_logger().info(
        "curated %d inputs → %d samples in %d shards at %s",
        stats["num_inputs"],
        stats["num_samples"],
        len(stats["shards"]),
        output_url,
    )
    return {"output_url": output_url, "stats": stats, "mlflow_run_id": result.mlflow_run_id}
