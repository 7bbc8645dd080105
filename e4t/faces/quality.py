"""Quality measures for aligned faces: sharpness, yaw, and perceptual hashes for near-duplicates."""

from __future__ import annotations

import itertools
import math

import numpy as np
from PIL import Image
from scipy.fft import dctn

SHARPNESS_SIZE_PX = 256


def _grey(image: np.ndarray, size: int) -> np.ndarray:
    pil = Image.fromarray(image).convert("L")
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(pil, dtype=np.float64)


def sharpness(image: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the crop as a 256-px grey image (0–255 units).

    Measured at a fixed size so the threshold means the same at any crop resolution; a face
    upscaled from a few dozen pixels scores low, like a blurred one.
    """
    g = _grey(image, SHARPNESS_SIZE_PX)
    lap = -4.0 * g[1:-1, 1:-1] + g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
    return float(lap.var())


def estimate_yaw_deg(landmarks: np.ndarray) -> float:
    """Head yaw in degrees from 68-point landmarks (0 frontal, ±90 profile; sign: subject's turn).

    The nose ridge (points 27–30) projects towards the side the head turns to; its
    horizontal offset from the middle of the jaw-line ends (points 0 and 16), as a share of
    the half-width, is the sine of the yaw for a roughly cylindrical head.
    """
    left, right = landmarks[0], landmarks[16]
    axis = right - left
    half_width = float(np.hypot(*axis)) / 2
    if half_width < 1e-6:
        return 90.0
    direction = axis / (2 * half_width)
    centre = (left + right) / 2
    nose = landmarks[27:31].mean(axis=0)
    offset = float(np.dot(nose - centre, direction)) / half_width
    return math.degrees(math.asin(max(-1.0, min(1.0, offset))))


def perceptual_hash(image: np.ndarray) -> int:
    """64-bit DCT perceptual hash: signs of the 8×8 lowest frequencies against their median."""
    g = _grey(image, 32)
    low = dctn(g, norm="ortho")[:8, :8].flatten()
    bits = low > np.median(low[1:])  # the DC term would dominate the median
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return value


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


class NearDuplicateIndex:
    """Finds earlier hashes within ``max_distance`` bits, without comparing every pair.

    The 64 bits are cut into ``max_distance + 1`` bands: two hashes that differ in at most
    ``max_distance`` bits agree exactly on at least one band (pigeonhole), so only hashes
    sharing a band value are compared.
    """

    def __init__(self, max_distance: int) -> None:
        self.max_distance = max_distance
        num_bands = max_distance + 1
        edges = np.linspace(0, 64, num_bands + 1).round().astype(int)
        self._bands = [(int(lo), int(hi)) for lo, hi in itertools.pairwise(edges)]
        self._tables: list[dict[int, list[tuple[int, str]]]] = [{} for _ in self._bands]

    def _band_values(self, value: int) -> list[int]:
        return [(value >> lo) & ((1 << (hi - lo)) - 1) for lo, hi in self._bands]

    def find(self, value: int) -> str | None:
        """The key of an indexed hash within range, or None."""
        for table, band in zip(self._tables, self._band_values(value), strict=True):
            for other, key in table.get(band, []):
                if hamming(value, other) <= self.max_distance:
                    return key
        return None

    def add(self, value: int, key: str) -> None:
        for table, band in zip(self._tables, self._band_values(value), strict=True):
            table.setdefault(band, []).append((value, key))
