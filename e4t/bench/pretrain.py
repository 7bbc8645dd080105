"""``e4t bench pretrain``: samples/s of the same job on 1 and 2 DDP processes (CPU, gloo)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from e4t.config import CurateConfig, load_config
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
            str(photos),
            str(root / "shards"),
            load_config(CurateConfig, "curate", "tiny"),
            track_run=False,
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
