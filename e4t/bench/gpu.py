"""``e4t bench gpu``: every figure the GPU check asks for, one JSON line each.

Runs on a machine that has neither the face models nor the sample photos: faces come from a
folder of aligned crops (``--faces DIR``, with optional ``NAME.mask.png``) or are synthetic
(compute does not depend on the pixels), and the architecture is built in memory with
random weights. On a CPU with ``--arch tiny`` it checks the script itself.

Figures: tuning seconds per concept (K = 1 with 16 and 4 draws, the best K with 16 draws),
peak memory at K = 1, generation seconds per image (CFG, batch 8), pretraining samples/s and
peak memory at batch 16 with and without gradient checkpointing, and the ops per K = 1 step.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from e4t.bench.common import (
    CropError,
    aligned_crops,
    model_config,
    peak_bytes,
    read_crop,
    reset_peak,
    timed_apart,
)
from e4t.data.decode import describe_error


def load_faces(folder: str | Path, resolution_px: int, image_processor: Any) -> list[Any]:
    """Aligned crops of a folder (``*.png``/``*.jpg``; ``NAME.mask.png`` is NAME's mask),
    each read on its own: a crop that cannot be read is skipped with a line naming it."""
    from e4t.data.transforms import face_tensors

    faces = []
    for path in aligned_crops(Path(folder)):
        try:
            image, mask = read_crop(path)
        except CropError as err:
            print(f"skipped: {describe_error(err)}", file=sys.stderr)  # escaped, capped
            continue
        faces.append(face_tensors(image, mask, resolution_px, image_processor))
    if not faces:
        raise FileNotFoundError(f"{folder}: no aligned face crops (.png, .jpg)")
    return faces


@dataclass
class _Bench:
    """What every figure of one GPU check shares: the model, the faces, the device and
    the compile switch, and how a figure is timed and written."""

    model: Any
    faces: list[Any]
    device: str
    context: dict[str, Any]
    compile: str
    compile_backend: str | None

    def figure(self, name: str, value: float, unit: str, **extra: Any) -> dict[str, Any]:
        rounded = round(float(value), 4)
        return {"figure": name, "value": rounded, "unit": unit, **self.context, **extra}

    def measured(self, fn: Callable[[], Any]) -> tuple[float, dict[str, Any]]:
        """(steady seconds, ``compile_s`` when compiling: the first call's extra seconds)."""
        first, steady = timed_apart(self.device, fn)
        if self.compile == "off":
            return steady, {}
        return steady, {"compile_s": round(max(0.0, first - steady), 2)}

    def tune(self, k: int, draws: int, steps: int, resolution_px: int) -> Callable[[], Any]:
        from e4t.config import TuneConfig
        from e4t.training.tune import tune_concepts

        cfg = TuneConfig(
            num_steps=steps,
            draws_per_concept=draws,
            resolution_px=resolution_px,
            compile=self.compile,
        )
        faces, seeds, backend = self.faces[:k], list(range(k)), self.compile_backend
        return lambda: tune_concepts(
            self.model, faces, seeds, cfg, pad_to=k, compile_backend=backend
        )


def _tune_figures(
    bench: _Bench, draws: tuple[int, ...], best_k: tuple[int, ...], steps: int, px: int
) -> Iterator[dict[str, Any]]:
    """Seconds per concept at K = 1 for each draws count (the first with its peak memory),
    then the best K with the first draws count."""
    for n in draws:
        reset_peak(bench.device)
        seconds, extra = bench.measured(bench.tune(1, n, steps, px))
        yield bench.figure(
            "tune_seconds_per_concept", seconds, "s", k=1, draws=n, steps=steps, **extra
        )
        if n == draws[0]:
            peak = peak_bytes(bench.device) / 2**30
            yield bench.figure("tune_peak_memory", peak, "GiB", k=1, draws=n)
    per_k = [(*bench.measured(bench.tune(k, draws[0], steps, px)), k) for k in best_k]
    best = min(((s / k, extra, k) for s, extra, k in per_k), default=None, key=lambda b: b[0])
    if best is not None:
        yield bench.figure(
            "tune_seconds_per_concept_best_k", best[0], "s", k=best[2], draws=draws[0],
            concepts_per_gpu_hour=round(3600 / best[0]), **best[1],
        )  # fmt: skip
    bench.model.detach_concepts()


def _generate_figure(bench: _Bench, steps: int) -> dict[str, Any]:
    """Seconds per image of 8 images with CFG, one sampling loop."""
    from e4t.generation import GenerationConfig, generate

    model = bench.model
    cls = model.clip_cls(bench.faces[0].clip_pixel_values[None].to(model.base.device))
    gen = GenerationConfig(
        num_steps=steps,
        guidance_scale=7.5,
        batch_size=8,
        compile=bench.compile,  # type: ignore[arg-type]
        compile_backend=bench.compile_backend,
    )
    seconds, extra = bench.measured(lambda: generate(model, cls, ["a photo of {}"], 8, 0, gen))
    return bench.figure(
        "generate_seconds_per_image", seconds / 8, "s", steps=steps, batch=8, **extra
    )


def bench_gpu(
    arch: str = "sd15-random",
    device: str = "cuda",
    dtype: str = "bf16",
    resolution_px: int = 512,
    faces_dir: str | None = None,
    tune_steps: int = 15,
    generation_steps: int = 30,
    best_k: tuple[int, ...] = (2, 4),
    pretrain_batch: int = 16,
    skip: tuple[str, ...] = (),
    compile: str = "off",
    compile_backend: str | None = None,
    draws: tuple[int, ...] = (16, 4),
) -> Iterator[dict[str, Any]]:
    """Yield one figure at a time: ``{"figure", "value", "unit", ...context}``. ``compile``:
    tune.compile for the tuning and the sampling UNet; each timed figure then also gives
    ``compile_s``, its first call's seconds beyond a steady one (compilation, per shape);
    ``compile_backend``: inductor unless given (``aot_eager``: traced, no code generated).
    ``draws``: the K = 1 figures' draws per step (the first also gives the peak memory and
    is the best K's)."""
    from e4t.bench.ops import count_tuning_step_ops, synthetic_faces
    from e4t.config import TuneConfig
    from e4t.models.architectures import build_base_models
    from e4t.models.e4t_model import E4TModel

    context = {
        "arch": arch,
        "device": device,
        "dtype": dtype,
        "resolution_px": resolution_px,
        "compile": compile,
    }
    if device.startswith("cuda"):
        context["card"] = torch.cuda.get_device_name()
    config = model_config(arch, dtype=dtype, device=device, gradient_checkpointing=False)
    model = E4TModel.from_config(config, base=build_base_models(arch, config))
    k_max = max((1, *best_k))
    faces = (
        load_faces(faces_dir, resolution_px, model.base.image_processor)
        if faces_dir
        else synthetic_faces(model, k_max, resolution_px)
    )
    faces = [faces[i % len(faces)] for i in range(k_max)]
    bench = _Bench(model, faces, device, context, compile, compile_backend)
    if "tune" not in skip:
        yield from _tune_figures(bench, draws, best_k, tune_steps, resolution_px)
    if "ops" not in skip:
        cfg = TuneConfig(draws_per_concept=16, resolution_px=min(resolution_px, 64))
        ops = count_tuning_step_ops(model, faces[:1], cfg).total
        yield bench.figure("tune_step_ops", ops, "non-view ATen ops", k=1, draws=16, count_px=64)
    if "generate" not in skip:
        yield _generate_figure(bench, generation_steps)
    if "pretrain" not in skip:
        from e4t.bench.pretrain import bench_pretrain_steps

        for item in bench_pretrain_steps(
            arch, device, dtype, resolution_px, pretrain_batch, num_steps=3, model=model
        ):
            yield {**item, **context}


def print_json_lines(figures: Iterator[dict[str, Any]]) -> int:
    count = 0
    for item in figures:
        print(json.dumps(item), flush=True)
        count += 1
    return count
