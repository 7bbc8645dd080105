"""Identity metric on real photos: same person scores higher than different people."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from e4t.config import IdentityConfig
from e4t.evaluation.identity import (
    ARCFACE_TEMPLATE,
    ArcFaceIdentity,
    DlibIdentity,
    IResNet,
    cosine,
    create_identity_backend,
    five_points,
    identity_scores,
)


@pytest.fixture(scope="module")
def dlib_identity() -> DlibIdentity:
    return DlibIdentity()


def test_same_person_scores_higher_than_different_people(
    dlib_identity: DlibIdentity, photos_dir: Path
) -> None:
    emb = {
        n: dlib_identity.embed(Image.open(photos_dir / f"{n}.jpg"))
        for n in ("obama", "obama2", "obama3", "biden")
    }
    assert all(e is not None and e.shape == (128,) for e in emb.values())
    same = [cosine(emb["obama"], emb["obama2"]), cosine(emb["obama"], emb["obama3"])]
    different = [cosine(emb[n], emb["biden"]) for n in ("obama", "obama2", "obama3")]
    assert min(same) > max(different)
    assert min(same) > 0.9  # dlib's same-person threshold (distance 0.6) is cos ≈ 0.82


def test_non_face_is_reported_as_no_face(dlib_identity: DlibIdentity, photos_dir: Path) -> None:
    reference = dlib_identity.embed(Image.open(photos_dir / "obama.jpg"))
    assert reference is not None
    images = [Image.open(photos_dir / "coffee.png"), Image.open(photos_dir / "obama2.jpg")]
    scores = identity_scores(dlib_identity, reference, images)
    assert scores[0] is None and scores[1] is not None and scores[1] > 0.9


def test_five_points_land_on_the_arcface_template(photos_dir: Path) -> None:
    from skimage.transform import SimilarityTransform

    from e4t.config import DetectConfig
    from e4t.faces.landmarker import create_landmarker

    rgb = np.asarray(Image.open(photos_dir / "obama.jpg").convert("RGB"))
    face = create_landmarker(DetectConfig()).detect_batch([rgb])[0][0]
    points = five_points(face.landmarks)
    tform = SimilarityTransform.from_estimate(points, ARCFACE_TEMPLATE)
    assert tform
    # a frontal face: after the fit every point is within a few pixels of the template
    assert np.abs(tform(points) - ARCFACE_TEMPLATE).max() < 6.0


def test_arcface_backend_loads_safetensors_only(tmp_path: Path, photos_dir: Path) -> None:
    torch.manual_seed(0)
    net = IResNet("r18", width=8)
    weights = tmp_path / "arcface.safetensors"
    save_file({k: v.contiguous() for k, v in IResNet("r18").state_dict().items()}, str(weights))
    backend = create_identity_backend(
        IdentityConfig(backend="arcface", arcface_weights=str(weights), arcface_depth="r18")
    )
    assert isinstance(backend, ArcFaceIdentity)
    emb = backend.embed(Image.open(photos_dir / "obama.jpg"))
    assert emb is not None and emb.shape == (512,)
    assert abs(float(np.linalg.norm(emb)) - 1.0) < 1e-4
    assert backend.embed(Image.open(photos_dir / "coffee.png")) is None

    with pytest.raises(ValueError, match=r"IResNet-r50.*does not fit"):
        ArcFaceIdentity(weights, depth="r50")
    small = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(small))
    with pytest.raises(ValueError, match="does not fit"):
        ArcFaceIdentity(small, depth="r18")
    pickle = tmp_path / "arcface.pth"
    pickle.write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        ArcFaceIdentity(pickle)
    with pytest.raises(ValueError, match="arcface_weights"):
        create_identity_backend(IdentityConfig(backend="arcface"))
