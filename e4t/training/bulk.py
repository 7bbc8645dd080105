"""Bulk personalization's pass: concept specs (:mod:`e4t.data.concepts`) → one small concept
artifact per person, many per pass. The whole job (plan → passes → results → MLflow) is
:mod:`e4t.jobs.personalize`.

Concepts are cut into passes of ``concepts_per_pass``; a pass tunes its concepts together
(:func:`e4t.training.tune.tune_concepts`). Each concept is written to
``OUT/concepts/<id>/`` (``concept.json`` last: the done marker) with previews in
``OUT/previews/<id>/``; a rerun skips finished concepts. ``OUT/results.jsonl`` holds one
row per concept: id, status, reason, steps, seconds, final loss, artifact bytes.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from e4t import io as eio
from e4t.config import PersonalizeConfig, config_hash
from e4t.data.concepts import ConceptSpec, PreparedFace, prepare_face, stable_seed
from e4t.data.transforms import FaceInput
from e4t.models.e4t_model import ArtifactError, E4TModel, validate_concept_meta
from e4t.training.tune import tune_concepts

logger = logging.getLogger(__name__)


def concept_url(output_url: str, concept_id: str) -> str:
    return eio.join(output_url, "concepts", concept_id)


def tuning_hash(config: PersonalizeConfig) -> str:
    """What makes a concept: the tuning and face-preparation settings and the seed."""
    return config_hash(PersonalizeConfig(tune=config.tune, curate=config.curate, seed=config.seed))


def finished_meta(
    output_url: str, concept_id: str, fingerprint: str, made_by: str
) -> dict[str, Any] | None:
    """The concept's ``concept.json`` when it was finished by this domain model (fingerprint)
    with these settings (``made_by``: :func:`tuning_hash`); None when it must be (re)done —
    a folder written by another domain model or another tune config is redone, never
    skipped; so is one whose ``concept.json`` cannot be read (truncated, not JSON)."""
    url = eio.join(concept_url(output_url, concept_id), "concept.json")
    if not eio.exists(url):
        return None
    try:  # a marker that cannot be read (truncated, not JSON, not UTF-8) is redone, not a crash
        meta = validate_concept_meta(url, eio.read_bytes(url))
    except (ArtifactError, OSError) as err:
        logger.warning("%s: its concept.json is unreadable, redoing it (%s)", concept_id, err)
        return None
    if not isinstance(meta.get("result", {}), dict):
        logger.warning("%s: its concept.json holds no result row, redoing it", concept_id)
        return None
    if meta.get("domain_fingerprint") != fingerprint:
        # the job's model is the one asked for: its output folder is redone with it, not
        # refused (fingerprint: encoder, offsets, base model and dtype; E4TModel.fingerprint)
        logger.info(
            "%s was tuned against domain model %s, this job's is %s: redoing it",
            concept_id,
            ascii(str(meta.get("domain_fingerprint"))[:64]),
            fingerprint,
        )
        return None
    if meta.get("tuning_hash") != made_by:
        logger.info("%s was made with another tuning config: redoing it", concept_id)
        return None
    return dict(meta)


def personalize_pass(
    model: E4TModel,
    specs: list[ConceptSpec],
    output_url: str,
    config: PersonalizeConfig,
    model_uri: str = "",
    model_version_uri: str = "",
) -> list[dict[str, Any]]:
    """Tune the unfinished concepts of ``specs`` together; one result row per concept.

    ``model_version_uri``: the pinned form of ``model_uri`` the job resolved once
    (:func:`e4t.tracking.registry.resolve_model_version_uri`), recorded beside it."""
    from e4t.generation import (
        GenerationConfig,
        generate,
        model_provenance,
        provenance,
        save_images,
    )

    tune, seed = config.tune, config.seed

    rows: list[dict[str, Any]] = []
    ready: list[tuple[ConceptSpec, FaceInput, str]] = []
    fingerprint, made_by = model.fingerprint(), tuning_hash(config)  # once per pass
    model_origin = model_provenance(model_uri, fingerprint, model_version_uri or None)
    for spec in specs:
        meta = finished_meta(output_url, spec.concept_id, fingerprint, made_by)
        if meta is not None:
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
            prepared = prepare_face(spec, config.curate, tune, model.base.image_processor)
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
                model, [item[0]], output_url, config, model_uri, model_origin["model_version_uri"]
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
            "v_star_distance": (
                round(result.v_star_distances[index][-1], 5)
                if result.v_star_distances[index]
                else None
            ),
            "concepts_in_pass": len(ready),
        }
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "concept"
            meta = model.concept_meta(
                {
                    "concept_id": spec.concept_id,
                    "source": source,
                    "model_uri": model_uri,
                    "model_version_uri": model_origin["model_version_uri"],
                    "steps": tune.num_steps,
                    "tuning_hash": made_by,
                    "result": row,
                },
                fingerprint,
            )
            row["artifact_bytes"] = bank.save(index, local, meta, tune.artifact_dtype)
            (local / "concept.json").write_text(
                json.dumps(
                    {**json.loads((local / "concept.json").read_text()), "result": row}, indent=1
                )
            )
            previews = Path(tmp) / "previews"
            single = model.attach_concepts(bank.subset(index))
            preview_config = GenerationConfig(num_steps=config.preview_steps, batch_size=4)
            images = generate(model, single.cls, spec.prompts, 1, seed, preview_config)
            origin = provenance(
                spec.concept_id, concept_url(output_url, spec.concept_id), model_origin
            )
            save_images(images, previews, preview_config, origin)
            eio.upload_folder(previews, eio.join(output_url, "previews", spec.concept_id), "")
            eio.upload_folder(local, concept_url(output_url, spec.concept_id), "concept.json")
            model.attach_concepts(bank)
        rows.append(row)
    model.detach_concepts()
    return rows


def write_results(output_url: str, rows: list[dict[str, Any]], extra: dict[str, Any]) -> dict:
    """``results.jsonl`` (a row per concept, and a row per file that is no concept's) and
    ``summary.json``: concept counts, and file counts that add up to the files listed."""
    rows = sorted(rows, key=lambda r: r["concept_id"])
    eio.write_text(
        eio.join(output_url, "results.jsonl"),
        "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows),
    )
    concepts = [r for r in rows if r.get("kind") != "file"]
    others = [r for r in rows if r.get("kind") == "file"]
    done = [r for r in concepts if r["status"] == "done"]
    summary = {
        "num_concepts": len(concepts),
        "num_done": len(done),
        "num_rejected": sum(r["status"] == "rejected" for r in concepts),
        "num_failed": sum(r["status"] == "failed" for r in concepts),
        "num_skipped": sum(bool(r.get("skipped")) for r in concepts),  # done by an earlier run
        "num_files": sum(len(r.get("files") or [1]) for r in rows),
        "num_files_in_concepts": sum(len(r.get("files") or [1]) for r in concepts),
        "num_files_skipped": sum(r["status"] == "skipped" for r in others),
        "num_files_rejected": sum(r["status"] == "rejected" for r in others),
        "seconds_per_concept": (
            sum(r.get("seconds") or 0 for r in done if not r.get("skipped"))
            / max(1, sum(not r.get("skipped") for r in done))
        ),
        "artifact_bytes_max": max((r.get("artifact_bytes") or 0 for r in done), default=0),
        **extra,
    }
    listed = summary.get("num_files_listed")
    if listed is not None and listed != summary["num_files"]:  # a bug, never bad input
        raise RuntimeError(f"{output_url}: results account for {summary['num_files']} of {listed}")
    eio.write_text(eio.join(output_url, "summary.json"), json.dumps(summary, indent=1))
    return summary
