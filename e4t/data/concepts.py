"""Concept inputs: a folder of photos → concept specs → each concept's aligned face.

Each image at the top of the input is one concept, each sub-folder is one concept with
several images (its first usable face is tuned); a concept's id is its file's or folder's
:func:`e4t.data.inputs.input_id` (a readable slug + a hash of the relative path), so no two
people share one. Every other file is a row of its own (hidden, unsupported, not a regular
file, ...). An optional ``concepts.csv`` (``concept_id,class_word,prompts`` with prompts
separated by ``|``; ``concept_id`` a file stem, folder name or full id) names preview prompts;
it is untrusted: read BOM-tolerant and capped, each cut recorded on its row, and a file that
cannot be read is a row with the reason, never a crash (:func:`_read_prompts`).
Every input goes through curation's decode → detect → align → quality path
(:func:`e4t.data.curation.curate_one`); a rejected input is a reason, never a crash.
Personalization and evaluation both read concepts this way.
"""

from __future__ import annotations

import csv
import io
import os
import zlib
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from e4t import io as eio
from e4t.config import CurateConfig, PersonalizeConfig, TuneConfig
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
DEFAULT_MAX_PROMPTS = PersonalizeConfig.model_fields["max_prompts_per_concept"].default
# caps on concepts.csv (untrusted): the file, a concept id, the prompts field, one prompt
MAX_CONTROL_BYTES = 1 << 20
MAX_ID_CHARS = 256
MAX_FIELD_CHARS = 16_384
MAX_PROMPT_CHARS = 1_000  # CLIP reads 77 tokens of it anyway
MAX_CUTS_LISTED = 20


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
    root_url: str = ""  # the listed folder: a symlink read must resolve inside it


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


@dataclass(frozen=True)
class PromptTable:
    """``concepts.csv`` as read: prompts by ``concept_id``; every cut made to fit the caps
    (one line each, untrusted text escaped); ``error``: why the file was not used at all."""

    prompts: dict[str, list[str]]
    cuts: list[str] = field(default_factory=list)
    error: str | None = None


def _escaped(text: str, max_chars: int = 60) -> str:
    """A field of the file as it may be printed: cut and escaped (no control characters)."""
    return repr(text[:max_chars] + ("…" if len(text) > max_chars else ""))


def _read_prompts(url: str, max_prompts: int = DEFAULT_MAX_PROMPTS) -> PromptTable:
    """``concepts.csv`` (untrusted): UTF-8 with or without a BOM (a spreadsheet's "CSV UTF-8"
    writes one), read up to :data:`MAX_CONTROL_BYTES`. A field over its cap is cut, a concept
    keeps its first ``max_prompts`` prompts; each cut is recorded. A file that cannot be read
    as such is an ``error``, never a crash: the concepts keep the default preview prompts."""
    try:
        data = read_capped(url, MAX_CONTROL_BYTES)
    except OSError as err:  # vanished or no longer a regular file since the listing
        return PromptTable({}, error=f"unreadable: {type(err).__name__}")
    if len(data) > MAX_CONTROL_BYTES:
        return PromptTable(
            {}, error=f"over {MAX_CONTROL_BYTES} bytes: keep it to the preview prompts"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        at = err.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)  # counted past a BOM
        return PromptTable(
            {},
            error=f"not UTF-8 text (byte 0x{data[at]:02x} at offset {at}): save "
            'it as UTF-8 (a spreadsheet\'s "CSV UTF-8"); the default preview prompts are used',
        )
    # csv's per-field limit (128 Ki characters) would raise mid-file; the whole text is
    # capped above, so a limit of the cap never triggers and fields are cut below instead.
    # Raised, never lowered: the limit is process-wide.
    csv.field_size_limit(max(csv.field_size_limit(), MAX_CONTROL_BYTES))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        columns = [(name or "").strip() for name in (reader.fieldnames or [])]
    except csv.Error as err:
        return PromptTable({}, error=f"not a CSV file ({err})")
    if "concept_id" not in columns or "prompts" not in columns:
        return PromptTable(
            {},
            error="no concept_id and prompts columns (header: "
            f"{_escaped(','.join(columns))}); expected concept_id,class_word,prompts",
        )
    reader.fieldnames = columns
    prompts: dict[str, list[str]] = {}
    cuts: list[str] = []
    try:
        for row in reader:
            line = reader.line_num
            key = (row.get("concept_id") or "").strip()
            field_text = row.get("prompts") or ""
            if not key or not isinstance(field_text, str):
                continue
            if len(key) > MAX_ID_CHARS:
                cuts.append(f"line {line}: concept_id over {MAX_ID_CHARS} characters, ignored")
                continue
            if len(field_text) > MAX_FIELD_CHARS:
                cuts.append(
                    f"line {line} ({_escaped(key)}): prompts field of {len(field_text)} "
                    f"characters cut to {MAX_FIELD_CHARS}"
                )
                field_text = field_text[:MAX_FIELD_CHARS]
            found = [p.strip() for p in field_text.split("|") if p.strip()]
            if any(len(p) > MAX_PROMPT_CHARS for p in found):
                cuts.append(
                    f"line {line} ({_escaped(key)}): prompts over {MAX_PROMPT_CHARS} characters cut"
                )
                found = [p[:MAX_PROMPT_CHARS] for p in found]
            if len(found) > max_prompts:
                cuts.append(
                    f"line {line} ({_escaped(key)}): {len(found)} prompts, the first "
                    f"{max_prompts} kept (max_prompts_per_concept)"
                )
                found = found[:max_prompts]
            if found:
                prompts[key] = found
    except csv.Error as err:  # e.g. a NUL byte: the rows read so far stand
        cuts.append(f"line {reader.line_num}: not CSV ({err}); the rest of the file ignored")
    if len(cuts) > MAX_CUTS_LISTED:
        cuts = [*cuts[:MAX_CUTS_LISTED], f"… and {len(cuts) - MAX_CUTS_LISTED} more cuts"]
    return PromptTable(prompts, cuts)


def list_concepts(
    images_url: str, max_bytes: int | None = None, max_prompts: int = DEFAULT_MAX_PROMPTS
) -> ConceptListing:
    """Concepts of a folder: each top-level image is one, each sub-folder is one; every other
    file is a row of its own, and so is a sub-folder with no file in it (``empty_folder``).
    Listing opens no file but ``concepts.csv``; its row says what was cut or why it was not
    used (``max_prompts``: preview prompts a concept keeps)."""
    entries = list_inputs(images_url, max_bytes)
    prompts: dict[str, list[str]] = {}
    others: list[dict[str, Any]] = []
    groups: dict[str, list[InputFile]] = {}
    for entry in entries:
        if entry.relpath == "concepts.csv" and entry.reason is None:
            table = _read_prompts(entry.url, max_prompts)
            prompts = table.prompts
            others.append(_control_row(entry, table))
            continue
        if entry.reason is not None:
            others.append(_other_row(entry, entry.reason, entry.detail))
            continue
        top, _, rest = entry.relpath.partition("/")
        if not rest and not is_image_name(entry.relpath):
            others.append(_other_row(entry, "unsupported_extension", "not an image"))
            continue
        groups.setdefault(top if rest else entry.relpath, []).append(entry)
    listed_tops = {e.relpath.partition("/")[0] for e in entries}
    for name in _top_folders(images_url):
        if name not in listed_tops:
            folder = InputFile(eio.join(images_url, name), name)
            others.append(
                {
                    **_other_row(folder, "empty_folder", "a concept folder with no file in it"),
                    "files": [],
                }
            )
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
                root_url=images_url,
            )
        )
    return ConceptListing(sorted(concepts, key=lambda c: c.concept_id), others)


def _top_folders(images_url: str) -> list[str]:
    """The sub-folders at the top of a local folder (not following links); an object store
    has no empty folders."""
    if not eio.is_local(images_url):
        return []
    _, root = eio.get_fs(images_url)
    if not os.path.isdir(root):
        return []
    with os.scandir(root) as listing:
        return sorted(e.name for e in listing if e.is_dir(follow_symlinks=False))


def _control_row(entry: InputFile, table: PromptTable) -> dict[str, Any]:
    """``concepts.csv``'s row: skipped (read), or rejected with why; the cuts made."""
    if table.error is not None:
        return {**_other_row(entry, "control_file", table.error), "status": "rejected"}
    row = _other_row(entry, "control_file", "preview prompts of the concepts")
    if table.cuts:
        row["cuts"] = table.cuts
    return row


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
            data = read_capped(source, curate.decode.max_bytes, root_url=spec.root_url or None)
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
