"""Quality measures: sharpness, yaw, perceptual hashes and the near-duplicate index."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from conftest import load_rgb
from PIL import Image, ImageFilter

from e4t.config import DetectConfig
from e4t.faces import create_landmarker
from e4t.faces.quality import (
    NearDuplicateIndex,
    estimate_yaw_deg,
    hamming,
    perceptual_hash,
    sharpness,
)


def test_blur_lowers_sharpness(photos_dir: Path) -> None:
    photo = Image.open(photos_dir / "obama.jpg").convert("RGB")
    values = [sharpness(np.asarray(photo.filter(ImageFilter.GaussianBlur(r)))) for r in (0, 2, 5)]
    assert values[0] > values[1] > values[2]


def test_yaw_is_small_for_frontal_and_flips_with_the_mirror(photos_dir: Path) -> None:
    landmarker = create_landmarker(DetectConfig())
    image = load_rgb(photos_dir / "obama_partial_face2.jpg")
    face = landmarker.detect_batch([image])[0][0]
    mirrored = landmarker.detect_batch([image[:, ::-1].copy()])[0][0]
    yaw, yaw_mirrored = estimate_yaw_deg(face.landmarks), estimate_yaw_deg(mirrored.landmarks)
    assert abs(yaw) > 10
    # the mirror turns the head the other way (dlib's points are not exactly mirror-symmetric)
    assert np.sign(yaw_mirrored) == -np.sign(yaw)
    assert abs(abs(yaw_mirrored) - abs(yaw)) < 10
    frontal = landmarker.detect_batch([load_rgb(photos_dir / "astronaut.png")])[0][0]
    assert abs(estimate_yaw_deg(frontal.landmarks)) < 10


def test_perceptual_hash_tolerates_recompression_not_other_faces(photos_dir: Path) -> None:
    a = Image.open(photos_dir / "obama.jpg").convert("RGB")
    b = a.resize((a.width // 3, a.height // 3))
    c = Image.open(photos_dir / "biden.jpg").convert("RGB")
    ha, hb, hc = (perceptual_hash(np.asarray(x)) for x in (a, b, c))
    assert hamming(ha, hb) <= 4 < hamming(ha, hc)


@pytest.mark.parametrize("max_distance", [0, 3, 6])
def test_index_agrees_with_brute_force(max_distance: int) -> None:
    rng = random.Random(max_distance)
    hashes = [rng.getrandbits(64) for _ in range(300)]
    # plant near copies
    hashes += [h ^ (1 << rng.randrange(64)) ^ (1 << rng.randrange(64)) for h in hashes[:50]]
    index = NearDuplicateIndex(max_distance)
    for i, h in enumerate(hashes):
        brute = [j for j in range(i) if hamming(hashes[j], h) <= max_distance]
        found = index.find(h)
        assert (found is not None) == bool(brute)
        if found is not None:
            assert hamming(hashes[int(found)], h) <= max_distance
        index.add(h, str(i))
