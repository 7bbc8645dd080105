"""``e4t bench``: speed and memory figures."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from e4t.cli.common import ARCH_CHOICES


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench", help="print speed figures", description="Benchmarks that print figures."
    )
    p.add_argument("what", choices=list(BENCHES))
    p.add_argument("--num-images", type=int, default=48)
    p.add_argument("--size-px", type=int, default=1024, help="long side of the test photos")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--backend", default="dlib", choices=["dlib", "face-alignment"])
    p.add_argument(
        "--arch",
        choices=ARCH_CHOICES,
        help="model, personalize, gpu: the architecture to measure (random weights; default "
        "tiny); pretrain: given, one GPU's step figures on it (samples/s, memory with and "
        "without gradient checkpointing, FLOPs, MFU) instead of the 1-vs-2-process run",
    )
    p.add_argument("--resolution-px", type=int, default=64, help="model: image size")
    p.add_argument("--batch-size", type=int, default=4, help="model: samples per training step")
    p.add_argument(
        "--global-batch", type=int, default=4, help="pretrain: samples per step over all ranks"
    )
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--offsets", default="multiplicative", choices=["multiplicative", "lowrank"])
    p.add_argument(
        "--train-steps",
        type=int,
        default=3,
        help="model: timed training steps after a warm-up; pretrain: steps per run",
    )
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--tune-steps", type=int, default=5, help="personalize: tuning steps")
    p.add_argument("--draws", type=int, default=4, help="personalize: draws per concept")
    p.add_argument(
        "--passes",
        type=_pass_sizes,
        default=(1, 4, 8),
        help="personalize: the concepts per pass to time, comma-separated (1: one at a time; "
        "default 1,4,8); the most is how many concepts each size tunes",
    )
    p.add_argument(
        "--faces",
        help="personalize, gpu, e2e: a folder of aligned crops (+ NAME.mask.png) to tune",
    )
    p.add_argument(
        "--skip",
        nargs="*",
        choices=["tune", "ops", "generate", "pretrain"],
        help="gpu: figures to leave out",
    )
    p.add_argument("--photos", help="e2e: photos to curate (needs the face models)")
    p.add_argument("--work-dir", help="e2e: where the jobs write (default: a new temp folder)")
    p.add_argument("--nproc-per-node", type=int, default=1, help="e2e: pretraining processes")
    p.add_argument(
        "--runner",
        choices=["inprocess", "dask"],
        help="personalize: concepts per minute of the personalize job with its passes on "
        "this runner (dask: a LocalCluster of --workers worker processes)",
    )
    p.add_argument(
        "--count-ops",
        action="store_true",
        help="personalize: count the non-view ATen ops of one tuning step (K = 1, 4) and of "
        "the bare UNet instead of timing (device-independent: the launch-cost proxy)",
    )
    p.add_argument(
        "--compile",
        choices=["off", "default", "reduce-overhead"],
        default="off",
        help="personalize, gpu: tune.compile for the timed tuning (and gpu's sampling UNet; "
        "compile seconds reported apart)",
    )
    p.add_argument(
        "--count-graph-breaks",
        action="store_true",
        help="personalize: count the compiled tuning step's graph breaks (prints 'graph "
        "breaks: N'; a counting backend, no code generation) instead of timing",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The benchmark ``what`` names (``--arch`` left out: tiny, except for pretrain)."""
    return BENCHES[args.what](args)


def _print_report(result: Any) -> int:
    print(result.report())
    return 0


def _bench_curate(args: argparse.Namespace) -> int:
    from e4t.bench import bench_curate

    return _print_report(
        bench_curate(
            num_images=args.num_images,
            size_px=args.size_px,
            num_workers=args.workers,
            backend=args.backend,
        )
    )


def _bench_model(args: argparse.Namespace) -> int:
    from e4t.bench import bench_model

    return _print_report(
        bench_model(
            arch=args.arch or "tiny",
            resolution_px=args.resolution_px,
            batch_size=args.batch_size,
            dtype=args.dtype,
            device=args.device,
            offsets_form=args.offsets,
            num_steps=args.train_steps,
            gradient_checkpointing=args.gradient_checkpointing,
        )
    )


def _bench_gpu(args: argparse.Namespace) -> int:
    """One JSON line per figure; 1 when a figure failed."""
    from e4t.bench.gpu import bench_gpu, print_json_lines

    figures = bench_gpu(
        arch=args.arch or "tiny",
        device=args.device,
        dtype=args.dtype,
        resolution_px=args.resolution_px,
        faces_dir=args.faces,
        tune_steps=args.tune_steps,
        skip=tuple(args.skip or ()),
        compile=args.compile,
    )
    return 0 if print_json_lines(figures) else 1


def _bench_e2e(args: argparse.Namespace) -> int:
    """The four jobs once through their CLI (``--faces`` crops or ``--photos``), one JSON
    line per stage; 1 when a stage failed."""
    import tempfile
    from pathlib import Path

    from e4t.bench.e2e import E2ESettings, print_stages, run_e2e

    settings = E2ESettings(
        work_dir=Path(args.work_dir or tempfile.mkdtemp(prefix="e4t-e2e-")),
        arch=args.arch or "tiny",
        device=args.device,
        dtype=args.dtype,
        resolution_px=args.resolution_px,
        photos_dir=Path(args.photos) if args.photos else None,
        faces_dir=Path(args.faces) if args.faces else None,
        tune_steps=args.tune_steps,
        pretrain_steps=args.train_steps,
        draws_per_concept=args.draws,
        nproc_per_node=args.nproc_per_node,
    )
    return print_stages(run_e2e(settings))


def _pass_sizes(text: str) -> tuple[int, ...]:
    """``--passes``: "1,4,8" → (1, 4, 8); each a whole number ≥ 1."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give concepts per pass as whole numbers ≥ 1, comma-separated (1,4,8)"
        )
    uneven = [k for k in sizes if max(sizes) % k]
    if uneven or len(set(sizes)) < len(sizes):
        raise argparse.ArgumentTypeError(
            f"{text!r}: each size is timed on the same {max(sizes)} concepts, so each must "
            f"divide the largest and appear once (e.g. 1,2,4,8)"
        )
    return sizes


def _bench_personalize(args: argparse.Namespace) -> int:
    """Concepts per minute of the job on ``--runner``, the op count of a tuning step
    (``--count-ops``), or the tuning step's time and memory."""
    from e4t import bench

    arch = args.arch or "tiny"
    if args.runner:
        from e4t.bench.personalize import bench_personalize_runner

        return _print_report(
            bench_personalize_runner(args.runner, workers=args.workers, num_steps=args.tune_steps)
        )
    if args.count_graph_breaks:
        from e4t.bench.personalize import bench_graph_breaks

        result = bench_graph_breaks(
            arch=arch, resolution_px=args.resolution_px, draws=args.draws, dtype=args.dtype
        )
        _print_report(result)
        return 1 if result.graph_breaks else 0
    if args.count_ops:
        return _print_report(
            bench.bench_personalize_ops(
                arch=arch, resolution_px=args.resolution_px, draws=args.draws, dtype=args.dtype
            )
        )
    return _print_report(
        bench.bench_personalize(
            arch=arch,
            num_steps=args.tune_steps,
            draws=args.draws,
            resolution_px=args.resolution_px,
            device=args.device,
            dtype=args.dtype,
            faces_dir=args.faces,
            compile=args.compile,
            passes=args.passes,
        )
    )


def _bench_pretrain(args: argparse.Namespace) -> int:
    """With ``--arch``: one GPU's step figures on that architecture; without: the tiny
    model's 1-vs-2-process run."""
    if args.arch is not None:
        from e4t.bench.pretrain import bench_pretrain_steps, report_steps

        rows = list(
            bench_pretrain_steps(
                args.arch,
                device=args.device,
                dtype=args.dtype,
                resolution_px=args.resolution_px,
                batch_size=args.batch_size,
                num_steps=args.train_steps,
            )
        )
        print(report_steps(rows))
        return 0
    from e4t.bench import bench_pretrain

    return _print_report(
        bench_pretrain(
            global_batch=args.global_batch,
            num_steps=max(3, args.train_steps),
            resolution_px=args.resolution_px,
        )
    )


BENCHES: dict[str, Callable[[argparse.Namespace], int]] = {
    "curate": _bench_curate,
    "model": _bench_model,
    "pretrain": _bench_pretrain,
    "personalize": _bench_personalize,
    "gpu": _bench_gpu,
    "e2e": _bench_e2e,
}
