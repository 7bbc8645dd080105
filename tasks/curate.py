"""curate-domain's steps (:mod:`e4t.jobs.curate`) as Prefect tasks."""

from __future__ import annotations

from prefect import task

from e4t.jobs import curate as job
from tasks.retry import retry_transient

plan = task(
    job.plan,
    name="plan-curation",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_transient,
)
partition = task(
    job.partition,
    name="curate-partition",
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_condition_fn=retry_transient,
    tags=["e4t-curate"],
)
finalize = task(
    job.finalize,
    name="finalize-curation",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_transient,
)
track = task(
    job.track,
    name="log-dataset-run",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_transient,
)

STEPS = {job.plan: plan, job.partition: partition, job.finalize: finalize, job.track: track}
