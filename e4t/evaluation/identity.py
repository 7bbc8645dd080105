"""Identity similarity: face-recognition embeddings of the input and of each generated image.

Backends share one protocol: ``embed(image) -> unit vector, or None when no face is found``.

- ``dlib`` (default, offline): dlib's HOG detector, its 5-point shape predictor and its
  ResNet face descriptor (128-d), all shipped in ``face-recognition-models``. Same-person
  pairs usually score above ~0.9 cosine (distance < 0.6 in dlib's own units).
- ``arcface``: an ArcFace-type IResNet (512-d) from a safetensors file the user supplies
  (e.g. insightface's ``arcface_torch`` r50/r100 weights converted to safetensors), on
  faces aligned to the standard 112×112 five-point template from our 68-point landmarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np
import torch
from PIL import Image
from torch import nn

from e4t.config import DetectConfig, IdentityConfig
from e4t.faces.dlib_backend import dlib_model_path


class IdentityBackend(Protocol):
    name: str

    def embed(self, image: Image.Image | np.ndarray) -> np.ndarray | None:
        """A unit-norm embedding of the largest face, or None when there is none."""


def _rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32)
    return vector / max(float(np.linalg.norm(vector)), 1e-8)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(_unit(a), _unit(b)))


class DlibIdentity:
    """dlib ResNet descriptor. ``upsample`` helps with the small faces of low-res samples."""

    name = "dlib"

    def __init__(self, upsample: int = 1, jitter: int = 0) -> None:
        import dlib

        self._detector = dlib.get_frontal_face_detector()
        five = dlib_model_path("shape_predictor_5_face_landmarks.dat")
        self._shape = dlib.shape_predictor(str(five))
        self._net = dlib.face_recognition_model_v1(
            str(dlib_model_path("dlib_face_recognition_resnet_model_v1.dat"))
        )
        self.upsample, self.jitter = upsample, jitter

    def embed(self, image: Image.Image | np.ndarray) -> np.ndarray | None:
        rgb = _rgb(image)
        rects = self._detector(rgb, self.upsample)
        if len(rects) == 0:
            return None
        rect = max(rects, key=lambda r: r.width() * r.height())
        shape = self._shape(rgb, rect)
        return _unit(np.array(self._net.compute_face_descriptor(rgb, shape, self.jitter)))


# --------------------------------------------------------------------------- ArcFace


# The five-point template of 112×112 ArcFace crops: eye centres, nose tip, mouth corners.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
     [70.7299, 92.2041]],
    dtype=np.float32,
)  # fmt: skip


def five_points(landmarks68: np.ndarray) -> np.ndarray:
    """68-point landmarks → the ArcFace five points (eye centres, nose tip, mouth corners)."""
    lm = np.asarray(landmarks68, dtype=np.float32)
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def arcface_crop(rgb: np.ndarray, landmarks68: np.ndarray, size: int = 112) -> np.ndarray:
    """Similarity-warp the face so its five points land on the template (size × size)."""
    from skimage.transform import SimilarityTransform, warp

    tform = SimilarityTransform.from_estimate(
        ARCFACE_TEMPLATE * (size / 112.0), five_points(landmarks68)
    )
    if not tform:
        raise ValueError("could not fit the five-point alignment")
    crop = warp(rgb, tform, output_shape=(size, size), order=1, preserve_range=True)
    return crop.astype(np.uint8)


class _IBlock(nn.Module):
    """IResNet basic block: BN → conv → BN → PReLU → conv(stride) → BN, plus shortcut."""

    def __init__(self, inp: int, out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inp, eps=1e-5)
        self.conv1 = nn.Conv2d(inp, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out, eps=1e-5)
        self.prelu = nn.PReLU(out)
        self.conv2 = nn.Conv2d(out, out, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out, eps=1e-5)
        self.downsample: nn.Module | None = None
        if stride != 1 or inp != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out, eps=1e-5)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return y + (self.downsample(x) if self.downsample is not None else x)


class IResNet(nn.Module):
    """The ArcFace backbone (parameter names follow insightface's ``arcface_torch``)."""

    LAYERS: ClassVar[dict[str, tuple[int, ...]]] = {
        "r18": (2, 2, 2, 2),
        "r34": (3, 4, 6, 3),
        "r50": (3, 4, 14, 3),
        "r100": (3, 13, 30, 3),
    }

    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self, depth: str = "r50", embedding_size: int = 512, width: int = 64) -> None:
        super().__init__()
        if depth not in self.LAYERS:
            raise ValueError(f"IResNet depth {depth!r}: one of {', '.join(self.LAYERS)}")
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, eps=1e-5)
        self.prelu = nn.PReLU(width)
        channels = [width, width, 2 * width, 4 * width, 8 * width]
        for i, blocks in enumerate(self.LAYERS[depth]):
            stage = [_IBlock(channels[i], channels[i + 1], 2)]
            stage += [_IBlock(channels[i + 1], channels[i + 1], 1) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.bn2 = nn.BatchNorm2d(channels[-1], eps=1e-5)
        self.dropout = nn.Dropout(0.0)
        self.fc = nn.Linear(channels[-1] * 7 * 7, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


class ArcFaceIdentity:
    """An IResNet from a safetensors file; faces found and landmarked by our landmarker."""

    name = "arcface"

    def __init__(self, weights: str | Path, depth: str = "r50", device: str = "cpu") -> None:
        from e4t.faces.landmarker import create_landmarker
        from e4t.models.e4t_model import ArtifactError, check_tensors, read_safetensors

        path = Path(weights)
        if path.suffix != ".safetensors" or not path.is_file():
            raise FileNotFoundError(
                f"{path}: ArcFace weights must be a .safetensors file "
                "(convert a .pth once with safetensors.torch.save_file; pickles are not loaded)"
            )
        self.net = IResNet(depth).eval().to(device)
        tensors = read_safetensors(path)
        expected = {k: v.shape for k, v in self.net.state_dict().items()}
        expected = {k: v for k, v in expected.items() if not k.endswith("num_batches_tracked")}
        tensors = {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
        try:
            check_tensors(path, tensors, expected)
        except ArtifactError as err:
            raise ArtifactError(f"IResNet-{depth}: {err}") from err
        self.net.load_state_dict(tensors, strict=False)
        self.device = device
        self._landmarker = create_landmarker(DetectConfig(backend="dlib"))

    @torch.no_grad()
    def embed(self, image: Image.Image | np.ndarray) -> np.ndarray | None:
        rgb = _rgb(image)
        faces = self._landmarker.detect_batch([rgb])[0]
        if not faces:
            return None
        face = max(faces, key=lambda f: f.size_px)
        crop = arcface_crop(rgb, face.landmarks)
        x = torch.from_numpy(crop).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)
        return _unit(self.net(x.to(self.device))[0].cpu().numpy())


def create_identity_backend(config: IdentityConfig) -> IdentityBackend:
    if config.backend == "dlib":
        return DlibIdentity(upsample=config.upsample)
    if not config.arcface_weights:
        raise ValueError(
            "identity.backend=arcface needs identity.arcface_weights=PATH.safetensors "
            "(or use identity.backend=dlib, which works offline)"
        )
    return ArcFaceIdentity(config.arcface_weights, config.arcface_depth)


def identity_scores(
    backend: IdentityBackend, reference: np.ndarray, images: Sequence[Image.Image]
) -> list[float | None]:
    """Cosine similarity of each image's face to ``reference``; None where no face is found."""
    out: list[float | None] = []
    for image in images:
        emb = backend.embed(image)
        out.append(None if emb is None else cosine(reference, emb))
    return out
