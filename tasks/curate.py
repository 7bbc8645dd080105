"""curate-domain's steps (:mod:`e4t.jobs.curate`) as Prefect tasks, one per entry of the
job's step table."""

from __future__ import annotations

from e4t.jobs import curate as job
from tasks.retry import tasks_for

STEPS = tasks_for(job.STEPS)
