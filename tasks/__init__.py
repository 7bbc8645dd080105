"""Prefect tasks: each stage's job steps (``e4t.jobs``) as tasks with their retries, timeouts
and tags. A task calls one ``e4t`` function and returns URIs and small dicts.

The library logs through ``logging.getLogger("e4t...")``; here those records also go to the
Prefect run log of the task or flow that wrote them.
"""

from __future__ import annotations

import logging

from prefect.logging.handlers import APILogHandler


def _send_library_logs_to_prefect() -> None:
    library = logging.getLogger("e4t")
    if not any(isinstance(h, APILogHandler) for h in library.handlers):
        library.addHandler(APILogHandler())
    if library.level == logging.NOTSET:
        library.setLevel(logging.INFO)


_send_library_logs_to_prefect()
