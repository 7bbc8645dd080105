"""The GPU check script runs anywhere: here on the CPU with the tiny architecture."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_prints_one_json_line_per_figure() -> None:
    env = {
        **os.environ,
        "ARCH": "tiny",
        "DEVICE": "cpu",
        "DTYPE": "fp32",
        "RES": "32",
        "STEPS": "1",
        "SKIP": "generate",  # the generation figure's code path is the tested generate()
    }
    done = subprocess.run(
        ["bash", "infra/gpu-check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    figures = [json.loads(line) for line in done.stdout.splitlines()]
    names = [f["figure"] for f in figures]
    assert names == [
        "tune_seconds_per_concept",
        "tune_peak_memory",
        "tune_seconds_per_concept",
        "tune_seconds_per_concept_best_k",
        "tune_step_ops",
        "pretrain_samples_per_second",
        "pretrain_samples_per_second",
    ]
    assert all(f["value"] > 0 and f["arch"] == "tiny" and f["device"] == "cpu" for f in figures)
    assert [f["draws"] for f in figures if f["figure"] == "tune_seconds_per_concept"] == [16, 4]
    assert {f["gradient_checkpointing"] for f in figures if "pretrain" in f["figure"]} == {
        False,
        True,
    }
