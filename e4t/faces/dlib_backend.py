"""dlib backend: HOG or MMOD detector + the 68-point shape predictor, fully offline.

The model files ship in the ``face-recognition-models`` package. Licence note: the 68-point
predictor was trained on iBUG 300-W, whose licence excludes commercial use; use the
``face-alignment`` backend (or your own predictor) for commercial work.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

import numpy as np
from PIL import Image

from e4t.config import DetectConfig
from e4t.faces.types import Face, LandmarkerUnavailable

logger = logging.getLogger(__name__)


def dlib_model_path(filename: str) -> Path:
    """Locate a model file of ``face-recognition-models`` without importing the package.

    (Its ``__init__`` needs ``pkg_resources``, gone from setuptools ≥ 82.)
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise LandmarkerUnavailable(
            "the dlib backend needs the face-recognition-models package: "
            "pip install face-recognition-models==0.3.0"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / filename
    if not path.exists():
        raise LandmarkerUnavailable(f"{path} is missing: reinstall face-recognition-models")
    return path


class DlibLandmarker:
    name = "dlib"

    def __init__(self, config: DetectConfig) -> None:
        try:
            import dlib
        except ImportError as err:  # pragma: no cover - dlib-bin is a hard dependency
            raise LandmarkerUnavailable(
                "the dlib backend needs dlib: pip install dlib-bin"
            ) from err
        self.config = config
        self._dlib = dlib
        if config.dlib_detector == "hog":
            self._hog = dlib.get_frontal_face_detector()
            self._mmod = None
        else:
            self._hog = None
            self._mmod = dlib.cnn_face_detection_model_v1(
                str(dlib_model_path("mmod_human_face_detector.dat"))
            )
        self._predictor = dlib.shape_predictor(
            str(dlib_model_path("shape_predictor_68_face_landmarks.dat"))
        )
        self._timings = {"detect": 0.0, "landmarks": 0.0}

    @property
    def timings(self) -> dict[str, float]:
        return dict(self._timings)

    def detect_batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        # dlib's HOG detector takes one image per call; MMOD batches only same-size images
        # and is not a CPU default, so both go image by image.
        return [self._detect_one(image) for image in images]

    def _detect_one(self, image: np.ndarray) -> list[Face]:
        t0 = time.perf_counter()
        height, width = image.shape[:2]
        scale = min(1.0, self.config.detect_max_side_px / max(height, width))
        small = image
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        upsample = 1 if max(small.shape[:2]) < self.config.upsample_below_px else 0
        small = np.ascontiguousarray(small)
        boxes: list[tuple[tuple[float, float, float, float], float]] = []
        if self._hog is not None:
            rects, scores, _ = self._hog.run(small, upsample, 0.0)
            for rect, score in zip(rects, scores, strict=True):
                boxes.append(((rect.left(), rect.top(), rect.right(), rect.bottom()), score))
        else:
            assert self._mmod is not None
            for det in self._mmod(small, upsample):
                r = det.rect
                boxes.append(((r.left(), r.top(), r.right(), r.bottom()), det.confidence))
        t1 = time.perf_counter()
        self._timings["detect"] += t1 - t0

        faces = []
        full = np.ascontiguousarray(image)
        for (left, top, right, bottom), score in boxes:
            if score < self.config.min_detection_score:
                continue
            box = (left / scale, top / scale, right / scale, bottom / scale)
            rect = self._dlib.rectangle(*(round(v) for v in box))
            shape = self._predictor(full, rect)
            points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
            faces.append(Face(bbox=box, score=float(score), landmarks=points))
        self._timings["landmarks"] += time.perf_counter() - t1
        return faces
