"""Scale-out on a real Dask cluster: curate-domain and personalize-bulk through prefect-dask on a
``LocalCluster`` of 2 worker processes give what the local run gives."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[str]:
    """A scheduler and two workers started as processes, as on a real cluster: only the
    first worker declares a GPU (``--resources GPU=1``)."""
    address = f"tcp://127.0.0.1:{_free_port()}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    dask = [str(Path(sys.executable).parent / "dask")]
    procs = [
        subprocess.Popen(
            [*dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
             "--no-dashboard"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "sched.log", "w"),
        )
    ]  # fmt: skip
    from distributed import Client

    deadline = time.monotonic() + 60
    while True:
        try:
            client = Client(address, timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    for i, extra in enumerate((["--resources", "GPU=1"], [])):
        procs.append(
            subprocess.Popen(
                [*dask, "worker", address, "--nthreads", "1", "--nworkers", "1",
                 "--no-dashboard", "--name", f"w{i}", *extra],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                stderr=open(tmp_path / f"worker{i}.log", "w"),
            )
        )  # fmt: skip
    client.wait_for_workers(2, timeout=120)
    client.close()
    try:
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Torch's intra-op threads for the block. CPU float sums depend on how many threads
    split them, and a Dask worker runs with OMP_NUM_THREADS=1 per worker thread (its
    nanny's default): the local run it is compared with must use as many."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _members(shards: Path) -> dict[str, bytes]:
    """Every shard member's bytes by shard and member name (the tar headers aside)."""
    out = {}
    for shard in sorted(shards.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                data = tar.extractfile(member)
                out[f"{shard.name}/{member.name}"] = data.read() if data else b""
    return out


def test_curation_on_a_dask_cluster_writes_the_local_runs_shards(
    prefect_server: None, photos_dir: Path, tmp_path: Path
) -> None:
    from flows.curate_domain import curate_domain

    results = {}
    for runner in ("threads", "dask"):
        results[runner] = curate_domain(
            source_url=str(photos_dir),
            output_url=str(tmp_path / runner),
            preset="tiny",
            overrides={"shards.num_images_per_partition": 5},
            task_runner=runner,
            max_workers=2,
            track=False,
        )
    local, dask = results["threads"]["stats"], results["dask"]["stats"]
    assert dask["num_inputs"] == local["num_inputs"] == 10
    assert dask["manifest_sha256"] == local["manifest_sha256"]
    assert len(dask["shards"]) == 2
    members = _members(tmp_path / "threads")
    assert members and members == _members(tmp_path / "dask")


def _personalize_locally_and_on_dask(
    photos_dir: Path, tiny_dir: Path, tmp_path: Path, **dask_options: Any
) -> dict[str, dict[str, bytes]]:
    """Three portraits personalized with threads, then on Dask (``dask_options``), with as
    many torch threads as a Dask worker; each run's concept bytes by concept id."""
    from e4t.config import ModelConfig
    from e4t.models.e4t_model import E4TModel
    from flows.personalize_bulk import personalize_bulk

    images = tmp_path / "images"
    images.mkdir()
    for name in ("obama.jpg", "biden.jpg", "astronaut.png"):
        shutil.copyfile(photos_dir / name, images / name)
    domain = E4TModel.from_config(
        ModelConfig(base_model=str(tiny_dir), encoder={"hidden_dim": 32})
    ).save_pretrained(tmp_path / "domain")
    concepts = {}
    for runner, options in (("threads", {"max_workers": 1}), ("dask", dask_options)):
        out = tmp_path / runner
        with intra_op_threads(1):
            result = personalize_bulk(
                images_url=str(images),
                model_uri=str(domain),
                output_url=str(out),
                preset="tiny",
                steps=2,
                concepts_per_pass=1,
                task_runner=runner,
                track=False,
                **options,
            )
        assert result["summary"]["num_done"] == 3, result["summary"]
        concepts[runner] = {
            p.parent.name: p.read_bytes() for p in out.glob("concepts/*/concept.safetensors")
        }
    assert len(concepts["threads"]) == 3
    return concepts


def test_personalization_on_a_dask_cluster_makes_the_local_runs_concepts(
    prefect_server: None, photos_dir: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    concepts = _personalize_locally_and_on_dask(photos_dir, tiny_dir, tmp_path, max_workers=2)
    assert concepts["dask"] == concepts["threads"]


def test_passes_run_on_the_workers_that_declare_the_resources_they_need(
    prefect_server: None, photos_dir: Path, tiny_dir: Path, tmp_path: Path, dask_cluster: str
) -> None:
    """An existing cluster (``dask_address``) whose GPU worker declares ``GPU=1``: with
    ``dask_resources={"GPU": 1}`` every pass runs there, one at a time, and the concepts are
    the local run's."""
    from distributed import Client

    concepts = _personalize_locally_and_on_dask(
        photos_dir,
        tiny_dir,
        tmp_path,
        max_workers=2,
        dask_address=dask_cluster,
        dask_resources={"GPU": 1},
    )
    assert concepts["dask"] == concepts["threads"]
    with Client(dask_cluster) as client:
        executed = client.run(
            lambda dask_worker: (dask_worker.name, dask_worker.state.executed_count)
        )
    by_name = dict(executed.values())
    assert by_name["w0"] >= 3 and by_name["w1"] == 0, by_name


def test_bench_personalize_on_dask_prints_concepts_per_minute() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "e4t.cli", "bench", "personalize", "--runner", "dask",
         "--workers", "2", "--tune-steps", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "runner=dask, workers=2" in done.stdout
    rate = float(re.search(r"([\d.]+) concepts/minute", done.stdout)[1])
    assert rate > 0
