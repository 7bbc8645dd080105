"""Real-world folders through the real CLI: every file accounted for, no two people merged,
no odd file stopping (or hanging) a job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from e4t.data.inputs import SKIPPED, input_id, list_inputs, path_bytes
from tests.messy import MAX_BYTES, build_messy_folder

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def messy(photos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("messy") / "inbox"
    return folder, build_messy_folder(photos_dir, folder)


def _e4t(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "e4t.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,  # a FIFO read would hang here: the test would fail, not wait forever
        cwd=ROOT,
    )


def test_listing_classifies_every_entry_without_opening_it(messy: tuple[Path, dict]) -> None:
    folder, expected = messy
    listed = {path_bytes(e.relpath): e for e in list_inputs(str(folder), MAX_BYTES)}
    assert set(listed) == set(expected)
    for raw, reason in expected.items():
        by_listing = None if reason == "unsupported_extension" else reason  # the stage's call
        assert listed[raw].reason == by_listing, (raw, listed[raw])
    ids = [e.id for e in listed.values()]
    assert len(set(ids)) == len(ids)  # injective: no two entries share an id
    assert all("." not in i and "/" not in i for i in ids)
    # the same relative path gives the same id wherever the folder is (a copy, an S3 prefix)
    assert listed[b"a b.jpg"].id == input_id("a b.jpg") != input_id("a_b.jpg")


@pytest.mark.slow
def test_curate_cli_accounts_for_every_file(messy: tuple[Path, dict], tmp_path: Path) -> None:
    folder, expected = messy
    out = tmp_path / "shards"
    done = _e4t(
        "curate",
        str(folder),
        str(out),
        "--preset",
        "tiny",
        "--workers",
        "2",
        "--no-track",
        "--set",
        f"decode.max_bytes={MAX_BYTES}",
        "--set",
        "shards.num_images_per_partition=5",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r for r in rows}
    assert len(by_id) == len(rows) == len(expected)  # one row per file, one file per row
    entries = {path_bytes(e.relpath): e for e in list_inputs(str(folder), MAX_BYTES)}
    for raw, reason in expected.items():
        row = by_id[entries[raw].id]
        if reason is None:  # read, decoded and judged on its content
            assert row["status"] in ("accepted", "rejected"), row
            assert row.get("reason") in (None, "near_duplicate"), row
        else:
            assert row["reason"] == reason, (raw, row)
            assert row["status"] == ("skipped" if reason in SKIPPED else "rejected")
    stats = json.loads((out / "stats.json").read_text())
    assert stats["num_inputs"] == len(expected)
    assert stats["num_accepted_inputs"] + stats["num_rejected_inputs"] + stats[
        "num_skipped_inputs"
    ] == len(expected)
    assert stats["num_accepted_inputs"] >= 2  # obama and biden, at least once each
    assert "skipped" in done.stdout


def test_a_file_that_vanishes_after_listing_is_a_row(photos_dir: Path, tmp_path: Path) -> None:
    from e4t.config import CurateConfig, load_config
    from e4t.data import curation

    src = tmp_path / "src"
    src.mkdir()
    for name in ("obama.jpg", "biden.jpg"):
        (src / name).write_bytes((photos_dir / name).read_bytes())
    config = load_config(CurateConfig, "curate", "tiny")
    curation.plan_curation(str(src), str(tmp_path / "out"), config)
    (src / "biden.jpg").unlink()  # between listing and reading
    os.mkfifo(src / "obama.jpg.tmp")
    record = curation.curate_partition(str(tmp_path / "out"), 0, config)
    reasons = {Path(r["source"]).name: r.get("reason") for r in record["rows"]}
    assert reasons == {"biden.jpg": "unreadable", "obama.jpg": None}


@pytest.mark.slow
def test_personalize_cli_keeps_every_person_apart(
    messy: tuple[Path, dict], tiny_dir: Path, tmp_path: Path
) -> None:
    from e4t.config import ModelConfig
    from e4t.models.e4t_model import E4TModel

    folder, expected = messy
    model = E4TModel.from_config(ModelConfig(base_model=str(tiny_dir), encoder={"hidden_dim": 32}))
    domain = model.save_pretrained(tmp_path / "domain")
    out = tmp_path / "concepts"
    done = _e4t(
        "personalize",
        str(folder),
        "--model",
        str(domain),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--tune-steps",
        "1",
        "--no-track",
        "--set",
        f"curate.decode.max_bytes={MAX_BYTES}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    ids = [r["concept_id"] for r in rows]
    assert len(set(ids)) == len(ids)
    people = [r for r in rows if r["kind"] == "concept"]
    faces = {raw for raw, reason in expected.items() if reason is None}
    top_level = {raw for raw in faces if b"/" not in raw} | {b"dup"}  # dup/ is one person
    assert len(people) == len(top_level) == 18
    assert all(r["status"] == "done" for r in people), [r for r in people if r["status"] != "done"]
    assert all((out / "concepts" / r["concept_id"] / "concept.json").exists() for r in people)
    others = {r["name"]: r["reason"] for r in rows if r["kind"] == "file"}
    assert others[".hidden.jpg"] == others[".thumbs/small.jpg"] == "hidden_file"
    assert others["pipe.jpg"] == others["sock.jpg"] == "not_a_regular_file"
    assert others["passwd.jpg"] == "symlink_outside_root"
    assert others["big.jpg"] == "too_large"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_files"] == len(expected) == sum(len(r["files"]) for r in rows)
    assert summary["num_concepts"] == 18 and summary["num_done"] == 18
    assert f"{summary['num_done']} of {summary['num_concepts']} concepts" in done.stdout


def test_a_read_never_takes_more_than_the_cap(tmp_path: Path) -> None:
    """A file that grew past the cap after it was listed: at most cap + 1 bytes are read,
    and the decoder calls it too_large."""
    from e4t.config import DecodeConfig
    from e4t.data.decode import decode_image
    from e4t.data.inputs import read_capped

    path = tmp_path / "grown.jpg"
    path.write_bytes(b"\xff" * 10_000)
    data = read_capped(str(path), 1_000)
    assert len(data) == 1_001
    assert decode_image(data, DecodeConfig(max_bytes=1_000)).reason == "too_large"
    os.mkfifo(tmp_path / "swapped.jpg")  # a FIFO swapped in after the listing: no hang
    with pytest.raises(OSError, match="no longer a regular file"):
        read_capped(str(tmp_path / "swapped.jpg"), 1_000)
