"""personalize-bulk's steps (:mod:`e4t.jobs.personalize`) as Prefect tasks."""

from __future__ import annotations

from prefect import task

from e4t.jobs import personalize as job
from tasks.retry import retry_transient

plan = task(job.plan, name="plan-personalization")
check_model = task(
    job.check_model,
    name="check-model",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_transient,
)
tune_pass = task(
    job.tune_pass,
    name="personalize-pass",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_transient,
    tags=["e4t-personalize"],
)
write_results = task(job.write_results, name="write-results")
track = task(
    job.track,
    name="log-personalization",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_transient,
)

STEPS = {
    job.plan: plan,
    job.check_model: check_model,
    job.tune_pass: tune_pass,
    job.write_results: write_results,
    job.track: track,
}
