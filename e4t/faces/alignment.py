"""FFHQ-style face alignment, reimplemented from the FFHQ dataset's description.

Eye centres and mouth corners define an oriented square (the *quad*) around the face;
the quad is mapped onto an upright square crop. Large faces are first shrunk by an
integer factor, the work is restricted to the quad's bounding box plus a border, and where
the quad leaves the photo the photo is reflect-padded and faded towards a blurred copy and
its median colour, so that padding does not show as mirrored features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from e4t.config import AlignConfig


@dataclass(frozen=True)
class AlignedFace:
    """An aligned crop and the geometry that produced it.

    image: (S, S, 3) uint8. landmarks: (68, 2) in crop pixels. quad: (4, 2) source pixels,
    corners top-left, bottom-left, bottom-right, top-right.
    """

    image: np.ndarray
    landmarks: np.ndarray
    quad: np.ndarray


def _rot90(v: np.ndarray) -> np.ndarray:
    """Rotate a 2-vector by +90° in image coordinates (x right, y down): (x, y) → (−y, x)."""
    return np.array([-v[1], v[0]])


def compute_quad(landmarks: np.ndarray) -> np.ndarray:
    """The oriented crop square (4, 2) for 68-point landmarks, in their coordinates."""
    eye_left = landmarks[36:42].mean(axis=0)
    eye_right = landmarks[42:48].mean(axis=0)
    eye_mid = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    mouth_mid = (landmarks[48] + landmarks[54]) / 2
    eye_to_mouth = mouth_mid - eye_mid

    # The x axis blends the eye line with the perpendicular of the eye→mouth line, so that
    # both a tilted eye line and a tilted face axis pull the crop upright.
    x_axis = eye_to_eye - _rot90(eye_to_mouth)
    x_axis = x_axis / np.hypot(*x_axis)
    x_axis = x_axis * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y_axis = _rot90(x_axis)
    centre = eye_mid + eye_to_mouth * 0.1
    return np.stack(
        [
            centre - x_axis - y_axis,
            centre - x_axis + y_axis,
            centre + x_axis + y_axis,
            centre + x_axis - y_axis,
        ]
    )


def source_to_crop(points: np.ndarray, quad: np.ndarray, size: int) -> np.ndarray:
    """Map source points (n, 2) into crop pixels of a ``size`` square cut along ``quad``.

    The quad is a square, so the map is affine: p = q0 + u·(q3 − q0) + v·(q1 − q0).
    """
    basis = np.stack([quad[3] - quad[0], quad[1] - quad[0]], axis=1)  # columns: u, v axes
    uv = np.linalg.solve(basis, (points - quad[0]).T).T
    return uv * size


def _pad_with_fade(
    img: np.ndarray, pad: tuple[int, int, int, int], qsize: float, strip_rows: int = 256
) -> np.ndarray:
    """Reflect-pad (left, top, right, bottom) and fade the padding to blur and median colour.

    img: (H, W, 3) uint8 → (H + top + bottom, W + left + right, 3) uint8. The fade weight
    grows with the distance from the original photo, reaching 1 at ``0.3 · qsize`` px (the
    padding width the recipe uses). The blend runs in float32 a strip of rows at a time, so a
    large face's padding never holds full-size float copies.
    """
    left, top, right, bottom = pad
    padded = np.pad(img, ((top, bottom), (left, right), (0, 0)), mode="reflect")
    h, w = padded.shape[:2]
    sigma = max(1.0, qsize * 0.02)
    blurred = np.asarray(Image.fromarray(padded).filter(ImageFilter.GaussianBlur(radius=sigma)))
    median = np.median(img.reshape(-1, 3), axis=0).astype(np.float32)
    # the distance from the photo is separable: max(distance along x, along y, 0)
    xs = np.arange(w, dtype=np.float32)
    ys = np.arange(h, dtype=np.float32)
    dx = np.maximum(np.maximum(left - xs, xs - (w - 1 - right)), 0.0)
    dy = np.maximum(np.maximum(top - ys, ys - (h - 1 - bottom)), 0.0)
    scale = np.float32(max(1.0, 0.3 * qsize))
    out = np.empty_like(padded)
    for y0 in range(0, h, strip_rows):
        rows = slice(y0, min(y0 + strip_rows, h))
        ramp = np.clip(np.maximum(dy[rows, None], dx[None, :]) / scale, 0.0, 1.0)[..., None]
        strip = padded[rows].astype(np.float32)
        # towards the blur quickly, towards the median colour slowly
        strip += (blurred[rows].astype(np.float32) - strip) * np.clip(ramp * 3.0, 0.0, 1.0)
        strip += (median - strip) * ramp
        out[rows] = np.clip(np.rint(strip), 0, 255).astype(np.uint8)
    return out


def align_face(image: np.ndarray, landmarks: np.ndarray, config: AlignConfig) -> AlignedFace:
    """Cut the FFHQ-style aligned crop of one face.

    image: (H, W, 3) uint8 RGB; landmarks: (68, 2) source pixels.
    """
    size = config.resolution_px
    quad_source = compute_quad(landmarks)
    quad = quad_source.copy()
    qsize = float(np.hypot(*(quad[3] - quad[0])))
    height, width = image.shape[:2]

    # 1-2. crop to the quad's bounding box plus a border, then shrink very large faces by an
    # integer factor (cheap and alias-free enough). The crop is cut from the array first, on
    # multiples of the factor, so only the face region is ever copied or resized (a 24 MP
    # photo is not converted whole).
    shrink = max(1, math.floor(qsize / size * 0.5))
    qsize /= shrink
    border = max(round(qsize * 0.1), 3)
    lo = np.floor(quad.min(axis=0) / shrink).astype(int) - border
    hi = np.ceil(quad.max(axis=0) / shrink).astype(int) + border
    x0, y0 = max(int(lo[0]), 0) * shrink, max(int(lo[1]), 0) * shrink
    x1, y1 = min(int(hi[0]) * shrink, width), min(int(hi[1]) * shrink, height)
    pil = Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1]))
    if shrink > 1:
        small = (max(1, round(pil.width / shrink)), max(1, round(pil.height / shrink)))
        pil = pil.resize(small, Image.Resampling.BOX)
    quad = (quad - np.array([x0, y0], dtype=np.float64)) / shrink

    # 3. pad where the quad leaves the photo
    lo = np.floor(quad.min(axis=0)).astype(int) - border
    hi = np.ceil(quad.max(axis=0)).astype(int) + border
    need = (max(-lo[0], 0), max(-lo[1], 0), max(hi[0] - pil.width, 0), max(hi[1] - pil.height, 0))
    if config.enable_padding and max(need) > border - 4:
        min_pad = round(qsize * 0.3)
        pad = tuple(max(p, min_pad) for p in need)
        # reflect padding cannot exceed the image's own size minus one
        pad = (
            min(pad[0], pil.width - 1),
            min(pad[1], pil.height - 1),
            min(pad[2], pil.width - 1),
            min(pad[3], pil.height - 1),
        )
        if max(pad) > 0:
            pil = Image.fromarray(_pad_with_fade(np.asarray(pil), pad, qsize))
            quad += np.array(pad[:2], dtype=np.float64)

    # 4. quad transform at an oversampled size, then Lanczos down to the target
    work = size * config.transform_oversample
    corners = (quad + 0.5).flatten().tolist()
    out = pil.transform((work, work), Image.Transform.QUAD, corners, Image.Resampling.BILINEAR)
    if work != size:
        out = out.resize((size, size), Image.Resampling.LANCZOS)

    crop_points = source_to_crop(landmarks, quad_source, size)
    return AlignedFace(image=np.asarray(out), landmarks=crop_points, quad=quad_source)


def face_mask(landmarks: np.ndarray, size: int) -> np.ndarray:
    """A (size, size) uint8 mask (0/255) of the face region from the landmark hull.

    The 68 points stop at the brows, so the brows are also raised by half the brow-to-nose-tip
    distance to take in the forehead. Used to weight the diffusion loss on the face.
    """
    brows = landmarks[17:27]
    nose_tip = landmarks[30]
    lift = (nose_tip - brows.mean(axis=0)) * 0.5
    points = np.concatenate([landmarks, brows - lift], axis=0)
    hull = _convex_hull(points)
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).polygon([tuple(p) for p in hull.tolist()], fill=255)
    return np.asarray(mask)


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain; (n, 2) → (m, 2) hull vertices in order."""
    pts = sorted(map(tuple, points.tolist()))
    if len(pts) <= 2:
        return np.asarray(pts)

    def cross(o: tuple[float, ...], a: tuple[float, ...], b: tuple[float, ...]) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, ...]] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple[float, ...]] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.asarray(lower[:-1] + upper[:-1])
