"""Launch domain pretraining under torchrun and track it: one way to start training.

The launcher validates inputs before any heavy work, opens the MLflow run, starts
``torchrun ... -m e4t.training.pretrain``, streams every line of its output to the caller
(the Prefect task turns them into its run log and a progress artifact), fails when
training fails, and registers the final model as a new version of ``e4t-<domain>`` with
the alias ``candidate``.

One node: ``--standalone``. Several nodes: the usual c10d rendezvous (``rdzv_endpoint``
``host:port`` reachable from every node, the same ``rdzv_id``); each node runs this
launcher with its ``node_rank``, and node 0 tracks and registers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from e4t import io as eio
from e4t.config import ConfigError, LaunchConfig, PretrainConfig, config_hash, global_batch_size
from e4t.data.loader import dataset_identity, shard_urls
from e4t.models.base import check_base_model
from e4t.training.distributed import EXPECTED_WORLD_ENV

logger = logging.getLogger(__name__)


class TrainingFailed(RuntimeError):
    pass


def validate_inputs(config: PretrainConfig) -> list[str]:
    """Fail fast, naming the bad input: shards present, base model present."""
    urls = shard_urls(config.data.shards)
    check_base_model(config.model.base_model)
    return urls


def torchrun_command(
    config_path: str, output_url: str, run_id: str | None, launch: LaunchConfig, rdzv_id: str
) -> list[str]:
    """``torchrun ... -m e4t.training.pretrain --config FILE``: the resolved config crosses
    the process boundary as one JSON file, validated once per rank."""
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if launch.nnodes == 1:
        cmd += ["--standalone"]
    else:
        if not launch.rdzv_endpoint:
            raise ValueError("several nodes need rdzv_endpoint=HOST:PORT reachable by all nodes")
        cmd += [
            "--nnodes",
            str(launch.nnodes),
            "--node-rank",
            str(launch.node_rank),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            launch.rdzv_endpoint,
            "--rdzv-id",
            rdzv_id,
        ]
    cmd += [
        "--nproc-per-node",
        str(launch.nproc_per_node),
        "-m",
        "e4t.training.pretrain",
        "--config",
        config_path,
        "--output",
        output_url,
    ]
    if run_id:
        cmd += ["--run-id", run_id]
    return cmd


def rendezvous_id(
    launch: LaunchConfig, config_hash: str, output_url: str, run_id: str | None
) -> str:
    """The torchrun rendezvous id. Every node of a job must name the same one without
    talking to the others first, so with several nodes it comes from what they share: the
    config and the output URL."""
    if launch.nnodes > 1:
        return hashlib.sha256(f"{config_hash}\n{output_url}".encode()).hexdigest()[:12]
    return run_id or uuid.uuid4().hex[:12]


def read_launch_state(output_url: str, config: PretrainConfig) -> dict[str, Any]:
    """What an earlier launch into ``output_url`` left in ``launch.json`` ({} when none);
    refuses an output folder that holds a pretraining with another config."""
    state_url = eio.join(output_url, "launch.json")
    previous = json.loads(eio.read_text(state_url)) if eio.exists(state_url) else {}
    if previous.get("config_hash", config_hash(config)) != config_hash(config):
        raise ConfigError(
            f"{output_url} already holds a pretraining with another config (see {state_url}): "
            "write to a new output folder, or delete that one to start over"
        )
    return previous


def start_run(
    config: PretrainConfig, output_url: str, launch: LaunchConfig, previous: dict[str, Any]
) -> str:
    """The MLflow run of this pretraining: the earlier launch's, or a new one."""
    from e4t.tracking import start_pretrain_run

    if previous.get("run_id"):
        return str(previous["run_id"])
    return start_pretrain_run(
        config.model_dump(mode="json"),
        output_url,
        dataset_identity(config.data.shards),
        config.experiment,
        {
            "e4t.nproc_per_node": str(launch.nproc_per_node),
            "e4t.nnodes": str(launch.nnodes),
            # samples per optimizer step over all ranks
            "e4t.global_batch": str(global_batch_size(config, launch.world_size)),
        },
    )


def stream_torchrun(
    cmd: list[str],
    env: dict[str, str],
    on_line: Callable[[str], None] | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run ``cmd``, handing each output line to ``on_line`` and each JSON event line to
    ``on_event``; returns rank 0's ``done`` event, or raises :class:`TrainingFailed` with
    the last lines of output."""
    tail: deque[str] = deque(maxlen=40)
    result: dict[str, Any] = {}
    logger.info("launching: %s", " ".join(cmd))
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if on_line:
                on_line(line)
            if line.startswith("{"):
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if on_event:
                    on_event(event)
                if event.get("event") == "done":
                    result = event
        code = proc.wait()
    if code != 0:
        raise TrainingFailed(f"torchrun exited with {code}; last output:\n" + "\n".join(tail))
    return result


def run_ranks(
    config: PretrainConfig,
    output_url: str,
    run_id: str | None,
    launch: LaunchConfig,
    rdzv_id: str,
    on_line: Callable[[str], None] | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """This node's ranks under torchrun, the resolved config handed over as one JSON file;
    returns rank 0's ``done`` event ({} on other nodes)."""
    with tempfile.TemporaryDirectory() as tmp:
        config_path = str(Path(tmp) / "config.json")
        Path(config_path).write_text(config.model_dump_json())
        cmd = torchrun_command(config_path, output_url, run_id, launch, rdzv_id=rdzv_id)
        env = {
            **os.environ,
            EXPECTED_WORLD_ENV: str(launch.world_size),
            "PYTHONUNBUFFERED": "1",
        }
        if config.model.device == "cpu":
            # one BLAS thread pool per core, not per process
            env.setdefault(
                "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // launch.nproc_per_node))
            )
        return stream_torchrun(cmd, env, on_line, on_event)


def run_pretraining(
    config: PretrainConfig,
    output_url: str,
    launch: LaunchConfig | None = None,
    track: bool = True,
    on_line: Callable[[str], None] | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train under torchrun; returns the result, the MLflow run and the model version.

    Checks the inputs and the output folder (a finished, registered one returns at once),
    opens the run (node 0), records the launch in ``launch.json``, runs the ranks, then
    registers the model and records that too."""
    launch = launch or LaunchConfig()
    validate_inputs(config)
    main_node = launch.node_rank == 0
    previous = read_launch_state(output_url, config)
    if previous.get("registered") and main_node:
        logger.info("%s is already trained and registered; nothing to do", output_url)
        return previous
    chash = config_hash(config)
    run_id = start_run(config, output_url, launch, previous) if track and main_node else None
    state_url = eio.join(output_url, "launch.json")
    if main_node:  # tracked or not: the output folder names its config from the start
        eio.write_text(
            state_url,
            json.dumps({"run_id": run_id, "output_url": output_url, "config_hash": chash}),
        )
    rdzv_id = rendezvous_id(launch, chash, output_url, previous.get("run_id"))
    result = run_ranks(config, output_url, run_id, launch, rdzv_id, on_line, on_event)
    out: dict[str, Any] = {
        "output_url": output_url,
        "run_id": run_id,
        "result": result,
        "config_hash": chash,
    }
    if track and main_node and run_id:
        out.update(register(output_url, run_id, config))
        out["registered"] = True
        eio.write_text(state_url, json.dumps(out))
    return out


def register(output_url: str, run_id: str, config: PretrainConfig) -> dict[str, str]:
    from e4t.tracking import register_domain_model

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "domain_model"
        prefix = eio.join(output_url, "model")
        for url in eio.list_files(prefix):
            target = local / eio.relative_to(url, prefix)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(eio.read_bytes(url))
        return register_domain_model(run_id, local, config.domain, config.model.base_model)
