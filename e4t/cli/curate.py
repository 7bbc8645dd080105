"""``e4t curate``: photos → aligned WebDataset shards + manifest + stats."""

from __future__ import annotations

import argparse
import json
import os
import sys

from e4t.cli.common import add_config_args


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "curate",
        help="stage 1: detect, align and filter faces into shards",
        description="Curate a folder or s3:// prefix of photos into WebDataset "
        "shards + manifest.jsonl + stats.json. Reruns skip finished partitions.",
    )
    p.add_argument("source", help="folder or URL of photos (local, file://, s3://)")
    p.add_argument("output", help="folder or URL for shards, manifest and stats")
    add_config_args(p)
    p.add_argument(
        "--workers",
        type=int,
        default=max(1, min(2, os.cpu_count() or 1)),
        help="worker processes (default: up to 2)",
    )
    p.add_argument(
        "--no-track",
        dest="track",
        action="store_false",
        help="do not log the dataset run to MLflow",
    )
    p.add_argument("--experiment", default="e4t-datasets", help="MLflow experiment")
    p.add_argument("--progress", action="store_true", help="show the progress bar without a TTY")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from e4t.jobs import curate as job
    from e4t.jobs.steps import InProcess

    request = job.request(
        args.source,
        args.output,
        preset=args.preset,
        overrides=args.overrides,
        experiment=args.experiment,
        track=args.track,
        **{name: getattr(args, name, None) for name in job.FLAGS},
    )
    with tqdm(
        desc="curate", unit="img", disable=not sys.stderr.isatty() and not args.progress
    ) as bar:

        def on_partition(record: job.PartitionRecord) -> None:
            bar.update(record.num_inputs)
            bar.set_postfix(samples=record.num_samples)

        result = job.run(request, InProcess(num_workers=args.workers), on_partition=on_partition)
    stats, run_id = result.stats, result.mlflow_run_id
    print(
        f"curated {stats['num_inputs']} inputs → {stats['num_samples']} samples in "
        f"{len(stats['shards'])} shard(s) at {args.output}"
    )
    print(
        f"accepted inputs: {stats['num_accepted_inputs']}, rejected: "
        f"{stats['num_rejected_inputs']} {json.dumps(stats['rejection_reasons'])}, skipped: "
        f"{stats.get('num_skipped_inputs', 0)} {json.dumps(stats.get('skip_reasons', {}))}"
    )
    print(f"manifest: {args.output.rstrip('/')}/manifest.jsonl")
    if run_id:
        from e4t.tracking import ui_command

        print(f"MLflow dataset run: {run_id}  (UI: {ui_command()})")
    return 0
