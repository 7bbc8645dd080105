"""Domain pretraining under torchrun on CPU (gloo), tracked in MLflow, run by Prefect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from e4t.config import ConfigError, LaunchConfig, PretrainConfig, load_config
from e4t.training.checkpoint import complete_steps
from e4t.training.launch import TrainingFailed, run_pretraining, torchrun_command

pytestmark = pytest.mark.slow


def _config(shards: Path, base: Path, **overrides: object) -> PretrainConfig:
    sets = {
        "data.shards": str(shards),
        "model.base_model": str(base),
        "train.checkpoint_every": 0,
        "train.preview_every": 0,
        "data.num_preview": 0,
        **overrides,
    }
    return load_config(PretrainConfig, "pretrain", "tiny", sets)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for part in ("encoder", "offsets"):
        for k, v in load_file(out / "model" / part / "diffusion_pytorch_model.safetensors").items():
            tensors[f"{part}.{k}"] = v
    return tensors


def test_two_processes_stay_in_sync_and_loss_falls(
    curated_shards: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    config = _config(
        curated_shards,
        tiny_dir,
        **{
            "train.num_steps": 24,
            "data.fixed_batch": True,
            "optim.lr": 1e-2,
            "optim.warmup_steps": 0,
            "optim.schedule": "constant",
        },
    )
    events: list[dict] = []
    result = run_pretraining(
        config,
        str(tmp_path / "out"),
        LaunchConfig(nproc_per_node=2),
        track=False,
        on_event=events.append,
    )
    losses = [e["loss"] for e in events if e.get("event") == "step"]
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.02, losses
    ranks = [json.loads(p.read_text()) for p in sorted((tmp_path / "out" / "ranks").glob("*.json"))]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["fingerprint"] == ranks[1]["fingerprint"] == result["result"]["fingerprint"]
    assert all(e["samples_per_second"] > 0 for e in events if e.get("event") == "step")


def test_trainable_clip_under_ddp_two_processes(
    curated_shards: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    """CLIP unfrozen under DDP (find_unused_parameters=False) on a bf16 model: 3 steps on 2
    processes, the CLIP layers the encoder reads are trained in fp32 and saved with the
    model, and both ranks end with the same weights."""
    from e4t.models.e4t_model import E4TModel

    config = _config(
        curated_shards,
        tiny_dir,
        **{
            "train.num_steps": 3,
            "train.trainable": ["encoder", "offsets", "clip"],
            "model.dtype": "bf16",
            "optim.lr": 1e-2,
            "optim.warmup_steps": 0,
        },
    )
    result = run_pretraining(
        config, str(tmp_path / "out"), LaunchConfig(nproc_per_node=2), track=False
    )
    ranks = [json.loads(p.read_text()) for p in sorted((tmp_path / "out" / "ranks").glob("*.json"))]
    assert len(ranks) == 2
    assert ranks[0]["fingerprint"] == ranks[1]["fingerprint"] == result["result"]["fingerprint"]
    trained = E4TModel.from_pretrained(tmp_path / "out" / "model")
    base = E4TModel.from_config(config.model)
    assert trained.clip_trained and trained.fingerprint() == result["result"]["fingerprint"]
    before = base.clip_state()
    moved = [n for n, v in trained.clip_state().items() if not torch.equal(v, before[n].float())]
    assert len(moved) > len(before) // 2, moved  # the CLIP layers did train


def test_two_nodes_on_one_host_train_like_one_node_of_two_processes(
    curated_shards: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    """Multi-node pretraining for real: two torchrun agents ("nodes", 1 process each) meet
    at a c10d rendezvous on 127.0.0.1, train 10 steps, and end with the weights of one
    node running 2 processes on the same data and seed."""
    import socket
    from concurrent.futures import ThreadPoolExecutor

    config = _config(curated_shards, tiny_dir, **{"train.num_steps": 10})
    run_pretraining(config, str(tmp_path / "one-node"), LaunchConfig(nproc_per_node=2), track=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = [
        LaunchConfig(nproc_per_node=1, nnodes=2, node_rank=r, rdzv_endpoint=f"127.0.0.1:{port}")
        for r in (0, 1)
    ]
    out = tmp_path / "two-nodes"
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda n: run_pretraining(config, str(out), n, track=False), nodes))
    ranks = [json.loads(p.read_text()) for p in sorted((out / "ranks").glob("*.json"))]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["fingerprint"] == ranks[1]["fingerprint"]
    assert any(r["result"].get("step") == 10 for r in runs)
    one, two = _weights(tmp_path / "one-node"), _weights(out)
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-6), name


@pytest.mark.parametrize("workers", [0, 2])
def test_kill_and_resume_equals_uninterrupted(
    curated_shards: Path, tiny_dir: Path, tmp_path: Path, workers: int
) -> None:
    """Killed right after a checkpoint and resumed, the run ends with the uninterrupted run's
    weights, also with 2 DataLoader workers (each skips only its own share of samples). The
    kill is a named fault point (E4T_FAULT_AT=checkpoint:8): the process SIGKILLs itself right
    after committing step 8's checkpoint, whatever the machine's speed."""
    config = _config(
        curated_shards,
        tiny_dir,
        **{"train.num_steps": 12, "train.checkpoint_every": 4, "data.num_workers": workers},
    )
    run_pretraining(config, str(tmp_path / "straight"), track=False)

    out = tmp_path / "killed"
    config_path = tmp_path / "config.json"
    config_path.write_text(config.model_dump_json())
    cmd = torchrun_command(str(config_path), str(out), None, LaunchConfig(), "kill-test")
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "E4T_EXPECTED_WORLD_SIZE": "1", "E4T_FAULT_AT": "checkpoint:8"},
    )
    assert done.returncode != 0, "the fault point killed the trainer"
    assert "SIGKILL" in done.stderr or "Signal 9" in done.stderr, done.stderr[-2000:]
    assert complete_steps(str(out / "checkpoints")) == [4, 8]
    assert not (out / "model").exists()  # killed before the end

    events: list[dict] = []
    run_pretraining(config, str(out), track=False, on_event=events.append)
    resumed = [e for e in events if e.get("event") == "resumed"]
    assert [e["step"] for e in resumed] == [8]
    straight, again = _weights(tmp_path / "straight"), _weights(out)
    assert straight.keys() == again.keys()
    for name in straight:
        assert torch.allclose(straight[name], again[name], atol=1e-6), name


def test_mlflow_run_previews_and_registered_alias(
    curated_shards: Path, tiny_dir: Path, tmp_path: Path, photos_dir: Path
) -> None:
    import base64

    import mlflow
    import pandas as pd

    from e4t.tracking import find_dataset_run_by_manifest, load_domain_model, tracking_uri

    config = _config(
        curated_shards,
        tiny_dir,
        **{
            "train.num_steps": 4,
            "train.preview_every": 2,
            "data.num_preview": 2,
            "train.preview_steps": 2,
        },
    )
    out = run_pretraining(config, str(tmp_path / "out"), track=True)
    mlflow.set_tracking_uri(tracking_uri())
    run = mlflow.get_run(out["run_id"])
    assert run.data.params["model.encoder.hidden_dim"] == "32"
    assert run.data.params["train.num_steps"] == "4"
    global_batch = config.train.batch_size * config.optim.grad_accum  # one process
    assert run.data.params["global_batch"] == str(global_batch)
    stats = json.loads((curated_shards / "stats.json").read_text())
    assert run.data.tags["e4t.dataset.manifest_sha256"] == stats["manifest_sha256"]
    assert run.data.tags["e4t.dataset.run_id"] == find_dataset_run_by_manifest(
        stats["manifest_sha256"]
    )
    client = mlflow.MlflowClient()
    history = client.get_metric_history(out["run_id"], "loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    for metric in ("reg_embedding", "reg_weights", "lr", "samples_per_second", "peak_memory_gib"):
        assert metric in run.data.metrics
    previews = {a.path for a in client.list_artifacts(out["run_id"], "previews")}
    assert {"previews/step-000002.png", "previews/step-000004.png"} <= previews
    # the held-out diffusion loss at every preview: fixed draws, so a comparable curve
    heldout = client.get_metric_history(out["run_id"], "heldout_loss")
    assert [m.step for m in heldout] == [2, 4]
    assert all(0 < m.value < 10 for m in heldout)

    version = client.get_model_version_by_alias("e4t-faces", "candidate")
    assert str(version.version) == out["version"] and version.run_id == out["run_id"]
    # runs and versions a person can tell apart: what differs is in the name and the tags
    assert run.info.run_name.startswith("pretrain-faces-4steps-"), run.info.run_name
    assert version.tags["e4t.train.num_steps"] == "4"
    assert version.tags["e4t.fingerprint"] == out["result"]["fingerprint"]
    assert version.tags["e4t.dataset.run_id"] == run.data.tags["e4t.dataset.run_id"]
    assert float(version.tags["e4t.heldout_loss"]) == pytest.approx(heldout[-1].value, abs=1e-5)
    assert "4 pretraining steps" in version.description
    model = load_domain_model("models:/e4t-faces@candidate")
    assert model.fingerprint() == out["result"]["fingerprint"]
    pyfunc = mlflow.pyfunc.load_model("models:/e4t-faces@candidate")
    image = base64.b64encode((photos_dir / "biden.jpg").read_bytes()).decode()
    result = pyfunc.predict(
        pd.DataFrame([{"image": image, "prompt": "a photo of {}", "seed": 1}]),
        params={"num_steps": 2},
    )
    assert len(result) == 1 and base64.b64decode(result.image[0])[:8] == b"\x89PNG\r\n\x1a\n"

    # a rerun of the same job finds it registered and does nothing
    again = run_pretraining(config, str(tmp_path / "out"), track=True)
    assert again["version"] == out["version"]
    # ... and a rerun with another config into the finished output is refused, not skipped
    other = config.model_copy(update={"train": config.train.model_copy(update={"num_steps": 5})})
    with pytest.raises(ConfigError, match="another config"):
        run_pretraining(other, str(tmp_path / "out"), track=True)
    with pytest.raises(ConfigError, match="another config"):
        run_pretraining(other, str(tmp_path / "out"), track=False)


def test_a_single_process_copy_of_a_distributed_launch_is_refused(
    curated_shards: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    config_path = tmp_path / "config.json"
    config_path.write_text(_config(curated_shards, tiny_dir).model_dump_json())
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "e4t.training.pretrain",
            "--config",
            str(config_path),
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "E4T_EXPECTED_WORLD_SIZE": "2"},
    )
    assert done.returncode != 0 and "launched for 2 processes but WORLD_SIZE=1" in done.stderr


def test_missing_inputs_fail_fast(curated_shards: Path, tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"stats\.json"):
        run_pretraining(_config(tmp_path / "nothing", tiny_dir), str(tmp_path / "o"), track=False)
    with pytest.raises(FileNotFoundError, match="init-model"):
        run_pretraining(
            _config(curated_shards, tmp_path / "no-model"), str(tmp_path / "o"), track=False
        )
    bad = _config(curated_shards, tiny_dir, **{"model.class_word": "photorealistic"})
    with pytest.raises(TrainingFailed, match="one token"):
        run_pretraining(bad, str(tmp_path / "o"), track=False)


def test_flow_fails_fast_on_bad_inputs_and_when_training_fails(
    prefect_server: None, curated_shards: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    from flows.pretrain_domain import pretrain_domain

    state = pretrain_domain(
        shards_url=str(tmp_path / "missing"),
        output_url=str(tmp_path / "a"),
        base_model=str(tiny_dir),
        init_arch=None,
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(FileNotFoundError, match="stats"):
        state.result()
    assert not (tmp_path / "a").exists()  # nothing heavy started

    state = pretrain_domain(
        shards_url=str(curated_shards),
        output_url=str(tmp_path / "b"),
        base_model=str(tiny_dir),
        init_arch=None,
        steps=2,
        overrides={"model.class_word": "photorealistic"},
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(TrainingFailed, match="one token"):
        state.result()


def test_bench_pretrain_prints_both_rates_and_the_ratio() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "e4t.cli",
            "bench",
            "pretrain",
            "--global-batch",
            "2",
            "--train-steps",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 process:" in done.stdout and "2 processes:" in done.stdout
    assert "ratio (2 processes / 1 process):" in done.stdout


def test_the_loader_pins_its_batches_only_for_a_gpu() -> None:
    """Batches bound for a GPU come from pinned host memory (asynchronous copies); on a CPU
    pinning would only cost: the DataLoader's options say which."""
    import torch

    from e4t.training.pretrain import loader_options, to_batch

    assert loader_options(torch.device("cuda", 0), 2)["pin_memory"] is True
    cpu = loader_options(torch.device("cpu"), 3)
    assert cpu == {"batch_size": None, "num_workers": 3, "pin_memory": False}
    raw = {
        "pixel_values": torch.ones(1, 3, 4, 4),
        "clip_pixel_values": torch.zeros(1, 3, 2, 2),
        "prompts": ["a photo of {}"],
        "mask": torch.ones(1, 1, 4, 4),
    }
    batch = to_batch(raw, torch.device("cpu"))
    assert batch.prompts == ["a photo of {}"] and torch.equal(batch.mask, raw["mask"])
