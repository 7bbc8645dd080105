"""curate-domain's steps (:mod:`e4t.jobs.curate`) as Prefect tasks."""

from __future__ import annotations

from e4t.jobs import curate as job
from tasks.retry import retrying_task

plan = retrying_task(job.plan, "plan-curation")
partition = retrying_task(
    job.partition, "curate-partition", retries=3, delay_seconds=[2, 10, 30], tags=["e4t-curate"]
)
finalize = retrying_task(job.finalize, "finalize-curation")
track = retrying_task(job.track, "log-dataset-run")

STEPS = {job.plan: plan, job.partition: partition, job.finalize: finalize, job.track: track}
