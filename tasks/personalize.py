"""personalize-bulk's steps (:mod:`e4t.jobs.personalize`) as Prefect tasks, one per entry
of the job's step table."""

from __future__ import annotations

from e4t.jobs import personalize as job
from tasks.retry import tasks_for

STEPS = tasks_for(job.STEPS)
