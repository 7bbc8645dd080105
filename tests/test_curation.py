"""Curation end to end on real photos and the bad-input set (local files, no Prefect)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from conftest import BAD_INPUT_EXPECTED
from PIL import Image

from e4t.config import CurateConfig, load_config
from e4t.data.curation import CurationError, part_url
from e4t.data.inputs import SKIPPED
from e4t.data.shards import read_shard
from e4t.jobs import curate as curate_job


def curate(source_url: str, output_url: str, config: CurateConfig) -> dict:
    """The curation job as ``e4t curate --no-track`` runs it: stats + timings + wall time."""
    request = curate_job.CurateRequest(source_url, output_url, config, track=False)
    result = curate_job.run(request)
    return {**result.stats, "timings": result.timings, "wall_seconds": result.wall_seconds}


def _config(**overrides: object) -> CurateConfig:
    base = {"align.resolution_px": 128, "shards.num_images_per_partition": 4}
    return load_config(CurateConfig, "curate", None, {**base, **overrides})


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _digests(out: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.glob("*"))
        if p.is_file() and p.name != "stats.json"
    }


@pytest.fixture(scope="module")
def bad_run(bad_inputs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("curated-bad")
    stats = curate(str(bad_inputs_dir), str(out), _config())
    return out, stats


def test_every_input_is_accounted_for(bad_run: tuple[Path, dict], bad_inputs_dir: Path) -> None:
    out, stats = bad_run
    rows = _manifest(out)
    inputs = sorted(str(p) for p in bad_inputs_dir.rglob("*") if p.is_file())
    assert sorted({r["source"] for r in rows}) == inputs
    assert stats["num_inputs"] == len(inputs) == len(BAD_INPUT_EXPECTED)
    assert (
        stats["num_accepted_inputs"] + stats["num_rejected_inputs"] + stats["num_skipped_inputs"]
        == stats["num_inputs"]
    )
    by_name = {r["source"][len(str(bad_inputs_dir)) + 1 :]: r for r in rows}
    for name, reason in BAD_INPUT_EXPECTED.items():
        row = by_name[name]
        if reason is None:
            assert row["status"] == "accepted", f"{name}: {row}"
            assert row["key"] and "." not in row["key"]
        else:
            status = "skipped" if reason in SKIPPED else "rejected"
            assert row["status"] == status and row["reason"] == reason, f"{name}: {row}"
    assert stats["num_samples"] == sum(r["status"] == "accepted" for r in rows)


def test_shards_hold_aligned_samples(bad_run: tuple[Path, dict]) -> None:
    out, stats = bad_run
    accepted = {r["key"] for r in _manifest(out) if r["status"] == "accepted"}
    seen = set()
    for shard in stats["shards"]:
        assert shard.startswith("faces-") and shard.endswith(".tar")
        dataset = wds.WebDataset(str(out / shard), shardshuffle=False).decode("pil")
        for sample in dataset:
            assert set(sample) >= {"__key__", "jpg", "json", "mask.png"}
            assert sample["jpg"].size == (128, 128)
            assert sample["mask.png"].size == (128, 128)
            meta = sample["json"]
            assert meta["key"] == sample["__key__"]
            assert np.asarray(meta["landmarks"]).shape == (68, 2)
            assert {"face_size_px", "sharpness", "yaw_deg", "phash"} <= set(meta["quality"])
            seen.add(sample["__key__"])
    assert seen == accepted


def test_rerun_skips_done_work_and_converges(bad_inputs_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = curate(str(bad_inputs_dir), str(out), _config())
    before = _digests(out)
    again = curate(str(bad_inputs_dir), str(out), _config())
    assert again["wall_seconds"] == 0.0 and _digests(out) == before

    # a crash after partition 0 but before the end: its later parts and the stats are gone
    (out / "stats.json").unlink()
    (out / "manifest.jsonl").unlink()
    for i in range(1, 3):
        Path(part_url(str(out), i)).unlink()
    for shard in first["shards"][1:]:
        (out / shard).unlink()
    part0 = Path(part_url(str(out), 0)).stat().st_mtime_ns
    resumed = curate(str(bad_inputs_dir), str(out), _config())
    assert Path(part_url(str(out), 0)).stat().st_mtime_ns == part0  # partition 0 was skipped
    assert _digests(out) == before
    assert resumed["manifest_sha256"] == first["manifest_sha256"]


def test_rerun_with_other_inputs_is_refused(
    bad_inputs_dir: Path, photos_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    src = tmp_path / "src"
    shutil.copytree(photos_dir, src)
    config = _config()
    from e4t.data.curation import plan_curation

    plan_curation(str(src), str(out), config)
    (src / "extra.jpg").write_bytes((photos_dir / "obama.jpg").read_bytes())
    with pytest.raises(CurationError, match="other inputs"):
        plan_curation(str(src), str(out), config)


@pytest.mark.parametrize(
    ("policy", "num_samples", "reason"),
    [("largest", 1, None), ("each", 2, None), ("reject", 0, "multiple_faces")],
)
def test_multiple_faces_policy(
    bad_inputs_dir: Path, tmp_path: Path, policy: str, num_samples: int, reason: str | None
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(bad_inputs_dir / "nested" / "two_faces.jpg", src / "two.jpg")
    stats = curate(str(src), str(tmp_path / "out"), _config(**{"quality.multiple_faces": policy}))
    assert stats["num_samples"] == num_samples
    rows = _manifest(tmp_path / "out")
    if reason:
        assert [r["reason"] for r in rows] == [reason]
    else:
        assert all(r["num_faces"] == 2 for r in rows)


def test_quality_gates_reject_with_reasons(photos_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    obama = Image.open(photos_dir / "obama.jpg").convert("RGB")
    obama.save(src / "sharp.jpg")
    from PIL import ImageFilter

    obama.filter(ImageFilter.GaussianBlur(6)).save(src / "blurred.jpg")
    obama.resize((obama.width // 2, obama.height // 2)).save(src / "smaller_copy.jpg")
    Image.open(photos_dir / "biden.jpg").convert("RGB").resize((180, 409)).save(src / "tiny.jpg")
    stats = curate(
        str(src),
        str(tmp_path / "out"),
        _config(**{"quality.min_face_px": 60, "quality.min_sharpness": 10}),
    )
    reasons = {Path(r["source"]).name: r.get("reason") for r in _manifest(tmp_path / "out")}
    assert reasons["sharp.jpg"] is None
    assert reasons["blurred.jpg"] == "blurry"
    assert reasons["smaller_copy.jpg"] == "near_duplicate"
    assert reasons["tiny.jpg"] in ("face_too_small", "no_face")
    assert stats["rejection_reasons"]["blurry"] == 1


def test_near_duplicates_across_partitions_are_dropped(photos_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(photos_dir / "obama.jpg", src / "a.jpg")
    shutil.copyfile(photos_dir / "biden.jpg", src / "b.jpg")
    Image.open(photos_dir / "obama.jpg").save(src / "c.jpg", quality=70)  # recompressed twin
    stats = curate(
        str(src), str(tmp_path / "out"), _config(**{"shards.num_images_per_partition": 1})
    )
    reasons = {Path(r["source"]).name: r.get("reason") for r in _manifest(tmp_path / "out")}
    assert reasons == {"a.jpg": None, "b.jpg": None, "c.jpg": "near_duplicate"}
    assert stats["shards"] == ["faces-000000.tar", "faces-000001.tar"]  # c's shard removed
    assert not (tmp_path / "out" / "faces-000002.tar").exists()


def test_a_near_duplicate_names_the_twin_that_is_kept(photos_dir: Path, tmp_path: Path) -> None:
    """Partition 0 keeps a.jpg; partition 1 holds c.jpg and its twin d.jpg. Within the
    partition d is a duplicate "of c", but finalize drops c as a duplicate of a: d's row
    must name a (it named c, a key in no shard)."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(photos_dir / "obama.jpg", src / "a.jpg")
    shutil.copyfile(photos_dir / "biden.jpg", src / "b.jpg")
    Image.open(photos_dir / "obama.jpg").save(src / "c.jpg", quality=80)
    Image.open(photos_dir / "obama.jpg").save(src / "d.jpg", quality=70)
    curate(str(src), str(tmp_path / "out"), _config(**{"shards.num_images_per_partition": 2}))
    rows = {Path(r["source"]).name: r for r in _manifest(tmp_path / "out")}
    kept = {r["key"] for r in rows.values() if r["status"] == "accepted"}
    assert [n for n, r in sorted(rows.items()) if r["status"] == "accepted"] == ["a.jpg", "b.jpg"]
    for name in ("c.jpg", "d.jpg"):
        assert rows[name]["reason"] == "near_duplicate"
        assert rows[name]["duplicate_of"] == rows["a.jpg"]["key"] in kept
        assert rows[name]["detail"] == f"of {rows['a.jpg']['key']}"


def test_rerun_after_a_kill_before_the_manifest_finishes(photos_dir: Path, tmp_path: Path) -> None:
    """A near-duplicate dropped across partitions removes its shard; a finalize killed before
    manifest.jsonl is written must not make every rerun fail on the removed shard."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(photos_dir / "obama.jpg", src / "a.jpg")
    shutil.copyfile(photos_dir / "biden.jpg", src / "b.jpg")
    Image.open(photos_dir / "obama.jpg").save(src / "c.jpg", quality=70)
    config = _config(**{"shards.num_images_per_partition": 1})
    out = tmp_path / "out"
    first = curate(str(src), str(out), config)
    manifest = (out / "manifest.jsonl").read_bytes()
    assert not (out / "faces-000002.tar").exists()
    (out / "stats.json").unlink()  # the kill: after the shard was removed, before the end
    (out / "manifest.jsonl").unlink()
    again = curate(str(src), str(out), config)
    assert (out / "manifest.jsonl").read_bytes() == manifest
    assert again["shards"] == first["shards"] == ["faces-000000.tar", "faces-000001.tar"]


def test_temp_files_of_a_killed_writer_are_never_listed(tmp_path: Path) -> None:
    from e4t import io as eio

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.safetensors").write_bytes(b"x")
    (tmp_path / "model" / ".weights.safetensors.tmp-0123456789ab").write_bytes(b"half")
    assert eio.list_files(str(tmp_path / "model")) == [
        str(tmp_path / "model" / "weights.safetensors")
    ]


def test_upload_puts_the_done_marker_last(tmp_path: Path) -> None:
    """A copy killed half-way (here: the writer fails on the second file) has no marker."""
    from e4t import io as eio

    local = tmp_path / "local"
    (local / "encoder").mkdir(parents=True)
    for name in ("e4t_config.json", "encoder/a.safetensors", "offsets.safetensors"):
        (local / name).write_bytes(name.encode())
    written: list[str] = []
    real = eio.write_bytes

    def flaky(url: str, data: bytes) -> None:
        if len(written) == 2:
            raise OSError("connection reset")  # the kill
        written.append(url.rsplit("/", 1)[-1])
        real(url, data)

    eio.write_bytes = flaky  # type: ignore[assignment]
    try:
        with pytest.raises(OSError):
            eio.upload_folder(local, str(tmp_path / "remote"), marker="e4t_config.json")
    finally:
        eio.write_bytes = real  # type: ignore[assignment]
    assert not (tmp_path / "remote" / "e4t_config.json").exists()
    eio.upload_folder(local, str(tmp_path / "remote"), marker="e4t_config.json")
    assert (tmp_path / "remote" / "e4t_config.json").exists()


@pytest.mark.slow
def test_curate_cli_refuses_an_output_of_other_inputs(photos_dir: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(photos_dir / "obama.jpg", src / "a.jpg")
    args = [sys.executable, "-m", "e4t.cli", "curate", str(src), str(tmp_path / "out")]
    first = subprocess.run([*args, "--no-track"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    other = subprocess.run(
        [*args, "--no-track", "--set", "align.resolution_px=256"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert other.returncode == 2 and "another config" in other.stderr


def test_tar_members_with_unsafe_paths_are_refused(tmp_path: Path) -> None:
    import tarfile

    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("../escape.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(ValueError, match="unsafe path"):
        list(read_shard(str(path)))


@pytest.mark.parametrize("name", ["../escape.jpg", "/abs/evil.jpg", "a/../../b.jpg"])
def test_the_training_stream_refuses_unsafe_tar_members(tmp_path: Path, name: str) -> None:
    import tarfile

    from webdataset.tariterators import tarfile_to_samples

    from e4t.data.loader import refuse_unsafe_members

    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        for member in ("good.jpg", name):
            info = tarfile.TarInfo(member)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    stream = refuse_unsafe_members(tarfile_to_samples()([{"url": str(path)}]))
    assert next(stream)["__key__"] == "good"
    with pytest.raises(ValueError, match="unsafe path"):
        next(stream)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_curations_starting_together_into_one_output_one_is_refused(
    photos_dir: Path, tmp_path: Path, request: pytest.FixtureRequest, where: str
) -> None:
    """plan.json is created exclusively (a hard link locally, If-None-Match on S3): of two
    curations of other inputs that list their folders at the same moment, exactly one
    writes the plan, the other is refused, and the plan is the winner's."""
    import threading

    from e4t import io as eio
    from e4t.data import curation

    if where == "s3":
        request.getfixturevalue("s3_env")
        out = "s3://plans/out"
        import s3fs

        s3fs.S3FileSystem(**eio.s3_storage_options()).mkdir("plans")
    else:
        out = str(tmp_path / "out")
    sources = []
    for name in ("a", "b"):
        src = tmp_path / name
        src.mkdir()
        shutil.copyfile(
            photos_dir / ("obama.jpg" if name == "a" else "biden.jpg"), src / f"{name}.jpg"
        )
        sources.append(str(src))
    listed = threading.Barrier(2)
    real = curation.list_inputs

    def list_then_wait(*args: object, **kwargs: object) -> object:
        found = real(*args, **kwargs)  # type: ignore[arg-type]
        listed.wait(timeout=30)  # both have listed before either looks for a plan
        return found

    request.getfixturevalue("monkeypatch").setattr(curation, "list_inputs", list_then_wait)
    config = load_config(CurateConfig, "curate", "tiny")
    outcomes: dict[str, object] = {}

    def plan(src: str) -> None:
        try:
            outcomes[src] = curation.plan_curation(src, out, config)
        except CurationError as err:
            outcomes[src] = err

    threads = [threading.Thread(target=plan, args=(s,)) for s in sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    refused = [s for s, o in outcomes.items() if isinstance(o, CurationError)]
    won = [s for s, o in outcomes.items() if not isinstance(o, CurationError)]
    assert len(refused) == 1 and len(won) == 1, outcomes
    assert "other inputs" in str(outcomes[refused[0]])
    written = json.loads(eio.read_text(eio.join(out, "_work", "plan.json")))
    assert written["source_url"] == won[0]


def test_double_colon_names_are_curated_as_themselves(photos_dir: Path, tmp_path: Path) -> None:
    """``::`` is part of a local name, never fsspec URL chaining: ``Meeting::Bob.jpg`` (a
    real photo) is accepted, and the 11-byte text file ``link.jpg::x.jpg`` beside a link to
    an outside photo is undecodable, not that outside face."""
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copyfile(photos_dir / "biden.jpg", outside / "biden.jpg")
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(photos_dir / "obama.jpg", src / "Meeting::Bob.jpg")
    (src / "link.jpg").symlink_to(outside / "biden.jpg")
    (src / "link.jpg::x.jpg").write_bytes(b"hello world")
    out = tmp_path / "out"
    curate(str(src), str(out), _config())
    rows = {Path(r["source"]).name: r for r in _manifest(out)}
    assert rows["link.jpg"]["reason"] == "symlink_outside_root"
    assert rows["link.jpg::x.jpg"]["status"] == "rejected", rows
    assert rows["link.jpg::x.jpg"]["reason"] == "undecodable", rows
    assert rows["Meeting::Bob.jpg"]["status"] == "accepted", rows
    assert sum(r["status"] == "accepted" for r in rows.values()) == 1


def test_a_photo_swapped_for_an_outside_symlink_after_listing_is_not_read(
    photos_dir: Path, tmp_path: Path
) -> None:
    """What was listed is what is read: a photo replaced by a link to an outside photo
    between planning (the listing) and its partition is an ``unreadable`` row, never the
    outside face (the read opens with O_NOFOLLOW and re-checks a followed link)."""
    from e4t.data import curation

    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copyfile(photos_dir / "biden.jpg", outside / "biden.jpg")
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(photos_dir / "obama.jpg", src / "a.jpg")
    out = str(tmp_path / "out")
    config = _config()
    plan = curation.plan_curation(str(src), out, config)
    (src / "a.jpg").unlink()
    (src / "a.jpg").symlink_to(outside / "biden.jpg")  # swapped after the listing
    for index in range(plan.num_partitions):
        curation.curate_partition(out, index, config)
    curation.finalize_curation(out, config)
    rows = _manifest(tmp_path / "out")
    assert [(Path(r["source"]).name, r["status"], r.get("reason")) for r in rows] == [
        ("a.jpg", "rejected", "unreadable")
    ], rows
    assert "outside the folder" in rows[0]["detail"]


def test_an_in_folder_link_across_sub_folders_is_read(photos_dir: Path, tmp_path: Path) -> None:
    """A link inside the folder to a photo in another of its sub-folders is read (its real
    path is checked against the listed folder, not the link's own sub-folder); a twin photo,
    so one row is its near-duplicate."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    shutil.copyfile(photos_dir / "obama.jpg", src / "a.jpg")
    (src / "sub" / "l.jpg").symlink_to("../a.jpg")
    out = tmp_path / "out"
    curate(str(src), str(out), _config())
    rows = {r["source"]: r for r in _manifest(out)}
    assert "unreadable" not in {r.get("reason") for r in rows.values()}, rows
    assert sorted(r["status"] for r in rows.values()) == ["accepted", "rejected"], rows


def test_curate_one_turns_hostile_files_into_reasons(photos_dir: Path, tmp_path: Path) -> None:
    """Personalization's path (curate_one): a broken EXIF block is still a face, DDS bytes
    named .jpg are undecodable with the exception's type (it recorded "error: error:
    required argument is not an integer" and raised NotImplementedError)."""
    from hostile import build_hostile_folder

    from e4t.data.curation import curate_one

    expected = build_hostile_folder(photos_dir, tmp_path, big=False)
    config = _config()
    for name, want in expected.items():
        result = curate_one((tmp_path / name).read_bytes(), config)
        if want.face:
            assert result.reason is None and result.image is not None, (name, result.detail)
        else:
            assert result.reason in (want.reasons or (want.reason,)), (name, result.reason)
            if want.detail:
                assert want.detail in (result.detail or ""), (name, result.detail)


def test_a_detector_failure_is_the_row_of_the_image_that_caused_it(photos_dir: Path) -> None:
    """The real dlib backend raises on an array it cannot take (float64): the batch is
    retried one image at a time, the face of the other image is still found."""
    from e4t.data.curation import _detect_each_guarded, _landmarker

    landmarker = _landmarker(load_config(CurateConfig, "curate", "tiny"))
    photo = np.asarray(Image.open(photos_dir / "obama.jpg").convert("RGB"))
    found = _detect_each_guarded(landmarker, [photo, photo.astype(np.float64)])
    assert isinstance(found[0], list) and len(found[0]) == 1
    assert isinstance(found[1], Exception)  # (TypeError or RuntimeError, by the image size)
    assert isinstance(_detect_each_guarded(landmarker, [photo.astype(np.float64)])[0], Exception)
