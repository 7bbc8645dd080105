"""``e4t bench pretrain``: samples/s of the same job on 1 and 2 DDP processes (CPU, gloo);
with ``--arch``, one GPU's step figures on a full-size architecture (samples/s, peak memory
with and without gradient checkpointing, model FLOPs and MFU)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e4t.bench.common import model_config, peak_bytes, reset_peak, timed
from e4t.config import load_config
from e4t.jobs import curate as curate_job
from e4t.samples import fetch_sample_photos


@dataclass
class PretrainBench:
    global_batch: int
    num_steps: int
    samples_per_second: dict[int, float]

    def report(self) -> str:
        lines = [
            f"pretrain bench: tiny preset, global batch {self.global_batch}, "
            f"{self.num_steps} steps (the first is not timed), CPU gloo"
        ]
        for procs, rate in sorted(self.samples_per_second.items()):
            lines.append(
                f"  {procs} process{'es' if procs > 1 else ''}: {rate:.2f} samples/s "
                f"(batch {self.global_batch // procs} per process)"
            )
        if len(self.samples_per_second) == 2:
            one, two = (self.samples_per_second[k] for k in sorted(self.samples_per_second))
            lines.append(f"  ratio (2 processes / 1 process): {two / one:.2f}")
        return "\n".join(lines)


def bench_pretrain(
    global_batch: int = 4,
    num_steps: int = 6,
    resolution_px: int = 64,
    processes: tuple[int, ...] = (1, 2),
) -> PretrainBench:
    """samples/s of the same job on 1 process and on 2 DDP processes, same global batch."""
    import statistics

    from e4t.config import LaunchConfig, PretrainConfig
    from e4t.models.architectures import init_model
    from e4t.training.launch import run_pretraining

    rates: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        photos = fetch_sample_photos(root / "photos")
        curate_job.run(
            curate_job.request(str(photos), str(root / "shards"), preset="tiny", track=False)
        )
        init_model(root / "base", arch="tiny")
        for procs in processes:
            if global_batch % procs:
                raise ValueError(f"global batch {global_batch} does not split over {procs}")
            config = load_config(
                PretrainConfig,
                "pretrain",
                "tiny",
                {
                    "data.shards": str(root / "shards"),
                    "model.base_model": str(root / "base"),
                    "data.resolution_px": resolution_px,
                    "train.num_steps": num_steps,
                    "train.batch_size": global_batch // procs,
                    "train.checkpoint_every": 0,
                    "train.preview_every": 0,
                    "data.num_preview": 0,
                },
            )
            events: list[dict] = []
            run_pretraining(
                config,
                str(root / f"run-{procs}"),
                LaunchConfig(nproc_per_node=procs),
                track=False,
                on_event=events.append,
            )
            timed = [e["samples_per_second"] for e in events if e.get("event") == "step"][1:]
            rates[procs] = statistics.median(timed)
    return PretrainBench(global_batch=global_batch, num_steps=num_steps, samples_per_second=rates)


# dense bf16 tensor-core peaks from NVIDIA's datasheets (FLOP/s), for the MFU estimate
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
)


def peak_flops(card: str) -> float | None:
    """The card's dense bf16 peak, or None when it is not in the table (no MFU then)."""
    for name, flops in PEAK_BF16_FLOPS:
        if name in card:
            return flops
    return None


def step_flops(model: Any, batch: Any) -> int:
    """Model FLOPs of one pretraining step (forward + backward), as
    ``torch.utils.flop_counter.FlopCounterMode`` counts them: every matmul, convolution and
    attention of the VAE encode, CLIP tower, encoder, UNet feature pass, text encoder and
    denoising UNet. Recomputation by gradient checkpointing is not model work: count once,
    without it."""
    from torch.utils.flop_counter import FlopCounterMode

    from e4t.config import LossConfig
    from e4t.training.step import compute_loss

    with FlopCounterMode(display=False) as counter:
        compute_loss(model, batch, LossConfig()).loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def bench_pretrain_steps(
    arch: str,
    device: str = "cpu",
    dtype: str = "fp32",
    resolution_px: int = 64,
    batch_size: int = 16,
    num_steps: int = 3,
    model: Any = None,
) -> Iterator[dict[str, Any]]:
    """One GPU's pretraining figures on an architecture built with random weights: samples/s
    and peak memory with and without gradient checkpointing, the step's model FLOPs, the
    achieved FLOP/s and the model-FLOPs utilisation (MFU) against the card's bf16 peak.
    Yields one figure at a time."""
    import torch

    from e4t.config import LossConfig
    from e4t.models.architectures import build_base_models
    from e4t.models.e4t_model import E4TModel
    from e4t.training.step import Batch, compute_loss

    if model is None:
        config = model_config(arch, dtype=dtype, device=device, gradient_checkpointing=False)
        model = E4TModel.from_config(config, base=build_base_models(arch, config))
    card = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    context = {"arch": arch, "device": device, "dtype": dtype, "resolution_px": resolution_px}
    size = model.image_encoder.config.image_size
    shape = (batch_size, 3, resolution_px, resolution_px)
    batch = Batch(
        pixel_values=torch.rand(shape, device=device) * 2 - 1,
        clip_pixel_values=torch.randn(batch_size, 3, size, size, device=device),
        prompts=["a photo of {}"] * batch_size,
        mask=torch.ones(batch_size, 1, resolution_px, resolution_px, device=device),
    )
    params = model.set_trainable(["encoder", "offsets"])
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)
    flops = step_flops(model, batch)
    peak = peak_flops(card)
    counted_by = "torch.utils.flop_counter.FlopCounterMode"
    yield {"figure": "pretrain_step_flops", "value": flops, "unit": "FLOP", **context,
           "batch": batch_size, "counted_by": counted_by}  # fmt: skip
    low = device.startswith("cuda") and dtype != "fp32"
    for checkpointing in (False, True):
        if checkpointing:
            model.base.unet.enable_gradient_checkpointing()

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=low):
                loss = compute_loss(model, batch, LossConfig()).loss
            loss.backward()
            optimizer.step()

        reset_peak(device)
        seconds = timed(device, step, repeats=num_steps)
        achieved = flops / seconds
        extra: dict[str, Any] = {
            "batch": batch_size,
            "gradient_checkpointing": checkpointing,
            "peak_memory_gib": round(peak_bytes(device) / 2**30, 2),
            "achieved_tflops": round(achieved / 1e12, 3),
            "card": card,
        }
        if peak is not None:
            extra["mfu"] = round(achieved / peak, 4)
            extra["peak_tflops"] = peak / 1e12
        yield {"figure": "pretrain_samples_per_second", "value": round(batch_size / seconds, 3),
               "unit": "samples/s", **context, **extra}  # fmt: skip
    model.base.unet.disable_gradient_checkpointing()
    model.set_trainable([])


def report_steps(figures: list[dict[str, Any]]) -> str:
    """The lines ``e4t bench pretrain --arch ...`` prints."""
    first = figures[0]
    lines = [
        f"pretrain step bench: arch={first['arch']}, {first['device']}, {first['dtype']}, "
        f"{first['resolution_px']} px, batch {first['batch']}",
        f"  model FLOPs per step (forward + backward, FlopCounterMode): {first['value']:.3e}",
    ]
    for f in figures[1:]:
        mfu = f" MFU {100 * f['mfu']:.1f} % of {f['peak_tflops']:.0f} TFLOP/s" if "mfu" in f else ""
        lines.append(
            f"  gradient checkpointing {'on ' if f['gradient_checkpointing'] else 'off'}: "
            f"{f['value']:.2f} samples/s, peak memory {f['peak_memory_gib']:.2f} GiB, "
            f"{f['achieved_tflops']:.2f} TFLOP/s achieved{mfu}"
        )
    return "\n".join(lines)
