"""The training stream: a resumed run with DataLoader workers sees exactly what an
uninterrupted run sees."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
import webdataset as wds
from PIL import Image

from e4t.data.loader import SampleTransform, make_train_pipeline, samples_to_skip, shard_urls
from e4t.models.base import square_image_processor


def test_each_worker_skips_its_own_share() -> None:
    # 7 batches of 4 taken from 2 workers in turn: worker 0 made 4 of them, worker 1 made 3
    assert samples_to_skip(28, 4, 2, 0) == 16
    assert samples_to_skip(28, 4, 2, 1) == 12
    assert samples_to_skip(28, 4, 1, 0) == 28  # no workers: everything
    assert samples_to_skip(4, 4, 3, 2) == 0


def _keys(shards: Path, workers: int, consumed: int, num_batches: int) -> list[list[str]]:
    transform = SampleTransform(32, square_image_processor(32), ["a photo of {}"], True)
    pipeline = make_train_pipeline(
        shard_urls(str(shards)),
        transform,
        batch_size=2,
        seed=0,
        rank=0,
        shuffle_buffer=4,
        skip_samples=consumed,
    )
    loader: Any = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=workers)
    out = []
    for batch in loader:
        out.append(list(batch["keys"]))
        if len(out) == num_batches:
            break
    return out


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_stream_replays_exactly(curated_shards: Path, workers: int) -> None:
    straight = _keys(curated_shards, workers, consumed=0, num_batches=7)
    resumed = _keys(curated_shards, workers, consumed=3 * 2, num_batches=4)  # after 3 batches
    assert resumed == straight[3:]


TEMPLATES = ["a photo of {}", "a portrait of {}", "a close-up of {}", "{} smiling"]


@pytest.fixture(scope="module")
def half_white_shard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small shard of 24 faces, each white on its left half and black on its right: a
    sample's flip shows in its pixels."""
    image = Image.new("RGB", (16, 16), "black")
    image.paste((255, 255, 255), (0, 0, 8, 16))
    jpg, mask = io.BytesIO(), io.BytesIO()
    image.save(jpg, format="JPEG", quality=95)
    Image.new("L", (16, 16), 255).save(mask, format="PNG")
    path = tmp_path_factory.mktemp("shard") / "faces-000000.tar"
    with wds.TarWriter(str(path)) as sink:
        for i in range(24):
            sink.write(
                {"__key__": f"face_{i:03d}", "jpg": jpg.getvalue(), "mask.png": mask.getvalue()}
            )
    return path


def _draws(
    shard: Path, workers: int, *, seed: int = 0, rank: int = 0, consumed: int = 0, num_batches: int
) -> list[list[tuple[str, bool, str]]]:
    """Per batch: (key, flipped, template) of each sample, as the loader delivers them."""
    transform = SampleTransform(16, square_image_processor(16), TEMPLATES, True)
    pipeline = make_train_pipeline(
        [str(shard)],
        transform,
        batch_size=2,
        seed=seed,
        rank=rank,
        shuffle_buffer=4,
        skip_samples=consumed,
    )
    loader: Any = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=workers)
    out = []
    for batch in loader:
        pixels = batch["pixel_values"]
        flipped = (
            pixels[:, :, :, :8].mean((1, 2, 3)) < pixels[:, :, :, 8:].mean((1, 2, 3))
        ).tolist()
        out.append(list(zip(batch["keys"], flipped, batch["prompts"], strict=True)))
        if len(out) == num_batches:
            break
    return out


def test_workers_and_ranks_draw_their_own_flips_and_templates(half_white_shard: Path) -> None:
    # with 2 workers the loader takes batch 2j from worker 0 and 2j+1 from worker 1: both
    # batches hold their worker's samples 2j and 2j+1, which once drew the same augmentation
    batches = _draws(half_white_shard, 2, num_batches=12)
    augment = [[(flip, template) for _, flip, template in batch] for batch in batches]
    worker_0, worker_1 = augment[0::2], augment[1::2]
    assert {flip for batch in augment for flip, _ in batch} == {True, False}
    assert worker_0 != worker_1
    # another rank, and a seed/rank pair whose sum is the same, draw their own too
    rank_1 = [[(f, t) for _, f, t in b] for b in _draws(half_white_shard, 0, rank=1, num_batches=6)]
    seed_1 = [[(f, t) for _, f, t in b] for b in _draws(half_white_shard, 0, seed=1, num_batches=6)]
    rank_0 = [[(f, t) for _, f, t in b] for b in _draws(half_white_shard, 0, num_batches=6)]
    assert rank_0 != rank_1
    assert rank_1 != seed_1


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_stream_draws_the_same_augmentations(
    half_white_shard: Path, workers: int
) -> None:
    straight = _draws(half_white_shard, workers, num_batches=9)
    for consumed_batches in (3, 4):  # resumed on worker 1's turn, and on worker 0's
        resumed = _draws(half_white_shard, workers, consumed=consumed_batches * 2, num_batches=5)
        assert resumed == straight[consumed_batches : consumed_batches + 5]
