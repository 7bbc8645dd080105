"""``e4t pretrain``: domain pretraining of the encoder and offsets (torchrun)."""

from __future__ import annotations

import argparse
from typing import Any

from e4t.cli.common import ARCH_CHOICES, add_config_args


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "pretrain",
        help="stage 2: pretrain encoder + offsets on curated shards",
        description="Domain pretraining under torchrun (DDP); checkpoints and "
        "resumes in OUTPUT; tracked in MLflow and registered as e4t-<domain>.",
    )
    # dests are the job's flat parameter names (e4t.jobs.pretrain.FLAGS), as the flow's
    p.add_argument(
        "shards_url", metavar="shards", help="curated folder (with stats.json), .tar URL or pattern"
    )
    p.add_argument("output", help="folder or URL for checkpoints and the model")
    add_config_args(p)
    p.add_argument(
        "--train-steps",
        dest="steps",
        metavar="TRAIN_STEPS",
        type=int,
        help="optimizer steps (train.num_steps)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        help="samples per rank per micro-step (train.batch_size); global batch = "
        "batch size × optim.grad_accum × ranks",
    )
    p.add_argument("--device", help="torch device of each rank (model.device)")
    p.add_argument(
        "--init-arch",
        choices=ARCH_CHOICES,
        help="write a random-weight base model of this architecture at model.base_model "
        "when it is missing",
    )
    p.add_argument("--nproc-per-node", type=int, default=1)
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--rdzv-endpoint", help="HOST:PORT of the c10d rendezvous (several nodes)")
    p.add_argument("--no-track", dest="track", action="store_false", help="no MLflow run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from e4t.config import LaunchConfig
    from e4t.jobs import pretrain as job
    from e4t.jobs.steps import InProcess

    launch = LaunchConfig(
        nproc_per_node=args.nproc_per_node,
        nnodes=args.nnodes,
        node_rank=args.node_rank,
        rdzv_endpoint=args.rdzv_endpoint,
    )
    request = job.request(
        args.output,
        preset=args.preset,
        overrides=args.overrides,
        launch=launch,
        init_arch=args.init_arch,
        track=args.track,
        **{name: getattr(args, name, None) for name in job.FLAGS},  # no flag: None, the preset's
    )
    print(request.describe_batch())
    with tqdm(total=request.config.train.num_steps, desc="pretrain", unit="step") as bar:

        def on_event(event: dict[str, Any]) -> None:
            if event.get("event") == "step":
                bar.n = event["step"]
                bar.set_postfix(
                    loss=f"{event['loss']:.4f}", sps=f"{event['samples_per_second']:.1f}"
                )
                bar.refresh()

        steps = InProcess(
            callbacks={
                job.train: {
                    "on_event": on_event,
                    "on_line": print if args.verbose else (lambda line: None),
                }
            }
        )
        out = job.run(request, steps)
    print(f"domain model: {args.output.rstrip('/')}/model")
    if out.alias_uri:
        print(f"MLflow run {out.run_id}; registered {out.model_uri} ({out.alias_uri})")
    return 0
