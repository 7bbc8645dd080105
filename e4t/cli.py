"""The ``e4t`` command line: one sub-command per stage, plus samples and benchmarks.

Runs without Prefect (the library never imports it); the Prefect flows in ``flows/`` call
the same functions.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from e4t import __version__


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help="YAML preset: a path or a name under configs/<stage>/")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set align.resolution_px=256 (repeatable)",
    )


def _cmd_curate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from e4t.config import CurateConfig, load_config
    from e4t.data.curation import curate

    config = load_config(CurateConfig, "curate", args.preset, args.overrides)
    with tqdm(
        desc="curate", unit="img", disable=not sys.stderr.isatty() and not args.progress
    ) as bar:

        def on_partition(record: dict[str, Any]) -> None:
            bar.update(record["num_inputs"])
            bar.set_postfix(samples=record["num_samples"])

        stats = curate(
            args.source, args.output, config, num_workers=args.workers, on_partition=on_partition
        )
    run_id = None
    if args.track:
        from e4t.tracking import log_dataset_run, ui_command

        run_id = log_dataset_run(
            args.output, stats, config.model_dump(mode="json"), experiment=args.experiment
        )
    print(
        f"curated {stats['num_inputs']} inputs → {stats['num_samples']} samples in "
        f"{len(stats['shards'])} shard(s) at {args.output}"
    )
    print(
        f"accepted inputs: {stats['num_accepted_inputs']}, rejected: "
        f"{stats['num_rejected_inputs']} {json.dumps(stats['rejection_reasons'])}"
    )
    print(f"manifest: {args.output.rstrip('/')}/manifest.jsonl")
    if run_id:
        print(f"MLflow dataset run: {run_id}  (UI: {ui_command()})")
    return 0


def _cmd_samples(args: argparse.Namespace) -> int:
    from e4t.samples import fetch_sample_photos

    dest = fetch_sample_photos(args.dest, negatives=args.negatives)
    print(f"sample photos in {dest}: {', '.join(sorted(p.name for p in dest.iterdir()))}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from e4t.bench import bench_curate

    if args.what == "curate":
        result = bench_curate(
            num_images=args.num_images,
            size_px=args.size_px,
            num_workers=args.workers,
            backend=args.backend,
        )
        print(result.report())
        return 0
    if args.what == "model":
        from e4t.bench import bench_model

        print(
            bench_model(
                preset=args.preset,
                resolution_px=args.resolution_px,
                batch_size=args.batch_size,
                dtype=args.dtype,
                device=args.device,
                offsets_form=args.offsets,
                num_steps=args.steps,
                gradient_checkpointing=args.gradient_checkpointing,
            ).report()
        )
        return 0
    if args.what == "personalize":
        from e4t.bench import bench_personalize

        print(
            bench_personalize(
                preset=args.preset,
                num_steps=args.tune_steps,
                draws=args.draws,
                resolution_px=args.resolution_px,
                device=args.device,
                dtype=args.dtype,
            ).report()
        )
        return 0
    if args.what == "pretrain":
        from e4t.bench import bench_pretrain

        print(
            bench_pretrain(
                global_batch=args.batch_size,
                num_steps=max(3, args.steps),
                resolution_px=args.resolution_px,
            ).report()
        )
        return 0
    raise SystemExit(f"unknown benchmark {args.what!r}")  # argparse's choices stop this first


def _cmd_init_model(args: argparse.Namespace) -> int:
    from e4t.models.architectures import init_model

    out = init_model(
        args.dest, preset=args.preset, seed=args.seed, prediction_type=args.prediction_type
    )
    print(f"wrote the {args.preset} base model ({args.prediction_type}) to {out}")
    return 0


def _load_model_config(args: argparse.Namespace) -> Any:
    from e4t.config import ModelConfig, load_config

    overrides = list(args.overrides)
    if getattr(args, "base_model", None):
        overrides.append(f"base_model={args.base_model}")
    return load_config(ModelConfig, "model", args.preset, overrides)


def _cmd_init_domain(args: argparse.Namespace) -> int:
    from e4t.models.e4t_model import E4TModel

    model = E4TModel.from_config(_load_model_config(args), seed=args.seed)
    out = model.save_pretrained(args.dest)
    print(f"wrote an untrained domain model (fresh encoder, zero offsets) to {out}")
    return 0


def _cmd_encode_concept(args: argparse.Namespace) -> int:
    from PIL import Image

    from e4t.generation import clip_pixels
    from e4t.models.e4t_model import E4TModel

    model = E4TModel.from_pretrained(args.model, overrides={"device": args.device})
    cls = model.clip_cls(clip_pixels(model, Image.open(args.image)))
    out = model.save_concept(args.dest, cls, extra={"source": args.image, "steps": 0})
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote a 0-step concept of {args.image} to {out} ({size:,} bytes)")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from e4t.generation import GenerationConfig, generate, save_images
    from e4t.models.e4t_model import E4TModel

    model = E4TModel.from_pretrained(args.model, overrides={"device": args.device})
    cls = model.load_concept(args.concept)
    config = GenerationConfig(
        num_steps=args.steps,
        guidance_scale=args.cfg,
        negative_prompt=args.negative_prompt,
        scheduler=args.scheduler,
        height=args.height,
        width=args.width,
        batch_size=args.batch_size,
    )
    images = generate(model, cls, args.prompt, args.num_images, args.seed, config)
    for path in save_images(images, args.out, config):
        print(path)
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from e4t.config import PretrainConfig, load_config
    from e4t.training.launch import run_pretraining

    overrides = [f"data.shards={args.shards}", *args.overrides]
    if args.steps:
        overrides.append(f"train.num_steps={args.steps}")
    config = load_config(PretrainConfig, "pretrain", args.preset, overrides)
    with tqdm(total=config.train.num_steps, desc="pretrain", unit="step") as bar:

        def on_event(event: dict[str, Any]) -> None:
            if event.get("event") == "step":
                bar.n = event["step"]
                bar.set_postfix(
                    loss=f"{event['loss']:.4f}", sps=f"{event['samples_per_second']:.1f}"
                )
                bar.refresh()

        out = run_pretraining(
            config,
            args.output,
            args.nproc_per_node,
            args.nnodes,
            args.node_rank,
            args.rdzv_endpoint,
            track=args.track,
            on_line=(lambda line: None) if not args.verbose else print,
            on_event=on_event,
        )
    print(f"domain model: {args.output.rstrip('/')}/model")
    if out.get("alias_uri"):
        print(f"MLflow run {out['run_id']}; registered {out['model_uri']} ({out['alias_uri']})")
    return 0


def _cmd_personalize(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from e4t.config import PersonalizeConfig, load_config
    from e4t.tracking import load_domain_model
    from e4t.training.bulk import discover_concepts, personalize_folder

    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"tune.num_steps={args.steps}")
    if args.concepts_per_pass:
        overrides.append(f"concepts_per_pass={args.concepts_per_pass}")
    config = load_config(PersonalizeConfig, "personalize", args.preset, overrides)
    model = load_domain_model(args.model, device=args.device)
    total = len(discover_concepts(args.images))
    with tqdm(total=total, desc="personalize", unit="concept") as bar:
        result = personalize_folder(
            args.images,
            args.out,
            model,
            config.curate,
            config.tune,
            config.concepts_per_pass,
            config.seed,
            config.preview_steps,
            args.model,
            on_pass=lambda rows: bar.update(len(rows)),
        )
    summary = result["summary"]
    print(
        f"{summary['num_done']} of {summary['num_concepts']} concepts personalized "
        f"({summary['num_skipped']} already done), {summary['num_rejected']} rejected, "
        f"{summary['num_failed']} failed; {summary['seconds_per_concept']:.2f} s per concept"
    )
    for row in result["rows"]:
        if row["status"] != "done":
            print(f"  {row['concept_id']}: {row['status']} ({row.get('reason')})")
    print(f"results: {args.out.rstrip('/')}/results.jsonl")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from e4t.config import EvaluateConfig, load_config
    from e4t.evaluation.job import run_job
    from e4t.tracking import load_domain_model, ui_command

    overrides = list(args.overrides)
    for key, value in (("prompts", args.prompt), ("seeds", args.seeds), ("steps", args.steps)):
        if value:
            overrides.append(f"{key}={list(value)!r}")
    if args.baselines is not None:
        overrides.append(f"methods={['e4t', *args.baselines]!r}")
    config = load_config(EvaluateConfig, "evaluate", args.preset, overrides)
    with tqdm(total=100, desc="evaluate", unit="%") as bar:

        def on_progress(fraction: float) -> None:
            bar.update(round(100 * fraction) - bar.n)

        out = run_job(
            lambda uri: load_domain_model(uri, device=args.device),
            args.model,
            args.concepts,
            args.out,
            config,
            preset=args.preset,
            track_run=not args.no_track,
            on_progress=on_progress,
        )
    if out.get("skipped"):
        print(f"{args.out} already holds this evaluation of this version; nothing to do")
    print(f"report: {out['urls']['report']}")
    decision = out.get("promotion")
    if decision:
        verdict = "promoted" if decision["promoted"] else "kept"
        print(f"promotion ({decision['metric']}): {verdict}: {decision.get('reason')}")
    if out.get("mlflow_run_id"):
        print(f"MLflow run {out['mlflow_run_id']}; open the UI: {ui_command()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="e4t",
        description="E4T domain tuning. Stages: curate (photos → aligned WebDataset shards); "
        "pretrain (encoder + offsets, torchrun); personalize (a folder → concepts); "
        "model: init-model (base presets), init-domain, encode-concept, generate. "
        "Helpers: samples (fetch the sample photos), bench (speed and memory figures).",
    )
    parser.add_argument("--version", action="version", version=f"e4t {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")

    p = sub.add_parser(
        "curate",
        help="stage 1: detect, align and filter faces into shards",
        description="Curate a folder or s3:// prefix of photos into WebDataset "
        "shards + manifest.jsonl + stats.json. Reruns skip finished partitions.",
    )
    p.add_argument("source", help="folder or URL of photos (local, file://, s3://)")
    p.add_argument("output", help="folder or URL for shards, manifest and stats")
    _add_config_args(p)
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
    p.set_defaults(func=_cmd_curate)

    p = sub.add_parser(
        "pretrain",
        help="stage 2: pretrain encoder + offsets on curated shards",
        description="Domain pretraining under torchrun (DDP); checkpoints and "
        "resumes in OUTPUT; tracked in MLflow and registered as e4t-<domain>.",
    )
    p.add_argument("shards", help="curated folder (with stats.json), .tar URL or pattern")
    p.add_argument("output", help="folder or URL for checkpoints and the model")
    _add_config_args(p)
    p.add_argument("--steps", type=int, help="override train.num_steps")
    p.add_argument("--nproc-per-node", type=int, default=1)
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--rdzv-endpoint", help="HOST:PORT of the c10d rendezvous (several nodes)")
    p.add_argument("--no-track", dest="track", action="store_false")
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser(
        "personalize",
        help="stage 3: one concept per person from a folder",
        description="Personalize every image (or sub-folder) of IMAGES in a few "
        "tuning steps, many concepts per pass; reruns skip finished concepts.",
    )
    p.add_argument(
        "images",
        help="folder or s3:// prefix of photos (one per concept, or "
        "one sub-folder per concept); optional concepts.csv",
    )
    p.add_argument(
        "--model",
        required=True,
        help="domain model: models:/e4t-faces@candidate, a version URI, or a folder",
    )
    p.add_argument("--out", required=True, help="output folder or URL")
    _add_config_args(p)
    p.add_argument("--steps", type=int, help="tuning steps (5–15)")
    p.add_argument("--concepts-per-pass", type=int)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_personalize)

    p = sub.add_parser(
        "evaluate",
        help="stage 4: identity, prompt alignment and speed against baselines",
        description="Tune each concept with E4T and the baselines (Textual Inversion, E4T "
        "without pretraining) at each budget, generate, score identity / CLIP-T / CLIP-I / "
        "diversity, write report.html, log one MLflow run and move @champion when the "
        "candidate beats it.",
    )
    p.add_argument("concepts", help="folder of face photos, or a personalize-bulk output")
    p.add_argument(
        "--model", required=True, help="models:/e4t-faces@candidate, a version URI, or a folder"
    )
    p.add_argument("--out", required=True, help="output folder or URL for the report")
    _add_config_args(p)
    p.add_argument("--prompt", action="append", help="a prompt with {} (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--steps", type=int, nargs="+", help="tuning budgets, e.g. 0 5 15 50")
    p.add_argument(
        "--baselines", nargs="*", choices=["textual-inversion", "no-pretraining"], default=None
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-track", action="store_true", help="no MLflow run, no promotion")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "init-model",
        help="write a base model preset (random weights)",
        description="Write a complete diffusers Stable Diffusion folder + CLIP "
        "vision tower with seeded random weights and the real CLIP tokenizer.",
    )
    p.add_argument("dest")
    p.add_argument("--preset", default="tiny", choices=["tiny", "sd15-random"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction"])
    p.set_defaults(func=_cmd_init_model)

    p = sub.add_parser(
        "init-domain", help="write an untrained domain model (encoder + zero offsets)"
    )
    p.add_argument("dest")
    p.add_argument("--base-model", help="base model folder or hub id (default: model config)")
    p.add_argument("--seed", type=int, default=0)
    _add_config_args(p)
    p.set_defaults(func=_cmd_init_domain)

    p = sub.add_parser("encode-concept", help="a 0-step concept: the encoder's prediction alone")
    p.add_argument("image")
    p.add_argument("dest")
    p.add_argument("--model", required=True, help="domain model folder")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_encode_concept)

    p = sub.add_parser("generate", help="images of a concept from prompts ({} = the concept)")
    p.add_argument("--model", required=True, help="domain model folder")
    p.add_argument("--concept", required=True, help="concept folder")
    p.add_argument(
        "--prompt",
        action="append",
        required=True,
        help='e.g. "a photo of {} as an astronaut" (repeatable)',
    )
    p.add_argument("-n", "--num-images", type=int, default=4, help="images per prompt")
    p.add_argument("--seed", type=int, default=0, help="image k of a prompt uses seed + k")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--cfg", type=float, default=7.5, help="classifier-free guidance scale")
    p.add_argument("--negative-prompt", default="")
    p.add_argument(
        "--scheduler", default="ddim", choices=["ddim", "ddpm", "pndm", "euler", "euler-a", "dpm++"]
    )
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="outputs", help="folder for the PNGs")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("samples", help="fetch the real sample photos (registry + scikit-image)")
    p.add_argument("dest", help="folder to copy them into")
    p.add_argument("--negatives", action="store_true", help="also the no-face photos")
    p.set_defaults(func=_cmd_samples)

    p = sub.add_parser(
        "bench", help="print speed figures", description="Benchmarks that print figures."
    )
    p.add_argument("what", choices=["curate", "model", "pretrain", "personalize"])
    p.add_argument("--num-images", type=int, default=48)
    p.add_argument("--size-px", type=int, default=1024, help="long side of the test photos")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--backend", default="dlib", choices=["dlib", "face-alignment"])
    p.add_argument(
        "--preset",
        default="tiny",
        choices=["tiny", "sd15-random"],
        help="model: the architecture to measure",
    )
    p.add_argument("--resolution-px", type=int, default=64, help="model: image size")
    p.add_argument("--batch-size", type=int, default=4, help="model: batch")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--offsets", default="multiplicative", choices=["multiplicative", "lowrank"])
    p.add_argument("--steps", type=int, default=3, help="model: timed steps after a warm-up")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--tune-steps", type=int, default=5, help="personalize: tuning steps")
    p.add_argument("--draws", type=int, default=4, help="personalize: draws per concept")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("alembic", "mlflow", "botocore", "s3fs", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from e4t.config import ConfigError
    from e4t.data.curation import CurationError
    from e4t.faces.landmarker import LandmarkerUnavailable
    from e4t.models.e4t_model import ArtifactError
    from e4t.training.launch import TrainingFailed

    try:
        return int(args.func(args))
    except (
        ConfigError,
        CurationError,
        LandmarkerUnavailable,
        FileNotFoundError,
        ArtifactError,
        TrainingFailed,
    ) as err:
        print(f"e4t: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
