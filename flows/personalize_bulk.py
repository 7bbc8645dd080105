"""``personalize-bulk``: a folder of images → one concept artifact per person, many per pass.

The job is :mod:`e4t.jobs.personalize` (plan passes → check the model → passes → results →
MLflow parent + child runs); here each step is a Prefect task and the passes are mapped
over the chosen task runner (threads here; processes, Dask or several GPU workers
elsewhere). This flow adds the results table artifact.
"""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow
from prefect.artifacts import create_table_artifact
from pydantic import Field

from e4t.config import Overrides
from e4t.jobs import personalize as job
from flows.runners import RunnerKind, make_task_runner
from flows.steps import PrefectSteps
from tasks import personalize as t

TABLE_COLUMNS = (
    "concept_id",
    "status",
    "reason",
    "steps",
    "seconds",
    "final_loss",
    "artifact_bytes",
)


@flow(name="personalize-bulk", log_prints=True)
def personalize_bulk(
    images_url: str = "data/demo/photos",
    model_uri: str = "models:/e4t-faces@candidate",
    output_url: str = "data/demo/concepts",
    preset: str | None = "tiny",
    steps: Annotated[int | None, Field(ge=0)] = None,
    concepts_per_pass: Annotated[int | None, Field(ge=1)] = None,
    device: str = "cpu",
    task_runner: RunnerKind = "threads",
    max_workers: Annotated[int, Field(ge=1)] = 1,
    dask_address: str | None = None,
    dask_resources: dict[str, float] | None = None,
    experiment: str = "e4t-personalize",
    track: bool = True,
    overrides: Overrides | None = None,
) -> dict[str, Any]:
    """Personalize every image (or sub-folder) of ``images_url`` with a domain model.

    Args:
        images_url: Folder or s3:// prefix: one image or one sub-folder per concept, and an
            optional concepts.csv with preview prompts.
        model_uri: models:/e4t-faces@champion, @candidate, models:/NAME/VERSION, or a folder.
        output_url: Folder or URL for concepts/, previews/, results.jsonl, summary.json.
        preset: A preset under configs/personalize/ (tiny, sd15) or a YAML path.
        steps: Tuning steps per concept (tune.num_steps; 5–15 in the paper).
        concepts_per_pass: Concepts tuned together in one pass.
        device: Torch device of the tuning, e.g. cpu or cuda.
        task_runner: threads or processes on this machine; dask for a Dask cluster.
        max_workers: Workers of the task runner (passes run at once).
        dask_address: tcp://HOST:8786 of an existing Dask scheduler (task_runner=dask).
        dask_resources: Dask worker resources each pass needs, e.g. {"GPU": 1} with workers
            started as `dask worker ... --resources GPU=1`: one pass per GPU at a time.
        experiment: MLflow experiment of the parent and concept runs.
        track: Log the parent run and one child run per concept to MLflow.
        overrides: Config values by dotted key, e.g. {"tune.draws_per_concept": 16}.
    """
    # this flow's parameters that FLAGS maps to config keys (the CLI passes its dests)
    params = {name: value for name, value in locals().items() if name in job.FLAGS}
    request = job.request(
        images_url,
        output_url,
        model_uri,
        preset=preset,
        overrides=overrides,
        device=device,
        experiment=experiment,
        track=track,
        **params,
    )
    runner = PrefectSteps(
        t.STEPS,
        make_task_runner(task_runner, max_workers, dask_address),
        map_names={job.tune_pass: "personalize-passes"},
        progress_key="personalize-bulk-progress",
        progress_description=f"passes personalized (%) → {output_url}",
        resources={job.tune_pass: dask_resources} if dask_resources else None,
    )
    result = job.run(request, runner)
    create_table_artifact(
        key="personalize-bulk-results",
        table=[{k: r.get(k) for k in TABLE_COLUMNS} for r in result.rows],
        description=f"Personalization of {images_url} → {output_url}",
    )
    return {
        "output_url": output_url,
        "summary": result.summary,
        "mlflow_run_id": result.mlflow_run_id,
    }
