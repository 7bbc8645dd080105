"""Conventions that keep the project in shape: layout, import direction, deployments, CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_top_level_layout() -> None:
    for name in (
        "flows",
        "tasks",
        "e4t",
        "infra",
        "tests",
        "configs",
        "prefect.yaml",
        "pyproject.toml",
        "README.md",
        "Makefile",
        ".ci/run",
    ):
        assert (ROOT / name).exists(), name
    for name in ("faces", "data"):
        assert (ROOT / "e4t" / name / "__init__.py").exists()


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("e4t", {"prefect", "prefect_dask", "flows", "tasks"}),
        ("tasks", {"flows"}),
    ],
)
def test_imports_run_one_way(package: str, forbidden: set[str]) -> None:
    offenders = {
        str(p.relative_to(ROOT)): _imports(p) & forbidden
        for p in (ROOT / package).rglob("*.py")
        if _imports(p) & forbidden
    }
    assert offenders == {}


def test_flows_hold_no_torch() -> None:
    offenders = [p.name for p in (ROOT / "flows").rglob("*.py") if "torch" in _imports(p)]
    assert offenders == []


def test_every_deployment_entrypoint_loads_its_flow() -> None:
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = {d["name"] for d in spec["deployments"]}
    assert names == {
        "curate-domain",
        "pretrain-domain",
        "personalize-bulk",
        "evaluate",
        "e4t-pipeline",
    }
    for deployment in spec["deployments"]:
        flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
        assert flow.name == deployment["name"]
        params = set(flow.parameters.properties)  # the defaults must be real parameters
        assert set(deployment.get("parameters", {})) <= params


def test_scheduled_deployments_ship_inactive() -> None:
    from prefect.client.schemas.schedules import CronSchedule

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    scheduled = {d["name"]: d["schedules"] for d in spec["deployments"] if d.get("schedules")}
    assert set(scheduled) == {"pretrain-domain", "e4t-pipeline"}
    for schedules in scheduled.values():
        for item in schedules:
            assert item["active"] is False  # on only when a person turns it on
            CronSchedule(cron=item["cron"], timezone=item["timezone"])  # a valid cron


def test_cli_lists_the_stages() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "e4t.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for word in ("curate", "pretrain", "personalize", "evaluate", "samples", "bench"):
        assert word in out


def test_readme_starts_with_the_two_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    head = readme[: readme.index("##", readme.index("make test"))]
    assert "make demo" in head and "make test" in head


def test_ruff_is_clean() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "e4t", "tasks", "flows", "infra", "tests"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout
