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
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from e4t import io as eio
from e4t.config import PersonalizeConfig, config_hash
from e4t.data.concepts import ConceptSpec, PreparedFace, prepare_face, stable_seed
from e4t.data.transforms import FaceInput
from e4t.models.concept import CONCEPT_CONFIG, ConceptBank
from e4t.models.e4t_model import ArtifactError, E4TModel, validate_concept_meta
from e4t.training.tune import TuneResult, tune_concepts

logger = logging.getLogger(__name__)


def concept_url(output_url: str, concept_id: str) -> str:
    return eio.join(output_url, "concepts", concept_id)


def tuning_hash(config: PersonalizeConfig) -> str:
    """What makes a concept: the tuning and face-preparation settings and the seed (not
    ``tune.compile``: compiled and eager tuning give the same concept)."""
    made = PersonalizeConfig(tune=config.tune, curate=config.curate, seed=config.seed)
    return config_hash(made, exclude={"tune": {"compile"}})


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


@dataclass(frozen=True)
class ConceptResult:
    """A concept's outcome in its pass, for its ``results.jsonl`` row (:meth:`to_row`).

    ``status``: ``done`` (tuned now, or ``skipped``: finished by an earlier run with this
    domain model and these settings), ``rejected`` (no usable face) or ``failed`` (tuning
    raised). ``fields``: the rest of the pass's row — done: source, steps, seconds, final
    loss, v* distance, concepts in the pass, artifact bytes (a skipped concept: the row its
    ``concept.json`` recorded); rejected: reason and sources; failed: reason.
    ``model_uri`` / ``model_version_uri``: the job's model as given and as pinned."""

    spec: ConceptSpec
    status: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    skipped: bool = False
    model_uri: str = ""
    model_version_uri: str = ""

    @property
    def concept_id(self) -> str:
        return self.spec.concept_id

    def pass_row(self) -> dict[str, Any]:
        """The pass's own row (what a done concept's ``concept.json`` keeps as ``result``)."""
        return {**self.fields, "concept_id": self.concept_id, "status": self.status}

    def to_row(self) -> dict[str, Any]:
        """Its ``results.jsonl`` row: the pass's row, which person, every file it accounts
        for, which model (as given and as pinned)."""
        return {
            **self.pass_row(),
            **({"skipped": True} if self.skipped else {}),
            "kind": "concept",
            "name": self.spec.name,
            "files": list(self.spec.files),
            "model_uri": self.model_uri,
            "model_version_uri": self.model_version_uri,
        }


@dataclass(frozen=True)
class _Pass:
    """What every stage of one pass shares: the loaded model and its identity, decided once
    per pass (``fingerprint`` hashes every encoder and offset weight)."""

    model: E4TModel
    output_url: str
    config: PersonalizeConfig
    model_uri: str
    fingerprint: str
    made_by: str  # tuning_hash(config)
    origin: dict[str, str]  # e4t.generation.model_provenance: the previews' model chunks

    def result(self, spec: ConceptSpec, status: str, **kwargs: Any) -> ConceptResult:
        version = self.origin["model_version_uri"]
        return ConceptResult(
            spec, status, model_uri=self.model_uri, model_version_uri=version, **kwargs
        )


@dataclass(frozen=True)
class _Ready:
    """A concept whose face passed every gate: its tuning input and the file it came from."""

    spec: ConceptSpec
    face: FaceInput
    source: str


def personalize_pass(
    model: E4TModel,
    specs: list[ConceptSpec],
    output_url: str,
    config: PersonalizeConfig,
    model_uri: str = "",
    model_version_uri: str = "",
    pinned_fingerprint: str = "",
) -> list[ConceptResult]:
    """Tune the unfinished concepts of ``specs`` together; one result per concept: finished
    ones skipped, faces prepared (a concept without one is a rejected row), the rest tuned
    together, each written with its previews.

    ``model_version_uri``: the pinned form of ``model_uri`` the job resolved once
    (:func:`e4t.tracking.registry.resolve_model_version_uri`), recorded beside it;
    ``pinned_fingerprint``: that version's fingerprint when the job pinned it. This pass's
    copy of the model (another worker's, perhaps) must have it, or nothing is tuned."""
    from e4t.generation import model_provenance

    fingerprint = model.fingerprint()  # once per pass: what this worker actually loaded
    if pinned_fingerprint and fingerprint != pinned_fingerprint:
        raise ValueError(  # permanent: a retry of the pass meets the same files
            f"{model_version_uri or model_uri}: this worker's copy has fingerprint "
            f"{fingerprint}, the job pinned {pinned_fingerprint} at its start; the version's "
            "files changed under the job: rerun it"
        )
    origin = model_provenance(model_uri, fingerprint, model_version_uri or None)
    run = _Pass(model, output_url, config, model_uri, fingerprint, tuning_hash(config), origin)
    results: list[ConceptResult] = []
    ready: list[_Ready] = []
    for spec in specs:
        outcome = _finished(run, spec) or _prepare(run, spec)
        if isinstance(outcome, _Ready):
            ready.append(outcome)
        else:
            results.append(outcome)
    if ready:
        results += _tune(run, ready)
    model.detach_concepts()
    return results


def _finished(run: _Pass, spec: ConceptSpec) -> ConceptResult | None:
    """A skipped result when an earlier run finished the concept with this model and these
    settings (:func:`finished_meta`): the row its ``concept.json`` recorded."""
    meta = finished_meta(run.output_url, spec.concept_id, run.fingerprint, run.made_by)
    if meta is None:
        return None
    return run.result(spec, "done", fields=dict(meta.get("result", {})), skipped=True)


def _prepare(run: _Pass, spec: ConceptSpec) -> _Ready | ConceptResult:
    """The concept's first usable face, or its rejected result with the reason."""
    try:
        image_processor = run.model.base.image_processor
        prepared = prepare_face(spec, run.config.curate, run.config.tune, image_processor)
    except Exception as err:  # one bad concept is a row, whatever its files did
        prepared = PreparedFace(reason=f"error: {type(err).__name__}: {err}")
    if prepared.face is None:
        fields = {"reason": prepared.reason, "sources": spec.sources}
        return run.result(spec, "rejected", fields=fields)
    return _Ready(spec, prepared.face, prepared.source or "")


def _tune(run: _Pass, ready: list[_Ready]) -> list[ConceptResult]:
    """Tune ``ready`` together and save each; when that fails, each concept alone (so one
    concept that breaks tuning fails alone: a failed row with the error)."""
    seeds = [run.config.seed + stable_seed(item.spec.concept_id) for item in ready]
    try:
        faces = [item.face for item in ready]
        # compiled: a short pass padded to the job's K (one compilation serves every pass)
        pad_to = run.config.concepts_per_pass
        tuned = tune_concepts(run.model, faces, seeds, run.config.tune, pad_to=pad_to)
    except Exception as err:
        if len(ready) == 1:
            reason = f"{type(err).__name__}: {err}"
            return [run.result(ready[0].spec, "failed", fields={"reason": reason})]
        return [result for item in ready for result in _tune(run, [item])]
    results = []
    rendered = _render_previews(run, tuned.bank, [item.spec for item in ready])
    for index, item in enumerate(ready):
        done = run.result(item.spec, "done", fields=_tuning_fields(run, tuned, index, item.source))
        with tempfile.TemporaryDirectory() as tmp:
            concept, previews = Path(tmp) / "concept", Path(tmp) / "previews"
            size = _write_concept(run, tuned.bank, index, done, concept)
            _save_previews(run, item.spec, rendered[index], previews)
            _upload(run.output_url, item.spec.concept_id, concept, previews)
        results.append(replace(done, fields={**done.fields, "artifact_bytes": size}))
    return results


def _tuning_fields(run: _Pass, tuned: TuneResult, index: int, source: str) -> dict[str, Any]:
    """A tuned concept's row: its source, steps, its share of the pass's seconds, its last
    loss and v* distance (5 decimals), how many concepts shared its pass."""
    losses, distances = tuned.losses[index], tuned.v_star_distances[index]
    num_concepts = len(tuned.losses)
    return {
        "source": source,
        "steps": run.config.tune.num_steps,
        "seconds": round(tuned.seconds / num_concepts, 3),
        "final_loss": round(losses[-1], 5) if losses else None,
        "v_star_distance": round(distances[-1], 5) if distances else None,
        "concepts_in_pass": num_concepts,
    }


def _write_concept(
    run: _Pass, bank: ConceptBank, index: int, result: ConceptResult, folder: Path
) -> int:
    """``folder``'s ``concept.safetensors``, then its ``concept.json`` written once, whole:
    the concept's metadata with its result row, whose ``artifact_bytes`` is the folder's
    size, this file's own bytes included. Returns that size."""
    dtype = run.config.tune.artifact_dtype
    tensors = bank.save_tensors(index, folder, dtype)
    meta = run.model.concept_meta(
        {
            "concept_id": result.concept_id,
            "source": result.fields["source"],
            "model_uri": run.model_uri,
            "model_version_uri": result.model_version_uri,
            "steps": run.config.tune.num_steps,
            "tuning_hash": run.made_by,
            "result": result.pass_row(),
        },
        run.fingerprint,
    )
    info = bank.concept_config(meta, dtype)
    encoded, size = concept_json_bytes(info, tensors.stat().st_size)
    (folder / CONCEPT_CONFIG).write_bytes(encoded)
    return size


def concept_json_bytes(info: dict[str, Any], tensor_bytes: int) -> tuple[bytes, int]:
    """``info`` (a ``concept.json`` with a ``result`` row) encoded with ``artifact_bytes`` set
    to the concept's size on disk: ``tensor_bytes`` plus these very bytes (their own digits
    counted: the size is a fixed point, found in at most a few tries)."""
    size = tensor_bytes
    while True:
        info["result"]["artifact_bytes"] = size
        encoded = json.dumps(info, indent=1, sort_keys=True).encode()
        if tensor_bytes + len(encoded) == size:
            return encoded, size
        size = tensor_bytes + len(encoded)


def _preview_config(run: _Pass) -> Any:
    """The previews' sampling settings (a :class:`e4t.generation.GenerationConfig`)."""
    from e4t.generation import GenerationConfig

    # tune.compile's switch compiles the sampling loop's UNet too (once per shape)
    return GenerationConfig(
        num_steps=run.config.preview_steps, batch_size=4, compile=run.config.tune.compile
    )


def _render_previews(run: _Pass, bank: ConceptBank, specs: list[ConceptSpec]) -> list[Any]:
    """Each tuned concept's preview images (one per prompt). Concepts that share their prompts
    (the config's templates: the usual case) are rendered in one sampling loop with the
    pass's bank, K concepts at once; the same images as one at a time for the same seeds
    (:func:`e4t.generation.generate`). Otherwise each concept is rendered alone."""
    from e4t.generation import generate

    config = _preview_config(run)
    shared = len({tuple(spec.prompts) for spec in specs}) == 1
    if shared and run.model.concepts is bank and bank.num_concepts == len(specs):
        images = generate(run.model, bank.cls, specs[0].prompts, 1, run.config.seed, config)
        return [[im for im in images if im.concept_index == k] for k in range(len(specs))]
    rendered = []
    for index, spec in enumerate(specs):
        single = run.model.attach_concepts(bank.subset(index))
        rendered.append(generate(run.model, single.cls, spec.prompts, 1, run.config.seed, config))
    run.model.attach_concepts(bank)
    return rendered


def _save_previews(run: _Pass, spec: ConceptSpec, images: list[Any], folder: Path) -> None:
    """A concept's preview PNGs with their provenance (concept, domain model) in text chunks."""
    from e4t.generation import provenance, save_images

    config = _preview_config(run)  # the settings the PNGs record are the ones rendered with
    url = concept_url(run.output_url, spec.concept_id)
    save_images(images, folder, config, provenance(spec.concept_id, url, run.origin))


def _upload(output_url: str, concept_id: str, concept: Path, previews: Path) -> None:
    """Previews first, then the concept with its ``concept.json`` last: the done marker."""
    eio.upload_folder(previews, eio.join(output_url, "previews", concept_id), "")
    eio.upload_folder(concept, concept_url(output_url, concept_id), CONCEPT_CONFIG)


def results_jsonl(rows: list[dict[str, Any]]) -> str:
    """``results.jsonl``'s text: the rows sorted by ``concept_id``, one JSON object a line."""
    rows = sorted(rows, key=lambda r: r["concept_id"])
    return "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows)


def write_results(output_url: str, rows: list[dict[str, Any]], extra: dict[str, Any]) -> dict:
    """``results.jsonl`` (a row per concept, and a row per file that is no concept's) and
    ``summary.json``: concept counts, and file counts that add up to the files listed."""
    eio.write_text(eio.join(output_url, "results.jsonl"), results_jsonl(rows))
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
