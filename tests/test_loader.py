"""The training stream: a resumed run with DataLoader workers sees exactly what an
uninterrupted run sees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from e4t.data.loader import SampleTransform, make_train_pipeline, samples_to_skip, shard_urls
from e4t.models.base import square_image_processor


def test_each_worker_skips_its_own_share() -> None:
    # 7 batches of 4 taken from 2 workers in turn: worker 0 made 4 of them, worker 1 made 3
    assert samples_to_skip(28, 4, 2, 0) == 16
    assert samples_to_skip(28, 4, 2, 1) == 12
    assert samples_to_skip(28, 4, 1, 0) == 28  # no workers: everything
    assert samples_to_skip(4, 4, 3, 2) == 0


def _keys(shards: Path, workers: int, consumed: int, num_batches: int) -> list[list[str]]:
    transform = SampleTransform(32, square_image_processor(32), ["a photo of {}"], True, 0)
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


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_stream_replays_exactly(curated_shards: Path, workers: int) -> None:
    straight = _keys(curated_shards, workers, consumed=0, num_batches=7)
    resumed = _keys(curated_shards, workers, consumed=3 * 2, num_batches=4)  # after 3 batches
    assert resumed == straight[3:]
