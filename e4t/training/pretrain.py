"""Domain pretraining (E4T §3.3): encoder + weight offsets on a curated domain, under torchrun.

Read it top to bottom: set up the world, build the model and the data stream, resume
from the latest complete checkpoint if there is one, then loop — micro-batches with
gradient accumulation, clip, step, log, checkpoint, preview — and save the domain model.

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
from e4t.config import PretrainConfig, config_hash
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
    return Batch(
        pixel_values=raw["pixel_values"].to(device),
        clip_pixel_values=raw["clip_pixel_values"].to(device),
        prompts=raw["prompts"],
        mask=raw["mask"].to(device),
    )


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


def pretrain(config: PretrainConfig, output_url: str, run_id: str | None = None) -> dict[str, Any]:
    world = init_world(config.model.device)
    seed = config.train.seed
    torch.manual_seed(seed + world.rank)
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
    chash = config_hash(config)
    ckpt_root = eio.join(output_url, "checkpoints")

    start = 0
    resumed_scaler: dict[str, Any] = {}
    done = ckpt.complete_steps(ckpt_root)
    if done:
        state = ckpt.load_checkpoint(ckpt_root, done[-1], world.rank, chash)
        with torch.no_grad():
            named = trained_state(model)
            for name, value in state["trained"].items():
                named[name].copy_(value)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start = state["step"]
        resumed_scaler = state["scaler"]
        emit(world, event="resumed", step=start)
    if start >= config.train.num_steps and eio.exists(eio.join(output_url, "model", MODEL_MARKER)):
        emit(world, event="already_done", step=start)
        shutdown(world)
        return {"step": start}

    urls = shard_urls(config.data.shards)
    held = held_out_samples(urls, config.data.num_preview)  # every rank excludes them
    held_keys = frozenset(s["__key__"] for s in held)
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
        seed=seed,
        rank=world.rank,
        shuffle_buffer=config.data.shuffle_buffer,
        skip_samples=0 if config.data.fixed_batch else start * config.train.batch_size * accum,
        exclude_keys=held_keys,
    )
    # a DataPipeline is an IterableDataset at run time; its stubs do not say so
    loader: torch.utils.data.DataLoader[dict[str, Any]] = torch.utils.data.DataLoader(
        cast(torch.utils.data.IterableDataset, pipeline),
        batch_size=None,
        num_workers=config.data.num_workers,
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

    loss_module: nn.Module = LossModule(model, config)
    if world.distributed:
        loss_module = DistributedDataParallel(loss_module, find_unused_parameters=False)
    autocast = (
        torch.autocast(
            "cuda",
            dtype=torch.bfloat16 if config.train.mixed_precision == "bf16" else torch.float16,
        )
        if world.device.type == "cuda" and config.train.mixed_precision != "no"
        else contextlib.nullcontext()
    )
    scaler = torch.amp.GradScaler(
        "cuda", enabled=config.train.mixed_precision == "fp16" and world.device.type == "cuda"
    )
    if resumed_scaler and scaler.is_enabled():
        scaler.load_state_dict(resumed_scaler)

    mlflow = None
    if world.is_main and run_id:
        from e4t.tracking import resume_run

        mlflow = resume_run(run_id)

    model.encoder.train()
    last: dict[str, float] = {}
    for step in range(start, config.train.num_steps):
        t0 = time.perf_counter()
        if config.data.fixed_batch:
            generator.manual_seed(seed * 7919 + world.rank)
        totals = torch.zeros(4, device=world.device)
        for i in range(accum):
            raw = fixed if fixed is not None else next(stream)
            last_micro = i == accum - 1 or not isinstance(loss_module, DistributedDataParallel)
            # DDP all-reduces gradients only on the last micro-batch of an accumulation
            sync = (
                contextlib.nullcontext()
                if last_micro
                else cast(DistributedDataParallel, loss_module).no_sync()
            )
            with sync:
                with autocast:  # the forward only: backward runs outside autocast
                    terms = loss_module(to_batch(raw, world.device), generator)
                scaler.scale(terms[0] / accum).backward()
            totals += torch.stack([t.detach().float() for t in terms]) / accum
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.optim.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        totals = all_reduce_mean(totals, world)
        if world.device.type == "cuda":
            torch.cuda.synchronize(world.device)
        seconds = time.perf_counter() - t0
        number = step + 1
        last = {
            "loss": totals[0].item(),
            "loss_diffusion": totals[1].item(),
            "reg_embedding": totals[2].item(),
            "reg_weights": totals[3].item(),
            "lr": schedule.get_last_lr()[0],
            "grad_norm": float(grad_norm),
            "samples_per_second": config.train.batch_size * accum * world.size / seconds,
            "peak_memory_gib": peak_memory_bytes(world.device) / 2**30,
        }
        if number % config.train.log_every == 0 or number == config.train.num_steps:
            emit(world, event="step", step=number, num_steps=config.train.num_steps, **last)
            if mlflow is not None:
                mlflow.log_metrics(last, step=number)
        is_last = number == config.train.num_steps
        if (
            config.train.checkpoint_every and number % config.train.checkpoint_every == 0
        ) or is_last:
            ckpt.save_checkpoint(
                ckpt_root,
                number,
                world.rank,
                {n: p.detach() for n, p in trained_state(model).items()},
                optimizer,
                schedule,
                generator,
                chash,
                scaler,
            )
            barrier(world)
            if world.is_main:
                ckpt.commit_checkpoint(ckpt_root, number, config.train.keep_checkpoints)
                emit(world, event="checkpoint", step=number)
            barrier(world)
            faults.reached("checkpoint", number)  # crash tests: E4T_FAULT_AT=checkpoint:N
        preview_now = (
            config.train.preview_every and number % config.train.preview_every == 0
        ) or is_last
        if world.is_main and preview_now and held_out and held_batch is not None:
            with autocast:  # fixed draws on faces training never sees: a comparable curve
                heldout = held_out_loss(model, held_batch, config.loss)
            grid = preview_grid(model, held_out, config.train.preview_steps, seed)
            if mlflow is not None:
                mlflow.log_metric("heldout_loss", heldout, step=number)
                mlflow.log_image(grid, f"previews/step-{number:06d}.png")
            emit(world, event="preview", step=number, heldout_loss=heldout)

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
