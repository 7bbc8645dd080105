"""Domain pretraining (E4T §3.3): encoder + weight offsets on a curated domain, under torchrun.

Read :func:`pretrain` top to bottom, one phase per function: set up the world, build the
trainer (model, optimizer, schedule, generator), resume from the latest complete checkpoint
if there is one, build the data stream, then run the steps — micro-batches with gradient
accumulation, clip, step, log, checkpoint, preview — and finish by saving the domain model.

Each rank runs this; only rank 0 writes the model, logs to MLflow and prints the JSON
progress lines the launcher streams (``{"event": "step", ...}``).

    torchrun --standalone --nproc-per-node 2 -m e4t.training.pretrain --config cfg.json --output OUT
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from diffusers.optimization import get_scheduler
from PIL import Image
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from e4t import faults
from e4t import io as eio
from e4t.config import PretrainConfig, config_hash, global_batch_size
from e4t.data.loader import (
    SampleTransform,
    collate,
    held_out_samples,
    make_train_pipeline,
    shard_urls,
)
from e4t.models.e4t_model import E4TModel
from e4t.training import checkpoint as ckpt
from e4t.training.distributed import World, all_reduce_mean, barrier, init_world, shutdown
from e4t.training.step import Batch, compute_loss, held_out_loss

logger = logging.getLogger(__name__)

MODEL_MARKER = "e4t_config.json"  # written last: the model folder is complete


class LossModule(nn.Module):
    """What DDP wraps: the batch in, the loss terms out (gradients sync in backward)."""

    def __init__(self, model: E4TModel, config: PretrainConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config

    def forward(self, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        out = compute_loss(self.model, batch, self.config.loss, generator)
        return out.loss, out.diffusion, out.embedding_reg, out.weight_reg


def emit(world: World, **event: Any) -> None:
    """One JSON line on stdout (rank 0): the launcher turns these into progress and logs."""
    if world.is_main:
        print(json.dumps(event, default=float), flush=True)


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def to_batch(raw: dict[str, Any], device: torch.device) -> Batch:
    """A loader's batch on ``device``; from pinned memory (:func:`loader_options`) the
    copies to a GPU are asynchronous (the step's kernels queue behind them)."""
    return Batch(
        pixel_values=raw["pixel_values"].to(device, non_blocking=True),
        clip_pixel_values=raw["clip_pixel_values"].to(device, non_blocking=True),
        prompts=raw["prompts"],
        mask=raw["mask"].to(device, non_blocking=True),
    )


def loader_options(device: torch.device, num_workers: int) -> dict[str, Any]:
    """The pretraining DataLoader's options: batches in pinned (page-locked) host memory
    when they go to a GPU, so their copies overlap the step."""
    return {"batch_size": None, "num_workers": num_workers, "pin_memory": device.type == "cuda"}


def trained_state(model: E4TModel) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def preview_grid(
    model: E4TModel, faces: list[dict[str, Any]], steps: int, seed: int
) -> Image.Image:
    """Top row: held-out aligned faces; bottom row: "a photo of {}" from each (0-step)."""
    from e4t.generation import GenerationConfig, clip_pixels, generate

    size = model.base.unet.config.sample_size * 2 ** (
        len(model.base.vae.config.block_out_channels) - 1
    )
    tiles = []
    for face in faces:
        image = Image.open(io.BytesIO(face["jpg"])).convert("RGB")
        cls = model.clip_cls(clip_pixels(model, image))
        (gen,) = generate(
            model, cls, ["a photo of {}"], 1, seed, GenerationConfig(num_steps=steps, batch_size=1)
        )
        tiles.append((image.resize((size, size)), gen.image.resize((size, size))))
    grid = Image.new("RGB", (size * max(1, len(tiles)), size * 2))
    for i, (top, bottom) in enumerate(tiles):
        grid.paste(top, (i * size, 0))
        grid.paste(bottom, (i * size, size))
    return grid


@dataclass
class Trainer:
    """What the step loop updates, built the same on every rank: the model (same initial
    weights everywhere), its trainable parameters, AdamW, the LR schedule and the noise
    generator (seeded per rank)."""

    config: PretrainConfig
    world: World
    model: E4TModel
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: Any  # a torch LR scheduler from diffusers' get_scheduler
    generator: torch.Generator


@dataclass
class DataStream:
    """The rank's training stream (or the one fixed batch it repeats), and rank 0's
    held-out faces for previews with their batch for the held-out loss."""

    stream: Iterator[dict[str, Any]]
    fixed: dict[str, Any] | None
    held_out: list[dict[str, Any]]
    held_batch: Batch | None

    def next_raw(self) -> dict[str, Any]:
        return self.fixed if self.fixed is not None else next(self.stream)


@dataclass
class Precision:
    """Autocast for the forward passes (a no-op on CPU or with mixed_precision=no) and the
    fp16 loss scaler (disabled otherwise)."""

    autocast: contextlib.AbstractContextManager[Any]
    scaler: torch.amp.GradScaler


def set_up_world(config: PretrainConfig) -> World:
    """Join torchrun's process group and seed this rank's torch RNG."""
    world = init_world(config.model.device)
    torch.manual_seed(config.train.seed + world.rank)
    return world


def build_trainer(config: PretrainConfig, world: World) -> Trainer:
    seed = config.train.seed
    model = E4TModel.from_config(
        config.model.model_copy(update={"device": str(world.device)}), seed=seed
    )  # same initial weights on every rank
    params = model.set_trainable(list(config.train.trainable))
    optimizer = torch.optim.AdamW(
        params, lr=config.optim.lr, betas=config.optim.betas, weight_decay=config.optim.weight_decay
    )
    schedule = get_scheduler(
        config.optim.schedule,
        optimizer,
        num_warmup_steps=config.optim.warmup_steps,
        num_training_steps=config.train.num_steps,
    )
    generator = torch.Generator(world.device).manual_seed(seed * 7919 + world.rank)
    return Trainer(config, world, model, params, optimizer, schedule, generator)


def resume(trainer: Trainer, ckpt_root: str) -> tuple[int, dict[str, Any]]:
    """Load the latest complete checkpoint into ``trainer`` (it must have been written with
    the same config); returns the step to start from and the loss scaler's saved state
    (0 and {} when there is none)."""
    done = ckpt.complete_steps(ckpt_root)
    if not done:
        return 0, {}
    world = trainer.world
    state = ckpt.load_checkpoint(ckpt_root, done[-1], world.rank, config_hash(trainer.config))
    with torch.no_grad():
        named = trained_state(trainer.model)
        for name, value in state["trained"].items():
            named[name].copy_(value)
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.schedule.load_state_dict(state["scheduler"])
    trainer.generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    emit(world, event="resumed", step=state["step"])
    return state["step"], state["scaler"]


def build_data(config: PretrainConfig, model: E4TModel, world: World, start: int) -> DataStream:
    """The rank's shuffled stream, past the samples the first ``start`` steps consumed
    (each DataLoader worker skips its own share), without the held-out faces."""
    urls = shard_urls(config.data.shards)
    held = held_out_samples(urls, config.data.num_preview)  # every rank excludes them
    held_out = held if world.is_main else []
    accum = config.optim.grad_accum
    transform = SampleTransform(
        config.data.resolution_px,
        model.base.image_processor,
        list(config.data.templates),
        config.data.hflip,
    )  # its flips and templates are seeded per (seed, rank, worker, sample): see number()
    pipeline = make_train_pipeline(
        urls,
        transform,
        batch_size=config.train.batch_size,
        seed=config.train.seed,
        rank=world.rank,
        shuffle_buffer=config.data.shuffle_buffer,
        skip_samples=0 if config.data.fixed_batch else start * config.train.batch_size * accum,
        exclude_keys=frozenset(s["__key__"] for s in held),
    )
    # a DataPipeline is an IterableDataset at run time; its stubs do not say so
    loader: torch.utils.data.DataLoader[dict[str, Any]] = torch.utils.data.DataLoader(
        cast(torch.utils.data.IterableDataset, pipeline),
        **loader_options(world.device, config.data.num_workers),
    )
    stream = iter(loader)
    held_batch = None
    if held_out:
        fixed_view = SampleTransform(
            config.data.resolution_px, model.base.image_processor, ["a photo of {}"], False
        )
        views = [
            fixed_view({**s, "__stream__": "held-out", "__index__": i})
            for i, s in enumerate(held_out)
        ]
        held_batch = to_batch(collate(views), world.device)
    fixed = next(stream) if config.data.fixed_batch else None
    return DataStream(stream, fixed, held_out, held_batch)


def wrap_loss(trainer: Trainer) -> nn.Module:
    """The loss module the steps call: under DDP when there are several ranks."""
    loss_module: nn.Module = LossModule(trainer.model, trainer.config)
    if trainer.world.distributed:
        loss_module = DistributedDataParallel(loss_module, find_unused_parameters=False)
    return loss_module


def set_up_precision(
    config: PretrainConfig, device: torch.device, scaler_state: dict[str, Any]
) -> Precision:
    mixed = config.train.mixed_precision
    autocast: contextlib.AbstractContextManager[Any] = (
        torch.autocast("cuda", dtype=torch.bfloat16 if mixed == "bf16" else torch.float16)
        if device.type == "cuda" and mixed != "no"
        else contextlib.nullcontext()
    )
    scaler = torch.amp.GradScaler("cuda", enabled=mixed == "fp16" and device.type == "cuda")
    if scaler_state and scaler.is_enabled():
        scaler.load_state_dict(scaler_state)
    return Precision(autocast, scaler)


def open_tracking(world: World, run_id: str | None) -> Any:
    """Rank 0's MLflow run opened by the launcher, or None (other ranks, untracked)."""
    if not (world.is_main and run_id):
        return None
    from e4t.tracking import resume_run

    return resume_run(run_id)


def train_step(
    trainer: Trainer, data: DataStream, loss_module: nn.Module, precision: Precision
) -> dict[str, float]:
    """One optimizer step: ``grad_accum`` micro-batches (DDP syncs gradients on the last),
    unscale, clip, step; returns the step's figures, loss terms averaged over ranks."""
    config, world = trainer.config, trainer.world
    accum = config.optim.grad_accum
    t0 = time.perf_counter()
    if config.data.fixed_batch:
        trainer.generator.manual_seed(config.train.seed * 7919 + world.rank)
    totals = torch.zeros(4, device=world.device)
    for i in range(accum):
        raw = data.next_raw()
        last_micro = i == accum - 1 or not isinstance(loss_module, DistributedDataParallel)
        # DDP all-reduces gradients only on the last micro-batch of an accumulation
        sync = (
            contextlib.nullcontext()
            if last_micro
            else cast(DistributedDataParallel, loss_module).no_sync()
        )
        with sync:
            with precision.autocast:  # the forward only: backward runs outside autocast
                terms = loss_module(to_batch(raw, world.device), trainer.generator)
            precision.scaler.scale(terms[0] / accum).backward()
        totals += torch.stack([t.detach().float() for t in terms]) / accum
    precision.scaler.unscale_(trainer.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(trainer.params, config.optim.max_grad_norm)
    precision.scaler.step(trainer.optimizer)
    precision.scaler.update()
    trainer.schedule.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    totals = all_reduce_mean(totals, world)
    if world.device.type == "cuda":
        torch.cuda.synchronize(world.device)
    seconds = time.perf_counter() - t0
    return {
        "loss": totals[0].item(),
        "loss_diffusion": totals[1].item(),
        "reg_embedding": totals[2].item(),
        "reg_weights": totals[3].item(),
        "lr": trainer.schedule.get_last_lr()[0],
        "grad_norm": float(grad_norm),
        "samples_per_second": global_batch_size(config, world.size) / seconds,
        "peak_memory_gib": peak_memory_bytes(world.device) / 2**30,
    }


def save_step(trainer: Trainer, ckpt_root: str, number: int, precision: Precision) -> None:
    """Every rank writes its part of step ``number``'s checkpoint; rank 0 commits it once
    all have (then older ones beyond ``keep_checkpoints`` go)."""
    world = trainer.world
    ckpt.save_checkpoint(
        ckpt_root,
        number,
        world.rank,
        {n: p.detach() for n, p in trained_state(trainer.model).items()},
        trainer.optimizer,
        trainer.schedule,
        trainer.generator,
        config_hash(trainer.config),
        precision.scaler,
    )
    barrier(world)
    if world.is_main:
        ckpt.commit_checkpoint(ckpt_root, number, trainer.config.train.keep_checkpoints)
        emit(world, event="checkpoint", step=number)
    barrier(world)
    faults.reached("checkpoint", number)  # crash tests: E4T_FAULT_AT=checkpoint:N


def preview(
    trainer: Trainer, data: DataStream, number: int, precision: Precision, mlflow: Any
) -> None:
    """Rank 0: the held-out loss and the preview grid of step ``number``."""
    config = trainer.config
    assert data.held_batch is not None
    with precision.autocast:  # fixed draws on faces training never sees: a comparable curve
        heldout = held_out_loss(trainer.model, data.held_batch, config.loss)
    grid = preview_grid(trainer.model, data.held_out, config.train.preview_steps, config.train.seed)
    if mlflow is not None:
        mlflow.log_metric("heldout_loss", heldout, step=number)
        mlflow.log_image(grid, f"previews/step-{number:06d}.png")
    emit(trainer.world, event="preview", step=number, heldout_loss=heldout)


def is_due(number: int, every: int, last: int) -> bool:
    """Step ``number`` is a multiple of ``every`` (0: never) or the last step."""
    return bool(every and number % every == 0) or number == last


def run_steps(
    trainer: Trainer,
    data: DataStream,
    loss_module: nn.Module,
    precision: Precision,
    ckpt_root: str,
    mlflow: Any,
    start: int,
) -> dict[str, float]:
    """Steps ``start + 1`` … ``train.num_steps``, each logged, checkpointed and previewed
    when due; returns the last step's figures."""
    train = trainer.config.train
    world = trainer.world
    trainer.model.encoder.train()
    last: dict[str, float] = {}
    for step in range(start, train.num_steps):
        last = train_step(trainer, data, loss_module, precision)
        number = step + 1
        if is_due(number, train.log_every, train.num_steps):
            emit(world, event="step", step=number, num_steps=train.num_steps, **last)
            if mlflow is not None:
                mlflow.log_metrics(last, step=number)
        if is_due(number, train.checkpoint_every, train.num_steps):
            save_step(trainer, ckpt_root, number, precision)
        due = is_due(number, train.preview_every, train.num_steps)
        if world.is_main and due and data.held_out and data.held_batch is not None:
            preview(trainer, data, number, precision, mlflow)
    return last


def finish(
    trainer: Trainer, output_url: str, last: dict[str, float], mlflow: Any
) -> dict[str, Any]:
    """Each rank records its weights' fingerprint; rank 0 uploads the model (its marker
    last), the config and the result, and ends the MLflow run. Returns the result."""
    config, world, model = trainer.config, trainer.world, trainer.model
    fingerprint = model.fingerprint()
    eio.write_text(
        eio.join(output_url, "ranks", f"rank-{world.rank}.json"),
        json.dumps({"rank": world.rank, "fingerprint": fingerprint}),
    )
    result = {"step": config.train.num_steps, "fingerprint": fingerprint, **last}
    if world.is_main:
        with tempfile.TemporaryDirectory() as tmp:
            folder = model.save_pretrained(Path(tmp) / "model")
            # e4t_config.json is the done marker: uploaded last, so a killed upload is never
            # taken for a finished model (nor registered)
            eio.upload_folder(folder, eio.join(output_url, "model"), marker=MODEL_MARKER)
        eio.write_text(
            eio.join(output_url, "config.json"),
            json.dumps(config.model_dump(mode="json"), indent=1),
        )
        eio.write_text(eio.join(output_url, "result.json"), json.dumps(result, indent=1))
        if mlflow is not None:
            mlflow.log_dict(config.model_dump(mode="json"), "config/final_config.json")
            mlflow.end_run()
        emit(world, event="done", **result)
    barrier(world)
    return result


def pretrain(config: PretrainConfig, output_url: str, run_id: str | None = None) -> dict[str, Any]:
    """Train this rank to ``train.num_steps``, resuming from ``output_url``'s latest complete
    checkpoint; returns the final step's figures and the weights' fingerprint."""
    world = set_up_world(config)
    trainer = build_trainer(config, world)
    ckpt_root = eio.join(output_url, "checkpoints")
    start, scaler_state = resume(trainer, ckpt_root)
    if start >= config.train.num_steps and eio.exists(eio.join(output_url, "model", MODEL_MARKER)):
        emit(world, event="already_done", step=start)
        shutdown(world)
        return {"step": start}
    data = build_data(config, trainer.model, world, start)
    loss_module = wrap_loss(trainer)
    precision = set_up_precision(config, world.device, scaler_state)
    mlflow = open_tracking(world, run_id)
    last = run_steps(trainer, data, loss_module, precision, ckpt_root, mlflow, start)
    result = finish(trainer, output_url, last, mlflow)
    shutdown(world)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one rank of E4T domain pretraining")
    parser.add_argument(
        "--config", required=True, help="the resolved PretrainConfig as a JSON file"
    )
    parser.add_argument("--output", required=True, help="output URL (model, checkpoints)")
    parser.add_argument("--run-id", default=os.environ.get("MLFLOW_RUN_ID"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s rank"
        + os.environ.get("RANK", "0")
        + " %(levelname)s %(name)s: %(message)s",
    )
    from e4t.quiet import quiet_libraries

    quiet_libraries()  # a rank's output is relayed into the task's log: no per-file bars
    config = PretrainConfig.model_validate_json(Path(args.config).read_text())
    np.random.seed(config.train.seed)
    pretrain(config, args.output, args.run_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
