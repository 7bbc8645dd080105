"""``e4t bench curate``: curation of generated photos, timed by stage."""

from __future__ import annotations

import math
import os
import random
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from e4t.config import CurateConfig, load_config
from e4t.data.curation import STAGES
from e4t.jobs import curate as curate_job
from e4t.jobs.steps import InProcess
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
    peak_rss_bytes_by_worker: dict[str, int]
    main_peak_rss_bytes: int

    @property
    def total_peak_rss_bytes(self) -> int:
        """Each worker's peak plus this process's: an upper bound on the job's memory."""
        workers = sum(self.peak_rss_bytes_by_worker.values())
        if any(w.endswith(f":{os.getpid()}") for w in self.peak_rss_bytes_by_worker):
            return max(workers, self.main_peak_rss_bytes)  # in-process: one and the same
        return workers + self.main_peak_rss_bytes

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
            f"  peak RSS: {self.total_peak_rss_bytes / 2**30:.2f} GiB in total "
            f"(workers: "
            + ", ".join(f"{b / 2**20:.0f} MiB" for b in self.peak_rss_bytes_by_worker.values())
            + f"; this process: {self.main_peak_rss_bytes / 2**20:.0f} MiB)",
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
        # in a child process, so this process's peak memory is the curation's, not the
        # generation's
        with ProcessPoolExecutor(max_workers=1) as pool:
            pool.submit(make_bench_photos, src, num_images, size_px).result()
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
        request = curate_job.CurateRequest(str(src), str(Path(tmp) / "out"), config, track=False)
        stats = curate_job.run(request, InProcess(num_workers=num_workers))
        wall = time.perf_counter() - start
    return CurateBench(
        num_images=num_images,
        size_px=size_px,
        num_workers=num_workers,
        backend=backend,
        wall_seconds=wall,
        stage_seconds=stats.timings,
        num_samples=stats.stats["num_samples"],
        peak_rss_bytes_by_worker=stats.peak_rss_bytes_by_worker,
        main_peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )
