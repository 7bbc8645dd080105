"""Streaming the curated shards for training, composed stage by stage with WebDataset.

    shards (resampled per rank and worker, seeded) → tar samples → shuffle buffer
    → skip (resume: each DataLoader worker its own share) → decode jpg + mask.png + json
    → augment → prompt → batch

Every random stage (shard picks, shuffle, augmentation) is seeded inside the DataLoader
worker from (seed, rank, worker role, stage) — never from an RNG built in the main process
and copied into every worker — so streams differ between ranks and workers, and a run's
data order is a function of its config: a resumed run replays the stream and skips what it
consumed, before any pixel is decoded, and so sees exactly what an uninterrupted run would
have seen, flips and prompt templates included.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import webdataset as wds
from PIL import Image
from webdataset.filters import batched, select, shuffle
from webdataset.filters import map as map_samples
from webdataset.pipeline import DataPipeline
from webdataset.tariterators import tarfile_to_samples

from e4t import io as eio
from e4t.data.transforms import face_tensors


def shard_urls(shards_url: str) -> list[str]:
    """The shard URLs of a curated folder (from its ``stats.json``), or a list/pattern given.

    ``shards_url`` may be a curated output folder, one ``.tar``, or a brace pattern.
    """
    if shards_url.endswith(".tar") or "{" in shards_url:
        return list(wds.shardlists.expand_urls(shards_url))
    stats_url = eio.join(shards_url, "stats.json")
    if not eio.exists(stats_url):
        raise FileNotFoundError(
            f"{shards_url}: no stats.json — is it the output folder of curate-domain? "
            "(or pass one .tar URL or a brace pattern)"
        )
    stats = json.loads(eio.read_text(stats_url))
    if not stats["shards"]:
        raise ValueError(f"{shards_url}: the curation accepted no samples; nothing to train on")
    return [eio.join(shards_url, name) for name in stats["shards"]]


def dataset_identity(shards_url: str) -> dict[str, str]:
    """The manifest hash of a curated folder (names the dataset in MLflow), if known."""
    stats_url = eio.join(shards_url, "stats.json")
    if not eio.exists(stats_url):
        return {}
    stats = json.loads(eio.read_text(stats_url))
    return {"manifest_sha256": stats["manifest_sha256"], "num_samples": str(stats["num_samples"])}


def worker_role(consumed_batches: int = 0) -> tuple[int, int]:
    """(role, number of workers) of this DataLoader worker: which worker's stream it makes.

    A DataLoader takes batches from its workers in turn, starting with worker 0. After
    ``consumed_batches`` the uninterrupted run's next batch comes from worker
    ``consumed_batches mod W``; a resumed loader starts with its worker 0 again, so its
    worker w continues the stream of worker ``(w + consumed_batches) mod W``.
    """
    info = torch.utils.data.get_worker_info()
    if info is None:
        return 0, 1
    return (info.id + consumed_batches) % info.num_workers, info.num_workers


def stream_name(seed: int, rank: int, consumed_batches: int = 0) -> str:
    """The identity ``"seed/rank/role"`` of the stream this DataLoader worker makes (call it
    in the worker, see :func:`worker_role`): every random stage seeds from it, so streams
    differ per rank and worker and a resumed worker continues the same stream."""
    role, _ = worker_role(consumed_batches)
    return f"{seed}/{rank}/{role}"


def stage_rng(stage: str, stream: str, index: int | None = None) -> random.Random:
    """A fresh RNG for one random stage of one stream (and one sample ``index``). Seeded
    from a string (hashed with SHA-512 by :class:`random.Random`, the same in every
    process), so (stage, seed, rank, role, index) tuples never collide the way sums do."""
    return random.Random(f"{stage}:{stream}" + ("" if index is None else f":{index}"))


def resampled_shards(
    urls: list[str], seed: int, rank: int, consumed_batches: int = 0
) -> Callable[[], Iterator[dict]]:
    """An endless, seeded stream of shard picks, distinct per rank and DataLoader worker."""

    def source() -> Iterator[dict]:
        rng = stage_rng("shards", stream_name(seed, rank, consumed_batches))
        while True:
            yield {"url": rng.choice(urls)}

    return source


def seeded_shuffle(
    bufsize: int, initial: int, seed: int, rank: int, consumed_batches: int = 0
) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """WebDataset's buffered shuffle with its RNG made in the worker, for this worker's
    stream (one made in the main process would be copied into every worker alike)."""

    def stage(data: Iterator[Any]) -> Iterator[Any]:
        rng = stage_rng("shuffle", stream_name(seed, rank, consumed_batches))
        return shuffle(bufsize, initial=initial, rng=rng)(data)

    return stage


def number(
    seed: int, rank: int, consumed_batches: int = 0
) -> Callable[[Iterator[dict[str, Any]]], Iterator[dict[str, Any]]]:
    """Tag each sample with its stream (``__stream__``, :func:`stream_name`) and its
    position in it (``__index__``): together they seed the sample's augmentation."""

    def stage(data: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        stream = stream_name(seed, rank, consumed_batches)
        for i, sample in enumerate(data):
            sample["__stream__"] = stream
            sample["__index__"] = i
            yield sample

    return stage


def samples_to_skip(consumed: int, batch_size: int, num_workers: int, worker: int) -> int:
    """Samples worker ``worker`` of ``num_workers`` produced for the first ``consumed``
    samples the training loop took. A DataLoader takes whole batches from its workers in
    turn (batch j from worker j mod W), so each worker replays and skips only its own share
    — not every consumed sample, which would skip W times too many."""
    batches = consumed // batch_size
    mine = (batches - worker + num_workers - 1) // num_workers if batches > worker else 0
    return mine * batch_size


def skip(consumed: int, batch_size: int) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """Drop what this rank's loop already took (resume), this worker's share of it."""

    def stage(data: Iterator[Any]) -> Iterator[Any]:
        role, workers = worker_role(consumed // batch_size)
        n = samples_to_skip(consumed, batch_size, workers, role)
        for i, sample in enumerate(data):
            if i >= n:
                yield sample

    return stage


@dataclass
class SampleTransform:
    """Decoded sample → tensors: pixels in [−1, 1], CLIP pixels, mask in [0, 1], a prompt.

    The flip and the prompt template are drawn from an RNG of the sample's stream and
    position (``__stream__``, ``__index__``, tagged by :func:`number`): different for every
    rank and worker, and the same again when a resumed run replays the stream."""

    resolution_px: int
    clip_processor: Any
    templates: list[str]
    hflip: bool

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        rng = stage_rng("augment", sample["__stream__"], sample["__index__"])
        flip = self.hflip and rng.random() < 0.5
        face = face_tensors(
            Image.open(io.BytesIO(sample["jpg"])),
            Image.open(io.BytesIO(sample["mask.png"])),
            self.resolution_px,
            self.clip_processor,
            flip=flip,
        )
        return {
            "pixel_values": face.pixel_values,
            "clip_pixel_values": face.clip_pixel_values,
            "mask": face.mask,
            "prompt": rng.choice(self.templates),
            "key": sample["__key__"],
        }


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
        "clip_pixel_values": torch.stack([s["clip_pixel_values"] for s in samples]),
        "mask": torch.stack([s["mask"] for s in samples]),
        "prompts": [s["prompt"] for s in samples],
        "keys": [s["key"] for s in samples],
    }


def refuse_unsafe_members(samples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """A stream stage: a tar member named with an absolute path or ``..`` stops the stream
    (shards may come from anywhere; :func:`e4t.data.shards.read_shard` refuses them too)."""
    for sample in samples:
        key = str(sample.get("__key__", ""))
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"{sample.get('__url__')}: refusing tar member {key!r} (unsafe path)")
        yield sample


def make_train_pipeline(
    urls: list[str],
    transform: SampleTransform,
    *,
    batch_size: int,
    seed: int,
    rank: int,
    shuffle_buffer: int = 256,
    skip_samples: int = 0,
    exclude_keys: frozenset[str] = frozenset(),
) -> DataPipeline:
    """The endless training stream of one rank, as batches of ``batch_size`` (per rank, per
    micro-step: ``train.batch_size``) dicts, see :func:`collate`. ``skip_samples``: what
    this rank's loop already took (a resume); with DataLoader workers each replays and
    skips its own share (:func:`worker_role`, :func:`samples_to_skip`)."""
    eio.register_webdataset_openers()
    consumed_batches = skip_samples // batch_size
    return DataPipeline(
        resampled_shards(urls, seed, rank, consumed_batches),
        tarfile_to_samples(),
        refuse_unsafe_members,
        select(lambda s: s["__key__"] not in exclude_keys),
        seeded_shuffle(shuffle_buffer, min(shuffle_buffer, 32), seed, rank, consumed_batches),
        number(seed, rank, consumed_batches),
        skip(skip_samples, batch_size),
        map_samples(transform),
        batched(batch_size, collation_fn=collate, partial=False),
    )


def held_out_samples(urls: list[str], count: int) -> list[dict[str, Any]]:
    """The first ``count`` samples of the last shard: preview faces, kept out of training."""
    from e4t.data.shards import read_shard

    out: list[dict[str, Any]] = []
    for sample in read_shard(urls[-1]):
        if len(out) >= count:
            break
        out.append(sample)
    return out
