"""Deployments through a real Prefect server and a process worker on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from infra.prefect_server import prefect_cli, prefect_env, start_server, start_worker

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def _prefect(env: dict[str, str], *args: str) -> str:
    return prefect_cli(env, *args)


def _flow_run(api: str, run_id: str) -> dict:
    with urllib.request.urlopen(f"{api}/flow_runs/{run_id}", timeout=10) as response:
        return json.loads(response.read())


def test_pretrain_deployment_runs_on_a_process_worker(
    curated_shards: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "stack"
    server, api = start_server(root)
    worker = None
    try:
        env = {
            **prefect_env(root / "home", api),
            "E4T_PROJECT_DIR": str(ROOT),
            "E4T_DATA_DIR": os.environ["E4T_DATA_DIR"],
        }
        _prefect(env, "work-pool", "create", "e4t-process", "--type", "process")
        _prefect(env, "--no-prompt", "deploy", "--all")
        # typed flow parameters: the server refuses a bad value before any run exists
        for bad in ("steps=0", "init_arch=huge", "nproc_per_node=zero"):
            with pytest.raises(RuntimeError, match="failed") as refused:
                _prefect(env, "deployment", "run", "pretrain-domain/pretrain-domain", "-p", bad)
            assert bad.split("=")[0] in str(refused.value)
        with urllib.request.urlopen(f"{api}/flow_runs/count", data=b"{}", timeout=10) as response:
            assert json.loads(response.read()) == 0
        out = tmp_path / "pretrained"
        started = _prefect(
            env,
            "deployment",
            "run",
            "pretrain-domain/pretrain-domain",
            "-p",
            f"shards_url={curated_shards}",
            "-p",
            f"output_url={out}",
            "-p",
            f"base_model={tiny_dir}",
            "-p",
            "steps=3",
            "-p",
            "experiment=e4t-deployment-test",
        )
        run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", started).group(1)
        worker = start_worker(root, api, "e4t-process", run_once=True)
        deadline = time.monotonic() + 600
        state = None
        while time.monotonic() < deadline:
            state = _flow_run(api, run_id)["state"]["type"]
            if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(2)
        log = (root / "worker-e4t-process.log").read_text()
        assert state == "COMPLETED", f"flow run ended {state}:\n{log[-4000:]}"
        result = json.loads((out / "launch.json").read_text())
        assert result["registered"] and result["alias_uri"] == "models:/e4t-faces@candidate"
        assert (out / "model" / "e4t_config.json").exists()

        # the folder watcher starts a personalize-bulk run for each READY batch, once
        inbox = tmp_path / "inbox"
        (inbox / "batch-1").mkdir(parents=True)
        (inbox / "batch-1" / "a.jpg").write_bytes(b"x")
        (inbox / "batch-2").mkdir()  # not READY yet
        (inbox / "batch-1" / "READY").write_text("")
        watch = [
            sys.executable,
            "-m",
            "flows.watch",
            str(inbox),
            "--out-root",
            str(tmp_path / "concepts"),
            "--model-uri",
            str(out / "model"),
            "--once",
        ]
        for _ in range(2):
            done = subprocess.run(
                watch,
                env={**env, "PREFECT_API_URL": api},
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 0, done.stderr[-3000:]
        state = json.loads((inbox / ".e4t-watch.json").read_text())
        assert list(state["batches"]) == ["batch-1"]
        run = _flow_run(api, state["batches"]["batch-1"]["flow_run_id"])
        assert run["parameters"]["images_url"] == str(inbox / "batch-1")
        assert run["state"]["type"] == "SCHEDULED"  # waits for a worker
    finally:
        if worker is not None:
            worker.stop()
        server.stop()


def test_no_flow_parameter_help_holds_a_tag_the_form_would_swallow() -> None:
    """The Prefect UI renders a flow's description and its parameters' help as Markdown with
    HTML: a ``<domain>`` there vanishes ("registered as e4t-."). Every flow in flows/ is
    checked, so such a placeholder cannot come back."""
    import importlib
    import pkgutil

    from prefect import Flow

    import flows

    found: dict[str, Flow] = {}
    for info in pkgutil.iter_modules(flows.__path__):
        module = importlib.import_module(f"flows.{info.name}")
        for value in vars(module).values():
            if isinstance(value, Flow) and value.__module__ == module.__name__:
                found[value.name] = value
    assert {"e4t-pipeline", "pretrain-domain", "evaluate", "personalize-bulk"} <= set(found)
    swallowed = []
    for name, flow in found.items():
        texts = {"(description)": flow.description or ""}
        for param, schema in flow.parameters.properties.items():
            texts[param] = str(schema.get("description") or "")
        assert len(texts) > 1, f"{name}: no parameter help parsed"
        swallowed += [(name, k, t) for k, t in texts.items() if re.search(r"<[A-Za-z/!]", t)]
    assert swallowed == []
