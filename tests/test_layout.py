"""Conventions that keep the project in shape: layout, import direction, deployments, CLI."""

from __future__ import annotations

import argparse
import ast
import re
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
    for name in ("faces", "data", "models", "training", "evaluation", "tracking", "jobs", "bench"):
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


def _module_names() -> dict[str, Path]:
    out = {}
    for package in ("e4t", "tasks", "flows"):
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _import_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports (top-level and inside functions alike:
    a lazy import still runs in a circle)."""
    modules = _module_names()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = name.split(".")[: None if is_package else -1]
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join([*parts, *([node.module] if node.module else [])])
                for alias in node.names:
                    if f"{base}.{alias.name}" in modules:
                        targets.add(f"{base}.{alias.name}")
                    elif base in modules:
                        targets.add(base)
        graph[name] = targets - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    assert _cycles(_import_graph()) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


OVERRIDE_STRING = re.compile(r"^[A-Za-z_]\w*(\.\w+)*=")


def test_no_flow_or_task_builds_an_override_string() -> None:
    """Configs are resolved once at the entry point and passed typed: no ``"key=value"``
    strings (plain or f-strings) are built on the way down."""
    offenders = []
    for package in ("flows", "tasks"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            messages = {
                id(n) for r in ast.walk(tree) if isinstance(r, ast.Raise) for n in ast.walk(r)
            }
            for node in ast.walk(tree):
                if id(node) in messages:  # an error message may quote "name=value"
                    continue
                text = None
                if isinstance(node, ast.JoinedStr) and node.values:
                    first = node.values[0]
                    if isinstance(first, ast.Constant) and isinstance(first.value, str):
                        text = first.value
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    text = node.value
                if text is not None and OVERRIDE_STRING.match(text):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {text!r}")
    assert offenders == []


def test_each_stage_job_is_run_by_its_cli_command_and_its_flow() -> None:
    """One job per stage (e4t/jobs/<stage>.py): the CLI and the flow both call its run()."""
    flows = {
        "curate": "curate_domain.py",
        "pretrain": "pretrain_domain.py",
        "personalize": "personalize_bulk.py",
        "evaluate": "evaluate.py",
    }
    for stage, flow_file in flows.items():
        assert (ROOT / "e4t" / "jobs" / f"{stage}.py").exists()
        cli = (ROOT / "e4t" / "cli" / f"{stage}.py").read_text()  # the command's module
        assert f"from e4t.jobs import {stage} as job" in cli
        flow_source = (ROOT / "flows" / flow_file).read_text()
        assert f"from e4t.jobs import {stage} as job" in flow_source
        assert "job.run(" in flow_source


def _readme_section(title: str) -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index(f"## {title}\n")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end != -1 else None]


def test_readme_layout_names_every_package_folder() -> None:
    layout = _readme_section("Layout")
    for init in sorted((ROOT / "e4t").rglob("__init__.py")):
        folder = init.parent.relative_to(ROOT / "e4t").as_posix()
        if folder != ".":
            assert f"  {folder}/" in layout, f"README Layout does not list e4t/{folder}/"
    for top in ("e4t", "tasks", "flows", "infra", "configs", "tests", "docs"):
        assert f"{top}/" in layout


def test_readme_command_line_lists_every_command_and_flag() -> None:
    from e4t.cli import build_parser

    section = _readme_section("Command line")
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        row = next(
            (line for line in section.splitlines() if line.startswith(f"| `e4t {name} ")), None
        )
        assert row is not None, f"README Command line has no row for `e4t {name}`"
        for action in sub._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert flag in row, f"`e4t {name}`: {flag} missing from the README"


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
        undocumented = [
            name for name, prop in flow.parameters.properties.items() if not prop.get("description")
        ]
        assert undocumented == [], f"{flow.name}: no description (docstring Args) for these"


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


def test_readme_names_every_rejection_reason() -> None:
    """Every reason a manifest or results row can carry is explained in the README."""
    from e4t.data.inputs import REJECTED_BY_LISTING, SKIPPED

    sources = "".join(
        (ROOT / "e4t" / "data" / name).read_text()
        for name in ("curation.py", "decode.py", "inputs.py", "concepts.py")
    )
    used = set(
        re.findall(
            r'(?:DecodeRejection\(|row_of\(entry, |_rejected\(\s*\w+,\s*\w+,\s*)"([a-z_]+)"',
            sources,
        )
    )
    used |= set(re.findall(r'quality,\n\s+"([a-z_]+)",', sources))  # (quality, "x", ...)
    used |= set(SKIPPED) | set(REJECTED_BY_LISTING) | {"vanished", "unreadable", "near_duplicate"}
    assert {"no_face", "empty_file", "blurry", "unsupported_extension"} <= used  # the scan works
    section = _readme_section("Curation: photos in, aligned WebDataset shards out")
    missing = sorted(r for r in used if f"`{r}`" not in section)
    assert missing == []


def long_functions(root: Path, limit: int = 100) -> list[str]:
    """``path:name (N lines)`` of each function under ``root`` longer than ``limit``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(root)}:{node.name} ({lines} lines)")
    return found


def test_no_function_in_the_library_is_over_100_lines() -> None:
    """Each function has one role (issue 23): a longer one is split into named phases."""
    assert long_functions(ROOT / "e4t") == []  # e4t/cli and e4t/evaluation included


def test_the_length_check_finds_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(101))
    (tmp_path / "m.py").write_text(f"def long():\n{body}\n")
    assert long_functions(tmp_path) == ["m.py:long (102 lines)"]
