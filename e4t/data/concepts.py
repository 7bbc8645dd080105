"""Concept inputs: a folder of photos → concept specs → each concept's aligned face.

Each image at the top of the input is one concept, each sub-folder is one concept with
several images (its first usable face is tuned); a concept's id is its file's or folder's
:func:`e4t.data.inputs.input_id` (a readable slug + a hash of the relative path), so no two
people share one. Every other file is a row of its own (hidden, unsupported, not a regular
file, ...). An optional ``concepts.csv`` (``concept_id,class_word,prompts`` with prompts
separated by ``|``; ``concept_id`` a file stem, folder name or full id) names preview prompts.
Every input goes through curation's decode → detect → align → quality path
(:func:`e4t.data.curation.curate_one`); a rejected input is a reason, never a crash.
Personalization and evaluation both read concepts this way.
"""

from __future__ import annotations

import csv
import io
import zlib
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from e4t import io as eio
from e4t.config import CurateConfig, TuneConfig
from e4t.data.curation import curate_one
from e4t.data.decode import is_image_name
from e4t.data.inputs import (
    SKIPPED,
    InputFile,
    display_name,
    input_id,
    list_inputs,
    read_capped,
)
from e4t.data.transforms import FaceInput, face_tensors

DEFAULT_PREVIEW_PROMPTS = ["a photo of {}", "a painting of {} in the style of van gogh"]


@dataclass(frozen=True)
class ConceptSpec:
    """One person: an id no other input of the folder shares (:func:`input_id` of the file or
    sub-folder), its source files, its preview prompts, its readable ``name`` (file stem or
    folder name) and ``files``: every relative path it accounts for."""

    concept_id: str
    sources: list[str]
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PREVIEW_PROMPTS))
    name: str = ""
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConceptListing:
    """A folder as personalization reads it: its concepts, and one row for each file that is
    no concept's (skipped: hidden, unsupported, concepts.csv; rejected: not a regular file,
    a link out of the folder, too large)."""

    concepts: list[ConceptSpec]
    others: list[dict[str, Any]]

    @property
    def num_files(self) -> int:
        return sum(len(c.files) for c in self.concepts) + len(self.others)


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name[1:] else name


def _read_prompts(url: str) -> dict[str, list[str]]:
    """``concepts.csv``: ``concept_id`` is a file stem, a folder name or a full id."""
    prompts: dict[str, list[str]] = {}
    with io.StringIO(eio.read_text(url)) as handle:
        for row in csv.DictReader(handle):
            if row.get("concept_id") and row.get("prompts"):
                prompts[row["concept_id"].strip()] = [
                    p.strip() for p in row["prompts"].split("|") if p.strip()
                ]
    return prompts


def list_concepts(images_url: str, max_bytes: int | None = None) -> ConceptListing:
    """Concepts of a folder: each top-level image is one, each sub-folder is one; every other
    file is a row of its own. Listing opens no file but ``concepts.csv``."""
    entries = list_inputs(images_url, max_bytes)
    prompts: dict[str, list[str]] = {}
    others: list[dict[str, Any]] = []
    groups: dict[str, list[InputFile]] = {}
    for entry in entries:
        if entry.relpath == "concepts.csv" and entry.reason is None:
            prompts = _read_prompts(entry.url)
            others.append(_other_row(entry, "control_file", "preview prompts of the concepts"))
            continue
        if entry.reason is not None:
            others.append(_other_row(entry, entry.reason, entry.detail))
            continue
        top, _, rest = entry.relpath.partition("/")
        if not rest and not is_image_name(entry.relpath):
            others.append(_other_row(entry, "unsupported_extension", "not an image"))
            continue
        groups.setdefault(top if rest else entry.relpath, []).append(entry)
    concepts = []
    for key, members in groups.items():
        name = display_name(key)
        is_folder = "/" in members[0].relpath
        readable = name if is_folder else _stem(name)
        concept_id = input_id(key)
        concepts.append(
            ConceptSpec(
                concept_id,
                [m.url for m in members],
                prompts.get(concept_id) or prompts.get(readable) or list(DEFAULT_PREVIEW_PROMPTS),
                name=readable,
                files=tuple(display_name(m.relpath) for m in members),
            )
        )
    return ConceptListing(sorted(concepts, key=lambda c: c.concept_id), others)


def _other_row(entry: InputFile, reason: str, detail: str | None) -> dict[str, Any]:
    row = {
        "kind": "file",
        "concept_id": entry.id,
        "name": display_name(entry.relpath),
        "status": "skipped" if reason in SKIPPED else "rejected",
        "reason": reason,
        "files": [display_name(entry.relpath)],
        "sources": [entry.url],
    }
    if detail:
        row["detail"] = detail
    return row


def discover_concepts(images_url: str) -> list[ConceptSpec]:
    """The folder's concepts, sorted by id (:func:`list_concepts` without the other rows)."""
    return list_concepts(images_url).concepts


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
        try:
            data = read_capped(source, curate.decode.max_bytes)
        except OSError as err:  # vanished or no longer a regular file since the listing
            reasons.append(f"unreadable: {type(err).__name__}")
            continue
        curated = curate_one(data, curate)
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
