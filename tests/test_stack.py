"""The local stack for real: SeaweedFS S3, an MLflow server (artifacts in S3), a Prefect
server and process worker. ``e4t-pipeline`` runs through ``prefect deployment run`` with
its data in s3://, and the MLflow server ends up holding every stage's runs."""

from __future__ import annotations

import json
import os
import re
import stat
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.prefect_server import prefect_cli
from infra.stack import Stack, down, status, up

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    started = up(root)
    try:
        yield started
    finally:
        down(root)
        assert not any(status(root)["alive"].values())  # stopped by PID, nothing left


def _env(stack: Stack) -> dict[str, str]:
    return {
        **os.environ,
        **stack.env(),
        "PREFECT_HOME": str(stack.root / "prefect" / "home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def _prefect(stack: Stack, *args: str) -> str:
    return prefect_cli(_env(stack), *args)


def _api(stack: Stack, path: str) -> Any:
    request = urllib.request.Request(
        f"{stack.prefect_api}{path}", headers={"Authorization": _prefect_auth(stack)}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _run_deployment(stack: Stack, name: str, params: dict[str, Any], timeout_s: float) -> str:
    """Start a deployment run and wait for it to end; it must complete."""
    run_id = _start_deployment(stack, name, params)
    state = _wait_state(stack, run_id, {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}, timeout_s)
    log = (stack.root / "prefect" / "worker-e4t-process.log").read_text()
    assert state == "COMPLETED", f"{name} ended {state}:\n{log[-5000:]}"
    return run_id


def _mlflow(stack: Stack) -> Any:
    import mlflow

    env = stack.env()
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        os.environ[key] = env[key]  # the server's basic auth
    mlflow.set_tracking_uri(stack.mlflow_uri)
    return mlflow


@pytest.fixture(scope="module")
def deployed(stack: Stack, photos_dir: Path) -> Stack:
    """The sample photos in s3://e4t/photos (uploaded with the README's command) and every
    deployment of prefect.yaml."""
    import shutil
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for photo in sorted(photos_dir.iterdir()):
            if photo.name not in ("coffee.png", "chelsea.png"):
                shutil.copyfile(photo, Path(tmp) / photo.name)
        done = subprocess.run(
            [sys.executable, "-m", "e4t.cli", "upload", f"{tmp}/", "s3://e4t/photos/"],
            env=_env(stack), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"uploaded {len(list(Path(tmp).iterdir()))} files" in done.stdout
    _prefect(stack, "--no-prompt", "deploy", "--all")
    return stack


@pytest.fixture
def s3_env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in stack.env().items():
        monkeypatch.setenv(key, value)


def test_pipeline_deployment_on_the_stack(deployed: Stack, s3_env: None, tmp_path: Path) -> None:
    from e4t import io as eio

    stack = deployed
    _run_deployment(
        stack,
        "e4t-pipeline/e4t-pipeline",
        {
            "photos_url": "s3://e4t/photos",
            "work_url": "s3://e4t/runs/stack",
            "base_model": str(tmp_path / "models" / "tiny"),
            "pretrain_steps": 4,
            "domain": "stackfaces",
        },
        timeout_s=1200,
    )
    # every stage wrote to S3
    for prefix in ("shards/manifest.jsonl", "pretrain/launch.json", "concepts/results.jsonl"):
        assert eio.exists(f"s3://e4t/runs/stack/{prefix}"), prefix
    assert eio.exists("s3://e4t/runs/stack/evaluation/report.html")

    mlflow = _mlflow(stack)
    client = mlflow.MlflowClient()

    def runs(experiment: str, where: str = "") -> list[Any]:
        found = mlflow.search_runs(
            experiment_names=[experiment], filter_string=where, output_format="list"
        )
        assert found, f"no runs in {experiment} {where}"
        return list(found)

    dataset = runs("e4t-datasets", "tags.`e4t.dataset.url` = 's3://e4t/runs/stack/shards'")
    pretrain = runs("e4t-pretrain", "tags.`e4t.output_url` = 's3://e4t/runs/stack/pretrain'")
    assert pretrain[0].data.tags["e4t.dataset.run_id"] == dataset[0].info.run_id
    version = client.get_model_version_by_alias("e4t-stackfaces", "candidate")
    assert version.run_id == pretrain[0].info.run_id
    concepts = runs("e4t-personalize", "tags.`e4t.stage` = 'personalize-concept'")
    assert len(concepts) >= 4
    evaluation = runs("e4t-evaluate", f"tags.`e4t.model_version` = '{version.version}'")
    tags = evaluation[0].data.tags
    assert tags["e4t.model_name"] == "e4t-stackfaces" and tags["e4t.promotion"] == "promoted"
    assert set(tags["e4t.concept_run_ids"].split(",")) == {c.info.run_id for c in concepts}
    assert client.get_model_version_by_alias("e4t-stackfaces", "champion").version == (
        version.version
    )
    # the MLflow server keeps its artifacts in the S3 store
    assert eio.list_files("s3://mlflow/artifacts")

    # no credential anywhere a person or a later job can read
    found = _secret_leaks(stack, [*dataset, *pretrain, *concepts, *evaluation], client)
    assert found == [], found


def _secrets(stack: Stack) -> dict[str, str]:
    env = stack.env()
    creds = json.loads((stack.root / "credentials.json").read_text())
    return {
        "S3 secret key": env["AWS_SECRET_ACCESS_KEY"],
        "S3 access key": env["AWS_ACCESS_KEY_ID"],
        "Prefect password": creds["prefect_password"],
        "MLflow password": creds["mlflow_password"],
    }


def _secret_leaks(stack: Stack, runs: list[Any], client: Any) -> list[str]:
    """Where a stack credential shows up: service and worker logs; every flow run's
    parameters (subflows included); Prefect artifacts; MLflow params, tags and artifacts
    (report, configs); S3 objects' metadata and the HTML report."""
    import s3fs

    from e4t import io as eio

    secrets = _secrets(stack)
    places: list[tuple[str, str]] = []
    for log in stack.root.rglob("*.log"):
        places.append((str(log), log.read_text(errors="replace")))
    for run in _api_post(stack, "/flow_runs/filter", {"limit": 200}):
        places.append((f"flow run {run['name']} parameters", json.dumps(run["parameters"])))
    for artifact in _api_post(stack, "/artifacts/filter", {"limit": 200}):
        places.append((f"Prefect artifact {artifact.get('key')}", json.dumps(artifact["data"])))
    for run in runs:
        values = json.dumps(run.data.params) + json.dumps(run.data.tags)
        places.append((f"MLflow run {run.info.run_id} params/tags", values))
        pending = [a for a in client.list_artifacts(run.info.run_id)]
        while pending:
            item = pending.pop()
            if item.is_dir:
                pending += client.list_artifacts(run.info.run_id, item.path)
            elif item.path.endswith((".json", ".yaml", ".yml", ".html", ".txt", ".jsonl", ".py")):
                local = client.download_artifacts(run.info.run_id, item.path)
                places.append(
                    (f"MLflow artifact {item.path}", Path(local).read_text(errors="replace"))
                )
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **eio.s3_storage_options())
    for bucket in ("e4t", "mlflow"):
        for key in fs.find(bucket):
            info = fs.info(key)
            meta = json.dumps({k: str(v) for k, v in info.items() if k not in ("size", "name")})
            places.append((f"s3://{key} metadata", meta))
    places.append(("report.html", eio.read_text("s3://e4t/runs/stack/evaluation/report.html")))
    return [
        f"{what} in {where}" for where, text in places for what, s in secrets.items() if s in text
    ]


def _api_post(stack: Stack, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        f"{stack.prefect_api}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": _prefect_auth(stack)},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _prefect_auth(stack: Stack) -> str:
    from infra.stack import basic_auth_header

    user, password = stack.env()["PREFECT_API_AUTH_STRING"].split(":", 1)
    return basic_auth_header(user, password)


def test_the_servers_refuse_requests_without_credentials(stack: Stack) -> None:
    """Any local user could otherwise start flows with arbitrary paths or move @champion:
    both servers answer 401 without the stack's credentials, 200 with them."""
    import urllib.error

    from infra.stack import basic_auth_header

    env = stack.env()
    mlflow_auth = basic_auth_header(
        env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]
    )
    checks = [
        (f"{stack.prefect_api}/flows/filter", b"{}", _prefect_auth(stack)),
        (f"{stack.prefect_api}/deployments/filter", b"{}", _prefect_auth(stack)),
        (f"{stack.mlflow_uri}/api/2.0/mlflow/experiments/search?max_results=1", None, mlflow_auth),
        (f"{stack.mlflow_uri}/api/2.0/mlflow/registered-models/search", None, mlflow_auth),
    ]
    for url, body, auth in checks:
        for headers, want in (
            ({}, 401),
            ({"Authorization": "Basic YWRtaW46d3Jvbmc="}, 401),
            ({"Authorization": auth}, 200),
        ):
            request = urllib.request.Request(
                url, data=body, headers={"Content-Type": "application/json", **headers}
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    status = response.status
            except urllib.error.HTTPError as err:
                status = err.code
            assert status == want, (url, headers.keys(), status)
    assert stat.S_IMODE((stack.root / "stack.env").stat().st_mode) == 0o600
    assert stat.S_IMODE((stack.root / "credentials.json").stat().st_mode) == 0o600


def test_mlflow_ui_compares_two_pretraining_runs(deployed: Stack, tmp_path: Path) -> None:
    from tests.browser import headless_page

    stack = deployed
    for name in ("one", "two"):
        _run_deployment(
            stack,
            "pretrain-domain/pretrain-domain",
            {
                "shards_url": "s3://e4t/runs/stack/shards",
                "output_url": f"s3://e4t/runs/compare-{name}",
                "base_model": str(tmp_path / "models" / "tiny"),
                "steps": 2,
                "domain": "compare",
                "experiment": "e4t-compare",
            },
            timeout_s=600,
        )
    mlflow = _mlflow(stack)
    found = mlflow.search_runs(experiment_names=["e4t-compare"], output_format="list")
    assert len(found) == 2
    # each run logged the held-out loss on the same fixed draws (2 steps: once, at the end)
    assert all("heldout_loss" in r.data.metrics for r in found)
    ids = [r.info.run_id for r in found]
    experiment = found[0].info.experiment_id
    query = urllib.parse.urlencode(
        {"runs": json.dumps(ids), "experiments": json.dumps([experiment])}
    )
    from infra.stack import basic_auth_header

    env = stack.env()
    auth = basic_auth_header(env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
    with headless_page() as page:
        page.call("Network.enable")
        page.call("Network.setExtraHTTPHeaders", headers={"Authorization": auth})
        page.goto(f"{stack.mlflow_uri}/#/compare-runs?{query}")
        wanted = ["loss_diffusion", "samples_per_second", "grad_norm", "heldout_loss"]
        page.wait_for(" && ".join(f"document.body.innerText.includes('{m}')" for m in wanted), 90)
        text = page.evaluate("document.body.innerText")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(ARTIFACTS / "mlflow-compare-pretraining.png")
    for run_id in ids:
        assert run_id in text or found[0].info.run_name in text


def _start_deployment(
    stack: Stack, name: str, params: dict[str, Any], job_variables: dict[str, Any] | None = None
) -> str:
    args = [a for k, v in params.items() for a in ("-p", f"{k}={json.dumps(v)}")]
    for k, v in (job_variables or {}).items():
        args += ["--job-variable", f"{k}={json.dumps(v)}"]
    started = _prefect(stack, "deployment", "run", name, *args)
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", started)
    assert match, started
    return match.group(1)


def _wait_state(stack: Stack, run_id: str, states: set[str], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = str(_api(stack, f"/flow_runs/{run_id}")["state"]["type"])
        if state in states:
            return state
        time.sleep(2)
    raise TimeoutError(f"flow run {run_id} never reached {states}")


def _children(stack: Stack, parent_id: str) -> list[dict[str, Any]]:
    body = json.dumps({"flow_runs": {"parent_flow_run_id": {"any_": [parent_id]}}}).encode()
    request = urllib.request.Request(
        f"{stack.prefect_api}/flow_runs/filter",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": _prefect_auth(stack)},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return list(json.loads(response.read()))


def test_cancelled_pipeline_rerun_skips_finished_work(
    deployed: Stack, s3_env: None, tmp_path: Path
) -> None:
    """Cancel e4t-pipeline while it pretrains; the rerun keeps the curated shards as they
    are and resumes pretraining in the same MLflow run."""
    import s3fs

    from e4t import io as eio

    stack = deployed
    params = {
        "photos_url": "s3://e4t/photos",
        "work_url": "s3://e4t/runs/cancel",
        "base_model": str(tmp_path / "models" / "tiny"),
        "pretrain_steps": 30,
        "domain": "cancelfaces",
        "run_evaluation": False,
    }
    first = _start_deployment(stack, "e4t-pipeline/e4t-pipeline", params)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # until pretraining has written its MLflow run id
        if eio.exists("s3://e4t/runs/cancel/pretrain/launch.json"):
            break
        assert _api(stack, f"/flow_runs/{first}")["state"]["type"] in (
            "SCHEDULED",
            "PENDING",
            "RUNNING",
        )
        time.sleep(1)
    _prefect(stack, "flow-run", "cancel", first)
    assert _wait_state(stack, first, {"CANCELLED", "CANCELLING"}, 120) in (
        "CANCELLED",
        "CANCELLING",
    )
    _wait_state(stack, first, {"CANCELLED"}, 120)
    launch = json.loads(eio.read_text("s3://e4t/runs/cancel/pretrain/launch.json"))
    assert "registered" not in launch  # stopped before the end
    fs = s3fs.S3FileSystem(
        client_kwargs={"endpoint_url": stack.s3_endpoint}, skip_instance_cache=True
    )
    shards = {p: fs.info(p)["ETag"] for p in fs.find("e4t/runs/cancel/shards")}
    stats_modified = fs.info("e4t/runs/cancel/shards/stats.json")["LastModified"]

    second = _start_deployment(stack, "e4t-pipeline/e4t-pipeline", params)
    assert _wait_state(stack, second, {"COMPLETED", "FAILED", "CRASHED"}, 900) == "COMPLETED"
    fs.invalidate_cache()
    assert fs.info("e4t/runs/cancel/shards/stats.json")["LastModified"] == stats_modified
    assert {p: fs.info(p)["ETag"] for p in shards} == shards  # curation skipped
    done = json.loads(eio.read_text("s3://e4t/runs/cancel/pretrain/launch.json"))
    assert done["registered"] and done["run_id"] == launch["run_id"]  # the same run, resumed
    names = {c["name"] for c in _children(stack, second)}
    assert names  # the rerun ran its stages as subflows


def test_curation_survives_an_s3_restart(deployed: Stack, s3_env: None) -> None:
    """SeaweedFS stopped and started again (same ports, same data) mid-curation: partition
    tasks retry, and the job finishes with every input accounted for."""
    from e4t import io as eio
    from infra.processes import Background
    from infra.seaweedfs import SeaweedS3

    stack = deployed
    run_id = _start_deployment(
        stack,
        "curate-domain/curate-domain",
        {
            "source_url": "s3://e4t/photos",
            "output_url": "s3://e4t/runs/s3-restart",
            "preset": "tiny",
            "overrides": {"shards.num_images_per_partition": 1},
            "max_workers": 1,
        },
    )
    work = "s3://e4t/runs/s3-restart/_work"
    parts: list[str] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not parts:
        if eio.exists(work):
            parts = [u for u in eio.list_files(work) if "/part-" in u]
        time.sleep(0.3)
    assert 0 < len(parts) < 8, "stop the store while partitions remain"
    pid_file = stack.root / "s3" / "weed.pid"
    Background(int(pid_file.read_text()), pid_file).stop()
    time.sleep(4)  # the store is down while partitions run
    creds = json.loads((stack.root / "credentials.json").read_text())
    SeaweedS3.start(stack.root / "s3", creds["access_key"], creds["secret_key"], reuse_ports=True)
    assert _wait_state(stack, run_id, {"COMPLETED", "FAILED", "CRASHED"}, 600) == "COMPLETED"
    stats = json.loads(eio.read_text("s3://e4t/runs/s3-restart/stats.json"))
    assert stats["num_inputs"] == 8
    manifest = eio.read_text("s3://e4t/runs/s3-restart/manifest.jsonl").splitlines()
    assert len({json.loads(r)["source"] for r in manifest}) == 8  # nothing lost


def test_worker_killed_mid_pretraining_then_the_rerun_resumes(
    deployed: Stack, s3_env: None, tmp_path: Path
) -> None:
    """SIGKILL the worker (and with it the flow run and torchrun) after the first
    checkpoint; a new worker and a rerun of the deployment resume from that checkpoint in
    the same MLflow run and finish. The trainer stops at a named fault point (it hangs right
    after committing step 10's checkpoint: E4T_FAULT_AT in this run's environment only), so
    the kill never races the end of the run."""
    from e4t import io as eio
    from e4t.training.checkpoint import complete_steps
    from infra.prefect_server import start_worker
    from infra.processes import Background
    from infra.stack import POOL

    stack = deployed
    out = "s3://e4t/runs/killed"
    params = {
        "shards_url": "s3://e4t/runs/stack/shards",
        "output_url": out,
        "base_model": str(tmp_path / "models" / "tiny"),
        "steps": 40,
        "domain": "killfaces",
        "experiment": "e4t-kill",
    }
    assert eio.exists("s3://e4t/runs/stack/shards/stats.json"), (
        "runs after test_pipeline_deployment_on_the_stack, on its shards"
    )
    first = _start_deployment(
        stack,
        "pretrain-domain/pretrain-domain",
        params,
        job_variables={"env": {"E4T_FAULT_AT": "checkpoint:10:hang"}},
    )
    checkpoints = eio.join(out, "checkpoints")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if eio.exists(checkpoints) and complete_steps(checkpoints):
            break
        time.sleep(0.5)
    assert complete_steps(checkpoints) == [10], "the trainer hangs right after step 10's"
    pid_file = stack.root / "prefect" / f"worker-{POOL}.pid"
    Background(int(pid_file.read_text()), pid_file).stop(signals=(9,))  # SIGKILL, no goodbye
    launch = json.loads(eio.read_text(eio.join(out, "launch.json")))
    assert "registered" not in launch

    start_worker(stack.root / "prefect", stack.prefect_api, POOL, extra_env=stack.env())
    _prefect(stack, "flow-run", "cancel", first)  # the orphaned run, so it is not picked up
    second = _start_deployment(stack, "pretrain-domain/pretrain-domain", params)
    assert _wait_state(stack, second, {"COMPLETED", "FAILED", "CRASHED"}, 900) == "COMPLETED"
    done = json.loads(eio.read_text(eio.join(out, "launch.json")))
    assert done["registered"] and done["run_id"] == launch["run_id"]  # same run, resumed
    assert done["result"]["step"] == 40
    log = (stack.root / "prefect" / f"worker-{POOL}.log").read_text()
    assert '"resumed"' in log, "the rerun resumed from the checkpoint"


def test_services_listen_on_loopback_only(stack: Stack) -> None:
    """Every listening socket of the stack's processes is bound to 127.0.0.1."""
    listening = _listening_sockets()
    pids = set()
    for pid_file in stack.root.rglob("*.pid"):
        pids |= _process_tree(int(pid_file.read_text()))
    inodes = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir() if fd_dir.exists() else []:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ours = [addr for inode, addr in listening.items() if inode in inodes]
    assert len(ours) >= 4  # S3 (and SeaweedFS's own ports), MLflow, Prefect
    assert all(host in ("127.0.0.1", "::1") for host, _ in ours), ours


def _listening_sockets() -> dict[str, tuple[str, int]]:
    """inode → (IPv4 address, port) of every LISTEN socket (IPv6 ones count as not local)."""
    out: dict[str, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            addr, port = fields[1].split(":")
            if table.endswith("6"):
                host = "::1" if addr == "0" * 31 + "1" else f"[{addr}]"
            else:
                host = ".".join(str(int(addr[i : i + 2], 16)) for i in (6, 4, 2, 0))
            out[fields[9]] = (host, int(port, 16))
    return out


def _process_tree(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for proc_stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(proc_stat.parent.name)] = int(
                proc_stat.read_text().rsplit(")", 1)[1].split()[1]
            )
        except (OSError, ValueError):
            continue
    found, grew = {pid}, True
    while grew:
        more = {child for child, parent in parents.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return found


def test_everything_the_stack_wrote_is_owner_only(deployed: Stack) -> None:
    """After the pipeline, the kill and the S3 restart above: the stack's folder is 0700 and
    what its services wrote — the uploaded photos (SeaweedFS), the MLflow and Prefect
    databases, the logs — is the owner's only, whatever the umask
    the stack started with. (Files a user's own client commands write inside keep that user's
    umask; the 0700 folder keeps them from everyone else.)"""
    root = deployed.root
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    written = [
        *(root / "s3").rglob("*"),
        *root.rglob("*.db"),
        *root.rglob("*.log"),
    ]
    assert [p for p in written if p.suffix == ".dat"], "the S3 store holds data"
    assert list(root.rglob("*.db")), "the databases are there"
    found = []
    for path in written:
        mode = stat.S_IMODE(path.lstat().st_mode)
        # SeaweedFS writes its volume-info files (.vif: no photo data) 0644 whatever the
        # umask; they sit in 0700 folders, and stack down / up lock them down too
        if not path.is_symlink() and mode & 0o077 and path.suffix != ".vif":
            found.append(f"{path.relative_to(root)} {oct(mode)}")
    assert found == [], found[:20]
