"""evaluate's steps (:mod:`e4t.jobs.evaluate`) as Prefect tasks; the evaluation task
reports into a progress artifact and a log line every 10 %."""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from e4t.config import EvaluateConfig
from e4t.jobs import evaluate as job
from tasks.retry import retry_transient, retrying_task

check_inputs = retrying_task(job.check_inputs, "check-evaluation-inputs")
previous_result = task(job.previous_result, name="previous-evaluation")
track = retrying_task(job.track, "log-evaluation")
promote = task(job.promote, name="promote-if-better")
add_tracking_to_report = retrying_task(job.add_tracking_to_report, "add-tracking-to-report")
record_done = task(job.record_done, name="record-evaluation")


@task(name="evaluate-model", retries=1, retry_delay_seconds=10, retry_condition_fn=retry_transient)
def evaluate(
    model_uri: str,
    device: str,
    concepts_url: str,
    output_url: str,
    config: EvaluateConfig,
    checked: dict[str, Any],
) -> dict[str, Any]:
    progress = cast(
        UUID, create_progress_artifact(0.0, description=f"evaluation of {model_uri} (%)")
    )
    logger = get_run_logger()
    logged = [0]

    def on_progress(fraction: float) -> None:
        update_progress_artifact(progress, round(100.0 * fraction, 1))
        if int(fraction * 10) > logged[0]:  # a line every 10 %: the CLI's progress
            logged[0] = int(fraction * 10)
            logger.info("evaluation %3.0f%% done", 100 * fraction)

    out = job.evaluate(model_uri, device, concepts_url, output_url, config, checked, on_progress)
    logger.info(
        "evaluated %d concepts (%d rejected) → %s",
        out["num_concepts"],
        out["num_rejected"],
        out["urls"]["report"],
    )
    return out


STEPS = {
    job.check_inputs: check_inputs,
    job.previous_result: previous_result,
    job.evaluate: evaluate,
    job.track: track,
    job.promote: promote,
    job.add_tracking_to_report: add_tracking_to_report,
    job.record_done: record_done,
}
