"""Bulk personalization: a folder of images → one small concept artifact per person.

Each image at the top of the input is one concept (id = file stem); each sub-folder is one
concept with several images (its first usable face is tuned). An optional ``concepts.csv``
(``concept_id,class_word,prompts`` with prompts separated by ``|``) names preview prompts.
Every input goes through curation's decode → detect → align → quality path; a rejected
input is a row with its reason, never a crash.

Concepts are cut into passes of ``concepts_per_pass``; a pass tunes its concepts together
(:func:`e4t.training.tune.tune_concepts`). Each concept is written to
``OUT/concepts/<id>/`` (``concept.json`` last: the done marker) with previews in
``OUT/previews/<id>/``; a rerun skips finished concepts. ``OUT/results.jsonl`` holds one
row per concept: id, status, reason, steps, seconds, final loss, artifact bytes.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from e4t import io as eio
from e4t.config import CurateConfig, TuneConfig
from e4t.data.curation import curate_one
from e4t.data.decode import is_image_name
from e4t.models.e4t_model import E4TModel
from e4t.training.tune import FaceInput, face_input, tune_concepts

logger = logging.getLogger(__name__)

DEFAULT_PREVIEW_PROMPTS = ["a photo of {}", "a painting of {} in the style of van gogh"]


@dataclass
class ConceptSpec:
    concept_id: str
    sources: list[str]
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PREVIEW_PROMPTS))


def _concept_id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:80] or "concept"


def discover_concepts(images_url: str) -> list[ConceptSpec]:
    """Concepts of a folder: top-level images and sub-folders, sorted by id."""
    files = eio.list_files(images_url)
    groups: dict[str, list[str]] = {}
    prompts: dict[str, list[str]] = {}
    for url in files:
        rel = eio.relative_to(url, images_url)
        if rel == "concepts.csv":
            with io.StringIO(eio.read_text(url)) as handle:
                for row in csv.DictReader(handle):
                    if row.get("prompts"):
                        prompts[_concept_id(row["concept_id"])] = [
                            p.strip() for p in row["prompts"].split("|") if p.strip()
                        ]
            continue
        parts = rel.split("/")
        cid = _concept_id(parts[0] if len(parts) > 1 else parts[0].rsplit(".", 1)[0])
        groups.setdefault(cid, []).append(url)
    return [
        ConceptSpec(cid, sorted(urls), prompts.get(cid, list(DEFAULT_PREVIEW_PROMPTS)))
        for cid, urls in sorted(groups.items())
    ]


@dataclass
class PreparedFace:
    """A concept's first usable face (tuning input + the aligned crop), or why none is."""

    face: FaceInput | None = None
    source: str | None = None
    aligned: Image.Image | None = None
    reason: str | None = None


def prepare_face(
    spec: ConceptSpec, curate: CurateConfig, tune: TuneConfig, image_processor: Any
) -> PreparedFace:
    """Each source in turn through curation's path until one face passes every gate."""
    reasons = []
    for source in spec.sources:
        if not is_image_name(source):
            reasons.append("unsupported_extension")
            continue
        curated = curate_one(eio.read_bytes(source), curate)
        if curated.image is None or curated.mask is None:
            reasons.append(curated.reason or "rejected")
            continue
        aligned = Image.fromarray(curated.image)
        face = face_input(
            aligned, Image.fromarray(curated.mask), tune.resolution_px, image_processor
        )
        return PreparedFace(face, source, aligned)
    return PreparedFace(reason=",".join(sorted(set(reasons))) or "no_input")


def concept_url(output_url: str, concept_id: str) -> str:
    return eio.join(output_url, "concepts", concept_id)


def is_done(output_url: str, concept_id: str) -> bool:
    return eio.exists(eio.join(concept_url(output_url, concept_id), "concept.json"))


def _upload_folder(local: Path, url: str) -> int:
    """Copy a local folder to ``url``; ``concept.json`` goes last (the done marker)."""
    files = sorted(
        (p for p in local.rglob("*") if p.is_file()), key=lambda p: p.name == "concept.json"
    )
    total = 0
    for path in files:
        data = path.read_bytes()
        total += len(data)
        eio.write_bytes(eio.join(url, path.relative_to(local).as_posix()), data)
    return total


def personalize_pass(
    model: E4TModel,
    specs: list[ConceptSpec],
    output_url: str,
    curate: CurateConfig,
    tune: TuneConfig,
    seed: int = 0,
    preview_steps: int = 20,
    model_uri: str = "",
) -> list[dict[str, Any]]:
    """Tune the unfinished concepts of ``specs`` together; one result row per concept."""
    from e4t.generation import GenerationConfig, generate, save_images

    rows: list[dict[str, Any]] = []
    ready: list[tuple[ConceptSpec, FaceInput, str]] = []
    for spec in specs:
        if is_done(output_url, spec.concept_id):
            meta = json.loads(
                eio.read_text(eio.join(concept_url(output_url, spec.concept_id), "concept.json"))
            )
            rows.append(
                {
                    **meta.get("result", {}),
                    "concept_id": spec.concept_id,
                    "status": "done",
                    "skipped": True,
                }
            )
            continue
        try:
            prepared = prepare_face(spec, curate, tune, model.base.image_processor)
        except Exception as err:
            prepared = PreparedFace(reason=f"error: {type(err).__name__}: {err}")
        if prepared.face is None:
            rows.append(
                {
                    "concept_id": spec.concept_id,
                    "status": "rejected",
                    "reason": prepared.reason,
                    "sources": spec.sources,
                }
            )
            continue
        ready.append((spec, prepared.face, prepared.source or ""))
    if not ready:
        return rows

    seeds = [seed + stable_seed(spec.concept_id) for spec, _, _ in ready]
    try:
        result = tune_concepts(model, [f for _, f, _ in ready], seeds, tune)
    except Exception as err:
        if len(ready) == 1:
            spec = ready[0][0]
            rows.append(
                {
                    "concept_id": spec.concept_id,
                    "status": "failed",
                    "reason": f"{type(err).__name__}: {err}",
                }
            )
            return rows
        for item in ready:
            rows += personalize_pass(
                model, [item[0]], output_url, curate, tune, seed, preview_steps, model_uri
            )
        return rows
    per_concept = result.seconds / len(ready)
    bank = result.bank
    for index, (spec, _, source) in enumerate(ready):
        row = {
            "concept_id": spec.concept_id,
            "status": "done",
            "source": source,
            "steps": tune.num_steps,
            "seconds": round(per_concept, 3),
            "final_loss": round(result.losses[index][-1], 5) if result.losses[index] else None,
            "concepts_in_pass": len(ready),
        }
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "concept"
            meta = model.concept_meta(
                {
                    "concept_id": spec.concept_id,
                    "source": source,
                    "model_uri": model_uri,
                    "steps": tune.num_steps,
                    "result": row,
                }
            )
            row["artifact_bytes"] = bank.save(index, local, meta, tune.artifact_dtype)
            (local / "concept.json").write_text(
                json.dumps(
                    {**json.loads((local / "concept.json").read_text()), "result": row}, indent=1
                )
            )
            previews = Path(tmp) / "previews"
            single = model.attach_concepts(bank.subset(index))
            images = generate(
                model,
                single.cls,
                spec.prompts,
                1,
                seed,
                GenerationConfig(num_steps=preview_steps, batch_size=4),
            )
            save_images(images, previews)
            _upload_folder(previews, eio.join(output_url, "previews", spec.concept_id))
            _upload_folder(local, concept_url(output_url, spec.concept_id))
            model.attach_concepts(bank)
        rows.append(row)
    model.detach_concepts()
    return rows


def stable_seed(text: str) -> int:
    import zlib

    return zlib.crc32(text.encode()) % 1_000_003


def write_results(output_url: str, rows: list[dict[str, Any]], extra: dict[str, Any]) -> dict:
    """``results.jsonl`` (one row per concept) and ``summary.json`` (counts, seconds)."""
    rows = sorted(rows, key=lambda r: r["concept_id"])
    eio.write_text(
        eio.join(output_url, "results.jsonl"),
        "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows),
    )
    done = [r for r in rows if r["status"] == "done"]
    summary = {
        "num_concepts": len(rows),
        "num_done": len(done),
        "num_rejected": sum(r["status"] == "rejected" for r in rows),
        "num_failed": sum(r["status"] == "failed" for r in rows),
        "num_skipped": sum(bool(r.get("skipped")) for r in rows),
        "seconds_per_concept": (
            sum(r.get("seconds") or 0 for r in done if not r.get("skipped"))
            / max(1, sum(not r.get("skipped") for r in done))
        ),
        "artifact_bytes_max": max((r.get("artifact_bytes") or 0 for r in done), default=0),
        **extra,
    }
    eio.write_text(eio.join(output_url, "summary.json"), json.dumps(summary, indent=1))
    return summary


def personalize_folder(
    images_url: str,
    output_url: str,
    model: E4TModel,
    curate: CurateConfig,
    tune: TuneConfig,
    concepts_per_pass: int = 8,
    seed: int = 0,
    preview_steps: int = 20,
    model_uri: str = "",
    on_pass: Any = None,
) -> dict[str, Any]:
    """The whole job in one process (the CLI's path); the flow maps passes over workers."""
    start = time.perf_counter()
    specs = discover_concepts(images_url)
    if not specs:
        raise FileNotFoundError(f"{images_url}: no images to personalize")
    rows: list[dict[str, Any]] = []
    for i in range(0, len(specs), concepts_per_pass):
        chunk = personalize_pass(
            model,
            specs[i : i + concepts_per_pass],
            output_url,
            curate,
            tune,
            seed,
            preview_steps,
            model_uri,
        )
        rows += chunk
        if on_pass:
            on_pass(chunk)
    summary = write_results(
        output_url,
        rows,
        {
            "images_url": images_url,
            "model_uri": model_uri,
            "wall_seconds": time.perf_counter() - start,
        },
    )
    return {"summary": summary, "rows": rows}
