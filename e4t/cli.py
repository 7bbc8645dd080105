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
from pathlib import Path
from typing import Any

from e4t import __version__

ARCH_CHOICES = ["tiny", "sd15-random"]  # e4t.config.ArchName (not imported: fast --help)


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
    from e4t.jobs import curate as job
    from e4t.jobs.steps import InProcess

    config = load_config(CurateConfig, "curate", args.preset, args.overrides)
    with tqdm(
        desc="curate", unit="img", disable=not sys.stderr.isatty() and not args.progress
    ) as bar:

        def on_partition(record: dict[str, Any]) -> None:
            bar.update(record["num_inputs"])
            bar.set_postfix(samples=record["num_samples"])

        result = job.run(
            args.source,
            args.output,
            config,
            InProcess(num_workers=args.workers),
            track_run=args.track,
            experiment=args.experiment,
            on_partition=on_partition,
        )
    stats, run_id = result["stats"], result["mlflow_run_id"]
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


def _cmd_samples(args: argparse.Namespace) -> int:
    from e4t.samples import fetch_sample_photos

    dest = fetch_sample_photos(args.dest, negatives=args.negatives)
    print(f"sample photos in {dest}: {', '.join(sorted(p.name for p in dest.iterdir()))}")
    return 0


def _checked_model(model_uri: str) -> str:
    """The pinned form of ``--model`` (one registry look-up, before any heavy work); a
    domain model folder or URL that is not there fails here, naming it."""
    from e4t import io as eio
    from e4t.tracking.registry import check_model_folder, resolve_model_version_uri

    pinned = resolve_model_version_uri(model_uri)
    if not pinned.startswith(("models:/", "runs:/")) and not eio.is_local(pinned):
        check_model_folder(pinned)
    return pinned


def _add_allow_model_mismatch(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-model-mismatch",  # e4t_model.ALLOW_MISMATCH_FLAG (not imported: fast --help)
        action="store_true",
        help="use a concept tuned against another domain model (its concept.json's "
        "domain_fingerprint differs from --model's): refused without this flag",
    )


def _cmd_export_concept(args: argparse.Namespace) -> int:
    from e4t.export import export_concept
    from e4t.generation import check_concept_url, model_provenance
    from e4t.tracking import load_domain_model

    check_concept_url(args.concept)  # before the model: a typo costs no download
    pinned = _checked_model(args.model)
    model = load_domain_model(pinned, device=args.device)
    origin = model_provenance(args.model, model.fingerprint(), pinned)
    recorded = {k: origin[k] for k in ("model_uri", "model_version_uri")}
    info = export_concept(
        model,
        args.concept,
        args.out,
        frozen_steps=args.sample_steps,
        recorded=recorded,
        allow_model_mismatch=args.allow_model_mismatch,
    )
    sizes = ", ".join(f"{k} {v:,} bytes" for k, v in info["bytes"].items())
    shown = printable(str(info["concept_id"]))  # from concept.json: untrusted
    print(f"exported {shown} as {info['token']} to {info['folder']} ({sizes})")
    print(f"base (shared by this domain's concepts): {info['base_folder']}")
    print(info["use"])
    return 0


def _cmd_trace(args: argparse.Namespace) -> int:
    from e4t.trace import TraceError, trace

    try:
        hops = trace(args.image)
    except TraceError as err:  # an image that is not one e4t wrote: one line, no traceback
        print(f"e4t: error: {err}", file=sys.stderr)
        return 2
    for hop in hops:
        print(hop.line())
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    """Copy from any URL (s3://, file://, a path) as ``cp -r`` does: every file under a
    folder / prefix into DEST (relative paths kept); one file to DEST itself, or into DEST
    when DEST ends with / or is an existing folder."""
    from e4t import io as eio

    fs, path = eio.get_fs(args.src)
    into = args.dest.endswith(("/", os.sep)) or Path(args.dest).is_dir()
    if fs.isfile(path) and not into:
        eio.write_bytes(args.dest, eio.read_bytes(args.src))
        print(f"downloaded 1 file to {args.dest}")
        return 0
    written = eio.download_to(args.src, args.dest)
    print(f"downloaded {len(written)} file{'s' if len(written) != 1 else ''} to {args.dest}")
    return 0


def upload_targets(src: Path, dest: str, dest_is_folder: bool) -> list[tuple[Path, str]]:
    """(local file, URL) pairs of an upload, as ``cp`` does it: a folder's files keep their
    relative paths under DEST; a file goes to DEST itself, or into DEST when DEST ends with
    ``/`` or is an existing folder/prefix (``e4t upload READY s3://b/in/b2/READY`` writes
    that one object; ``e4t upload READY s3://b/in/b2/`` writes ``b2/READY``)."""
    from e4t import io as eio

    if src.is_file():
        into = dest.endswith("/") or dest_is_folder
        return [(src, eio.join(dest, src.name) if into else dest)]
    files = sorted(p for p in src.rglob("*") if p.is_file())
    return [(p, eio.join(dest, p.relative_to(src).as_posix())) for p in files]


def _cmd_upload(args: argparse.Namespace) -> int:
    """Copy a file or a folder's files to any URL (s3://, a path), as ``cp`` does."""
    from tqdm import tqdm

    from e4t import io as eio

    src = Path(args.src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder to upload")
    dest_is_folder = False
    if src.is_file() and not args.dest.endswith("/"):
        fs, path = eio.get_fs(args.dest)
        dest_is_folder = fs.isdir(path)
    pairs = upload_targets(src, args.dest, dest_is_folder)
    for path, url in tqdm(pairs, desc="upload", unit="file", disable=len(pairs) < 2):
        eio.write_bytes(url, path.read_bytes())
    where = pairs[0][1] if src.is_file() else args.dest
    print(f"uploaded {len(pairs)} file{'s' if len(pairs) != 1 else ''} to {where}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    args.arch_given, args.arch = args.arch is not None, args.arch or "tiny"
    from e4t import bench

    if args.what == "curate":
        result: Any = bench.bench_curate(
            num_images=args.num_images,
            size_px=args.size_px,
            num_workers=args.workers,
            backend=args.backend,
        )
    elif args.what == "model":
        result = bench.bench_model(
            arch=args.arch,
            resolution_px=args.resolution_px,
            batch_size=args.batch_size,
            dtype=args.dtype,
            device=args.device,
            offsets_form=args.offsets,
            num_steps=args.train_steps,
            gradient_checkpointing=args.gradient_checkpointing,
        )
    elif args.what == "gpu":
        from e4t.bench.gpu import bench_gpu, print_json_lines

        figures = bench_gpu(
            arch=args.arch,
            device=args.device,
            dtype=args.dtype,
            resolution_px=args.resolution_px,
            faces_dir=args.faces,
            tune_steps=args.tune_steps,
            skip=tuple(args.skip or ()),
        )
        return 0 if print_json_lines(figures) else 1
    elif args.what == "personalize" and args.runner:
        from e4t.bench.personalize import bench_personalize_runner

        result = bench_personalize_runner(
            args.runner, workers=args.workers, num_steps=args.tune_steps
        )
    elif args.what == "personalize" and args.count_ops:
        result = bench.bench_personalize_ops(
            arch=args.arch, resolution_px=args.resolution_px, draws=args.draws, dtype=args.dtype
        )
    elif args.what == "personalize":
        result = bench.bench_personalize(
            arch=args.arch,
            num_steps=args.tune_steps,
            draws=args.draws,
            resolution_px=args.resolution_px,
            device=args.device,
            dtype=args.dtype,
            faces_dir=args.faces,
        )
    elif args.arch_given:  # pretrain on a full-size architecture: one GPU's step figures
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
    else:
        result = bench.bench_pretrain(
            global_batch=args.global_batch,
            num_steps=max(3, args.train_steps),
            resolution_px=args.resolution_px,
        )
    print(result.report())
    return 0


def _cmd_init_model(args: argparse.Namespace) -> int:
    from e4t.models.architectures import init_model

    out = init_model(
        args.dest, arch=args.arch, seed=args.seed, prediction_type=args.prediction_type
    )
    print(f"wrote the {args.arch} base model ({args.prediction_type}) to {out}")
    return 0


def _load_model_config(args: argparse.Namespace) -> Any:
    from e4t.config import ModelConfig, load_config

    return load_config(
        ModelConfig, "model", args.preset, args.overrides, values={"base_model": args.base_model}
    )


def _cmd_init_domain(args: argparse.Namespace) -> int:
    from e4t.models.e4t_model import E4TModel

    model = E4TModel.from_config(_load_model_config(args), seed=args.seed)
    out = model.save_pretrained(args.dest)
    print(f"wrote an untrained domain model (fresh encoder, zero offsets) to {out}")
    return 0


def _cmd_encode_concept(args: argparse.Namespace) -> int:
    from PIL import Image

    from e4t import io as eio
    from e4t.config import DecodeConfig
    from e4t.data.decode import decode_image
    from e4t.generation import clip_pixels
    from e4t.tracking import load_domain_model

    if not eio.exists(args.image):  # checked before the model loads
        raise FileNotFoundError(f"{args.image}: no such image")
    pinned = _checked_model(args.model)
    decoded = decode_image(eio.read_bytes(args.image), DecodeConfig())  # capped, upright RGB
    if decoded.image is None:
        raise FileNotFoundError(f"{args.image}: not a usable image ({decoded.reason})")
    model = load_domain_model(pinned, device=args.device)
    cls = model.clip_cls(clip_pixels(model, Image.fromarray(decoded.image)))
    out = model.save_concept(args.dest, cls, extra={"source": args.image, "steps": 0})
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote a 0-step concept of {args.image} to {out} ({size:,} bytes)")
    return 0


def _concept_folder_names(ids: list[str]) -> list[str]:
    """One output folder name per concept of a multi-concept ``generate``: its id (from its
    concept.json: untrusted) reduced to [A-Za-z0-9_.-] (≤ 64), ``-<k>`` added on a clash."""
    import re

    names: list[str] = []
    for k, concept_id in enumerate(ids):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", concept_id)[:64].strip(".-") or f"concept{k}"
        names.append(f"{name}-{k}" if name in names else name)
    return names


def _cmd_generate(args: argparse.Namespace) -> int:
    import contextlib

    from e4t.generation import (
        GenerationConfig,
        generate,
        model_provenance,
        provenance,
        save_images,
        staged_concept,
    )
    from e4t.tracking import load_domain_model

    with contextlib.ExitStack() as stack:
        # every concept checked (and staged) before the model loads
        concept_dirs = [stack.enter_context(staged_concept(url)) for url in args.concept]
        pinned = _checked_model(args.model)
        model = load_domain_model(pinned, device=args.device)
        bank = model.load_concepts(concept_dirs, args.allow_model_mismatch)
        cls = bank.cls.to(model.image_encoder.dtype)
        metas = [json.loads((d / "concept.json").read_text()) for d in concept_dirs]
    domain = model_provenance(args.model, model.fingerprint(), pinned)
    ids = [str(m.get("concept_id") or d.name) for m, d in zip(metas, concept_dirs, strict=True)]
    config = GenerationConfig(
        num_steps=args.sample_steps,
        guidance_scale=args.cfg,
        negative_prompt=args.negative_prompt,
        scheduler=args.scheduler,
        height=args.height,
        width=args.width,
        batch_size=args.batch_size,
    )
    images = generate(model, cls, args.prompt, args.num_images, args.seed, config)
    # one concept: its PNGs in OUT (as ever); several: OUT/<concept id>/ each
    folders = [args.out]
    if len(ids) > 1:
        folders = [os.path.join(args.out, name) for name in _concept_folder_names(ids)]
    for k, (concept_id, url, folder) in enumerate(zip(ids, args.concept, folders, strict=True)):
        mine = [item for item in images if item.concept_index == k]
        for path in save_images(mine, folder, config, provenance(concept_id, url, domain)):
            print(path)
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from e4t.config import LaunchConfig, PretrainConfig, for_world, load_config
    from e4t.jobs import pretrain as job
    from e4t.jobs.steps import InProcess

    config = load_config(
        PretrainConfig,
        "pretrain",
        args.preset,
        args.overrides,
        values={
            "data.shards": args.shards,
            "model.device": args.device,
            "train.num_steps": args.train_steps,
            "train.batch_size": args.batch_size,
        },
    )
    launch = LaunchConfig(
        nproc_per_node=args.nproc_per_node,
        nnodes=args.nnodes,
        node_rank=args.node_rank,
        rdzv_endpoint=args.rdzv_endpoint,
    )
    config = for_world(config, launch.world_size)  # train.global_batch → optim.grad_accum
    print(
        f"global batch {config.train.batch_size * config.optim.grad_accum * launch.world_size}"
        f" = {config.train.batch_size} per rank × {config.optim.grad_accum} accumulation × "
        f"{launch.world_size} rank(s)"
    )
    with tqdm(total=config.train.num_steps, desc="pretrain", unit="step") as bar:

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
        out = job.run(
            config, args.output, launch, steps, init_arch=args.init_arch, track_run=args.track
        )
    print(f"domain model: {args.output.rstrip('/')}/model")
    if out.get("alias_uri"):
        print(f"MLflow run {out['run_id']}; registered {out['model_uri']} ({out['alias_uri']})")
    return 0


def _cmd_personalize(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from e4t.config import PersonalizeConfig, load_config
    from e4t.jobs import personalize as job

    config = load_config(
        PersonalizeConfig,
        "personalize",
        args.preset,
        args.overrides,
        values={
            "tune.num_steps": args.tune_steps,
            "concepts_per_pass": args.concepts_per_pass,
        },
    )
    with tqdm(desc="personalize", unit="concept") as bar:
        result = job.run(
            args.images,
            args.out,
            args.model,
            config,
            device=args.device,
            track_run=args.track,
            experiment=args.experiment,
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
    if result["mlflow_run_id"]:
        print(f"MLflow run {result['mlflow_run_id']} (one child run per concept)")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from e4t.config import EvaluateConfig, load_config
    from e4t.jobs import evaluate as job
    from e4t.jobs.steps import InProcess
    from e4t.tracking import ui_command

    config = load_config(
        EvaluateConfig,
        "evaluate",
        args.preset,
        args.overrides,
        values={
            "prompts": args.prompt,
            "seeds": args.seeds,
            "steps": args.tune_steps,
            "methods": None if args.baselines is None else ["e4t", *args.baselines],
        },
    )
    with tqdm(total=100, desc="evaluate", unit="%") as bar:

        def on_progress(fraction: float) -> None:
            bar.update(round(100 * fraction) - bar.n)

        out = job.run(
            args.model,
            args.concepts,
            args.out,
            config,
            InProcess(callbacks={job.evaluate: {"on_progress": on_progress}}),
            device=args.device,
            preset=args.preset,
            track_run=not args.no_track,
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
    p.add_argument("--train-steps", type=int, help="optimizer steps (train.num_steps)")
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
    p.add_argument("--tune-steps", type=int, help="tuning steps per concept (5–15)")
    p.add_argument("--concepts-per-pass", type=int, help="concepts tuned together")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-track", dest="track", action="store_false", help="no MLflow runs")
    p.add_argument("--experiment", default="e4t-personalize", help="MLflow experiment")
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
    p.add_argument(
        "--tune-steps", type=int, nargs="+", help="tuning budgets reported, e.g. 0 5 15 50"
    )
    p.add_argument(
        "--baselines",
        nargs="*",
        choices=["e4t-frozen", "e4t-full", "textual-inversion", "no-pretraining"],
        default=None,
        help="methods beside e4t (e4t-full: the paper's per-concept full tuning; "
        "e4t-frozen: the concepts as their stock-diffusers export runs them)",
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
    p.add_argument("--arch", default="tiny", choices=ARCH_CHOICES, help="model architecture")
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
    p.add_argument("image", help="a photo: a path or URL (s3://...)")
    p.add_argument("dest")
    p.add_argument(
        "--model", required=True, help="domain model: models:/NAME@ALIAS, a version URI, a folder"
    )
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_encode_concept)

    p = sub.add_parser("generate", help="images of a concept from prompts ({} = the concept)")
    p.add_argument(
        "--model", required=True, help="domain model: models:/NAME@ALIAS, a version URI, a folder"
    )
    p.add_argument(
        "--concept",
        action="append",
        required=True,
        help="concept folder or URL (s3://...); repeatable: several concepts sample together, "
        "each one's PNGs in OUT/<concept id>/",
    )
    p.add_argument(
        "--prompt",
        action="append",
        required=True,
        help='e.g. "a photo of {} as an astronaut" (repeatable)',
    )
    p.add_argument("-n", "--num-images", type=int, default=4, help="images per prompt")
    p.add_argument("--seed", type=int, default=0, help="image k of a prompt uses seed + k")
    p.add_argument("--sample-steps", type=int, default=30, help="denoising steps")
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
    _add_allow_model_mismatch(p)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser(
        "export-concept",
        help="a concept for stock diffusers: textual-inversion embedding + LoRA (+ the base)",
        description="Write OUT/<concept>/ (learned_embeds.safetensors: the frozen v*; "
        "pytorch_lora_weights.safetensors: the deltas) and, once per domain model, "
        "OUT/base-<fingerprint>/ (a diffusers folder, UNet with the domain offsets folded in).",
    )
    p.add_argument(
        "concept",
        help="a concept folder or URL, e.g. s3://BUCKET/OUT/concepts/ID "
        "(concept.json + concept.safetensors)",
    )
    p.add_argument("--model", required=True, help="its domain model: models:/... or a folder")
    p.add_argument("--out", required=True, help="export folder")
    p.add_argument(
        "--sample-steps",
        type=int,
        default=20,  # generation.FROZEN_STEPS (not imported: a fast --help)
        help="steps of the trajectory v* is averaged on (20: what the evaluation's "
        "e4t-frozen method scores; another count exports something it did not score)",
    )
    p.add_argument("--device", default="cpu")
    _add_allow_model_mismatch(p)
    p.set_defaults(func=_cmd_export_concept)

    p = sub.add_parser(
        "trace",
        help="walk from an image e4t wrote back to its concept, model, runs and photo",
        description="Print every hop from IMAGE (a PNG e4t wrote: generate, previews) to "
        "the photo it came from: concept → personalization row → source photo → domain "
        "model version → pretraining run → dataset run → the dataset manifest's row.",
    )
    p.add_argument("image", help="a PNG written by e4t")
    p.set_defaults(func=_cmd_trace)

    p = sub.add_parser(
        "upload",
        help="copy photos to s3:// (or any URL) with the S3 settings of the environment",
        description="Copy every file under a folder (relative paths kept) to the prefix "
        "DEST, or one file, as cp does: to DEST itself, or into DEST when DEST ends with / or "
        "is an existing folder (`e4t upload READY s3://e4t/inbox/b2/READY` drops a batch's "
        "marker). Credentials and endpoint come from AWS_* / E4T_S3_ENDPOINT_URL, as for "
        "every other command.",
    )
    p.add_argument("src", help="a file or a folder")
    p.add_argument("dest", help="s3://BUCKET/PREFIX, a folder, or (for one file) its new URL")
    p.set_defaults(func=_cmd_upload)

    p = sub.add_parser(
        "download",
        help="copy a concept folder, a file or a prefix from s3:// (or any URL) to a folder",
        description="Copy the file SRC into DEST, or every file under the folder or prefix "
        "SRC (a concept folder, OUT/concepts/, a model folder) into DEST with relative paths "
        "kept. S3 settings come from AWS_* / E4T_S3_ENDPOINT_URL, as for upload.",
    )
    p.add_argument("src", help="s3://BUCKET/PREFIX, file://... or a path")
    p.add_argument("dest", help="a local folder (made if missing)")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("samples", help="fetch the real sample photos (registry + scikit-image)")
    p.add_argument("dest", help="folder to copy them into")
    p.add_argument("--negatives", action="store_true", help="also the no-face photos")
    p.set_defaults(func=_cmd_samples)

    p = sub.add_parser(
        "bench", help="print speed figures", description="Benchmarks that print figures."
    )
    p.add_argument("what", choices=["curate", "model", "pretrain", "personalize", "gpu"])
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
        "--faces", help="personalize, gpu: a folder of aligned crops (+ NAME.mask.png) to tune"
    )
    p.add_argument(
        "--skip",
        nargs="*",
        choices=["tune", "ops", "generate", "pretrain"],
        help="gpu: figures to leave out",
    )
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
    p.set_defaults(func=_cmd_bench)
    return parser


def printable(text: str, cap: int = 2000) -> str:
    """Text for the terminal on one line: control characters escaped, long text cut (error
    messages and ids can carry what an untrusted file held)."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:cap])
    return out + ("…" if len(text) > cap else "")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from e4t.quiet import quiet_libraries

    quiet_libraries()  # one progress bar per long job, no notices about unused backends
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("alembic", "mlflow", "botocore", "s3fs", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from botocore.exceptions import BotoCoreError

    from e4t.config import ConfigError
    from e4t.data.curation import CurationError
    from e4t.faces.landmarker import LandmarkerUnavailable
    from e4t.models.e4t_model import ArtifactError
    from e4t.tracking.registry import ModelURIError
    from e4t.training.launch import TrainingFailed

    try:
        return int(args.func(args))
    except (
        ConfigError,
        CurationError,
        LandmarkerUnavailable,
        FileNotFoundError,
        ArtifactError,
        ModelURIError,
        TrainingFailed,
    ) as err:
        print(f"e4t: error: {printable(str(err))}", file=sys.stderr)
        return 2
    except BotoCoreError as err:  # s3:// with no credentials or endpoint, or unreachable
        print(
            f"e4t: error: S3: {printable(str(err))} — set AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY and E4T_S3_ENDPOINT_URL (or AWS_ENDPOINT_URL) for s3:// URLs "
            "(e.g. source .stack/stack.env)",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
