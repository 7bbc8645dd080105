"""What every face backend speaks: a detected ``Face``, the ``FaceLandmarker`` protocol, and
``LandmarkerUnavailable``. The backends import this module; :mod:`e4t.faces.landmarker`
chooses a backend (so no import runs in a circle)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


class LandmarkerUnavailable(RuntimeError):
    """A backend cannot run here (missing weights or package); the message says the fix."""


@dataclass(frozen=True)
class Face:
    """One detected face in source-image pixel coordinates.

    bbox: (left, top, right, bottom). landmarks: (68, 2) float x, y in the iBUG 300-W order
    (0–16 jaw, 17–26 brows, 27–35 nose, 36–47 eyes, 48–67 mouth).
    """

    bbox: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    @property
    def size_px(self) -> float:
        """Side of the landmarks' bounding box: the face size the quality gate uses."""
        span = self.landmarks.max(axis=0) - self.landmarks.min(axis=0)
        return float(span.max())


@runtime_checkable
class FaceLandmarker(Protocol):
    """Detects faces and their 68 landmarks. Images are (H, W, 3) uint8 RGB arrays."""

    name: str

    def detect_batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Faces of each image, in the order given; detect + landmark timings in ``timings``."""
        ...

    @property
    def timings(self) -> dict[str, float]:
        """Seconds spent so far in ``detect`` and ``landmarks``."""
        ...
