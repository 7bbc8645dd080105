"""evaluate's steps (:mod:`e4t.jobs.evaluate`) as Prefect tasks; the evaluation task
reports into a progress artifact and a log line every 10 %."""

from __future__ import annotations

from typing import cast
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from e4t.jobs import evaluate as job
from tasks.retry import tasks_for


@task  # name and retries: the step table's entry (tasks_for)
def evaluate(request: job.EvaluateRequest) -> job.Evaluated:
    progress = cast(
        UUID, create_progress_artifact(0.0, description=f"evaluation of {request.model.uri} (%)")
    )
    logger = get_run_logger()
    logged = [0]

    def on_progress(fraction: float) -> None:
        update_progress_artifact(progress, round(100.0 * fraction, 1))
        if int(fraction * 10) > logged[0]:  # a line every 10 %: the CLI's progress
            logged[0] = int(fraction * 10)
            logger.info("evaluation %3.0f%% done", 100 * fraction)

    out = job.evaluate(request, on_progress)
    logger.info(
        "evaluated %d concepts (%d rejected) → %s",
        out.num_concepts,
        out.num_rejected,
        out.urls.report,
    )
    return out


STEPS = tasks_for(job.STEPS, custom={job.evaluate: evaluate})
