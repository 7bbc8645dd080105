"""Benchmarks that print figures (``e4t bench ...``); never timed tests: machines are noisy."""

from __future__ import annotations

import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from e4t.config import CurateConfig, load_config
from e4t.data.curation import STAGES, curate
from e4t.samples import fetch_sample_photos


@dataclass
class CurateBench:
    num_images: int
    size_px: int
    num_workers: int
    backend: str
    wall_seconds: float
    stage_seconds: dict[str, float]
    num_samples: int

    @property
    def images_per_second(self) -> float:
        return self.num_images / self.wall_seconds

    def report(self) -> str:
        busy = sum(self.stage_seconds.values())
        lines = [
            f"curate bench: {self.num_images} photos of {self.size_px} px (long side), "
            f"backend={self.backend}, workers={self.num_workers}",
            f"  wall {self.wall_seconds:.2f} s → {self.images_per_second:.2f} images/s "
            f"({self.num_samples} samples written)",
            f"  stage time summed over workers: {busy:.2f} s "
            f"(the rest of {self.wall_seconds * self.num_workers:.2f} worker-s is process start, "
            "model loading and finalize)",
        ]
        for stage in STAGES:
            seconds = self.stage_seconds.get(stage, 0.0)
            share = 100 * seconds / busy if busy else 0.0
            lines.append(
                f"  {stage:<10} {seconds:7.2f} s  {share:5.1f} %  "
                f"{1000 * seconds / self.num_images:7.1f} ms/image"
            )
        return "\n".join(lines)


def make_bench_photos(dest: Path, num_images: int, size_px: int, seed: int = 0) -> list[Path]:
    """``num_images`` JPEGs of ``size_px`` long side: the sample photos, cropped and flipped."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        sources = sorted(fetch_sample_photos(tmp).iterdir())
        photos = [Image.open(p).convert("RGB") for p in sources]
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(num_images):
        photo = photos[i % len(photos)]
        w, h = photo.size
        margin = rng.uniform(0.0, 0.08)
        box = (
            round(w * margin * rng.random()),
            round(h * margin * rng.random()),
            round(w * (1 - margin * rng.random())),
            round(h * (1 - margin * rng.random())),
        )
        img = photo.crop(box)
        if (i // len(photos)) % 2:
            img = ImageOps.mirror(img)
        scale = size_px / max(img.size)
        img = img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))),
            Image.Resampling.LANCZOS,
        )
        path = dest / f"bench_{i:05d}.jpg"
        img.save(path, quality=90)
        out.append(path)
    return out


def bench_curate(
    num_images: int = 48, size_px: int = 1024, num_workers: int = 2, backend: str = "dlib"
) -> CurateBench:
    """Curate a fresh folder of photos end to end; time it and split the time by stage."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "photos"
        make_bench_photos(src, num_images, size_px)
        per_partition = max(1, math.ceil(num_images / (2 * num_workers)))
        config = load_config(
            CurateConfig,
            "curate",
            None,
            {
                "detect.backend": backend,
                "shards.num_images_per_partition": per_partition,
                "quality.dedup": False,  # the bench photos are variations of a few photos
            },
        )
        start = time.perf_counter()
        stats = curate(str(src), str(Path(tmp) / "out"), config, num_workers=num_workers)
        wall = time.perf_counter() - start
    return CurateBench(
        num_images=num_images,
        size_px=size_px,
        num_workers=num_workers,
        backend=backend,
        wall_seconds=wall,
        stage_seconds=stats["timings"],
        num_samples=stats["num_samples"],
    )


@dataclass
class ModelBench:
    preset: str
    resolution_px: int
    batch_size: int
    dtype: str
    device: str
    offsets_form: str
    params: dict[str, int]
    concept_bytes: int
    step_seconds: float
    peak_memory_bytes: int
    memory_kind: str

    def report(self) -> str:
        lines = [
            f"model bench: preset={self.preset} offsets={self.offsets_form} dtype={self.dtype} "
            f"device={self.device}",
            "  parameters: " + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in self.params.items()),
            f"  concept artifact: {self.concept_bytes:,} bytes "
            f"({self.concept_bytes / 2**20:.2f} MiB)",
            f"  training step (forward + backward), {self.resolution_px} px, batch "
            f"{self.batch_size}: {self.step_seconds:.3f} s",
            f"  peak memory ({self.memory_kind}): {self.peak_memory_bytes / 2**30:.2f} GiB",
        ]
        return "\n".join(lines)


def bench_model(
    preset: str = "tiny",
    resolution_px: int = 64,
    batch_size: int = 4,
    dtype: str = "fp32",
    device: str = "cpu",
    offsets_form: str = "multiplicative",
    num_steps: int = 3,
    gradient_checkpointing: bool = False,
) -> ModelBench:
    """Parameter counts, concept size, and time + peak memory of one E4T training step."""
    import resource

    import torch

    from e4t.config import LossConfig, ModelConfig
    from e4t.models.e4t_model import E4TModel
    from e4t.models.architectures import build_base_models
    from e4t.training.step import Batch, compute_loss

    hidden = 32 if preset == "tiny" else 768
    config = ModelConfig(
        base_model=f"preset:{preset}",
        dtype=dtype,
        device=device,
        gradient_checkpointing=gradient_checkpointing,
        encoder={"hidden_dim": hidden},
        offsets={"form": offsets_form},
    )
    model = E4TModel.from_config(config, base=build_base_models(preset, config))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    params = {
        "base UNet": count(model.base.unet),
        "CLIP vision": count(model.image_encoder),
        "encoder": count(model.encoder),
        "offsets": count(model.offsets),
    }
    with tempfile.TemporaryDirectory() as tmp:
        cls = torch.zeros(
            1, len(model.encoder.layer_indices), model.encoder.config.clip_hidden_size
        )
        folder = model.save_concept(Path(tmp) / "concept", cls)
        concept_bytes = sum(p.stat().st_size for p in folder.iterdir())

    size = model.image_encoder.config.image_size
    gen = torch.Generator(device).manual_seed(0)
    batch = Batch(
        pixel_values=torch.rand(
            batch_size, 3, resolution_px, resolution_px, generator=gen, device=device
        )
        * 2
        - 1,
        clip_pixel_values=torch.randn(batch_size, 3, size, size, generator=gen, device=device),
        prompts=["a photo of {}"] * batch_size,
        mask=torch.ones(batch_size, 1, resolution_px, resolution_px, device=device),
    )
    optimizer = torch.optim.AdamW(list(model.trainable_parameters()), lr=1e-5)
    cuda = device.startswith("cuda")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        compute_loss(model, batch, LossConfig(), gen).loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()

    step()  # warm-up: allocator, kernels, lazy init
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(num_steps):
        step()
    seconds = (time.perf_counter() - start) / num_steps
    if cuda:
        peak, kind = torch.cuda.max_memory_allocated(), "CUDA allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process RSS"
    return ModelBench(
        preset=preset,
        resolution_px=resolution_px,
        batch_size=batch_size,
        dtype=dtype,
        device=device,
        offsets_form=offsets_form,
        params=params,
        concept_bytes=concept_bytes,
        step_seconds=seconds,
        peak_memory_bytes=peak,
        memory_kind=kind,
    )


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

    from e4t.config import PretrainConfig
    from e4t.models.architectures import init_model
    from e4t.training.launch import run_pretraining

    rates: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        photos = fetch_sample_photos(root / "photos")
        curate(str(photos), str(root / "shards"), load_config(CurateConfig, "curate", "tiny", None))
        init_model(root / "base", preset="tiny")
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
                nproc_per_node=procs,
                track=False,
                on_event=events.append,
            )
            timed = [e["samples_per_second"] for e in events if e.get("event") == "step"][1:]
            rates[procs] = statistics.median(timed)
    return PretrainBench(global_batch=global_batch, num_steps=num_steps, samples_per_second=rates)


@dataclass
class PersonalizeBench:
    preset: str
    num_steps: int
    draws: int
    resolution_px: int
    seconds_per_concept: dict[str, float]
    concept_bytes: int
    unet_bytes: int

    def report(self) -> str:
        seq = self.seconds_per_concept["sequential"]
        lines = [
            f"personalize bench: preset={self.preset}, {self.num_steps} steps, "
            f"{self.draws} draws per concept per step, {self.resolution_px} px"
        ]
        for name, seconds in self.seconds_per_concept.items():
            lines.append(
                f"  {name:<12} {seconds:7.3f} s per concept "
                f"(throughput × {seq / seconds:.2f} vs sequential)"
            )
        lines.append(
            f"  concept artifact: {self.concept_bytes:,} bytes = "
            f"{100 * self.concept_bytes / self.unet_bytes:.3f} % of the base UNet's "
            f"{self.unet_bytes:,} bytes"
        )
        return "\n".join(lines)


def bench_personalize(
    preset: str = "tiny",
    num_steps: int = 5,
    draws: int = 4,
    resolution_px: int = 32,
    passes: tuple[int, ...] = (1, 4, 8),
    device: str = "cpu",
    dtype: str = "fp32",
) -> PersonalizeBench:
    """Seconds per concept tuning 8 concepts one at a time and K at a time."""
    import torch

    from e4t.config import ModelConfig, TuneConfig
    from e4t.data.shards import read_shard
    from e4t.models.e4t_model import E4TModel
    from e4t.models.architectures import build_base_models
    from e4t.training.tune import face_input, tune_concepts

    hidden = 32 if preset == "tiny" else 768
    config = ModelConfig.model_validate(
        {
            "base_model": f"preset:{preset}",
            "dtype": dtype,
            "device": device,
            "encoder": {"hidden_dim": hidden},
        }
    )
    model = E4TModel.from_config(config, base=build_base_models(preset, config))
    tune = TuneConfig(num_steps=num_steps, draws_per_concept=draws, resolution_px=resolution_px)
    with tempfile.TemporaryDirectory() as tmp:
        photos = fetch_sample_photos(Path(tmp) / "photos")
        curate(str(photos), str(Path(tmp) / "shards"), load_config(CurateConfig, "curate", "tiny"))
        samples = [
            s for p in sorted((Path(tmp) / "shards").glob("*.tar")) for s in read_shard(str(p))
        ]
        import io as _io

        faces = [
            face_input(
                Image.open(_io.BytesIO(s["jpg"])),
                Image.open(_io.BytesIO(s["mask.png"])),
                resolution_px,
                model.base.image_processor,
            )
            for s in samples
        ]
    total = max(passes)
    faces = [faces[i % len(faces)] for i in range(total)]
    seconds: dict[str, float] = {}

    def timed(k: int) -> float:
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        tune_concepts(model, faces[:k], list(range(k)), tune)  # warm-up at this size
        sync()
        start = time.perf_counter()
        for i in range(0, total, k):
            tune_concepts(model, faces[i : i + k], list(range(i, i + k)), tune)
        sync()
        return (time.perf_counter() - start) / total

    for k in passes:
        seconds["sequential" if k == 1 else f"K = {k}"] = timed(k)
    bank = model.concepts
    assert bank is not None
    with tempfile.TemporaryDirectory() as tmp:
        concept_bytes = bank.save(0, Path(tmp) / "c", model.concept_meta(), tune.artifact_dtype)
    unet_bytes = sum(p.numel() * p.element_size() for p in model.base.unet.parameters())
    return PersonalizeBench(
        preset=preset,
        num_steps=num_steps,
        draws=draws,
        resolution_px=resolution_px,
        seconds_per_concept=seconds,
        concept_bytes=concept_bytes,
        unet_bytes=unet_bytes,
    )
