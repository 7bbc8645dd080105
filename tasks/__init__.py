"""Prefect tasks: each stage's job steps (``e4t.jobs``) as tasks, one per entry of the job's
step table with its retries, timeouts and tags (:func:`tasks.retry.tasks_for`). A task calls
one ``e4t`` step and returns what the step returns: URLs and small typed results.

The library logs through ``logging.getLogger("e4t...")``; here those records also go to the
Prefect run log of the task or flow that wrote them.
"""

from __future__ import annotations

import logging

from prefect.logging.handlers import APILogHandler


class _InPrefectRun(logging.Filter):
    """Only records written inside a flow or task run go to the Prefect API (the CLI and
    notebooks that import the tasks log as usual, without API warnings)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from prefect.context import FlowRunContext, TaskRunContext

        return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def _send_library_logs_to_prefect() -> None:
    library = logging.getLogger("e4t")
    if not any(isinstance(h, APILogHandler) for h in library.handlers):
        handler = APILogHandler()
        handler.addFilter(_InPrefectRun())
        library.addHandler(handler)
    if library.level == logging.NOTSET:
        library.setLevel(logging.INFO)


_send_library_logs_to_prefect()


def _quiet_libraries() -> None:
    from e4t.quiet import quiet_libraries

    quiet_libraries()


_quiet_libraries()
