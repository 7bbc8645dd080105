"""The face-alignment backend: its offline error, and its real code path on random weights.

Its real weights download from the internet, which tests may not use: the networks are
built with random weights and saved under the cache's file names, so the package's own
loading and landmark code runs; only detection quality can't be checked here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_rgb

from e4t.config import DetectConfig
from e4t.faces import LandmarkerUnavailable, create_landmarker
from e4t.faces.fan_backend import FAN_WEIGHT_FILES


def test_offline_without_weights_names_the_cache_and_the_other_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("E4T_OFFLINE", "1")
    with pytest.raises(LandmarkerUnavailable) as info:
        create_landmarker(DetectConfig(backend="face-alignment"))
    message = str(info.value)
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert "detect.backend=dlib" in message
    assert all(name in message for name in FAN_WEIGHT_FILES)


@pytest.mark.slow
def test_landmarks_through_the_real_code_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, photos_dir: Path
) -> None:
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(s3fd().state_dict(), cache / FAN_WEIGHT_FILES[0])
    torch.save(FAN(4).state_dict(), cache / FAN_WEIGHT_FILES[1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    landmarker = create_landmarker(DetectConfig(backend="face-alignment"))
    assert landmarker.name == "face-alignment"
    box = np.array([[300.0, 250.0, 620.0, 650.0, 0.99]])
    # random detector weights never finish suppressing boxes: hand it the box instead
    monkeypatch.setattr(landmarker, "detect_boxes", lambda images: [box for _ in images])
    image = load_rgb(photos_dir / "obama.jpg")
    (faces,) = landmarker.detect_batch([image])
    assert len(faces) == 1
    points = faces[0].landmarks
    assert points.shape == (68, 2) and np.isfinite(points).all()
    # FAN crops a square around the box: centre raised by 12 % of the box height, side
    # 200 · (w + h) / 195 px. Every point, even from random weights, lies in that crop.
    (x0, y0, x1, y1), _ = box[0, :4], box[0, 4]
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2 - 0.12 * (y1 - y0)])
    half = 200 * ((x1 - x0) + (y1 - y0)) / 195 / 2 + 4
    assert (np.abs(points - centre) <= half).all()
    assert landmarker.timings["landmarks"] > 0
