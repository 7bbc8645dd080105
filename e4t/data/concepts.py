"""Concept inputs: a folder of photos → concept specs → each concept's aligned face.

Each image at the top of the input is one concept (id = file stem); each sub-folder is one
concept with several images (its first usable face is tuned). An optional ``concepts.csv``
(``concept_id,class_word,prompts`` with prompts separated by ``|``) names preview prompts.
Every input goes through curation's decode → detect → align → quality path
(:func:`e4t.data.curation.curate_one`); a rejected input is a reason, never a crash.
Personalization and evaluation both read concepts this way.
"""

from __future__ import annotations

import csv
import io
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from e4t import io as eio
from e4t.config import CurateConfig, TuneConfig
from e4t.data.curation import curate_one
from e4t.data.decode import is_image_name
from e4t.data.transforms import FaceInput, face_tensors

DEFAULT_PREVIEW_PROMPTS = ["a photo of {}", "a painting of {} in the style of van gogh"]


@dataclass(frozen=True)
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
        face = face_tensors(
            aligned, Image.fromarray(curated.mask), tune.resolution_px, image_processor
        )
        return PreparedFace(face, source, aligned)
    return PreparedFace(reason=",".join(sorted(set(reasons))) or "no_input")


def stable_seed(text: str) -> int:
    return zlib.crc32(text.encode()) % 1_000_003
