"""Named fault points, for crash tests that never race the machine's speed.

A test that must interrupt a job at a known moment sets ``E4T_FAULT_AT=<point>:<n>[:<action>]``
in the job's environment; the job calls :func:`reached` at each named point, and when the
point's name and number match, the action runs right there:

- ``kill`` (default): the process sends itself SIGKILL — no cleanup, no goodbye, as a lost
  node or an OOM kill would end it;
- ``hang``: the process stops making progress (it sleeps until it is killed from outside), so
  a test can kill the process tree around it — a worker, an agent — at a known point.

Points (each documented where it is called): ``checkpoint:<step>`` right after the checkpoint
of that step is committed (pretraining, every rank). Unset, a point costs one dictionary
lookup.
"""

from __future__ import annotations

import logging
import os
import signal
import time

logger = logging.getLogger(__name__)

ENV_VAR = "E4T_FAULT_AT"
ACTIONS = ("kill", "hang")


def parse(spec: str) -> tuple[str, int, str]:
    """``"checkpoint:8"`` → ``("checkpoint", 8, "kill")``; ``"checkpoint:8:hang"`` → hang."""
    parts = spec.strip().split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1].isdigit():
        raise ValueError(f"{ENV_VAR}={spec!r}: expected <point>:<number>[:kill|hang]")
    action = parts[2] if len(parts) == 3 else "kill"
    if action not in ACTIONS:
        raise ValueError(f"{ENV_VAR}={spec!r}: the action must be one of {', '.join(ACTIONS)}")
    return parts[0], int(parts[1]), action


def reached(point: str, number: int) -> None:
    """Run the configured fault if ``point:number`` is the one named in ``E4T_FAULT_AT``."""
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return
    name, at, action = parse(spec)
    if (name, at) != (point, number):
        return
    logger.warning("fault injected at %s:%d (%s)", point, number, action)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    while True:  # hang: wait to be killed from outside
        time.sleep(3600)
