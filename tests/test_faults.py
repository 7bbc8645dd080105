"""Named fault points: the crash tests' one way to interrupt a job at a known moment."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from e4t import faults


def test_specs_parse_and_bad_ones_are_refused() -> None:
    assert faults.parse("checkpoint:8") == ("checkpoint", 8, "kill")
    assert faults.parse("checkpoint:10:hang") == ("checkpoint", 10, "hang")
    for bad in ("checkpoint", "checkpoint:x", ":3", "checkpoint:3:explode", "a:1:kill:2"):
        with pytest.raises(ValueError, match="E4T_FAULT_AT"):
            faults.parse(bad)


def test_only_the_named_point_fires(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(faults.ENV_VAR, raising=False)
    faults.reached("checkpoint", 8)  # unset: nothing happens
    monkeypatch.setenv(faults.ENV_VAR, "checkpoint:8")
    faults.reached("checkpoint", 4)  # another number: nothing happens
    faults.reached("preview", 8)  # another point: nothing happens


def test_the_kill_action_sigkills_the_process_at_the_point() -> None:
    code = (
        "from e4t import faults\n"
        "for step in range(1, 6):\n"
        "    print(step, flush=True)\n"
        "    faults.reached('checkpoint', step)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"E4T_FAULT_AT": "checkpoint:3", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == -signal.SIGKILL
    assert done.stdout.split() == ["1", "2", "3"]
