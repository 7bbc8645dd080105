"""docs/architecture.md stays true: every module and folder it names exists, and every
stage job it describes has the parts it says each job has."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "architecture.md"


def named_paths(text: str) -> set[str]:
    """Repository paths in backticks (``e4t/jobs/steps.py``, ``flows/``); placeholders
    such as ``<stage>`` are templates, not paths."""
    found = set()
    for token in re.findall(r"`([^`\s]+)`", text):
        if "<" in token or not re.match(r"^(e4t|flows|tasks|infra|configs|tests|docs)/", token):
            continue
        found.add(token)
    return found


def test_every_path_the_architecture_page_names_exists() -> None:
    paths = named_paths(PAGE.read_text())
    assert len(paths) >= 20, sorted(paths)  # the page names the modules it is about
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"docs/architecture.md names missing paths: {missing}"


def test_the_check_finds_a_missing_module() -> None:
    assert named_paths("see `e4t/jobs/nowhere.py` and `e4t/cli/<stage>.py`") == {
        "e4t/jobs/nowhere.py"
    }
    assert not (ROOT / "e4t/jobs/nowhere.py").exists()


def test_each_stage_job_has_the_parts_the_page_describes() -> None:
    for stage in ("curate", "pretrain", "personalize", "evaluate"):
        job = importlib.import_module(f"e4t.jobs.{stage}")
        assert len(job.STEPS) >= 2, stage
        assert callable(job.run), stage
