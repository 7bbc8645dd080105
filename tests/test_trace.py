"""``e4t trace``: on the demo's output, from a personalization preview back to its photo, each
hop checked against the artifacts and the MLflow runs the demo made; and on hostile images
(made here, at run time: no binary fixtures), each answered with one clear error line or a
clean trace, never a traceback, a hang, a connection out or a file created."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from e4t.trace import MAX_SHOWN_CHARS, TraceError, find_manifest_row, same_photo, trace

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_trace_walks_from_a_demo_preview_back_to_its_photo(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "E4T_DATA_DIR": str(tmp_path / "data"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    demo = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "flows.demo", "--out", str(demo), "--steps", "2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    previews = sorted((demo / "concepts" / "previews").rglob("*.png"))
    assert previews
    preview = next(p for p in previews if p.parent.name.startswith("obama"))
    done = subprocess.run(
        [sys.executable, "-m", "e4t.cli", "trace", str(preview)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    hops = {}
    for line in done.stdout.splitlines():
        match = re.match(r"^(\w[\w ]*?)\s{2,}(.*)$", line)
        if match:
            hops[match.group(1).strip()] = match.group(2)
    assert list(hops) == [
        "image",
        "concept",
        "personalization",
        "source photo",
        "domain model",
        "pretraining run",
        "dataset run",
        "manifest row",
    ], done.stdout
    concept_id = preview.parent.name
    assert concept_id in hops["concept"] and "fingerprint matches" in hops["concept"]
    assert str(demo / "concepts" / "results.jsonl") in hops["personalization"]
    photo = hops["source photo"].split("  (")[0]
    assert (
        Path(photo).name == "obama.jpg"
        and Path(photo).exists()
        and "present" in hops["source photo"]
    )

    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("e4t-faces", "candidate")
    assert f"models:/e4t-faces/{version.version}" in hops["domain model"]
    assert hops["pretraining run"].startswith(version.run_id)
    dataset_run = client.get_run(version.run_id).data.tags["e4t.dataset.run_id"]
    assert hops["dataset run"].startswith(dataset_run)
    stats = json.loads((demo / "shards" / "stats.json").read_text())
    assert stats["manifest_sha256"][:16] in hops["dataset run"]
    assert str(demo / "shards" / "manifest.jsonl") in hops["manifest row"]
    assert "obama.jpg" in hops["manifest row"] and "accepted" in hops["manifest row"]


# --- hostile images -------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data).to_bytes(4, "big")
    return len(data).to_bytes(4, "big") + kind + data + crc


def _png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    """A valid 1×1 grey PNG carrying ``chunks`` (type, data) before its pixels."""
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    body = b"".join(_chunk(kind, data) for kind, data in chunks)
    pixels = _chunk(b"IDAT", zlib.compress(b"\0\0"))
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + body + pixels + _chunk(b"IEND", b"")


def _text(key: str, value: str) -> tuple[bytes, bytes]:
    return b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1", "replace")


def _provenance(concept_uri: str, **extra: str) -> list[tuple[bytes, bytes]]:
    values = {
        "e4t.version": "0.1",
        "e4t.concept_id": "c1",
        "e4t.concept_uri": concept_uri,
        "e4t.model_uri": "/models/faces",
        "e4t.model_version": "",
        "e4t.domain_fingerprint": "fp",
        "prompt": "a photo of {}",
        "seed": "0",
        **extra,
    }
    return [_text(k, v) for k, v in values.items()]


def _zlib_bomb(num_bytes: int) -> bytes:
    """``num_bytes`` zero bytes compressed (about 1/1000 of that), never held whole."""
    packer = zlib.compressobj(9)
    block = bytes(2**20)
    parts = [packer.compress(block) for _ in range(num_bytes // len(block))]
    return b"".join(parts) + packer.flush()


def _concept_folder(root: Path, concept_id: str = "c1", **summary: object) -> Path:
    """A personalization output: ``root/concepts/<id>/concept.json``, ``root/results.jsonl``
    (+ ``root/summary.json``)."""
    folder = root / "concepts" / concept_id
    folder.mkdir(parents=True)
    meta = {"concept_id": concept_id, "steps": 5, "domain_fingerprint": "fp"}
    (folder / "concept.json").write_text(json.dumps(meta))
    row = {"concept_id": concept_id, "status": "done", "files": summary.pop("files", [])}
    (root / "results.jsonl").write_text(json.dumps(row) + "\n")
    if summary:
        (root / "summary.json").write_text(json.dumps(summary))
    return folder


#: each hostile file → ("error", text its one error line holds) or ("trace", text the trace
#: output holds); either way: no traceback, no hang, no connection, nothing created
HOSTILE = {
    "plain.jpg": ("error", "a JPEG, not a PNG: e4t records"),
    "no_provenance.png": ("error", "carries no e4t provenance"),
    "text.png": ("error", "not a PNG: e4t records"),
    "empty.png": ("error", "an empty file"),
    "fifo.png": ("error", "not a regular file"),
    "truncated.png": ("error", "carries no e4t provenance"),
    "huge_length.png": ("error", "a damaged PNG"),
    "itxt_latin1.png": ("error", "is not UTF-8 (byte 0xe9"),
    "ztxt_not_zlib.png": ("error", "not valid zlib data"),
    "http_concept.png": ("trace", "http:// is not followed"),
    "s3_concept.png": ("trace", "no store is configured"),
    "chained_concept.png": ("trace", "simplecache::http:// is not followed"),
    "relative_concept.png": ("trace", "a relative path"),
    "fifo_concept_json.png": ("trace", "not a regular file"),
    "ansi_id.png": ("trace", "\\x1b[2J"),
    "big_prompt.png": ("trace", "more characters)"),
    "ztxt_bomb.png": ("trace", "more characters)"),
    "ztxt_bomb_uri.png": ("trace", "not followed"),
    "models_noslash.png": ("trace", "not a models:/NAME/VERSION URI"),
    "no_mlflow_db.png": ("trace", "none was created"),
    "shadow_summary.png": ("trace", "not looked at: not an image file name"),
    "dotdot_files.png": ("trace", "not a path inside the images folder"),
}


def build_hostile_images(folder: Path, port: int) -> dict[str, tuple[str, str]]:
    """Write every file of :data:`HOSTILE` into ``folder``; ``port``: a local server that
    must never be called."""
    folder.mkdir(parents=True, exist_ok=True)
    good = _concept_folder(folder / "good")
    fifo_concept = _concept_folder(folder / "fifo-concept")
    (fifo_concept / "concept.json").unlink()
    os.mkfifo(fifo_concept / "concept.json")
    shadow = _concept_folder(folder / "shadow", files=["shadow"], images_url="/etc")
    dotdot = _concept_folder(
        folder / "dotdot", files=["../../../../etc/shadow.jpg"], images_url=str(folder)
    )
    Image.new("RGB", (8, 8)).save(folder / "plain.jpg", quality=90)
    (folder / "no_provenance.png").write_bytes(_png([_text("prompt", "x")]))
    (folder / "text.png").write_text("not an image\n")
    (folder / "empty.png").write_bytes(b"")
    os.mkfifo(folder / "fifo.png")
    (folder / "truncated.png").write_bytes(_png(_provenance(str(good)))[:40])
    (folder / "huge_length.png").write_bytes(
        PNG_SIGNATURE + (2**31 + 5).to_bytes(4, "big") + b"tEXt" + b"e4t.concept_uri\0x"
    )
    latin1 = b"e4t.concept_id\0\0\0\0\0caf\xe9"
    (folder / "itxt_latin1.png").write_bytes(_png([*_provenance(str(good)), (b"iTXt", latin1)]))
    broken = b"e4t.concept_id\0\0" + b"not zlib at all"
    (folder / "ztxt_not_zlib.png").write_bytes(_png([(b"zTXt", broken), *_provenance(str(good))]))
    for name, uri in (
        ("http_concept.png", f"http://127.0.0.1:{port}/concepts/c1"),
        ("s3_concept.png", "s3://someone-elses-bucket/concepts/c1"),
        ("chained_concept.png", f"simplecache::http://127.0.0.1:{port}/c1"),
        ("relative_concept.png", "concepts/c1"),
        ("fifo_concept_json.png", str(fifo_concept)),
        ("shadow_summary.png", str(shadow)),
        ("dotdot_files.png", str(dotdot)),
    ):
        (folder / name).write_bytes(_png(_provenance(uri)))
    ansi = _provenance(str(good), **{"e4t.concept_id": "\x1b[2J\x1b]0;pwned\x07c1\r"})
    (folder / "ansi_id.png").write_bytes(_png(ansi))
    big = _provenance(str(good), prompt="A" * 50_000_000)
    (folder / "big_prompt.png").write_bytes(_png(big))
    bomb = (b"zTXt", b"prompt\0\0" + _zlib_bomb(64 * 2**20))
    (folder / "ztxt_bomb.png").write_bytes(_png([bomb, *_provenance(str(good))]))
    bomb_uri = (b"zTXt", b"e4t.concept_uri\0\0" + _zlib_bomb(8 * 2**20))
    (folder / "ztxt_bomb_uri.png").write_bytes(_png([bomb_uri, *_provenance(str(good))[1:]]))
    noslash = _provenance(str(good), **{"e4t.model_version": "models:/noslash"})
    (folder / "models_noslash.png").write_bytes(_png(noslash))
    pinned = _provenance(str(good), **{"e4t.model_version": "models:/e4t-faces/1"})
    (folder / "no_mlflow_db.png").write_bytes(_png(pinned))
    return HOSTILE


@contextlib.contextmanager
def _recording_server() -> Iterator[tuple[int, list[tuple[str, int]]]]:
    """A local TCP server that records every connection made to it (and answers none)."""
    connections: list[tuple[str, int]] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, peer = server.accept()
            except TimeoutError:
                continue
            connections.append(peer)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], connections
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def _assert_clean(output: str, name: str) -> None:
    assert "Traceback" not in output, f"{name}: {output[-2000:]}"
    assert "\x1b" not in output and "\x07" not in output and "\r" not in output, name
    longest = max((len(line) for line in output.splitlines()), default=0)
    assert longest < 8 * MAX_SHOWN_CHARS, f"{name}: a line of {longest} characters"


def test_hostile_images_get_one_error_line_or_a_clean_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every hostile image, traced in this process: a TraceError of one line naming the file,
    or hops that name what was refused; no URL off the allow-list is opened (the local
    server sees no connection), no FIFO is waited on, no value is printed raw or whole."""
    monkeypatch.delenv("E4T_S3_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("E4T_TRACE_ALLOW", raising=False)
    # a fresh shell's registry: mlflow.set_tracking_uri (any earlier test) exports its URI
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("E4T_DATA_DIR", str(tmp_path / "no-data-here"))
    monkeypatch.chdir(tmp_path)
    with _recording_server() as (port, connections):
        cases = build_hostile_images(tmp_path / "hostile", port)
        before = sorted(p.name for p in tmp_path.iterdir())
        for name, (kind, expected) in cases.items():
            path = str(tmp_path / "hostile" / name)
            if kind == "error":
                with pytest.raises(TraceError) as caught:
                    trace(path)
                message = str(caught.value)
                assert "\n" not in message and name in message, message
                assert expected in message, f"{name}: {message}"
                _assert_clean(message, name)
                continue
            output = "\n".join(hop.line() for hop in trace(path))
            assert expected in output, f"{name}:\n{output}"
            _assert_clean(output, name)
        assert connections == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created
    assert not (tmp_path / "no-data-here").exists()


def test_a_followed_trace_reads_the_concept_and_says_where_the_photo_is(tmp_path: Path) -> None:
    """The allow-list lets local artifacts through: concept, personalization row, and the
    source photo (present), with the model a folder."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (8, 8)).save(photos / "obama.jpg")
    folder = _concept_folder(tmp_path / "out", files=["obama.jpg"], images_url=str(photos))
    image = tmp_path / "preview.png"
    image.write_bytes(_png(_provenance(str(folder))))
    hops = {hop.what: hop for hop in trace(str(image))}
    assert list(hops) == ["image", "concept", "personalization", "source photo", "domain model"]
    assert "fingerprint matches" in hops["concept"].detail
    assert hops["source photo"].value == str(photos / "obama.jpg")
    assert hops["source photo"].detail == "present"


def test_photos_match_by_full_url_never_by_file_name(tmp_path: Path) -> None:
    """Two photos named biden.jpg in different folders are two photos: the inbox one is not
    reported as the training set's (#22 point 8); an id or content hash that differs on the
    same URL is not a match either."""
    training = str(tmp_path / "photos" / "biden.jpg")
    inbox = str(tmp_path / "inbox" / "b3" / "biden.jpg")
    manifest = tmp_path / "manifest.jsonl"
    rows = [
        {"source": str(tmp_path / "photos" / "obama.jpg"), "status": "accepted", "id": "o"},
        {"source": training, "status": "accepted", "id": "biden-1", "sha256": "aa"},
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert find_manifest_row(str(manifest), inbox) is None
    found = find_manifest_row(str(manifest), training)
    assert found is not None and found["id"] == "biden-1"
    assert find_manifest_row(str(manifest), f"file://{training}") == found
    assert find_manifest_row(str(manifest), training, {"source_sha256": "bb"}) is None
    s3_row = {"source": "s3://e4t/photos/biden.jpg", "status": "accepted"}
    assert not same_photo("s3://e4t/inbox/b3/biden.jpg", s3_row)
    assert same_photo("s3://e4t/photos/biden.jpg", s3_row)


@pytest.mark.slow
def test_e4t_trace_cli_on_hostile_images_prints_one_line_and_creates_nothing(
    tmp_path: Path,
) -> None:
    """The CLI on every hostile image, in a fresh working folder with the default data dir
    (./data): exit 2 with one ``e4t: error:`` line, or 0 with a trace; no traceback, nothing
    created (no ./data/mlflow.db), no connection to the local server."""
    work = tmp_path / "work"
    work.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in ("E4T_DATA_DIR", "MLFLOW_TRACKING_URI", "E4T_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL")
    }
    with _recording_server() as (port, connections):
        cases = build_hostile_images(tmp_path / "hostile", port)
        script = (
            "import contextlib, io, json, sys\n"
            "from e4t.cli import main\n"
            "out = {}\n"
            "for path in sys.argv[1:]:\n"
            "    o, e = io.StringIO(), io.StringIO()\n"
            "    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):\n"
            "        rc = main(['trace', path])\n"
            "    out[path] = [rc, o.getvalue(), e.getvalue()]\n"
            "print(json.dumps(out))\n"
        )
        paths = [str(tmp_path / "hostile" / name) for name in cases]
        done = subprocess.run(
            [sys.executable, "-c", script, *paths],
            cwd=work, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-4000:]
        assert connections == []
    results = json.loads(done.stdout.splitlines()[-1])
    for name, (kind, expected) in cases.items():
        rc, out, err = results[str(tmp_path / "hostile" / name)]
        if kind == "error":
            assert rc == 2 and out == "", f"{name}: {rc} {out!r}"
            lines = [line for line in err.splitlines() if line.startswith("e4t: error:")]
            assert len(lines) == 1 and expected in lines[0], f"{name}: {err!r}"
        else:
            assert rc == 0 and expected in out, f"{name}: {rc} {out!r} {err!r}"
        _assert_clean(out + err, name)
    assert list(work.iterdir()) == []  # no ./data/mlflow.db, nothing else


@pytest.mark.slow  # an MLflow database made from scratch: ~20 s here
def test_trace_through_mlflow_says_the_alias_moved_and_matches_photos_by_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry with versions 1 and 2 of e4t-faces, @candidate moved to 2 after the
    concept was tuned against 1 (concept.json: ``model_uri`` as asked, ``model_version_uri``
    pinned): trace follows version 1 and says the alias moved. The training manifest lists
    photos/biden.jpg; a concept made from inbox/b3/biden.jpg is not reported as curated."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    from e4t.tracking.client import mlflow_module

    client = mlflow_module().MlflowClient()
    experiment = client.create_experiment("trace", artifact_location=(tmp_path / "a").as_uri())
    shards = tmp_path / "shards"
    shards.mkdir()
    training = tmp_path / "photos" / "biden.jpg"
    manifest_row = {"source": str(training), "status": "accepted", "id": "biden-1"}
    (shards / "manifest.jsonl").write_text(json.dumps(manifest_row) + "\n")
    dataset = client.create_run(experiment, tags={"e4t.dataset.url": str(shards)})
    pretrain = client.create_run(experiment, tags={"e4t.dataset.run_id": dataset.info.run_id})
    client.create_registered_model("e4t-faces")
    for _ in range(2):
        client.create_model_version("e4t-faces", str(tmp_path / "m"), pretrain.info.run_id)
    client.set_registered_model_alias("e4t-faces", "candidate", "2")

    for photo in (training, tmp_path / "inbox" / "b3" / "biden.jpg"):
        photo.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(photo)
        out = tmp_path / "out" / photo.parent.name
        folder = _concept_folder(out, files=[photo.name], images_url=str(photo.parent))
        meta = json.loads((folder / "concept.json").read_text())
        meta |= {"model_uri": "models:/e4t-faces@candidate"}
        meta |= {"model_version_uri": "models:/e4t-faces/1"}
        (folder / "concept.json").write_text(json.dumps(meta))
        image = out / "preview.png"
        pinned = {"e4t.model_uri": "models:/e4t-faces@candidate"}
        image.write_bytes(_png(_provenance(str(folder), **pinned)))
        hops = {hop.what: hop for hop in trace(str(image))}
        model = hops["domain model"]
        assert model.value == "models:/e4t-faces@candidate = models:/e4t-faces/1", model
        assert (
            "alias @candidate now points at version 2; this concept was tuned against version 1"
            in model.detail
        ), model
        assert hops["pretraining run"].value == pretrain.info.run_id
        assert hops["dataset run"].value == dataset.info.run_id
        row = hops["manifest row"].detail
        if photo == training:
            assert row.startswith(f"{training}: accepted") and "biden-1" in row, row
        else:
            assert "was not curated for it" in row and "accepted" not in row, row


def test_json_nested_too_deep_or_with_huge_numbers_is_a_hop_that_failed(tmp_path: Path) -> None:
    """concept.json / summary.json / results.jsonl lines that json.loads refuses with a
    RecursionError or ValueError (not a JSONDecodeError) end as a failed hop or a skipped
    line, never a traceback."""
    from e4t.trace import _HopFailed, _lines, _read_json

    deep = tmp_path / "deep.json"
    deep.write_bytes(b'{"a":' * 50_000 + b"1" + b"}" * 50_000)
    huge = tmp_path / "huge.json"
    huge.write_bytes(b'{"steps": ' + b"9" * 6000 + b"}")
    for path in (deep, huge):
        with pytest.raises(_HopFailed, match="not UTF-8 JSON"):
            _read_json(str(path), "concept.json")
    rows = b"[" * 100_000 + b"]" * 100_000 + b'\n{"ok": 1}\n{"n": ' + b"9" * 6000 + b"}\n"
    assert list(_lines(rows)) == [{"ok": 1}]
