"""Choosing a face backend: images in, faces with 68-point landmarks out.

The types every backend speaks live in :mod:`e4t.faces.types` (re-exported here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from e4t.faces.types import Face, FaceLandmarker, LandmarkerUnavailable

if TYPE_CHECKING:
    from e4t.config import DetectConfig

__all__ = ["Face", "FaceLandmarker", "LandmarkerUnavailable", "create_landmarker"]


def create_landmarker(config: DetectConfig) -> FaceLandmarker:
    """The backend named by ``config.backend``; raises LandmarkerUnavailable with the fix."""
    if config.backend == "dlib":
        from e4t.faces.dlib_backend import DlibLandmarker

        return DlibLandmarker(config)
    if config.backend == "face-alignment":
        from e4t.faces.fan_backend import FanLandmarker

        return FanLandmarker(config)
    raise ValueError(f"unknown face backend {config.backend!r}: use 'dlib' or 'face-alignment'")
