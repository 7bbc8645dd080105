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
    request = curate_job.CurateRequest(source_url, output_url, config, track=False)
    result = curate_job.run(request)
    return {**result.stats, "timings": result.timings, "wall_seconds": result.wall_seconds}


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


def test_messy_folder_on_s3_has_the_ids_of_its_local_copy(
    s3_env: dict[str, str], photos_dir: Path, tmp_path: Path
) -> None:
    from e4t.data.inputs import list_inputs
    from tests.messy import MAX_BYTES, build_messy_folder, copy_for_s3

    messy = tmp_path / "messy"
    build_messy_folder(photos_dir, messy)
    local = copy_for_s3(messy, tmp_path / "uploadable")
    prefix = f"s3://{s3_env['bucket']}/messy"
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        eio.write_bytes(f"{prefix}/{path.relative_to(local).as_posix()}", path.read_bytes())
    on_s3 = {e.relpath: (e.id, e.reason) for e in list_inputs(prefix, MAX_BYTES)}
    here = {e.relpath: (e.id, e.reason) for e in list_inputs(str(local), MAX_BYTES)}
    assert on_s3 == here and len(on_s3) >= 20  # names with spaces, quotes, a newline, CJK, NFD

    out = f"s3://{s3_env['bucket']}/messy-curated"
    config = load_config(
        CurateConfig, "curate", "tiny", {"decode.max_bytes": MAX_BYTES, "quality.dedup": False}
    )
    stats = curate(prefix, out, config)
    manifest = [json.loads(x) for x in eio.read_text(f"{out}/manifest.jsonl").splitlines()]
    assert sorted(r["id"] for r in manifest) == sorted(i for i, _ in on_s3.values())
    assert stats["num_skipped_inputs"] == sum(r["status"] == "skipped" for r in manifest) >= 3


def test_a_large_prefix_is_listed_page_by_page(s3_env: dict[str, str]) -> None:
    """20,000 objects: every one listed once, through ListObjectsV2 pages, in bounded memory."""
    import tracemalloc

    from e4t.data.inputs import iter_s3_objects, list_inputs

    fs, path = eio.get_fs(f"s3://{s3_env['bucket']}/many")
    count = 20_000
    fs.pipe({f"{path}/d{i % 7}/f{i:05d}.jpg": b"" for i in range(count)})
    pages = []
    real_call = fs.call_s3

    def counting(method: str, *args: object, **kwargs: object) -> dict:
        pages.append(kwargs.get("ContinuationToken"))
        return real_call(method, *args, **kwargs)

    fs.call_s3 = counting
    try:
        tracemalloc.start()
        listed = sum(1 for _ in iter_s3_objects(fs, path, page_size=1000))
        _, peak_streaming = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        del fs.call_s3
    assert listed == count and len(pages) == count // 1000
    # streaming holds one page at a time: far less than a listing of every object's record
    assert peak_streaming < 8 * 2**20, peak_streaming
    entries = list_inputs(f"s3://{s3_env['bucket']}/many")
    assert len(entries) == count and len({e.id for e in entries}) == count


def test_concepts_and_models_on_s3_generate_export_and_download(
    s3_env: dict[str, str], tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the stack writes to S3 (a concept folder, a domain model folder) is read back by
    generate, export-concept and download straight from its s3:// URL."""
    import torch
    from PIL import Image

    from e4t.cli import main
    from e4t.config import ModelConfig
    from e4t.models.e4t_model import E4TModel

    model = E4TModel.from_config(ModelConfig(base_model=str(tiny_dir), encoder={"hidden_dim": 32}))
    domain = model.save_pretrained(tmp_path / "domain")
    cls = torch.randn(1, len(model.encoder.layer_indices), model.encoder.config.clip_hidden_size)
    local = model.save_concept(tmp_path / "ada", cls, extra={"concept_id": "ada"})
    prefix = f"s3://{s3_env['bucket']}/stack"
    concept_url, model_url = f"{prefix}/concepts/ada", f"{prefix}/model"
    eio.upload_folder(local, concept_url, "concept.json")
    eio.upload_folder(domain, model_url, "e4t_config.json")

    assert main(["download", concept_url, str(tmp_path / "back")]) == 0
    for path in local.iterdir():
        assert (tmp_path / "back" / path.name).read_bytes() == path.read_bytes()

    args = ["--prompt", "{}", "-n", "1", "--sample-steps", "2", "--out", str(tmp_path / "img")]
    assert main(["generate", "--model", model_url, "--concept", concept_url, *args]) == 0
    (png,) = (tmp_path / "img").glob("*.png")
    text = Image.open(png).text
    assert text["e4t.concept_uri"] == concept_url and text["e4t.model_version_uri"] == model_url

    export = ["--model", str(domain), "--out", str(tmp_path / "x"), "--sample-steps", "2"]
    assert main(["export-concept", concept_url, *export]) == 0
    (export_json,) = (tmp_path / "x").rglob("export.json")
    info = json.loads(export_json.read_text())
    assert info["source_concept"] == concept_url
    assert info["model_version_uri"] == str(domain.resolve())
    assert (export_json.parent / "learned_embeds.safetensors").stat().st_size > 0
    capsys.readouterr()

    missing = f"{prefix}/concepts/nobody"
    assert (
        main(["export-concept", missing, "--model", model_url, "--out", str(tmp_path / "y")]) == 2
    )
    err = capsys.readouterr().err
    assert f"{missing}: no E4T concept there" in err and "Traceback" not in err
    assert not (tmp_path / "y").exists()
