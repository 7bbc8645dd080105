"""``e4t trace`` on the demo's output: from a personalization preview back to its photo, each
hop checked against the artifacts and the MLflow runs the demo made."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_trace_walks_from_a_demo_preview_back_to_its_photo(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "E4T_DATA_DIR": str(tmp_path / "data"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    demo = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "flows.demo", "--out", str(demo), "--steps", "2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    previews = sorted((demo / "concepts" / "previews").rglob("*.png"))
    assert previews
    preview = next(p for p in previews if p.parent.name.startswith("obama"))
    done = subprocess.run(
        [sys.executable, "-m", "e4t.cli", "trace", str(preview)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    hops = {}
    for line in done.stdout.splitlines():
        match = re.match(r"^(\w[\w ]*?)\s{2,}(.*)$", line)
        if match:
            hops[match.group(1).strip()] = match.group(2)
    assert list(hops) == [
        "image",
        "concept",
        "personalization",
        "source photo",
        "domain model",
        "pretraining run",
        "dataset run",
        "manifest row",
    ], done.stdout
    concept_id = preview.parent.name
    assert concept_id in hops["concept"] and "fingerprint matches" in hops["concept"]
    assert str(demo / "concepts" / "results.jsonl") in hops["personalization"]
    photo = hops["source photo"].split("  (")[0]
    assert (
        Path(photo).name == "obama.jpg"
        and Path(photo).exists()
        and "present" in hops["source photo"]
    )

    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("e4t-faces", "candidate")
    assert f"models:/e4t-faces/{version.version}" in hops["domain model"]
    assert hops["pretraining run"].startswith(version.run_id)
    dataset_run = client.get_run(version.run_id).data.tags["e4t.dataset.run_id"]
    assert hops["dataset run"].startswith(dataset_run)
    stats = json.loads((demo / "shards" / "stats.json").read_text())
    assert stats["manifest_sha256"][:16] in hops["dataset run"]
    assert str(demo / "shards" / "manifest.jsonl") in hops["manifest row"]
    assert "obama.jpg" in hops["manifest row"] and "accepted" in hops["manifest row"]
