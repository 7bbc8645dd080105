"""Shared fixtures: real sample photos, the bad-input set, a SeaweedFS server, Prefect."""

from __future__ import annotations

import io
import os
import shutil
import struct
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Set before Prefect or MLflow is imported anywhere in the session.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ["E4T_OFFLINE"] = "1"  # nothing downloads weights in tests
os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session", autouse=True)
def _isolated_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Each session writes its MLflow database and outputs under a fresh data dir."""
    path = tmp_path_factory.mktemp("e4t-data")
    old = os.environ.get("E4T_DATA_DIR")
    os.environ["E4T_DATA_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("E4T_DATA_DIR", None)
    else:
        os.environ["E4T_DATA_DIR"] = old


@pytest.fixture(scope="session")
def photos_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real sample photos (portraits fetched from PyPI + skimage), negatives included."""
    from e4t.samples import fetch_sample_photos

    return fetch_sample_photos(tmp_path_factory.mktemp("photos"), negatives=True)


def load_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` × ``height`` (no real pixel data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def exif_rotated_jpeg(photo: Image.Image) -> bytes:
    """Pixels stored turned 90° counter-clockwise, EXIF orientation 6 turns them back upright."""
    stored = photo.rotate(90, expand=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=92, exif=exif.tobytes())
    return buf.getvalue()


#: file name → the manifest reason expected (None: accepted)
BAD_INPUT_EXPECTED = {
    "zero.jpg": "empty_file",
    "truncated.jpg": "truncated",
    "text.jpg": "undecodable",
    "bomb.png": "decompression_bomb",
    "notes.txt": "unsupported_extension",
    "cat.png": "no_face",
    "cmyk.jpg": None,
    "deep16.png": None,
    "rgba.png": None,
    "exif_rotated.jpg": None,
    "grey.jpg": None,
    "nested/two_faces.jpg": None,
}


def build_bad_inputs(photos: Path, dest: Path) -> Path:
    """The bad-input set of the curation tests, each made from a different real photo."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "nested").mkdir(exist_ok=True)
    obama = (photos / "obama.jpg").read_bytes()
    (dest / "zero.jpg").write_bytes(b"")
    (dest / "truncated.jpg").write_bytes(obama[: len(obama) // 2])
    (dest / "text.jpg").write_text("this is not a photo\n")
    (dest / "bomb.png").write_bytes(png_header_only(50_000, 50_000))
    (dest / "notes.txt").write_text("not an image either\n")
    shutil.copyfile(photos / "chelsea.png", dest / "cat.png")
    Image.open(photos / "obama3.jpg").convert("CMYK").save(dest / "cmyk.jpg", quality=92)
    grey16 = np.asarray(Image.open(photos / "biden.jpg").convert("L"), dtype=np.uint16) * 257
    Image.fromarray(grey16).save(dest / "deep16.png")
    shutil.copyfile(photos / "32bit.png", dest / "rgba.png")
    (dest / "exif_rotated.jpg").write_bytes(exif_rotated_jpeg(Image.open(photos / "obama.jpg")))
    Image.open(photos / "obama_partial_face.jpg").convert("L").save(dest / "grey.jpg")
    left = Image.open(photos / "astronaut.png").convert("RGB")
    right = Image.open(photos / "obama_partial_face2.jpg").convert("RGB")
    right = right.resize((round(right.width * left.height / right.height), left.height))
    both = Image.new("RGB", (left.width + right.width, left.height))
    both.paste(left, (0, 0))
    both.paste(right, (left.width, 0))
    both.save(dest / "nested" / "two_faces.jpg", quality=92)
    return dest


@pytest.fixture(scope="session")
def bad_inputs_dir(photos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bad_inputs(photos_dir, tmp_path_factory.mktemp("bad-inputs"))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real SeaweedFS S3 server on 127.0.0.1, started here and stopped by PID."""
    from infra.seaweedfs import SeaweedS3

    key, secret = f"e4t-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    server = SeaweedS3.start(
        tmp_path_factory.mktemp("seaweedfs"), key, secret, buckets=("e4t-test",)
    )
    try:
        yield {
            "endpoint": server.endpoint,
            "key": key,
            "secret": secret,
            "bucket": "e4t-test",
            "pid": str(server.pid),
        }
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point e4t.io at the test server through the standard environment variables."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server["secret"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("E4T_S3_ENDPOINT_URL", s3_server["endpoint"])
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return s3_server


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One ephemeral Prefect server for the whole session (start takes ~25 s here)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny base model preset, written once per session."""
    from e4t.models.architectures import init_model

    return init_model(tmp_path_factory.mktemp("models") / "tiny", arch="tiny", seed=0)


@pytest.fixture(scope="session")
def curated_shards(
    prefect_server: None, photos_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Shards written by the curate-domain flow from the real sample photos (128-px crops)."""
    from flows.curate_domain import curate_domain

    out = tmp_path_factory.mktemp("curated") / "shards"
    curate_domain(source_url=str(photos_dir), output_url=str(out), preset="tiny")
    return out
