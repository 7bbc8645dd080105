"""``e4t trace IMAGE``: from any image e4t wrote back to the photo it came from.

An image's PNG text chunks (:func:`e4t.generation.save_images`) name its concept and domain
model. From there, through the artifacts and MLflow:

    image → concept (concept.json) → its personalization row (results.jsonl) → its source
    photo (local path or s3:// URL) → domain model version → pretraining run → dataset run
    (the curated shards) → the dataset manifest's row for that photo, when the photo was
    also curated for pretraining.

Each hop is one :class:`Hop`; a hop that cannot be taken says why (an unregistered model
folder has no MLflow runs; a concept folder that moved cannot be read).
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any

from PIL import Image

from e4t import io as eio


@dataclass
class Hop:
    what: str
    value: str
    detail: str = ""

    def line(self) -> str:
        return f"{self.what:<17} {self.value}" + (f"  ({self.detail})" if self.detail else "")


def _read_json(url: str) -> Any:
    return json.loads(eio.read_text(url))


def _rows(url: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in eio.read_text(url).splitlines() if line.strip()]


def image_provenance(path: str) -> dict[str, str]:
    """The text chunks of a PNG e4t wrote (``e4t.*``, prompt, seed, settings)."""
    with Image.open(path) as image:
        text = dict(getattr(image, "text", {}) or {})
    if "e4t.concept_uri" not in text:
        raise ValueError(
            f"{path} carries no e4t provenance (no e4t.concept_uri text chunk): it was not "
            "written by e4t generate, a personalization preview or an evaluation"
        )
    return text


def trace(path: str) -> list[Hop]:
    """Every hop from the image at ``path`` back to its photo."""
    text = image_provenance(path)
    hops = [
        Hop(
            "image",
            path,
            f"prompt {text.get('prompt')!r}, seed {text.get('seed')}, {text.get('steps')} steps, "
            f"cfg {text.get('guidance_scale')}, {text.get('scheduler')}, "
            f"e4t {text.get('e4t.version')}",
        )
    ]
    concept_uri = text["e4t.concept_uri"]
    meta = _read_json(eio.join(concept_uri, "concept.json"))
    fingerprint = text.get("e4t.domain_fingerprint", "")
    same = meta.get("domain_fingerprint") == fingerprint
    hops.append(
        Hop(
            "concept",
            f"{text.get('e4t.concept_id')} at {concept_uri}",
            f"{meta.get('steps')} tuning steps; domain fingerprint "
            f"{'matches' if same else 'DIFFERS: the concept folder was remade since'}",
        )
    )
    source_url = _personalization_hops(concept_uri, text.get("e4t.concept_id", ""), meta, hops)
    _model_hops(text, source_url, hops)
    return hops


def _personalization_hops(
    concept_uri: str, concept_id: str, meta: dict[str, Any], hops: list[Hop]
) -> str | None:
    """The concept's row in its job's results.jsonl, and the photo it was made from."""
    marker = "/concepts/"
    root = concept_uri[: concept_uri.rfind(marker)] if marker in concept_uri else None
    source = meta.get("source")
    if root is None or not eio.exists(eio.join(root, "results.jsonl")):
        hops.append(Hop("personalization", "-", "no results.jsonl beside the concept folder"))
        return str(source) if source else None
    row = next(
        (r for r in _rows(eio.join(root, "results.jsonl")) if r.get("concept_id") == concept_id),
        None,
    )
    summary_url = eio.join(root, "summary.json")
    summary = _read_json(summary_url) if eio.exists(summary_url) else {}
    if row is None:
        hops.append(Hop("personalization", f"{root}/results.jsonl", "no row for this concept"))
        return str(source) if source else None
    hops.append(
        Hop(
            "personalization",
            f"{root}/results.jsonl",
            f"status {row.get('status')}, files {row.get('files')}, "
            f"final loss {row.get('final_loss')}",
        )
    )
    images_url = summary.get("images_url")
    relpaths = row.get("files") or []
    if images_url and relpaths:
        url = eio.join(str(images_url), str(relpaths[0]))
    else:
        url = str(row.get("source") or source or "")
    exists = bool(url) and eio.exists(url)
    hops.append(Hop("source photo", url or "-", "present" if exists else "not found there now"))
    return url or None


def _model_hops(text: dict[str, str], source_url: str | None, hops: list[Hop]) -> None:
    """Domain model version → pretraining run → dataset run → the manifest row of the photo."""
    model_uri, pinned = text.get("e4t.model_uri", ""), text.get("e4t.model_version", "")
    fingerprint = text.get("e4t.domain_fingerprint", "")
    if not pinned:
        hops.append(
            Hop("domain model", model_uri, f"a folder, not a registered version; {fingerprint}")
        )
        return
    from e4t.tracking.client import mlflow_module

    client = mlflow_module().MlflowClient()
    name, version = pinned[len("models:/") :].split("/", 1)
    registered = client.get_model_version(name, version)
    hops.append(Hop("domain model", f"{model_uri} = {pinned}", f"fingerprint {fingerprint}"))
    run = client.get_run(registered.run_id)
    tags = run.data.tags
    hops.append(
        Hop(
            "pretraining run",
            registered.run_id,
            f"experiment {run.info.experiment_id}, output {tags.get('e4t.output_url')}",
        )
    )
    dataset_id = tags.get("e4t.dataset.run_id")
    if not dataset_id:
        hops.append(Hop("dataset run", "-", "the pretraining run names no dataset run"))
        return
    dataset = client.get_run(dataset_id)
    shards = dataset.data.tags.get("e4t.dataset.url", "")
    hops.append(
        Hop(
            "dataset run",
            dataset_id,
            f"shards {shards}, manifest sha256 "
            f"{dataset.data.tags.get('e4t.dataset.manifest_sha256', '')[:16]}…",
        )
    )
    manifest_url = eio.join(shards, "manifest.jsonl")
    if not shards or not eio.exists(manifest_url):
        hops.append(Hop("manifest row", "-", f"{manifest_url} is not there"))
        return
    name_of = posixpath.basename((source_url or "").rstrip("/"))
    rows = [r for r in _rows(manifest_url) if posixpath.basename(str(r.get("source"))) == name_of]
    if not rows:
        hops.append(
            Hop("manifest row", manifest_url, f"{name_of or 'the photo'} was not curated for it")
        )
        return
    row = rows[0]
    hops.append(
        Hop(
            "manifest row",
            manifest_url,
            f"{row.get('source')}: {row.get('status')}"
            + (f" ({row.get('reason')})" if row.get("reason") else "")
            + f", id {row.get('id')}",
        )
    )
