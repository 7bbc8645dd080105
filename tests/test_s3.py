"""A round trip through a real S3 server (SeaweedFS on 127.0.0.1): photos in s3://, shards out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import webdataset as wds

from e4t import io as eio
from e4t.config import CurateConfig, load_config
from e4t.jobs import curate as curate_job

pytestmark = pytest.mark.slow


def curate(source_url: str, output_url: str, config: CurateConfig) -> dict:
    """The curation job as ``e4t curate --no-track`` runs it: stats + timings + wall time."""
    result = curate_job.run(source_url, output_url, config, track_run=False)
    return {**result["stats"], "timings": result["timings"], "wall_seconds": result["wall_seconds"]}


def test_curate_from_s3_to_s3_and_read_back_with_webdataset(
    s3_env: dict[str, str], bad_inputs_dir: Path, photos_dir: Path
) -> None:
    bucket = s3_env["bucket"]
    src = f"s3://{bucket}/raw"
    local_inputs = sorted(p for p in bad_inputs_dir.rglob("*") if p.is_file())
    for path in local_inputs:
        eio.write_bytes(f"{src}/{path.relative_to(bad_inputs_dir).as_posix()}", path.read_bytes())
    assert len(eio.list_files(src)) == len(local_inputs)

    out = f"s3://{bucket}/curated/faces"
    config = load_config(CurateConfig, "curate", "tiny")
    stats = curate(src, out, config)
    assert stats["num_accepted_inputs"] + stats["num_rejected_inputs"] + stats[
        "num_skipped_inputs"
    ] == len(local_inputs)
    assert stats["num_samples"] > 0
    manifest = [json.loads(x) for x in eio.read_text(f"{out}/manifest.jsonl").splitlines()]
    assert {r["source"] for r in manifest} == set(eio.list_files(src))
    assert json.loads(eio.read_text(f"{out}/stats.json")) == {
        k: v for k, v in stats.items() if k not in ("timings", "wall_seconds")
    }

    eio.register_webdataset_openers()
    urls = [f"{out}/{shard}" for shard in stats["shards"]]
    keys = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False).decode("pil")]
    assert sorted(keys) == sorted(r["key"] for r in manifest if r["status"] == "accepted")

    # a rerun against the same bucket does nothing and changes nothing
    again = curate(src, out, config)
    assert again["wall_seconds"] == 0.0 and again["manifest_sha256"] == stats["manifest_sha256"]


def test_wrong_credentials_fail_with_the_url(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3fs

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises((PermissionError, FileNotFoundError, OSError)):
        eio.list_files(f"s3://{s3_env['bucket']}/raw")
