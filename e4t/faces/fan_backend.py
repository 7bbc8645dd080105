"""face-alignment backend: the SFD detector + FAN 2D landmarks (what users with internet use).

Weights come from face-alignment's own download cache, ``$TORCH_HOME/hub/checkpoints``
(:func:`torch.hub.get_dir`). A file already there under its exact name is used as is, so
an offline machine can be pre-seeded by copying the two files in. (face-alignment stores
them as ``torch.load(weights_only=True)`` checkpoints, its own format.)
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from e4t.config import DetectConfig
from e4t.faces.types import Face, LandmarkerUnavailable

logger = logging.getLogger(__name__)

#: file names face-alignment 1.5 downloads into the torch hub cache
FAN_WEIGHT_FILES = ("s3fd-619a316812.pth", "2DFAN4-11f355bf06.pth.tar")


def fan_cache_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def is_offline() -> bool:
    return any(os.environ.get(v, "0") not in ("", "0") for v in ("E4T_OFFLINE", "HF_HUB_OFFLINE"))


def _unavailable(reason: str) -> LandmarkerUnavailable:
    cache = fan_cache_dir()
    return LandmarkerUnavailable(
        f"the face-alignment backend cannot load its weights ({reason}). It reads "
        f"{', '.join(FAN_WEIGHT_FILES)} from {cache} (set TORCH_HOME to move it) and downloads "
        "them when they are missing, which needs internet. Copy the files there, or use the "
        "offline backend: --set detect.backend=dlib"
    )


class FanLandmarker:
    name = "face-alignment"

    def __init__(self, config: DetectConfig) -> None:
        import face_alignment

        self.config = config
        missing = [f for f in FAN_WEIGHT_FILES if not (fan_cache_dir() / f).exists()]
        if missing and is_offline():
            raise _unavailable(f"offline and not cached: {', '.join(missing)}")
        try:
            self._fa = face_alignment.FaceAlignment(
                face_alignment.LandmarksType.TWO_D,
                device=config.device,  # the package defaults to 'cuda'
                flip_input=False,
                face_detector="sfd",
                compile=False,  # torch.compile takes minutes on a CPU
            )
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            raise _unavailable(f"{type(err).__name__}: {err}") from err
        self._timings = {"detect": 0.0, "landmarks": 0.0}

    @property
    def timings(self) -> dict[str, float]:
        return dict(self._timings)

    def detect_boxes(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """SFD boxes (n, 5: x0, y0, x1, y1, score) per image; same-size images go in one batch."""
        import torch

        out: list[np.ndarray] = [np.zeros((0, 5))] * len(images)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_shape.setdefault(image.shape, []).append(i)
        for indices in by_shape.values():
            for start in range(0, len(indices), self.config.batch_size):
                chunk = indices[start : start + self.config.batch_size]
                batch = torch.from_numpy(np.stack([images[i] for i in chunk]))
                batch = batch.permute(0, 3, 1, 2).float().to(self.config.device)
                found = self._fa.face_detector.detect_from_batch(batch)
                for i, boxes in zip(chunk, found, strict=True):
                    out[i] = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
        return out

    def detect_batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        t0 = time.perf_counter()
        all_boxes = self.detect_boxes(images)
        t1 = time.perf_counter()
        self._timings["detect"] += t1 - t0
        results: list[list[Face]] = []
        for image, boxes in zip(images, all_boxes, strict=True):
            boxes = boxes[boxes[:, 4] >= self.config.min_detection_score]
            if len(boxes) == 0:
                results.append([])
                continue
            points = self._fa.get_landmarks_from_image(image, detected_faces=list(boxes))
            faces = [
                Face(
                    bbox=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                    score=float(box[4]),
                    landmarks=np.asarray(lm, dtype=np.float64)[:, :2],
                )
                for box, lm in zip(boxes, points or [], strict=True)
            ]
            results.append(faces)
        self._timings["landmarks"] += time.perf_counter() - t1
        return results
