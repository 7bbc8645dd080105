"""``personalize-bulk``: a folder of images → one concept artifact per person, many per pass.

plan passes → map ``personalize-pass`` over them (threads here; processes, Dask or several
GPU workers elsewhere) → results table → MLflow parent run + one child run per concept.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed

from flows.runners import RunnerKind, make_task_runner
from tasks import personalize as t


@flow(name="personalize-passes")
def personalize_passes(
    output_url: str,
    passes: list[list[dict[str, Any]]],
    model_uri: str,
    device: str,
    preset: str | None,
    overrides: list[str] | None,
) -> list[dict[str, Any]]:
    progress = create_progress_artifact(
        0.0,
        key="personalize-bulk-progress",
        description=f"concepts personalized (%) → {output_url}",
    )
    futures = [
        t.personalize_pass.submit(output_url, specs, model_uri, device, preset, overrides)
        for specs in passes
    ]
    total = sum(len(ids) for ids in passes)
    rows: list[dict[str, Any]] = []
    for future in as_completed(futures):
        rows += future.result()
        update_progress_artifact(progress, 100.0 * len(rows) / max(1, total))
    return rows


@flow(name="personalize-bulk", log_prints=True)
def personalize_bulk(
    images_url: str = "data/demo/photos",
    model_uri: str = "models:/e4t-faces@candidate",
    output_url: str = "data/demo/concepts",
    preset: str | None = "tiny",
    steps: int | None = None,
    concepts_per_pass: int | None = None,
    device: str = "cpu",
    task_runner: RunnerKind = "threads",
    max_workers: int = 1,
    dask_address: str | None = None,
    experiment: str = "e4t-personalize",
    track: bool = True,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Personalize every image (or sub-folder) of ``images_url`` with the domain model at
    ``model_uri`` (``models:/e4t-faces@champion``, ``@candidate``, a version, or a folder)."""
    start = time.perf_counter()
    sets = list(overrides or [])
    if steps is not None:
        sets.append(f"tune.num_steps={steps}")
    if concepts_per_pass is not None:
        sets.append(f"concepts_per_pass={concepts_per_pass}")
    passes = t.plan(images_url, preset, sets)
    t.check_model(model_uri, device)
    runner = make_task_runner(task_runner, max_workers, dask_address)
    rows = personalize_passes.with_options(task_runner=runner)(
        output_url, passes, model_uri, device, preset, sets
    )
    summary = t.write_results(
        output_url,
        rows,
        {
            "images_url": images_url,
            "model_uri": model_uri,
            "wall_seconds": time.perf_counter() - start,
        },
    )
    parent = None
    if track:
        parent = t.log_runs(
            output_url,
            rows,
            summary,
            {
                "model_uri": model_uri,
                "images_url": images_url,
                "output_url": output_url,
                "preset": preset,
                "overrides": sets,
            },
            experiment,
        )
    create_table_artifact(
        key="personalize-bulk-results",
        table=[
            {
                k: r.get(k)
                for k in (
                    "concept_id",
                    "status",
                    "reason",
                    "steps",
                    "seconds",
                    "final_loss",
                    "artifact_bytes",
                )
            }
            for r in rows
        ],
        description=f"Personalization of {images_url} → {output_url}",
    )
    return {"output_url": output_url, "summary": summary, "mlflow_run_id": parent}
