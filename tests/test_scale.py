"""A folder of 5,000 small files through ``e4t curate`` with 2 workers: exact accounting."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def build_scale_folder(photos: Path, dest: Path, count: int = 5000, seed: int = 0) -> Counter:
    """Small faces (jittered crops of the portraits), small non-faces, broken images, text
    files and empty files in 50 sub-folders; returns how many of each kind were written."""
    rng = random.Random(seed)
    faces = [Image.open(photos / n).convert("RGB") for n in ("obama.jpg", "biden.jpg")]
    others = [Image.open(photos / n).convert("RGB") for n in ("chelsea.png", "coffee.png")]
    kinds: Counter = Counter()
    for i in range(count):
        folder = dest / f"batch{i % 50:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        kind = rng.choices(["face", "other", "junk", "text", "empty"], [4, 3, 1, 1, 1])[0]
        kinds[kind] += 1
        if kind in ("face", "other"):
            photo = rng.choice(faces if kind == "face" else others)
            w, h = photo.size
            m = rng.uniform(0, 0.1)
            crop = photo.crop((int(w * m), int(h * m), int(w * (1 - m)), int(h * (1 - m))))
            crop = crop.resize((160, round(160 * crop.height / crop.width)))
            buf = io.BytesIO()
            crop.save(buf, format="JPEG", quality=rng.randint(60, 90))
            (folder / f"{kind}{i:05d}.jpg").write_bytes(buf.getvalue())
        elif kind == "junk":
            (folder / f"junk{i:05d}.jpg").write_bytes(rng.randbytes(rng.randint(10, 2000)))
        elif kind == "text":
            (folder / f"note{i:05d}.txt").write_text(f"file {i}\n")
        else:
            (folder / f"empty{i:05d}.png").write_bytes(b"")
    return kinds


def test_five_thousand_files_with_two_workers(photos_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    kinds = build_scale_folder(photos_dir, src)
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "e4t.cli",
            "curate",
            str(src),
            str(out),
            "--preset",
            "tiny",
            "--workers",
            "2",
            "--no-track",
            "--set",
            "quality.dedup=false",
            "--set",
            "detect.upsample_below_px=0",  # small crops: no upsampled second pass (speed)
            "--set",
            "shards.num_images_per_partition=250",
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == len({r["id"] for r in rows}) == 5000
    reasons = Counter(r.get("reason") for r in rows)
    assert reasons["unsupported_extension"] == kinds["text"]
    assert reasons["empty_file"] == kinds["empty"]
    assert reasons["undecodable"] + reasons["truncated"] == kinds["junk"]
    read = [r for r in rows if r.get("reason") not in ("unsupported_extension", "empty_file")]
    assert len(read) == kinds["face"] + kinds["other"] + kinds["junk"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["num_inputs"] == 5000
    assert (
        stats["num_accepted_inputs"] + stats["num_rejected_inputs"] + stats["num_skipped_inputs"]
        == 5000
    )
    assert stats["num_accepted_inputs"] > 0
