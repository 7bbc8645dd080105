"""``e4t trace IMAGE``: from any image e4t wrote back to the photo it came from.

An image's PNG text chunks (:func:`e4t.generation.save_images`) name its concept and domain
model. From there, through the artifacts and MLflow:

    image → concept (concept.json) → its personalization row (results.jsonl) → its source
    photo (local path or s3:// URL) → domain model version → pretraining run → dataset run
    (the curated shards) → the dataset manifest's row for that photo, when the photo was
    also curated for pretraining.

Each hop is one :class:`Hop`; a hop that cannot be taken says why (an unregistered model
folder has no MLflow runs; a concept folder that moved cannot be read).

The image is untrusted data: anyone can write text chunks. So its chunks are parsed with
caps (no decoder of the pixels, a decompression cap per chunk, non-UTF-8 iTXt refused), and
every value is printed with control characters escaped and cut to :data:`MAX_SHOWN_CHARS`.
Trace follows only local paths and the configured store's ``s3://`` URLs
(:func:`url_refusal`: an allow-list; an off-list URL is reported, never opened), reads
regular files only, with caps and timeouts, and creates nothing (a missing MLflow database
is reported, not made). A photo in the dataset manifest is the same photo only when its
full URL is the same (and its id and content hash, where both sides record them), never
because the file names agree. An image that cannot be traced at all raises
:class:`TraceError`: one line naming the file and what is wrong with it.
"""

from __future__ import annotations

import json
import os
import re
import stat
import unicodedata
import urllib.parse
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from e4t import io as eio

#: text chunks kept per key (a longer value is cut: a 50 MB chunk is not read whole)
MAX_TEXT_BYTES = 64 * 1024
#: chunks looked at before giving up on a file (an image e4t wrote has about a dozen)
MAX_CHUNKS = 10_000
#: characters of one value printed (escaped) before it is cut
MAX_SHOWN_CHARS = 240
#: a URL from a chunk or a JSON file longer than this is not followed
MAX_URL_CHARS = 4096
#: caps on what trace reads from the artifacts it follows
MAX_JSON_BYTES = 2**20
MAX_RESULTS_BYTES = 64 * 2**20
MAX_MANIFEST_LINE_BYTES = 2**20
MAX_MANIFEST_ROWS = 10_000_000
#: seconds a remote store (S3, an MLflow server) may take per request
REMOTE_TIMEOUT_S = 10
#: extra URL prefixes trace may open (comma-separated), e.g. ``s3://my-bucket/e4t/``
ALLOW_ENV = "E4T_TRACE_ALLOW"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODEL_VERSION_URI = re.compile(r"^models:/([A-Za-z0-9][A-Za-z0-9_.\- ]{0,255})/([0-9]{1,9})$")
MODEL_ALIAS_URI = re.compile(r"^models:/([A-Za-z0-9][A-Za-z0-9_.\- ]{0,255})@([\w\-]{1,255})$")
#: where the ``e4t.*`` values must be short URLs or ids (a cut one is never followed)
URL_KEYS = ("e4t.concept_uri", "e4t.model_uri", "e4t.model_version", "e4t.model_version_uri")


class TraceError(ValueError):
    """An image that cannot be traced: the message is one line naming the file and why."""


class _HopFailed(Exception):
    """A hop that cannot be taken; its message says why (already escaped)."""


def shown(value: object, limit: int = MAX_SHOWN_CHARS) -> str:
    """``value`` as safe terminal text: control and format characters (ESC, CR, bidi
    overrides...) as ``\\xNN``/``\\uNNNN``, cut after ``limit`` characters."""
    text = str(value)
    cut = len(text) - limit
    if cut > 0:
        text = text[:limit]
    out = []
    for char in text:
        if unicodedata.category(char)[0] in "CZ" and char != " ":
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out) + (f"… ({cut} more characters)" if cut > 0 else "")


@dataclass
class Hop:
    what: str
    value: str
    detail: str = ""

    def line(self) -> str:
        """One printable line: the value and detail escaped and cut (:func:`shown`)."""
        value = shown(self.value)
        detail = shown(self.detail, 4 * MAX_SHOWN_CHARS)
        return f"{self.what:<17} {value}" + (f"  ({detail})" if detail else "")


# --- the image's text chunks --------------------------------------------------------------


def _open_regular(path: str, what: str) -> int:
    """A read-only descriptor of the local regular file ``path`` (O_NONBLOCK: a FIFO in its
    place is refused, never waited on)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise _HopFailed(f"{what}: {err.strerror or err}") from err
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO, socket or device"
        raise _HopFailed(f"{what}: not a regular file ({kind}), not read")
    return fd


def _inflate(data: bytes, key: str, path: str) -> tuple[bytes, bool]:
    """zlib data of a zTXt/iTXt chunk, at most :data:`MAX_TEXT_BYTES` of it (a bomb is cut,
    not expanded); True when it was cut."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_TEXT_BYTES + 1)
    except zlib.error as err:
        raise TraceError(
            f"{shown(path)}: the compressed text chunk {shown(key)} is not valid zlib data "
            f"({err}): not a PNG as e4t writes it"
        ) from err
    return out[:MAX_TEXT_BYTES], len(out) > MAX_TEXT_BYTES


def _text_chunk(kind: bytes, data: bytes, truncated: bool, path: str) -> tuple[str, str, bool]:
    """(key, value, cut) of one tEXt / zTXt / iTXt chunk (PNG spec §11.3.4); ``truncated``:
    ``data`` is only the start of the chunk."""
    key_bytes, sep, rest = data.partition(b"\0")
    if not sep or not 1 <= len(key_bytes) <= 79:
        raise TraceError(
            f"{shown(path)}: a {kind.decode()} chunk has no valid keyword: a damaged PNG"
        )
    key = key_bytes.decode("latin-1")
    cut = truncated
    if kind == b"tEXt":
        return key, rest.decode("latin-1"), cut
    if kind == b"zTXt":
        raw, inflated_cut = _inflate(rest[1:], key, path)
        return key, raw.decode("latin-1"), cut or inflated_cut
    if len(rest) < 2:
        raise TraceError(f"{shown(path)}: the iTXt chunk {shown(key)} is truncated: a damaged PNG")
    compressed, body = rest[0], rest[2:]
    _language, _, body = body.partition(b"\0")
    _translated, _, body = body.partition(b"\0")
    raw = body
    if compressed:
        raw, inflated_cut = _inflate(body, key, path)
        cut = cut or inflated_cut
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        if cut and err.start >= len(raw) - 3:  # a character split by the cut
            value = raw[: err.start].decode("utf-8")
        else:
            raise TraceError(
                f"{shown(path)}: the iTXt chunk {shown(key)} is not UTF-8 (byte "
                f"0x{raw[err.start]:02x} at offset {err.start}): not written by e4t"
            ) from err
    return key, value, cut


def _iter_chunks(handle: IO[bytes], path: str) -> Iterator[tuple[bytes, int, bytes]]:
    """(type, length, data) of each chunk; data is read only for text chunks, and at most
    :data:`MAX_TEXT_BYTES` plus a header's worth of it; other chunks are skipped by seeking."""
    for _ in range(MAX_CHUNKS):
        header = handle.read(8)
        if len(header) < 8:
            return  # truncated after the last whole chunk: what was read is kept
        length, kind = int.from_bytes(header[:4], "big"), header[4:]
        if length > 2**31 - 1 or not kind.isalpha():
            raise TraceError(f"{shown(path)}: a damaged PNG (chunk length {length}, type {kind!r})")
        if kind == b"IEND":
            return
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            take = min(length, MAX_TEXT_BYTES + 1024)
            data = handle.read(take)
            handle.seek(length - take + 4, os.SEEK_CUR)
            yield kind, length, data
        else:
            handle.seek(length + 4, os.SEEK_CUR)
    raise TraceError(f"{shown(path)}: over {MAX_CHUNKS} PNG chunks: not a PNG e4t wrote")


def read_png_text(path: str) -> tuple[dict[str, str], set[str]]:
    """The text chunks of the PNG at ``path`` (first of each key wins) and the keys whose
    value was cut at :data:`MAX_TEXT_BYTES`. Raises TraceError for anything not a PNG."""
    try:
        fd = _open_regular(path, shown(path))
    except _HopFailed as err:
        raise TraceError(str(err)) from err
    text: dict[str, str] = {}
    cut_keys: set[str] = set()
    with os.fdopen(fd, "rb") as handle:
        signature = handle.read(8)
        if signature != PNG_SIGNATURE:
            what = "an empty file" if not signature else "not a PNG"
            what = "a JPEG, not a PNG" if signature.startswith(b"\xff\xd8\xff") else what
            raise TraceError(
                f"{shown(path)}: {what}: e4t records its provenance only in the PNGs it writes"
                " (e4t generate, personalization previews)"
            )
        for kind, length, data in _iter_chunks(handle, path):
            key, value, cut = _text_chunk(kind, data, length > len(data), path)
            if key not in text:
                text[key] = value[:MAX_TEXT_BYTES]
                if cut or len(value) > MAX_TEXT_BYTES:
                    cut_keys.add(key)
    return text, cut_keys


def image_provenance(path: str) -> dict[str, str]:
    """The text chunks of a PNG e4t wrote (``e4t.*``, prompt, seed, settings)."""
    text, cut_keys = read_png_text(path)
    if "e4t.concept_uri" not in text:
        raise TraceError(
            f"{shown(path)} carries no e4t provenance (no e4t.concept_uri text chunk): it was not "
            "written by e4t generate, a personalization preview or an evaluation"
        )
    for key in URL_KEYS:
        if key in cut_keys:
            text[key] = ""  # never followed: a cut URL names something else
            text[f"{key}.cut"] = "1"
    return text


# --- what trace may open ------------------------------------------------------------------


def _allowed_prefixes() -> list[str]:
    return [p.strip() for p in os.environ.get(ALLOW_ENV, "").split(",") if p.strip()]


def url_refusal(url: str) -> str | None:
    """Why trace will not open ``url`` (None: it may): trace follows absolute local paths,
    ``file://``, ``s3://`` of the configured store (an endpoint set in
    ``E4T_S3_ENDPOINT_URL``/``AWS_ENDPOINT_URL``) and prefixes listed in ``E4T_TRACE_ALLOW``.
    Anything else (http://, another cloud, a chained URL) would make an image call out."""
    if not url:
        return "empty"
    if len(url) > MAX_URL_CHARS:
        return f"over {MAX_URL_CHARS} characters"
    if any(unicodedata.category(c)[0] == "C" for c in url):
        return "holds control characters"
    if any(url.startswith(prefix) for prefix in _allowed_prefixes()):
        return None
    scheme, sep, _ = url.partition("://")
    if not sep:
        return None if os.path.isabs(url) else "a relative path (e4t records absolute ones)"
    if scheme == "file":
        return None
    if scheme in ("s3", "s3a"):
        if os.environ.get(eio.S3_ENDPOINT_ENV) or os.environ.get("AWS_ENDPOINT_URL"):
            return None
        return (
            "an s3:// URL and no store is configured (E4T_S3_ENDPOINT_URL); list trusted "
            f"prefixes in {ALLOW_ENV} to follow it"
        )
    return (
        f"{scheme or 'this'}:// is not followed: trace opens local paths and the configured "
        f"store's s3:// URLs only (add trusted prefixes to {ALLOW_ENV})"
    )


def _checked(url: str, what: str) -> str:
    refusal = url_refusal(url)
    if refusal:
        raise _HopFailed(f"{what} {shown(url)} not opened: {refusal}")
    return url


def _remote_fs(url: str) -> tuple[Any, str]:
    """The store behind an allowed remote URL, with connect/read timeouts and no retries."""
    fs, path = eio.get_fs(url)
    if type(fs).__name__ == "S3FileSystem":
        import s3fs

        config = {
            "connect_timeout": REMOTE_TIMEOUT_S,
            "read_timeout": REMOTE_TIMEOUT_S,
            "retries": {"max_attempts": 1},
        }
        fs = s3fs.S3FileSystem(**eio.s3_storage_options(), config_kwargs=config, retries=1)
    return fs, path


def _read_capped(url: str, cap: int, what: str) -> bytes:
    """At most ``cap`` bytes of the regular file at the allowed ``url``."""
    _checked(url, what)
    if eio.is_local(url):
        fd = _open_regular(eio.get_fs(url)[1], f"{what} {shown(url)}")
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(cap + 1)
    else:
        fs, path = _remote_fs(url)
        try:
            with fs.open(path, "rb") as handle:
                data = bytes(handle.read(cap + 1))
        except OSError as err:
            raise _HopFailed(f"{what} {shown(url)}: {shown(err)}") from err
    if len(data) > cap:
        raise _HopFailed(f"{what} {shown(url)}: over {cap} bytes, not read")
    return data


def _is_file(url: str) -> bool:
    """Whether an allowed ``url`` is a regular file (local) or an object (a store)."""
    if eio.is_local(url):
        try:
            return stat.S_ISREG(os.stat(eio.get_fs(url)[1]).st_mode)
        except OSError:
            return False
    fs, path = _remote_fs(url)
    try:
        return bool(fs.isfile(path))
    except OSError:
        return False


def _read_json(url: str, what: str) -> dict[str, Any]:
    data = _read_capped(url, MAX_JSON_BYTES, what)
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, RecursionError, ValueError) as err:  # nested too deep, ...
        raise _HopFailed(f"{what} {shown(url)}: not UTF-8 JSON ({shown(err)})") from err
    if not isinstance(value, dict):
        raise _HopFailed(f"{what} {shown(url)}: not a JSON object")
    return value


def _lines(data: bytes) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; a line that is not one is skipped."""
    for line in data.splitlines():
        if not line.strip() or len(line) > MAX_MANIFEST_LINE_BYTES:
            continue
        try:
            row = json.loads(line)
        except (UnicodeDecodeError, RecursionError, ValueError):  # not JSON, nested too deep
            continue
        if isinstance(row, dict):
            yield row


# --- the walk -----------------------------------------------------------------------------


def trace(path: str) -> list[Hop]:
    """Every hop from the image at ``path`` back to its photo; raises :class:`TraceError`
    when the file is not an image e4t wrote (one line: the file and why)."""
    text = image_provenance(path)
    hops = [
        Hop(
            "image",
            path,
            f"prompt '{shown(text.get('prompt'))}', seed {text.get('seed')}, "
            f"{text.get('steps')} steps, cfg {text.get('guidance_scale')}, "
            f"{text.get('scheduler')}, e4t {text.get('e4t.version')}",
        )
    ]
    concept_uri = text["e4t.concept_uri"]
    concept_id = text.get("e4t.concept_id", "")
    meta: dict[str, Any] = {}
    source_url: str | None = None
    try:
        if text.get("e4t.concept_uri.cut"):
            raise _HopFailed(f"concept URI over {MAX_TEXT_BYTES} bytes, not followed")
        meta = _read_json(eio.join(concept_uri, "concept.json"), "concept.json")
    except _HopFailed as err:
        hops.append(Hop("concept", f"{concept_id} at {concept_uri}", str(err)))
    else:
        fingerprint = text.get("e4t.domain_fingerprint", "")
        same = meta.get("domain_fingerprint") == fingerprint
        hops.append(
            Hop(
                "concept",
                f"{concept_id} at {concept_uri}",
                f"{meta.get('steps')} tuning steps; domain fingerprint "
                f"{'matches' if same else 'DIFFERS: the concept folder was remade since'}",
            )
        )
        source_url = _personalization_hops(concept_uri, concept_id, meta, hops)
    _model_hops(text, meta, source_url, hops)
    return hops


def _results_root(concept_uri: str) -> str | None:
    marker = "/concepts/"
    return concept_uri[: concept_uri.rfind(marker)] if marker in concept_uri else None


def _personalization_hops(
    concept_uri: str, concept_id: str, meta: dict[str, Any], hops: list[Hop]
) -> str | None:
    """The concept's row in its job's results.jsonl, and the photo it was made from."""
    root = _results_root(concept_uri)
    source = meta.get("source")
    results_url = eio.join(root, "results.jsonl") if root else ""
    if root is None or not _is_file(results_url):
        hops.append(Hop("personalization", "-", "no results.jsonl beside the concept folder"))
        return _source_hop(str(source) if isinstance(source, str) else "", hops)
    try:
        rows = _lines(_read_capped(results_url, MAX_RESULTS_BYTES, "results.jsonl"))
        row = next((r for r in rows if r.get("concept_id") == concept_id), None)
        summary_url = eio.join(root, "summary.json")
        summary = _read_json(summary_url, "summary.json") if _is_file(summary_url) else {}
    except _HopFailed as err:
        hops.append(Hop("personalization", results_url, str(err)))
        return _source_hop(str(source) if isinstance(source, str) else "", hops)
    if row is None:
        hops.append(Hop("personalization", results_url, "no row for this concept"))
        return _source_hop(str(source) if isinstance(source, str) else "", hops)
    hops.append(
        Hop(
            "personalization",
            results_url,
            f"status {row.get('status')}, files {row.get('files')}, "
            f"final loss {row.get('final_loss')}",
        )
    )
    images_url, relpaths = summary.get("images_url"), row.get("files") or []
    url = ""
    if isinstance(images_url, str) and isinstance(relpaths, list) and relpaths:
        relpath = str(relpaths[0])
        if relpath.startswith("/") or ".." in relpath.split("/"):
            hops.append(Hop("source photo", relpath, "not a path inside the images folder"))
            return None
        url = eio.join(images_url, relpath)
    else:
        url = str(row.get("source") or source or "")
    return _source_hop(url, hops)


def _source_hop(url: str, hops: list[Hop]) -> str | None:
    """The photo's hop: whether it is there now is said only for an allowed URL with an
    image file name (trace is no oracle for ``/etc/shadow``)."""
    from e4t.data.decode import is_image_name

    if not url:
        hops.append(Hop("source photo", "-", "the concept names no photo"))
        return None
    refusal = url_refusal(url)
    if refusal:
        hops.append(Hop("source photo", url, f"not looked at: {refusal}"))
        return url
    if not is_image_name(url):
        hops.append(Hop("source photo", url, "not looked at: not an image file name"))
        return url
    hops.append(Hop("source photo", url, "present" if _is_file(url) else "not found there now"))
    return url


def _mlflow_client(hops: list[Hop], pinned: str) -> Any | None:
    """The configured MLflow client, or None (a hop says why) when its database is not
    there: trace never creates one."""
    from e4t.tracking.client import tracking_uri

    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        db = uri[len("sqlite:///") :]
        if not os.path.isfile(db):
            hops.append(
                Hop(
                    "domain model",
                    pinned,
                    f"no MLflow database at {db} (set MLFLOW_TRACKING_URI or E4T_DATA_DIR to "
                    "the one the model was registered in); none was created",
                )
            )
            return None
    elif uri.startswith("file:") or "://" not in uri:
        folder = urllib.parse.urlparse(uri).path if uri.startswith("file:") else uri
        if not os.path.isdir(folder):
            hops.append(Hop("domain model", pinned, f"no MLflow store at {uri}"))
            return None
    # a tracking server the user configured: answer within the timeout, no retry storm
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(REMOTE_TIMEOUT_S))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    from e4t.tracking.client import mlflow_module

    return mlflow_module().MlflowClient()


def _model_hops(
    text: dict[str, str], meta: dict[str, Any], source_url: str | None, hops: list[Hop]
) -> None:
    """Domain model version → pretraining run → dataset run → the manifest row of the photo.

    The version is the pinned ``model_version_uri`` the concept recorded (else the image's);
    ``model_uri`` is what the user asked for (``models:/e4t-faces@candidate``)."""
    model_uri = str(meta.get("model_uri") or text.get("e4t.model_uri", ""))
    pinned = str(
        meta.get("model_version_uri")
        or text.get("e4t.model_version_uri")
        or text.get("e4t.model_version")
        or ""
    )
    fingerprint = text.get("e4t.domain_fingerprint", "")
    if not pinned.startswith("models:/"):
        hops.append(
            Hop("domain model", model_uri, f"a folder, not a registered version; {fingerprint}")
        )
        return
    match = MODEL_VERSION_URI.match(pinned)
    if not match:
        hops.append(Hop("domain model", pinned, "not a models:/NAME/VERSION URI, not followed"))
        return
    name, version = match.groups()
    from mlflow.exceptions import MlflowException

    client = _mlflow_client(hops, pinned)
    if client is None:
        return
    try:
        _registry_hops(
            client, name, version, model_uri, pinned, fingerprint, source_url, meta, hops
        )
    except (MlflowException, OSError) as err:
        hops.append(Hop("MLflow", pinned, f"{type(err).__name__}: {shown(err)}"))


def _registry_hops(
    client: Any,
    name: str,
    version: str,
    model_uri: str,
    pinned: str,
    fingerprint: str,
    source_url: str | None,
    photo: dict[str, Any],
    hops: list[Hop],
) -> None:
    registered = client.get_model_version(name, version)
    detail = f"fingerprint {fingerprint}"
    alias = MODEL_ALIAS_URI.match(model_uri)
    if alias and alias.group(1) == name:
        now = client.get_model_version_by_alias(name, alias.group(2)).version
        if str(now) != version:
            detail += (
                f"; alias @{alias.group(2)} now points at version {now}; this concept was "
                f"tuned against version {version}"
            )
    hops.append(Hop("domain model", f"{model_uri} = {pinned}", detail))
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
    manifest_url = eio.join(shards, "manifest.jsonl") if shards else ""
    try:
        if not shards or not _is_file(_checked(manifest_url, "manifest")):
            hops.append(Hop("manifest row", "-", f"{manifest_url or 'the manifest'} is not there"))
            return
        hops.append(_manifest_hop(manifest_url, source_url, photo))
    except _HopFailed as err:
        hops.append(Hop("manifest row", manifest_url, str(err)))


def same_photo(source_url: str, row: dict[str, Any], photo: dict[str, Any] | None = None) -> bool:
    """Whether a manifest ``row`` is the photo at ``source_url``: the same full URL (local
    paths normalised), and the same id and content hash where both sides record them. Never
    by file name: ``s3://e4t/inbox/b3/biden.jpg`` is not ``s3://e4t/photos/biden.jpg``."""
    recorded = row.get("source")
    if not isinstance(recorded, str) or _normal(recorded) != _normal(source_url):
        return False
    for mine, theirs in (("source_id", "id"), ("source_sha256", "sha256")):
        if photo and photo.get(mine) and row.get(theirs) and photo[mine] != row[theirs]:
            return False
    return True


def _normal(url: str) -> str:
    if url.startswith("file://"):
        url = url[len("file://") :]
    return os.path.normpath(url) if "://" not in url else url


def find_manifest_row(
    manifest_url: str, source_url: str, photo: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The first row of the manifest at the allowed ``manifest_url`` that is the photo at
    ``source_url`` (:func:`same_photo`), read line by line (each line capped)."""
    if eio.is_local(manifest_url):
        fd = _open_regular(eio.get_fs(manifest_url)[1], f"manifest {shown(manifest_url)}")
        handle: IO[bytes] = os.fdopen(fd, "rb")
    else:
        fs, path = _remote_fs(manifest_url)
        try:
            handle = fs.open(path, "rb")
        except OSError as err:
            raise _HopFailed(f"manifest {shown(manifest_url)}: {shown(err)}") from err
    try:
        with handle:
            for _ in range(MAX_MANIFEST_ROWS):
                line = handle.readline(MAX_MANIFEST_LINE_BYTES)
                if not line:
                    return None
                row = next(_lines(line), None)
                if row is not None and same_photo(source_url, row, photo):
                    return row
    except OSError as err:
        raise _HopFailed(f"manifest {shown(manifest_url)}: {shown(err)}") from err
    return None


def _manifest_hop(manifest_url: str, source_url: str | None, photo: dict[str, Any]) -> Hop:
    if not source_url:
        return Hop("manifest row", manifest_url, "the concept names no photo to look for")
    row = find_manifest_row(manifest_url, source_url, photo)
    if row is None:
        return Hop(
            "manifest row",
            manifest_url,
            f"{source_url} was not curated for it (matched by full URL, never by name)",
        )
    return Hop(
        "manifest row",
        manifest_url,
        f"{row.get('source')}: {row.get('status')}"
        + (f" ({row.get('reason')})" if row.get("reason") else "")
        + f", id {row.get('id')}",
    )
