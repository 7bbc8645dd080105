"""personalize-bulk's steps (:mod:`e4t.jobs.personalize`) as Prefect tasks."""

from __future__ import annotations

from prefect import task

from e4t.jobs import personalize as job
from tasks.retry import retrying_task

plan = task(job.plan, name="plan-personalization")
check_model = retrying_task(job.check_model, "check-model")
tune_pass = retrying_task(job.tune_pass, "personalize-pass", retries=1, tags=["e4t-personalize"])
write_results = task(job.write_results, name="write-results")
track = retrying_task(job.track, "log-personalization")

STEPS = {
    job.plan: plan,
    job.check_model: check_model,
    job.tune_pass: tune_pass,
    job.write_results: write_results,
    job.track: track,
}
