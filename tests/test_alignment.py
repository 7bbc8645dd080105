"""FFHQ-style alignment geometry on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import load_rgb
from PIL import Image

from e4t.config import AlignConfig, DetectConfig
from e4t.faces import create_landmarker
from e4t.faces.alignment import align_face, compute_quad, face_mask, source_to_crop

SIZE = 256


@pytest.fixture(scope="module")
def landmarker():
    return create_landmarker(DetectConfig())


def _eyes(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0)


def _only_face(landmarker, image: np.ndarray):
    faces = landmarker.detect_batch([image])[0]
    assert len(faces) == 1, f"expected one face, found {len(faces)}"
    return faces[0]


def test_quad_is_an_upright_square_for_level_eyes() -> None:
    lm = np.zeros((68, 2))
    lm[36:42] = (40, 50)
    lm[42:48] = (60, 50)
    lm[48] = (42, 80)
    lm[54] = (58, 80)
    quad = compute_quad(lm)
    sides = np.linalg.norm(np.roll(quad, -1, axis=0) - quad, axis=1)
    assert np.allclose(sides, sides[0])
    assert quad[0][1] == pytest.approx(quad[3][1])  # top edge level
    # centre = eye midpoint + 0.1 · eye-to-mouth
    assert quad.mean(axis=0) == pytest.approx((50, 53))
    assert source_to_crop(quad, quad, 100) == pytest.approx(
        np.array([[0, 0], [0, 100], [100, 100], [100, 0]])
    )


@pytest.mark.parametrize(
    "name", ["obama.jpg", "biden.jpg", "astronaut.png", "obama_partial_face.jpg"]
)
def test_crop_has_level_eyes_where_expected(landmarker, photos_dir: Path, name: str) -> None:
    image = load_rgb(photos_dir / name)
    face = _only_face(landmarker, image)
    aligned = align_face(image, face.landmarks, AlignConfig(resolution_px=SIZE))
    assert aligned.image.shape == (SIZE, SIZE, 3)

    # the carried landmarks: eyes level, symmetric about the centre, at the FFHQ height
    left, right = _eyes(aligned.landmarks)
    assert abs(left[1] - right[1]) < 0.02 * SIZE
    assert (left[0] + right[0]) / 2 == pytest.approx(SIZE / 2, abs=0.03 * SIZE)
    assert 0.40 * SIZE < (left[1] + right[1]) / 2 < 0.50 * SIZE
    assert 0.18 * SIZE < right[0] - left[0] < 0.32 * SIZE

    # and the crop really shows that: landmarks found again in the crop agree
    again = _only_face(landmarker, aligned.image).landmarks
    re_left, re_right = _eyes(again)
    assert np.linalg.norm(re_left - left) < 0.03 * SIZE
    assert np.linalg.norm(re_right - right) < 0.03 * SIZE
    assert abs(re_left[1] - re_right[1]) < 0.03 * SIZE


@pytest.mark.parametrize("degrees", [25, -25])
def test_rotated_photo_gives_nearly_the_same_crop(
    landmarker, photos_dir: Path, degrees: int
) -> None:
    photo = Image.open(photos_dir / "obama.jpg").convert("RGB")
    turned = np.asarray(
        photo.rotate(
            degrees, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(128, 128, 128)
        )
    )
    base = align_face(
        np.asarray(photo),
        _only_face(landmarker, np.asarray(photo)).landmarks,
        AlignConfig(resolution_px=SIZE),
    )
    other = align_face(
        turned, _only_face(landmarker, turned).landmarks, AlignConfig(resolution_px=SIZE)
    )
    diff = np.abs(base.image.astype(float) - other.image.astype(float))
    centre = diff[SIZE // 4 : 3 * SIZE // 4, SIZE // 4 : 3 * SIZE // 4]
    assert centre.mean() < 25, f"face region differs by {centre.mean():.1f} grey levels"
    left, right = _eyes(other.landmarks)
    assert abs(left[1] - right[1]) < 0.02 * SIZE


def test_exif_rotated_photo_is_aligned_upright(landmarker, bad_inputs_dir: Path) -> None:
    from e4t.config import DecodeConfig
    from e4t.data.decode import decode_image

    image = decode_image((bad_inputs_dir / "exif_rotated.jpg").read_bytes(), DecodeConfig()).image
    assert image is not None
    aligned = align_face(
        image, _only_face(landmarker, image).landmarks, AlignConfig(resolution_px=SIZE)
    )
    left, right = _eyes(aligned.landmarks)
    assert left[0] < right[0] and abs(left[1] - right[1]) < 0.02 * SIZE
    nose_tip, chin = aligned.landmarks[30], aligned.landmarks[8]
    assert chin[1] > nose_tip[1] > left[1]  # upright: eyes, then nose, then chin


def test_mask_covers_the_face_not_the_corners(landmarker, photos_dir: Path) -> None:
    image = load_rgb(photos_dir / "biden.jpg")
    aligned = align_face(
        image, _only_face(landmarker, image).landmarks, AlignConfig(resolution_px=SIZE)
    )
    mask = face_mask(aligned.landmarks, SIZE)
    assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) == {0, 255}
    # every landmark lies in the hull: a point on its edge may round a pixel out, so look
    # at a 5×5 window around each
    for x, y in np.clip(aligned.landmarks.round().astype(int), 2, SIZE - 3):
        assert mask[y - 2 : y + 3, x - 2 : x + 3].max() == 255
    inside = mask[aligned.landmarks[30][1].astype(int), aligned.landmarks[30][0].astype(int)]
    assert inside == 255 and mask[0, 0] == 0 and mask[-1, -1] == 0
    assert 0.15 < (mask > 0).mean() < 0.6
