"""torch.distributed set-up for torchrun, with a check that the world is the one launched.

A misconfigured launcher can start N independent single-process copies that each train
their own model. The launcher (:mod:`e4t.training.launch`) sets ``E4T_EXPECTED_WORLD_SIZE``;
every process compares it with what torchrun and the process group report.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

EXPECTED_WORLD_ENV = "E4T_EXPECTED_WORLD_SIZE"


class WorldMismatch(RuntimeError):
    pass


@dataclass(frozen=True)
class World:
    rank: int
    local_rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device: str) -> World:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA)."""
    expected = int(os.environ.get(EXPECTED_WORLD_ENV, "0") or 0)
    env_size = int(os.environ.get("WORLD_SIZE", "1"))
    if expected and env_size != expected:
        raise WorldMismatch(
            f"launched for {expected} processes but WORLD_SIZE={env_size}: the launcher "
            "started independent copies; use torchrun (e4t.training.launch) to start training"
        )
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if env_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10))
        if dist.get_world_size() != env_size or dist.get_rank() != rank:
            raise WorldMismatch(
                f"process group says rank {dist.get_rank()} of "
                f"{dist.get_world_size()}, torchrun said {rank} of {env_size}"
            )
    return World(rank=rank, local_rank=local_rank, size=env_size, device=torch.device(device))


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= world.size
    return value


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
