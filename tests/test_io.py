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


def test_a_local_name_with_double_colons_is_that_file_not_a_url_chain(tmp_path: Path) -> None:
    """``::`` in a local name is part of the name (fsspec would chain ``a.jpg::b.jpg`` into
    a read of ``a.jpg``): ``Meeting::Bob.jpg`` reads its own bytes, and a small text file
    named ``link.jpg::x.jpg`` beside a link to an outside photo reads its own 11 bytes, never
    the outside photo's."""
    from e4t.data.inputs import list_inputs, read_capped

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "face.jpg").write_bytes(b"OUTSIDE FACE")
    root = tmp_path / "in"
    root.mkdir()
    (root / "Meeting::Bob.jpg").write_bytes(b"bob's bytes")
    (root / "link.jpg").symlink_to(outside / "face.jpg")
    (root / "link.jpg::x.jpg").write_bytes(b"hello world")
    assert eio.get_fs(str(root / "link.jpg::x.jpg"))[1] == str(root / "link.jpg::x.jpg")
    assert eio.get_fs(f"file://{root}/a::b.jpg")[1] == f"{root}/a::b.jpg"
    listed = {e.relpath: e for e in list_inputs(str(root), 1000)}
    assert listed["link.jpg"].reason == "symlink_outside_root"
    assert listed["link.jpg::x.jpg"].reason is None and listed["link.jpg::x.jpg"].size == 11
    assert read_capped(listed["link.jpg::x.jpg"].url, 1000) == b"hello world"
    assert eio.read_bytes(listed["link.jpg::x.jpg"].url) == b"hello world"
    assert read_capped(listed["Meeting::Bob.jpg"].url, 1000) == b"bob's bytes"
    assert eio.exists(str(root / "Meeting::Bob.jpg"))
    assert not eio.exists(str(root / "link.jpg::missing.jpg"))  # was: exists via link.jpg


def test_a_file_swapped_for_an_outside_symlink_after_listing_is_not_read(
    tmp_path: Path,
) -> None:
    """What was listed is what is read: a regular file replaced by a link to an outside
    file is refused (O_NOFOLLOW); an in-folder link is still read, but not once re-pointed
    outside the folder after the listing."""
    from e4t.data.inputs import list_inputs, read_capped

    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"SECRET")
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(b"a")
    (root / "b.jpg").write_bytes(b"b")
    (root / "sub" / "up.jpg").symlink_to("../b.jpg")
    (root / "near.jpg").symlink_to("b.jpg")
    listed = {e.relpath: e for e in list_inputs(str(root), 1000)}
    assert all(e.reason is None for e in listed.values()), listed
    assert read_capped(listed["near.jpg"].url, 1000) == b"b"
    assert read_capped(listed["sub/up.jpg"].url, 1000, root_url=str(root)) == b"b"

    (root / "a.jpg").unlink()
    (root / "a.jpg").symlink_to(secret)  # swapped after the listing
    with pytest.raises(OSError, match=r"a\.jpg: resolves outside"):
        read_capped(listed["a.jpg"].url, 1000)
    with pytest.raises(OSError, match=r"a\.jpg: resolves outside"):
        read_capped(listed["a.jpg"].url, 1000, root_url=str(root))
    (root / "near.jpg").unlink()
    (root / "near.jpg").symlink_to(secret)  # an in-folder link re-pointed outside
    with pytest.raises(OSError, match="outside the folder"):
        read_capped(listed["near.jpg"].url, 1000)
    with pytest.raises(OSError, match="outside the folder"):
        read_capped(listed["near.jpg"].url, 1000, root_url=str(root))
