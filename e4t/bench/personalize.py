"""``e4t bench personalize``: seconds per concept tuning concepts one at a time and K at a
time, on an architecture built with random weights."""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from e4t.bench.common import model_config, peak_bytes
from e4t.config import load_config
from e4t.jobs import curate as curate_job
from e4t.samples import fetch_sample_photos


@dataclass
class PersonalizeBench:
    arch: str
    num_steps: int
    draws: int
    resolution_px: int
    seconds_per_concept: dict[str, float]
    concept_bytes: int
    unet_bytes: int
    compile: str = "off"
    # per pass size: the first pass's seconds beyond a steady pass's (compilation)
    compile_seconds: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: int = 0  # the process's peak RSS (CPU) or CUDA memory allocated

    def report(self) -> str:
        seq = self.seconds_per_concept.get("sequential")
        lines = [
            f"personalize bench: arch={self.arch}, {self.num_steps} steps, "
            f"{self.draws} draws per concept per step, {self.resolution_px} px, "
            f"compile={self.compile}"
        ]
        for name, seconds in self.seconds_per_concept.items():
            ratio = f" (throughput × {seq / seconds:.2f} vs sequential)" if seq else ""
            lines.append(f"  {name:<12} {seconds:7.3f} s per concept{ratio}")
        for name, seconds in self.compile_seconds.items():
            lines.append(f"  compile, {name}: {seconds:.1f} s (once per pass size, not above)")
        lines.append(
            f"  concept artifact: {self.concept_bytes:,} bytes = "
            f"{100 * self.concept_bytes / self.unet_bytes:.3f} % of the base UNet's "
            f"{self.unet_bytes:,} bytes"
        )
        lines.append(
            f"  peak memory: {self.peak_memory_bytes / 2**30:.2f} GiB "
            "(the process's RSS, model included; on CUDA: memory allocated)"
        )
        return "\n".join(lines)


def bench_personalize(
    arch: str = "tiny",
    num_steps: int = 5,
    draws: int = 4,
    resolution_px: int = 32,
    passes: tuple[int, ...] = (1, 4, 8),
    device: str = "cpu",
    dtype: str = "fp32",
    faces_dir: str | None = None,
    compile: str = "off",
) -> PersonalizeBench:
    """Seconds per concept tuning max(passes) concepts one at a time and K at a time.
    Faces: a folder of aligned crops (``faces_dir``: no face models needed, as on a GPU
    machine) or the sample photos curated here. ``compile`` (``tune.compile``): the warm-up
    pass of each size compiles; its seconds beyond a steady pass are reported apart."""
    import torch

    from e4t.config import TuneConfig
    from e4t.models.architectures import build_base_models
    from e4t.models.e4t_model import E4TModel
    from e4t.training.tune import tune_concepts

    config = model_config(arch, dtype=dtype, device=device, gradient_checkpointing=False)
    model = E4TModel.from_config(config, base=build_base_models(arch, config))
    tune = TuneConfig(
        num_steps=num_steps, draws_per_concept=draws, resolution_px=resolution_px, compile=compile
    )
    if faces_dir:
        from e4t.bench.gpu import load_faces

        faces = load_faces(faces_dir, resolution_px, model.base.image_processor)
    else:
        faces = _sample_faces(resolution_px, model.base.image_processor)
    total = max(passes)
    faces = [faces[i % len(faces)] for i in range(total)]
    seconds: dict[str, float] = {}
    compile_seconds: dict[str, float] = {}

    def timed(k: int) -> float:
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        start = time.perf_counter()
        tune_concepts(model, faces[:k], list(range(k)), tune, pad_to=k)  # warm-up: compiles
        sync()
        warm_up = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(0, total, k):
            tune_concepts(model, faces[i : i + k], list(range(i, i + k)), tune, pad_to=k)
        sync()
        steady = time.perf_counter() - start
        if compile != "off":
            compile_seconds[f"K = {k}"] = max(0.0, warm_up - steady * k / total)
        return steady / total

    for k in passes:
        seconds["sequential" if k == 1 else f"K = {k}"] = timed(k)
    bank = model.concepts
    assert bank is not None
    with tempfile.TemporaryDirectory() as tmp:
        concept_bytes = bank.save(0, Path(tmp) / "c", model.concept_meta(), tune.artifact_dtype)
    unet_bytes = sum(p.numel() * p.element_size() for p in model.base.unet.parameters())
    return PersonalizeBench(
        arch=arch,
        num_steps=num_steps,
        draws=draws,
        resolution_px=resolution_px,
        seconds_per_concept=seconds,
        concept_bytes=concept_bytes,
        unet_bytes=unet_bytes,
        compile=compile,
        compile_seconds=compile_seconds,
        peak_memory_bytes=peak_bytes(device),
    )


@dataclass
class GraphBreakBench:
    arch: str
    resolution_px: int
    draws: int
    concepts: int
    graphs: dict[str, int]  # per compiled region: graphs over a full pass and a padded one
    reasons: list[str]
    seconds: float
    # the sampling UNet: its frames (the forward and its hooks, each one graph) in a first
    # generate call, and the graphs a second call with another bank added (recompilations)
    sampling_frames: int = 0
    sampling_recompiled: int = 0

    @property
    def graph_breaks(self) -> int:
        """Over two passes: extra graphs are breaks (or recompilations: either fails); the
        sampling UNet's breaks are among the reasons, its recompilations counted too."""
        extra = sum(n - 1 for n in self.graphs.values())
        return extra + self.sampling_recompiled + len(self.reasons)

    def report(self) -> str:
        lines = [
            f"personalize graph breaks: arch={self.arch}, {self.resolution_px} px, "
            f"{self.draws} draws, K = {self.concepts}, a full pass then a padded short one "
            f"(dynamo tracing {self.seconds:.1f} s, no code generation)",
            "  graphs per region: " + ", ".join(f"{k} {v}" for k, v in self.graphs.items()),
            f"  sampling UNet (2 steps, CFG): {self.sampling_frames} frames compiled (the "
            f"forward and its hooks), {self.sampling_recompiled} more for another bank",
            f"graph breaks: {self.graph_breaks}",
        ]
        lines += [f"  break: {reason.splitlines()[0]}" for reason in self.reasons]
        return "\n".join(lines)


def bench_graph_breaks(
    arch: str = "tiny",
    resolution_px: int = 64,
    draws: int = 2,
    concepts: int = 2,
    dtype: str = "fp32",
) -> GraphBreakBench:
    """The compiled tuning step's graphs, counted (not compiled: a counting backend) over
    a pass of ``concepts`` synthetic faces and a short pass padded to it, one step each."""
    from e4t.bench.ops import synthetic_faces
    from e4t.config import TuneConfig
    from e4t.models.architectures import build_base_models
    from e4t.models.e4t_model import E4TModel
    from e4t.training import compile as compiling
    from e4t.training.tune import step_objective, tune_concepts

    config = model_config(arch, dtype=dtype, device="cpu", gradient_checkpointing=False)
    model = E4TModel.from_config(config, base=build_base_models(arch, config))
    tune = TuneConfig(
        num_steps=1,
        draws_per_concept=draws,
        resolution_px=resolution_px,
        autocast="off",
        compile="default",
    )
    faces = synthetic_faces(model, concepts + 1, resolution_px)
    compiling.clear_compiled()
    start = time.perf_counter()
    with compiling.graph_break_reasons() as reasons:
        for batch in (faces[:concepts], faces[concepts:]):
            seeds = list(range(len(batch)))
            tune_concepts(model, batch, seeds, tune, pad_to=concepts, compile_backend="count")
        frames, recompiled = _count_sampling_graphs(model, faces[:concepts], resolution_px)
    seconds = time.perf_counter() - start
    counted = compiling.compiled(step_objective, "default", "count").counters
    graphs = {name: counter.graphs for name, counter in counted.items()}
    compiling.clear_compiled(model.base.unet)
    return GraphBreakBench(
        arch,
        resolution_px,
        draws,
        concepts,
        graphs,
        list(reasons.elements()),
        seconds,
        frames,
        recompiled,
    )


def _count_sampling_graphs(model: Any, faces: list[Any], resolution_px: int) -> tuple[int, int]:
    """The compiled sampling UNet's graphs (counting backend) over a generate call of the
    faces' concepts together (2 steps, CFG), then the graphs a second call with another
    bank of the same size added."""
    import torch

    from e4t.generation import GenerationConfig, generate
    from e4t.training import compile as compiling

    config = GenerationConfig(
        num_steps=2,
        batch_size=2 * len(faces),
        height=resolution_px,
        width=resolution_px,
        autocast="off",
        compile="default",
        compile_backend="count",
    )
    cls = model.clip_cls(torch.stack([f.clip_pixel_values for f in faces]).to(model.base.device))
    device_type = model.base.device.type
    counter = compiling.compiled_unet(model.base.unet, "default", "count", device_type).counter
    counts = []
    for first_seed in (0, len(faces)):
        seeds = list(range(first_seed, first_seed + len(faces)))
        bank = model.attach_concepts(model.new_concepts(cls, rank=4, seeds=seeds))
        generate(model, bank.cls, ["a photo of {}"], 2, 0, config)
        counts.append(counter.graphs)
    model.detach_concepts()
    return counts[0], counts[1] - counts[0]


@dataclass
class OpsBench:
    arch: str
    resolution_px: int
    draws: int
    step_ops: dict[int, int]  # concepts per pass → non-view ops of one tuning step
    top_ops: list[tuple[str, int]]  # the most dispatched ops of a K=1 step
    unet_forward_backward: int
    unet_forward: int

    def report(self) -> str:
        lines = [
            f"personalize ops: arch={self.arch}, {self.resolution_px} px, {self.draws} draws "
            "per concept (non-view ATen ops; device-independent)"
        ]
        for k, ops in sorted(self.step_ops.items()):
            lines.append(f"  tuning step, K = {k}: {ops:,} ops ({ops / k:,.0f} per concept)")
        lines.append(
            f"  bare UNet forward + backward (batch {self.draws}): "
            f"{self.unet_forward_backward:,} ops; forward alone {self.unet_forward:,}"
        )
        lines.append("  most dispatched (K = 1): " + ", ".join(f"{n} {c}" for n, c in self.top_ops))
        return "\n".join(lines)


def bench_personalize_ops(
    arch: str = "tiny",
    resolution_px: int = 64,
    draws: int = 4,
    passes: tuple[int, ...] = (1, 4, 8),
    dtype: str = "fp32",
) -> OpsBench:
    """Non-view ATen ops of one tuning step at K = 1, 4 and 8 (synthetic faces, CPU)."""
    from e4t.bench.ops import count_tuning_step_ops, count_unet_ops, synthetic_faces
    from e4t.config import TuneConfig
    from e4t.models.architectures import build_base_models
    from e4t.models.e4t_model import E4TModel

    config = model_config(arch, dtype=dtype, device="cpu", gradient_checkpointing=False)
    model = E4TModel.from_config(config, base=build_base_models(arch, config))
    tune = TuneConfig(draws_per_concept=draws, resolution_px=resolution_px, autocast="off")
    faces = synthetic_faces(model, max(passes), resolution_px)
    counts, top = {}, []
    for k in passes:
        counter = count_tuning_step_ops(model, faces[:k], tune)
        counts[k] = counter.total
        if k == 1:
            top = counter.counts.most_common(8)
    both, forward = count_unet_ops(model, draws, resolution_px)
    return OpsBench(arch, resolution_px, draws, counts, top, both, forward)


def _sample_faces(resolution_px: int, image_processor: Any) -> list[Any]:
    """The sample photos, curated (tiny preset), as tuning inputs."""
    from e4t.data.shards import read_shard
    from e4t.data.transforms import face_tensors

    with tempfile.TemporaryDirectory() as tmp:
        photos = fetch_sample_photos(Path(tmp) / "photos")
        curate_job.run(
            curate_job.request(str(photos), str(Path(tmp) / "shards"), preset="tiny", track=False)
        )
        samples = [
            s for p in sorted((Path(tmp) / "shards").glob("*.tar")) for s in read_shard(str(p))
        ]
        return [
            face_tensors(
                Image.open(io.BytesIO(s["jpg"])),
                Image.open(io.BytesIO(s["mask.png"])),
                resolution_px,
                image_processor,
            )
            for s in samples
        ]


@dataclass
class RunnerBench:
    runner: str
    workers: int
    num_concepts: int
    num_steps: int
    wall_seconds: float

    @property
    def concepts_per_minute(self) -> float:
        return 60 * self.num_concepts / self.wall_seconds

    def report(self) -> str:
        return (
            f"personalize runner bench: tiny preset, {self.num_concepts} concepts of "
            f"{self.num_steps} steps, one concept per pass, runner={self.runner}, "
            f"workers={self.workers}\n"
            f"  {self.concepts_per_minute:.1f} concepts/minute ({self.wall_seconds:.1f} s wall, "
            "each worker loading the domain model once; cluster start not counted)"
        )


def bench_personalize_runner(
    runner: str = "dask", workers: int = 2, num_concepts: int = 8, num_steps: int = 5
) -> RunnerBench:
    """Concepts per minute of the personalize job on the sample portraits (tiny preset),
    its passes mapped over ``runner``: ``inprocess`` (this process, one pass at a time) or
    ``dask`` (a ``LocalCluster`` of ``workers`` worker processes)."""
    import shutil

    from e4t.config import ModelConfig, PersonalizeConfig
    from e4t.jobs import personalize as job
    from e4t.jobs.steps import InProcess, OnDask
    from e4t.models.architectures import init_model
    from e4t.models.e4t_model import E4TModel

    if runner not in ("inprocess", "dask"):
        raise ValueError(f"runner={runner!r}: use inprocess or dask")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        photos = fetch_sample_photos(root / "photos")
        portraits = [photos / n for n in ("obama.jpg", "biden.jpg", "astronaut.png")]
        images = root / "images"
        images.mkdir()
        for i in range(num_concepts):
            source = portraits[i % len(portraits)]
            shutil.copyfile(source, images / f"person{i:02d}{source.suffix}")
        base = init_model(root / "base", arch="tiny")
        domain = E4TModel.from_config(
            ModelConfig(base_model=str(base), encoder={"hidden_dim": 32})
        ).save_pretrained(root / "domain")
        config = load_config(
            PersonalizeConfig,
            "personalize",
            "tiny",
            values={"tune.num_steps": num_steps, "concepts_per_pass": 1},
        )
        steps = OnDask(num_workers=workers) if runner == "dask" else InProcess()
        with steps if isinstance(steps, OnDask) else contextlib.nullcontext():
            start = time.perf_counter()
            request = job.request(str(images), str(root / "out"), str(domain), config, track=False)
            result = job.run(request, steps)
            wall = time.perf_counter() - start
        done = result.summary["num_done"]
        if done != num_concepts:
            raise RuntimeError(f"{done} of {num_concepts} concepts were made: {result.summary}")
    return RunnerBench(runner, workers if runner == "dask" else 1, num_concepts, num_steps, wall)
