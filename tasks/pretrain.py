"""pretrain-domain's steps (:mod:`e4t.jobs.pretrain`) as Prefect tasks; the training task
streams torchrun's output into the run log and a progress artifact."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from e4t.jobs import pretrain as job
from tasks.retry import tasks_for


@task  # name, retries and timeout: the step table's entry (tasks_for)
def train(request: job.PretrainRequest) -> job.PretrainResult:
    """torchrun the ranks; each output line goes to the run log. A retry resumes from the
    latest checkpoint in ``output_url``."""
    logger = get_run_logger()
    progress = create_progress_artifact(
        0.0, description=f"pretraining steps done (%) → {request.output_url}"
    )

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "step":
            update_progress_artifact(progress, 100.0 * event["step"] / event["num_steps"])

    result = job.train(request, on_line=logger.info, on_event=on_event)
    update_progress_artifact(progress, 100.0)
    return result


STEPS = tasks_for(job.STEPS, custom={job.train: train})
