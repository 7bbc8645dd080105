"""``e4t bench e2e``: the whole DAG once, each job through its CLI, one JSON line per stage.

What the figure benchmarks miss shows up here: device and dtype mismatches between the
jobs, NCCL and the loader under torchrun, a domain model written by one process and read
by the next. Each stage runs as its own ``python -m e4t.cli`` subprocess, as a person or a
deployment would run it, with a handful of steps:

1. ``curate`` the photos of ``photos_dir`` into shards (needs the face models), or
   ``shards``: write already aligned crops (``faces_dir``, ``NAME.mask.png`` beside
   ``NAME.png``) into shards with the project's shard writer, for a machine without them;
2. ``pretrain`` under torchrun on ``device`` (``--init-arch`` writes the random base);
3. ``personalize`` ``num_concepts`` of the inputs on ``device``;
4. ``evaluate`` those concepts on ``device`` (E4T alone, budgets 0 and ``tune_steps``).

Nothing is tracked (``--no-track``: no MLflow) and nothing downloads (``E4T_OFFLINE``, the
evaluation's CLIP is the seeded tiny one). Personalize and evaluate find the face in each
input with the face models (dlib + face-recognition-models); without them those stages
report ``skipped`` with the reason instead of failing for it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from e4t.bench.common import CropError, aligned_crops, read_crop
from e4t.data.decode import describe_error

Status = Literal["ok", "failed", "skipped"]


@dataclass(frozen=True)
class E2ESettings:
    """One end-to-end run: where its inputs and outputs are, how small each job is.

    ``photos_dir`` (curated here) or ``faces_dir`` (aligned crops) gives the inputs;
    ``tune_steps`` are personalization's steps and evaluation's budget beside 0."""

    work_dir: Path
    arch: str = "sd15-random"
    device: str = "cuda"
    dtype: str = "bf16"
    resolution_px: int = 512
    photos_dir: Path | None = None
    faces_dir: Path | None = None
    tune_steps: int = 4
    pretrain_steps: int = 4
    draws_per_concept: int = 4
    generation_steps: int = 4
    num_concepts: int = 2
    nproc_per_node: int = 1
    python: str = sys.executable
    timeout_s: float = 1800.0


@dataclass
class StageResult:
    """One stage's JSON line: its status, wall seconds and what it wrote."""

    stage: str
    status: Status
    wall_s: float
    output: str | None = None
    detail: str | None = None
    context: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> str:
        row = {k: v for k, v in asdict(self).items() if k != "context" and v is not None}
        return json.dumps({**row, "wall_s": round(self.wall_s, 2), **self.context})


def face_models_available() -> bool:
    """dlib and the face-recognition-models files (curation, personalization and identity
    scoring detect faces with them)."""
    return all(importlib.util.find_spec(m) for m in ("dlib", "face_recognition_models"))


def _crop_sample(path: Path, key: str) -> dict[str, bytes | str]:
    """One crop as a shard sample (:func:`e4t.bench.common.read_crop`: within the decode
    caps), with its ``NAME.mask.png`` or an all-face mask."""
    from PIL import Image

    image, mask = read_crop(path)
    mask = mask.resize(image.size) if mask is not None else Image.new("L", image.size, 255)
    jpg, png = io.BytesIO(), io.BytesIO()
    image.save(jpg, "JPEG", quality=95)
    mask.save(png, "PNG")
    meta = {"key": key, "source": path.name, "resolution_px": image.width, "backend": "none"}
    return {"__key__": key, "jpg": jpg.getvalue(), "mask.png": png.getvalue(),
            "json": json.dumps(meta)}  # fmt: skip


def write_crop_shards(faces_dir: Path, output_dir: Path, name: str = "faces") -> dict[str, object]:
    """Aligned crops → one shard + ``stats.json``, the layout pretraining reads from curation.

    Each crop is one sample (``jpg``, ``mask.png``: its ``NAME.mask.png`` or all face,
    ``json``); for inputs that are already aligned, where curation (which detects and aligns
    with the face models) has nothing to do. A crop that cannot be read is a rejected row
    of ``manifest.jsonl`` with its reason. Returns the stats written."""
    from e4t import io as eio
    from e4t.data.shards import shard_name, slugify, write_shard

    crops = aligned_crops(faces_dir)
    if not crops:
        raise FileNotFoundError(f"{faces_dir}: no aligned face crops (.png, .jpg)")
    samples: list[dict[str, bytes | str]] = []
    rows: list[dict[str, str]] = []
    keys: set[str] = set()
    for path in crops:
        key = slugify(path.stem)
        if key in keys:  # a.png and a.jpg: one slug
            key = f"{key}-{len(keys)}"
        keys.add(key)
        try:  # each crop on its own: a bad one is its manifest row, never a stopped run
            sample = _crop_sample(path, key)
        except Exception as err:
            reason, detail = (
                (err.reason, err.detail)
                if isinstance(err, CropError)
                else ("undecodable", describe_error(err))
            )
            rows.append({"key": key, "source": path.name, "status": "rejected",
                         "reason": reason, "detail": detail})  # fmt: skip
            continue
        samples.append(sample)
        rows.append({"key": key, "status": "accepted"})
    if not samples:
        first = rows[0]
        raise FileNotFoundError(
            f"{faces_dir}: no crop could be read ({first['source']}: {first['reason']}, "
            f"{first['detail']})"
        )
    shard = shard_name(name, 0)
    output_dir.mkdir(parents=True, exist_ok=True)
    num_samples = write_shard(str(output_dir / shard), samples)
    manifest = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    stats: dict[str, object] = {
        "name": name,
        "source_url": str(faces_dir),
        "output_url": str(output_dir),
        "num_inputs": len(crops),
        "num_samples": num_samples,
        "shards": [shard],
        "manifest_sha256": hashlib.sha256(manifest.encode()).hexdigest(),
    }
    with eio.atomic_open(str(output_dir / "manifest.jsonl"), "w") as f:
        f.write(manifest)
    with eio.atomic_open(str(output_dir / "stats.json"), "w") as f:
        f.write(json.dumps(stats, indent=1, sort_keys=True))
    return stats


def concept_inputs(settings: E2ESettings, shards_dir: Path, dest: Path) -> list[str]:
    """Copy ``num_concepts`` inputs into ``dest`` (one file, one concept): crops of
    ``faces_dir``, or photos that curation accepted (a photo without a face makes no concept)."""
    if settings.faces_dir is not None:
        chosen = aligned_crops(settings.faces_dir)
    else:
        rows = [json.loads(line) for line in (shards_dir / "manifest.jsonl").open()]
        sources = dict.fromkeys(r["source"] for r in rows if r.get("status") == "accepted")
        chosen = [Path(s) for s in sources]
    chosen = chosen[: settings.num_concepts]
    if not chosen:
        raise FileNotFoundError(f"no input with a face for the concepts under {shards_dir}")
    dest.mkdir(parents=True, exist_ok=True)
    for path in chosen:
        shutil.copyfile(path, dest / path.name)
    return [p.name for p in chosen]


def stage_commands(settings: E2ESettings, inputs: Path) -> dict[str, list[str]]:
    """The CLI arguments of each job (after ``python -m e4t.cli``)."""
    s, work = settings, settings.work_dir
    res, crop_px = s.resolution_px, max(128, s.resolution_px)
    on_gpu = s.device.startswith("cuda")
    pretrain_preset = ["--preset", "tiny"] if s.arch == "tiny" else []
    return {
        "curate": [
            "curate", str(s.photos_dir), str(work / "shards"), "--preset", "tiny",
            "--set", f"align.resolution_px={crop_px}", "--workers", "1", "--no-track",
        ],
        "pretrain": [
            "pretrain", str(work / "shards"), str(work / "pretrain"), *pretrain_preset,
            "--init-arch", s.arch, "--set", f"model.base_model={work / 'base'}",
            "--set", f"model.dtype={s.dtype}", "--set", f"data.resolution_px={res}",
            "--set", "data.shuffle_buffer=8", "--set", "data.num_preview=1",
            "--set", f"data.num_workers={2 if on_gpu else 0}",
            "--set", "train.preview_steps=4", "--set", "train.checkpoint_every=0",
            "--train-steps", str(s.pretrain_steps), "--batch-size", "2",
            "--device", s.device, "--nproc-per-node", str(s.nproc_per_node), "--no-track",
        ],
        "personalize": [
            "personalize", str(inputs), "--model", str(work / "pretrain" / "model"),
            "--out", str(work / "concepts"), "--preset", "tiny",
            "--tune-steps", str(s.tune_steps), "--device", s.device,
            "--set", f"tune.resolution_px={res}",
            "--set", f"tune.draws_per_concept={s.draws_per_concept}",
            "--set", f"curate.align.resolution_px={crop_px}",
            "--set", f"preview_steps={s.generation_steps}", "--no-track",
        ],
        "evaluate": [
            "evaluate", str(work / "concepts"), "--model", str(work / "pretrain" / "model"),
            "--out", str(work / "evaluation"), "--preset", "tiny",
            "--tune-steps", "0", str(s.tune_steps), "--seeds", "0", "--baselines",
            "--prompt", "a photo of {}", "--device", s.device,
            "--set", f"resolution_px={res}", "--set", f"tune.resolution_px={res}",
            "--set", f"tune.draws_per_concept={s.draws_per_concept}",
            "--set", f"curate.align.resolution_px={crop_px}",
            "--set", f"generation_steps={s.generation_steps}",
            "--set", "clip.model=tiny", "--set", f"clip.device={s.device}", "--no-track",
        ],
    }  # fmt: skip


def stage_output(stage: str, work: Path) -> Path:
    """The artifact a stage must leave behind for the next one (its check)."""
    return {
        "curate": work / "shards" / "stats.json",
        "shards": work / "shards" / "stats.json",
        "pretrain": work / "pretrain" / "model" / "e4t_config.json",
        "personalize": work / "concepts" / "concepts",
        "evaluate": work / "evaluation" / "report.html",
    }[stage]


def _run_cli(settings: E2ESettings, stage: str, argv: list[str]) -> StageResult:
    env = {
        **os.environ,
        "E4T_OFFLINE": "1",
        "E4T_DATA_DIR": str(settings.work_dir / "data"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PYTHONUNBUFFERED": "1",
    }
    log = settings.work_dir / "logs" / f"{stage}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as out:
        try:
            done = subprocess.run(
                [settings.python, "-m", "e4t.cli", *argv],
                stdout=out, stderr=subprocess.STDOUT, env=env, timeout=settings.timeout_s,
            )  # fmt: skip
            code: int | None = done.returncode
        except subprocess.TimeoutExpired:
            code = None
    wall = time.perf_counter() - start
    output = stage_output(stage, settings.work_dir)
    if code == 0 and output.exists():
        return StageResult(stage, "ok", wall, str(output))
    tail = log.read_text(errors="replace")[-1500:]
    why = "timed out" if code is None else f"exit {code}" if code else f"no {output}"
    return StageResult(stage, "failed", wall, str(log), f"{why}: {tail}")


def run_e2e(settings: E2ESettings) -> Iterator[StageResult]:
    """Run the jobs in order, one result per stage; a stage whose input a failed or skipped
    stage should have made is skipped, naming that stage."""
    s, work = settings, settings.work_dir
    if (s.photos_dir is None) == (s.faces_dir is None):
        raise ValueError("the end-to-end run takes photos (to curate) or aligned crops: one")
    context: dict[str, object] = {
        "arch": s.arch, "device": s.device, "dtype": s.dtype, "resolution_px": s.resolution_px,
    }  # fmt: skip
    has_face_models = face_models_available()
    work.mkdir(parents=True, exist_ok=True)
    inputs = work / "inputs"
    commands = stage_commands(s, inputs)
    blocked: str | None = None  # the first stage that failed or was skipped

    def done(r: StageResult) -> StageResult:
        nonlocal blocked
        r.context = context
        if r.status != "ok" and blocked is None:
            blocked = r.stage
        return r

    if s.faces_dir is not None:
        start = time.perf_counter()
        try:
            write_crop_shards(s.faces_dir, work / "shards")
            yield done(StageResult("shards", "ok", time.perf_counter() - start,
                                   str(stage_output("shards", work))))  # fmt: skip
        except (OSError, ValueError) as err:
            yield done(StageResult("shards", "failed", time.perf_counter() - start,
                                   detail=f"{type(err).__name__}: {err}"))  # fmt: skip
    order = (["curate"] if s.photos_dir is not None else []) + [
        "pretrain", "personalize", "evaluate",
    ]  # fmt: skip
    for stage in order:
        if blocked is not None:
            yield done(StageResult(stage, "skipped", 0.0, detail=f"{blocked} did not finish"))
            continue
        if stage != "pretrain" and not has_face_models:
            yield done(StageResult(stage, "skipped", 0.0, detail=NO_FACE_MODELS))
            continue
        if stage == "personalize":
            try:
                context = {**context, "concepts": concept_inputs(s, work / "shards", inputs)}
            except (OSError, ValueError) as err:
                yield done(StageResult(stage, "failed", 0.0, detail=str(err)))
                continue
        outcome = _run_cli(s, stage, commands[stage])
        if stage == "personalize" and outcome.status == "ok":
            outcome = check_concepts(outcome, work / "concepts", len(list(inputs.iterdir())))
        yield done(outcome)


def check_concepts(outcome: StageResult, concepts_dir: Path, num_inputs: int) -> StageResult:
    """Personalize exits 0 with every input rejected: ok only when each input is a concept."""
    summary = json.loads((concepts_dir / "summary.json").read_text())
    outcome.detail = f"{summary['num_done']} of {num_inputs} concepts done"
    if summary["num_done"] != num_inputs:
        outcome.status = "failed"
    return outcome


NO_FACE_MODELS = (
    "no face models here (dlib + face-recognition-models): the job detects the face in each "
    "input, aligned crops included"
)


def print_stages(results: Iterator[StageResult]) -> int:
    """One JSON line per stage; 1 when a stage failed."""
    status = 0
    for r in results:
        print(r.to_json(), flush=True)
        status |= r.status == "failed"
    return status
