"""Training checkpoints as safetensors + JSON (no pickle), written atomically to any URL.

``<url>/step-000040/``: ``trained.safetensors`` (encoder + offsets), ``optimizer.safetensors``
+ ``optimizer.json``, ``rng-rank<r>.safetensors`` (each rank's noise generator), and
``state.json`` (step, LR-schedule state, config hash) written LAST: a checkpoint without
it is incomplete and ignored.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from e4t import io as eio

logger = logging.getLogger(__name__)

STEP_DIR = re.compile(r"step-(\d{6,})$")


def step_url(root: str, step: int) -> str:
    return eio.join(root, f"step-{step:06d}")


def _write_tensors(url: str, tensors: dict[str, torch.Tensor]) -> None:
    eio.write_bytes(url, save_bytes({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def _read_tensors(url: str) -> dict[str, torch.Tensor]:
    return load_bytes(eio.read_bytes(url))


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors and a JSON-able rest."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, entries in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    root: str,
    step: int,
    rank: int,
    trained: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    config_hash: str,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Each rank writes its RNG; rank 0 writes the rest (with the fp16 loss scaler's state,
    so a resumed run scales as the uninterrupted one would). Call :func:`commit_checkpoint` after
    a barrier, from rank 0, to mark it complete."""
    url = step_url(root, step)
    _write_tensors(
        eio.join(url, f"rng-rank{rank}.safetensors"),
        {"generator": generator.get_state(), "torch": torch.get_rng_state()},
    )
    if rank != 0:
        return
    _write_tensors(eio.join(url, "trained.safetensors"), trained)
    tensors, meta = optimizer_to_files(optimizer)
    _write_tensors(eio.join(url, "optimizer.safetensors"), tensors)
    eio.write_text(eio.join(url, "optimizer.json"), json.dumps(meta))
    eio.write_text(eio.join(url, "scheduler.json"), json.dumps(scheduler.state_dict()))
    scaler_state = scaler.state_dict() if scaler is not None else {}
    eio.write_text(eio.join(url, "scaler.json"), json.dumps(scaler_state))
    eio.write_text(
        eio.join(url, "pending.json"), json.dumps({"step": step, "config_hash": config_hash})
    )


def commit_checkpoint(root: str, step: int, keep: int) -> None:
    url = step_url(root, step)
    meta = json.loads(eio.read_text(eio.join(url, "pending.json")))
    eio.write_text(eio.join(url, "state.json"), json.dumps(meta))
    for old in complete_steps(root)[:-keep]:
        fs, path = eio.get_fs(step_url(root, old))
        fs.rm(path, recursive=True)


def complete_steps(root: str) -> list[int]:
    fs, path = eio.get_fs(root)
    if not fs.exists(path):
        return []
    steps = []
    for entry in fs.ls(path, detail=False):
        match = STEP_DIR.search(entry.rstrip("/"))
        if match and fs.exists(f"{entry.rstrip('/')}/state.json"):
            steps.append(int(match.group(1)))
    return sorted(steps)


def load_checkpoint(root: str, step: int, rank: int, config_hash: str) -> dict[str, Any]:
    url = step_url(root, step)
    state = json.loads(eio.read_text(eio.join(url, "state.json")))
    if state["config_hash"] != config_hash:
        raise ValueError(
            f"{url} was written with another config ({state['config_hash']} vs "
            f"{config_hash}); resume with the same config or a new output URL"
        )
    rng = _read_tensors(eio.join(url, f"rng-rank{rank}.safetensors"))
    scaler_url = eio.join(url, "scaler.json")
    return {
        "scaler": json.loads(eio.read_text(scaler_url)) if eio.exists(scaler_url) else {},
        "step": state["step"],
        "trained": _read_tensors(eio.join(url, "trained.safetensors")),
        "optimizer": optimizer_from_files(
            _read_tensors(eio.join(url, "optimizer.safetensors")),
            json.loads(eio.read_text(eio.join(url, "optimizer.json"))),
        ),
        "scheduler": json.loads(eio.read_text(eio.join(url, "scheduler.json"))),
        "generator": rng["generator"],
        "torch_rng": rng["torch"],
    }
