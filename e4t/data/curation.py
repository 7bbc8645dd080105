"""Curation: a folder of photos → aligned faces in WebDataset shards + a manifest of every input.

The job is split into partitions of consecutive inputs (sorted by URL). Each partition is
one retryable unit: it writes its shard ``{name}-{i:06d}.tar`` atomically, then its part
file ``_work/part-{i:06d}.json`` (the partition's done marker, holding its manifest rows).
:func:`finalize_curation` removes near-duplicates across partitions, writes
``manifest.jsonl``, ``config.json`` and, last, ``stats.json`` (the job's done marker).
A rerun skips done partitions and converges on the same bytes.

Output layout::

    OUT/faces-000000.tar ...   samples: jpg (aligned crop), json (metadata), mask.png
    OUT/manifest.jsonl         one row per input (per face for multi-face photos)
    OUT/config.json            the resolved config
    OUT/stats.json             counts, reasons, shards, timings — written last
    OUT/_work/plan.json, part-*.json
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from e4t import __version__
from e4t import io as eio
from e4t.config import CurateConfig, config_hash
from e4t.data.decode import IMAGE_EXTENSIONS, decode_image, describe_error, is_image_name
from e4t.data.inputs import SKIPPED, InputFile, input_id, list_inputs, read_capped
from e4t.data.shards import read_shard, shard_name, write_shard
from e4t.faces.alignment import align_face, face_mask
from e4t.faces.landmarker import Face, FaceLandmarker, create_landmarker
from e4t.faces.quality import NearDuplicateIndex, estimate_yaw_deg, perceptual_hash, sharpness

logger = logging.getLogger(__name__)

IMAGE_EXTENSION_LIST = "/".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)

STAGES = ("read", "decode", "detect", "landmarks", "align", "write")
#: the counts of ``stats.json`` (MLflow metrics, the flow's table)
COUNT_KEYS = (
    "num_inputs",
    "num_accepted_inputs",
    "num_rejected_inputs",
    "num_skipped_inputs",
    "num_samples",
)


class CurationError(RuntimeError):
    """The job cannot go on (mismatched rerun, missing partitions); the message says the fix."""


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class CurationPlan:
    """The job's fixed inputs: every listed file as a dict of :class:`InputFile`'s fields."""

    source_url: str
    output_url: str
    inputs: list[dict[str, Any]]
    num_images_per_partition: int
    config_hash: str

    @property
    def num_partitions(self) -> int:
        return -(-len(self.inputs) // self.num_images_per_partition)

    def partition_inputs(self, index: int) -> list[InputFile]:
        n = self.num_images_per_partition
        return [InputFile(**entry) for entry in self.inputs[index * n : (index + 1) * n]]

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1, sort_keys=True)


def work_url(output_url: str, name: str) -> str:
    return eio.join(output_url, "_work", name)


def part_url(output_url: str, index: int) -> str:
    return work_url(output_url, f"part-{index:06d}.json")


def stats_url(output_url: str) -> str:
    return eio.join(output_url, "stats.json")


def load_stats(output_url: str) -> dict[str, Any] | None:
    """The finished job's stats, or None when the job has not finished."""
    url = stats_url(output_url)
    return json.loads(eio.read_text(url)) if eio.exists(url) else None


def plan_curation(source_url: str, output_url: str, config: CurateConfig) -> CurationPlan:
    """List the inputs (:func:`e4t.data.inputs.list_inputs`: never opened, classified from
    ``stat``) and fix the partitions; a rerun must see the same inputs and config."""
    listed = list_inputs(source_url, config.decode.max_bytes)
    if not listed:
        raise CurationError(f"{source_url}: no files to curate — point at a folder of photos")
    plan = CurationPlan(
        source_url=source_url,
        output_url=output_url,
        inputs=[asdict(entry) for entry in listed],
        num_images_per_partition=config.shards.num_images_per_partition,
        config_hash=config_hash(config),
    )
    url = work_url(output_url, "plan.json")
    eio.makedirs(eio.join(output_url, "_work"))
    # created exclusively: of two curations starting together into one output, one writes
    # the plan and the other finds it (and is refused unless it is the same curation)
    if eio.create_exclusive(url, plan.to_json().encode("utf-8")):
        return plan
    previous = json.loads(eio.read_text(url))
    same_inputs = [e.get("relpath") for e in previous["inputs"]] == [
        e["relpath"] for e in plan.inputs
    ]
    if not same_inputs or previous["config_hash"] != plan.config_hash:
        raise CurationError(
            f"{output_url} already holds a curation of other inputs or another config "
            f"(see {url}); write to a new output folder, or delete that one to start over"
        )
    return CurationPlan(**{**previous, "inputs": previous["inputs"]})


def load_plan(output_url: str) -> CurationPlan:
    url = work_url(output_url, "plan.json")
    if not eio.exists(url):
        raise CurationError(f"{url} is missing: run plan_curation first")
    return CurationPlan(**json.loads(eio.read_text(url)))


# --------------------------------------------------------------------------- one partition

_local = threading.local()


def _landmarker(config: CurateConfig) -> FaceLandmarker:
    """One backend per thread and config (model files load once, not per partition)."""
    key = config.detect.model_dump_json()
    cache: dict[str, FaceLandmarker] = _local.__dict__.setdefault("landmarkers", {})
    if key not in cache:
        cache[key] = create_landmarker(config.detect)
    return cache[key]


@dataclass
class _Timer:
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def add(self, stage: str, start: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] += now - start
        return now


def sample_key(relpath: str, face_rank: int) -> str:
    """Deterministic, dot-free key: the input's id (a readable slug of its name + a hash of
    its relative path's bytes) and the face's rank."""
    return f"{input_id(relpath)}-f{face_rank}"


def _encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def _encode_png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _rejected(
    source: str,
    partition: int,
    reason: str,
    detail: str | None,
    status: str = "rejected",
    **extra: Any,
) -> dict:
    row = {"source": source, "partition": partition, "status": status, "reason": reason}
    if detail:
        row["detail"] = detail
    row.update(extra)
    return row


def _judge_face(
    face: Face, image: np.ndarray, config: CurateConfig, timer: _Timer
) -> tuple[dict[str, Any], str | None, str | None, Any]:
    """Align one face and gate it. Returns (quality, reason, detail, aligned-or-None)."""
    q = config.quality
    quality: dict[str, Any] = {
        "face_size_px": round(face.size_px, 1),
        "yaw_deg": round(estimate_yaw_deg(face.landmarks), 1),
        "detection_score": round(face.score, 3),
    }
    if face.size_px < q.min_face_px:
        return (
            quality,
            "face_too_small",
            f"{face.size_px:.0f} px < quality.min_face_px={q.min_face_px}",
            None,
        )
    if abs(quality["yaw_deg"]) > q.max_abs_yaw_deg:
        return (
            quality,
            "extreme_pose",
            f"|yaw| {abs(quality['yaw_deg']):.0f}° > quality.max_abs_yaw_deg={q.max_abs_yaw_deg}",
            None,
        )
    start = time.perf_counter()
    aligned = align_face(image, face.landmarks, config.align)
    quality["sharpness"] = round(sharpness(aligned.image), 2)
    quality["phash"] = f"{perceptual_hash(aligned.image):016x}"
    timer.add("align", start)
    if quality["sharpness"] < q.min_sharpness:
        return (
            quality,
            "blurry",
            f"sharpness {quality['sharpness']:.1f} < quality.min_sharpness={q.min_sharpness}",
            None,
        )
    return quality, None, None, aligned


@dataclass
class CuratedFace:
    """One photo through curation's path: the aligned face and its mask, or why not."""

    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    quality: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    detail: str | None = None


def curate_one(data: bytes, config: CurateConfig) -> CuratedFace:
    """Decode → detect → align → quality gates for a single photo (its largest face).

    The same gates as a curation job, minus near-duplicate search (that needs the job).
    """
    decoded = decode_image(data, config.decode)
    if decoded.image is None:
        return CuratedFace(reason=decoded.reason or "undecodable", detail=decoded.detail)
    try:
        faces = _landmarker(config).detect_batch([decoded.image])[0]
    except Exception as err:  # a backend's failure on this photo's pixels: its reason
        return CuratedFace(reason="detect_failed", detail=describe_error(err))
    if not faces:
        return CuratedFace(reason="no_face", detail="no face detected")
    if len(faces) > 1 and config.quality.multiple_faces == "reject":
        return CuratedFace(
            reason="multiple_faces",
            detail=f"{len(faces)} faces and quality.multiple_faces=reject",
        )
    face = max(faces, key=lambda f: f.size_px)
    try:
        quality, reason, detail, aligned = _judge_face(face, decoded.image, config, _Timer())
        if reason is not None:
            return CuratedFace(quality=quality, reason=reason, detail=detail)
        mask = face_mask(aligned.landmarks, config.align.resolution_px)
    except Exception as err:  # alignment's failure on this face: its reason
        return CuratedFace(reason="align_failed", detail=describe_error(err))
    return CuratedFace(aligned.image, mask, quality)


def _faces_rows(
    entry: InputFile,
    image: np.ndarray,
    faces: list[Face],
    index: int,
    config: CurateConfig,
    timer: _Timer,
    dedup: NearDuplicateIndex | None,
    samples: list[dict[str, bytes | str]],
    landmarker: FaceLandmarker,
) -> list[dict[str, Any]]:
    """One decoded photo's faces → manifest rows; accepted faces appended to ``samples``."""
    source = entry.url
    if not faces:
        return [_rejected(source, index, "no_face", "no face detected", id=entry.id)]
    ranked = sorted(faces, key=lambda f: f.size_px, reverse=True)
    policy = config.quality.multiple_faces
    if len(ranked) > 1 and policy == "reject":
        return [
            _rejected(
                source,
                index,
                "multiple_faces",
                f"{len(ranked)} faces and quality.multiple_faces=reject",
                id=entry.id,
                num_faces=len(ranked),
            )
        ]
    rows: list[dict[str, Any]] = []
    chosen = ranked[:1] if policy == "largest" else ranked
    for rank, face in enumerate(chosen):
        key = sample_key(entry.relpath, rank)
        base = {
            "source": source,
            "id": entry.id,
            "partition": index,
            "face_rank": rank,
            "num_faces": len(ranked),
        }
        try:
            sample = _judged_sample(
                key, face, image, config, timer, dedup, landmarker, source, rank, len(ranked)
            )
        except Exception as err:  # this face's failure (alignment, encoding): its row
            rows.append(
                {
                    **base,
                    "status": "rejected",
                    "reason": "align_failed",
                    "detail": describe_error(err),
                }
            )
            continue
        quality = sample.quality
        if sample.reason is not None:
            twin = {"duplicate_of": sample.twin} if sample.twin else {}
            rows.append(
                {
                    **base,
                    "status": "rejected",
                    "reason": sample.reason,
                    "detail": sample.detail,
                    "quality": quality,
                    **twin,
                }
            )
            continue
        if dedup is not None:
            dedup.add(int(quality["phash"], 16), key)
        samples.append(sample.files)
        rows.append({**base, "status": "accepted", "key": key, "quality": quality})
    return rows


@dataclass
class _Judged:
    quality: dict[str, Any]
    reason: str | None = None
    detail: str | None = None
    twin: str | None = None
    files: dict[str, bytes | str] = field(default_factory=dict)


def _judged_sample(
    key: str,
    face: Face,
    image: np.ndarray,
    config: CurateConfig,
    timer: _Timer,
    dedup: NearDuplicateIndex | None,
    landmarker: FaceLandmarker,
    source: str,
    rank: int,
    num_faces: int,
) -> _Judged:
    """One face: gates, near-duplicate search, then the shard sample's files (all or none)."""
    quality, reason, detail, aligned = _judge_face(face, image, config, timer)
    if reason is None and dedup is not None:
        twin = dedup.find(int(quality["phash"], 16))
        if twin is not None:
            return _Judged(quality, "near_duplicate", f"of {twin}", twin)
    if reason is not None:
        return _Judged(quality, reason, detail)
    start = time.perf_counter()
    meta = {
        "key": key,
        "source": source,
        "face_rank": rank,
        "num_faces": num_faces,
        "bbox": [round(v, 2) for v in face.bbox],
        "quad": np.round(aligned.quad, 2).tolist(),
        "landmarks": np.round(aligned.landmarks, 2).tolist(),
        "resolution_px": config.align.resolution_px,
        "backend": landmarker.name,
        "quality": quality,
    }
    files: dict[str, bytes | str] = {
        "__key__": key,
        "jpg": _encode_jpeg(aligned.image, config.shards.jpeg_quality),
        "json": json.dumps(meta, sort_keys=True),
        "mask.png": _encode_png(face_mask(aligned.landmarks, config.align.resolution_px)),
    }
    timer.add("align", start)
    return _Judged(quality, files=files)


def _detect_each_guarded(
    landmarker: FaceLandmarker, images: list[np.ndarray]
) -> list[list[Face] | Exception]:
    """Detect on a batch; when the batch call raises, again one image at a time, so that
    the exception is the row of the image that caused it and the others go on."""
    try:
        return list(landmarker.detect_batch(images))
    except Exception as err:  # which image? each alone says
        if len(images) == 1:
            return [err]
    found: list[list[Face] | Exception] = []
    for image in images:
        try:
            found.append(landmarker.detect_batch([image])[0])
        except Exception as err:  # this image's failure: its row
            found.append(err)
    return found


def curate_partition(output_url: str, index: int, config: CurateConfig) -> dict[str, Any]:
    """Process partition ``index`` of the plan in ``output_url``; skip it when already done.

    Returns the part record: ``rows`` (manifest rows), ``num_samples``, ``shard`` (file
    name or None) and ``timings`` (seconds per stage).
    """
    done = part_url(output_url, index)
    if eio.exists(done):
        return json.loads(eio.read_text(done))
    plan = load_plan(output_url)
    if plan.config_hash != config_hash(config):
        raise CurationError(f"partition {index}: config differs from the plan in {output_url}")
    entries = plan.partition_inputs(index)
    timer = _Timer()
    rows: list[dict[str, Any]] = []
    samples: list[dict[str, bytes | str]] = []
    dedup = NearDuplicateIndex(config.quality.dedup_max_hamming) if config.quality.dedup else None
    landmarker = _landmarker(config)

    def row_of(entry: InputFile, reason: str, detail: str | None, **extra: Any) -> dict:
        status = "skipped" if reason in SKIPPED else "rejected"
        return _rejected(entry.url, index, reason, detail, status, id=entry.id, **extra)

    # decode → detect → align a few images at a time: a partition holds at most
    # detect.batch_size decoded images and about detect.max_batch_megapixels of pixels
    # (the last image may overshoot by itself), whatever its size
    decoded: list[tuple[InputFile, np.ndarray]] = []
    pixels = 0

    def flush() -> None:
        nonlocal decoded, pixels
        if not decoded:
            return
        before = landmarker.timings
        found = _detect_each_guarded(landmarker, [image for _, image in decoded])
        after = landmarker.timings
        timer.seconds["detect"] += after["detect"] - before["detect"]
        timer.seconds["landmarks"] += after["landmarks"] - before["landmarks"]
        for (entry, image), faces in zip(decoded, found, strict=True):
            if isinstance(faces, Exception):
                rows.append(row_of(entry, "detect_failed", describe_error(faces)))
                continue
            rows.extend(
                _faces_rows(entry, image, faces, index, config, timer, dedup, samples, landmarker)
            )
        decoded, pixels = [], 0

    budget = config.detect.max_batch_megapixels * 1e6
    for entry in entries:
        if entry.reason is not None:
            rows.append(row_of(entry, entry.reason, entry.detail))
            continue
        if not is_image_name(entry.relpath):
            rows.append(
                row_of(entry, "unsupported_extension", "not one of " + IMAGE_EXTENSION_LIST)
            )
            continue
        start = time.perf_counter()
        try:
            data = read_capped(entry.url, config.decode.max_bytes, root_url=plan.source_url)
        except OSError as err:  # vanished, unreadable, no longer a regular file
            rows.append(row_of(entry, "unreadable", f"{type(err).__name__}: {err}"))
            continue
        start = timer.add("read", start)
        result = decode_image(data, config.decode)
        del data
        timer.add("decode", start)
        if result.image is None:
            rows.append(row_of(entry, result.reason or "undecodable", result.detail))
            continue
        image_pixels = result.image.shape[0] * result.image.shape[1]
        if decoded and pixels + image_pixels > budget:
            flush()
        decoded.append((entry, result.image))
        pixels += image_pixels
        del result
        if len(decoded) >= config.detect.batch_size:
            flush()
    flush()

    start = time.perf_counter()
    shard = None
    if samples:
        shard = shard_name(config.shards.name, index)
        write_shard(eio.join(output_url, shard), samples)
    record = {
        "index": index,
        "rows": rows,
        "num_samples": len(samples),
        "shard": shard,
        "num_inputs": len(entries),
    }
    eio.write_text(done, json.dumps(record, sort_keys=True))
    timer.add("write", start)
    record["timings"] = timer.seconds
    # timings are reported but kept out of the part file, so that reruns write the same bytes
    return record


# --------------------------------------------------------------------------- finalize


def _cross_partition_duplicates(parts: list[dict[str, Any]], max_distance: int) -> dict[str, str]:
    """key → key of the earlier twin, for accepted samples repeated across partitions."""
    index = NearDuplicateIndex(max_distance)
    twins: dict[str, str] = {}
    for part in parts:
        for row in part["rows"]:
            if row["status"] != "accepted":
                continue
            value = int(row["quality"]["phash"], 16)
            twin = index.find(value)
            if twin is not None:
                twins[row["key"]] = twin
            else:
                index.add(value, row["key"])
    return twins


def finalize_curation(output_url: str, config: CurateConfig) -> dict[str, Any]:
    """Merge the partitions: global near-duplicates, manifest, config and stats (last)."""
    existing = load_stats(output_url)
    if existing is not None:
        return existing
    plan = load_plan(output_url)
    parts = []
    for i in range(plan.num_partitions):
        url = part_url(output_url, i)
        if not eio.exists(url):
            raise CurationError(f"partition {i} is not done ({url} missing): rerun the job")
        parts.append(json.loads(eio.read_text(url)))

    twins = (
        _cross_partition_duplicates(parts, config.quality.dedup_max_hamming)
        if config.quality.dedup
        else {}
    )
    shards: list[str] = []
    rows: list[dict[str, Any]] = []
    for part in parts:
        dropped = set()
        for row in part["rows"]:
            key = row.get("key")
            if row.get("duplicate_of") in twins:  # its twin was dropped here: name the kept one
                survivor = twins[row["duplicate_of"]]
                row = {**row, "duplicate_of": survivor, "detail": f"of {survivor}"}
            if key in twins:
                row = {k: v for k, v in row.items() if k != "key"}
                row.update(
                    status="rejected",
                    reason="near_duplicate",
                    detail=f"of {twins[key]}",
                    duplicate_of=twins[key],
                )
                dropped.add(key)
            rows.append(row)
        if part["shard"] is None:
            continue
        url = eio.join(output_url, part["shard"])
        if dropped:
            if not eio.exists(url) and len(dropped) == part["num_samples"]:
                continue  # an earlier finalize, killed before the manifest, removed it
            kept = [s for s in read_shard(url) if s["__key__"] not in dropped]
            for sample in kept:
                sample.pop("__url__", None)
            if kept:
                write_shard(url, kept)  # idempotent: filtering twice gives the same file
            else:
                eio.remove(url)
                continue
        shards.append(part["shard"])

    manifest = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    eio.write_text(eio.join(output_url, "manifest.jsonl"), manifest)
    eio.write_text(
        eio.join(output_url, "config.json"),
        json.dumps(config.model_dump(mode="json"), indent=1, sort_keys=True),
    )

    by_input: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_input.setdefault(row.get("id") or row["source"], []).append(row)
    accepted = sum(any(r["status"] == "accepted" for r in rs) for rs in by_input.values())
    skipped = sum(all(r["status"] == "skipped" for r in rs) for rs in by_input.values())
    stats = {
        "name": config.shards.name,
        "source_url": plan.source_url,
        "output_url": output_url,
        "num_inputs": len(plan.inputs),
        "num_accepted_inputs": accepted,
        "num_rejected_inputs": len(by_input) - accepted - skipped,
        "num_skipped_inputs": skipped,
        "num_samples": sum(r["status"] == "accepted" for r in rows),
        "rejection_reasons": dict(
            sorted(Counter(r["reason"] for r in rows if r["status"] == "rejected").items())
        ),
        "skip_reasons": dict(
            sorted(Counter(r["reason"] for r in rows if r["status"] == "skipped").items())
        ),
        "shards": shards,
        "manifest_sha256": hashlib.sha256(manifest.encode()).hexdigest(),
        "config_hash": plan.config_hash,
        "e4t_version": __version__,
    }
    counted = accepted + stats["num_rejected_inputs"] + skipped
    if counted != stats["num_inputs"] or len(by_input) != stats["num_inputs"]:
        raise CurationError(f"{output_url}: manifest does not account for every input")  # a bug
    eio.write_text(stats_url(output_url), json.dumps(stats, indent=1, sort_keys=True))
    return stats
