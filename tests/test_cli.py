"""The command line as a user runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path


def _e4t(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "e4t.cli", *args], capture_output=True, text=True, timeout=600
    )


def test_curate_command(photos_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _e4t(
        "curate", str(photos_dir), str(out), "--preset", "tiny", "--workers", "1", "--no-track"
    )
    assert done.returncode == 0, done.stderr
    stats = json.loads((out / "stats.json").read_text())
    assert f"→ {stats['num_samples']} samples" in done.stdout
    assert "manifest" in done.stdout


def test_curate_command_errors_are_clear(tmp_path: Path) -> None:
    done = _e4t("curate", str(tmp_path / "missing"), str(tmp_path / "o"), "--no-track")
    assert done.returncode == 2
    assert "missing: no such folder" in done.stderr and "Traceback" not in done.stderr
    done = _e4t("curate", str(tmp_path), str(tmp_path / "o"), "--set", "align.size=3")
    assert done.returncode == 2 and "align.size" in done.stderr


def test_bench_curate_prints_throughput_and_stage_shares() -> None:
    done = _e4t("bench", "curate", "--num-images", "6", "--workers", "1", "--size-px", "512")
    assert done.returncode == 0, done.stderr
    assert re.search(r"→ \d+\.\d+ images/s", done.stdout)
    shares = [float(m) for m in re.findall(r"(\d+\.\d) %", done.stdout)]
    assert len(shares) == 6 and abs(sum(shares) - 100) < 1.0
