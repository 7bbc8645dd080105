"""Face detection, 68-point landmarks, FFHQ-style alignment and quality measures."""

from e4t.faces.landmarker import Face, FaceLandmarker, LandmarkerUnavailable, create_landmarker

__all__ = ["Face", "FaceLandmarker", "LandmarkerUnavailable", "create_landmarker"]
