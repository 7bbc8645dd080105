"""fsspec URLs, atomic writes and the WebDataset opener."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import webdataset as wds

from e4t import io as eio
from e4t.data.shards import read_shard, write_shard


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.bin"
    with pytest.raises(RuntimeError), eio.atomic_open(str(target)) as f:
        f.write(b"half")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list((tmp_path / "sub").iterdir()) == []  # no temp file left behind
    eio.write_bytes(str(target), b"whole")
    assert target.read_bytes() == b"whole"


def test_memory_urls_round_trip_and_list_recursively() -> None:
    base = f"memory://e4t-{uuid.uuid4().hex[:8]}"
    eio.write_text(eio.join(base, "a", "x.txt"), "1")
    eio.write_text(eio.join(base, "b.txt"), "2")
    assert eio.list_files(base) == [f"{base}/a/x.txt", f"{base}/b.txt"]
    assert eio.read_text(f"{base}/a/x.txt") == "1"
    assert eio.relative_to(f"{base}/a/x.txt", base) == "a/x.txt"


def test_file_scheme_and_plain_paths_agree(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "p.jpg").write_bytes(b"x")
    assert eio.list_files(str(tmp_path / "d")) == [str(tmp_path / "d" / "p.jpg")]
    assert eio.list_files(f"file://{tmp_path}/d") == [f"file://{tmp_path}/d/p.jpg"]


def test_missing_folder_error_names_the_url(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        eio.list_files(str(tmp_path / "nope"))


def test_s3_endpoint_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    assert eio.s3_storage_options()["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:1"
    monkeypatch.setenv("E4T_S3_ENDPOINT_URL", "http://127.0.0.1:2")
    assert eio.s3_storage_options()["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:2"


def test_webdataset_reads_memory_shards_through_the_registered_opener() -> None:
    eio.register_webdataset_openers()
    url = f"memory://e4t-{uuid.uuid4().hex[:8]}/s-000000.tar"
    samples = [{"__key__": f"k{i}", "txt": f"value {i}"} for i in range(3)]
    assert write_shard(url, samples) == 3
    got = [(s["__key__"], s["txt"]) for s in wds.WebDataset(url, shardshuffle=False).decode()]
    assert got == [("k0", "value 0"), ("k1", "value 1"), ("k2", "value 2")]
    assert [s["__key__"] for s in read_shard(url)] == ["k0", "k1", "k2"]


def test_keys_with_dots_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must match"):
        write_shard(str(tmp_path / "x.tar"), [{"__key__": "photo_1.5x", "jpg": b""}])
    assert not (tmp_path / "x.tar").exists()
