"""Every location is an fsspec URL: a local path, ``file://``, ``s3://`` or ``memory://``.

S3 settings come from the standard AWS environment variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``) or from
``E4T_S3_ENDPOINT_URL``, which wins over ``AWS_ENDPOINT_URL``. Credentials are never
taken from arguments, so they never reach logs, MLflow params or Prefect parameters.

Writers are atomic: :func:`atomic_open` writes to a temporary name and commits it in one
step, so a reader never sees half a file and a crash leaves nothing under the final name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import re
import tempfile
import uuid
from collections.abc import Iterator
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

logger = logging.getLogger(__name__)

S3_ENDPOINT_ENV = "E4T_S3_ENDPOINT_URL"


def s3_storage_options() -> dict[str, Any]:
    """Options for s3fs from the environment (endpoint only; credentials via botocore)."""
    endpoint = os.environ.get(S3_ENDPOINT_ENV) or os.environ.get("AWS_ENDPOINT_URL")
    options: dict[str, Any] = {}
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    return options


def get_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem behind ``url`` and the path inside it.

    A URL names one filesystem: ``::`` is part of the name (``Meeting::Bob.jpg``), never
    fsspec's URL chaining, so a file named ``link.jpg::x.jpg`` is that file and not a read
    through ``link.jpg``. A string without ``scheme://`` is a local path.
    """
    protocol, sep, _ = url.partition("://")
    if not sep:
        protocol = "file"
    cls = fsspec.get_filesystem_class(protocol)
    options = s3_storage_options() if protocol in ("s3", "s3a") else {}
    options.update(cls._get_kwargs_from_urls(url))
    fs = fsspec.filesystem(protocol, **options)
    return fs, str(fs._strip_protocol(url))


def is_local(url: str) -> bool:
    fs, _ = get_fs(url)
    return isinstance(fs, LocalFileSystem)


def join(base: str, *parts: str) -> str:
    """Join URL parts with ``/`` (keeps the scheme; local paths stay local paths)."""
    out = base.rstrip("/")
    for part in parts:
        out = posixpath.join(out, part.strip("/"))
    return out


def exists(url: str) -> bool:
    fs, path = get_fs(url)
    return bool(fs.exists(path))


def read_bytes(url: str) -> bytes:
    fs, path = get_fs(url)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{url}: no such file") from err


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


TEMP_NAME = re.compile(r"^\..+\.tmp-[0-9a-f]{12}$")


def is_temp_name(name: str) -> bool:
    """A temporary file :func:`atomic_open` left behind when its writer was killed."""
    return bool(TEMP_NAME.match(name.rsplit("/", 1)[-1]))


def list_files(url: str) -> list[str]:
    """Every file under ``url`` (recursive), as URLs of the same scheme, sorted; temporary
    files of a killed :func:`atomic_open` are never listed (nor uploaded, logged or counted).

    Raises FileNotFoundError naming the URL when it does not exist.
    """
    fs, path = get_fs(url)
    if not fs.exists(path):
        raise FileNotFoundError(
            f"{url}: no such folder or prefix — check the path (and, for s3://, "
            f"{S3_ENDPOINT_ENV} / the AWS_* credentials)"
        )
    if fs.isfile(path):
        return [url]
    found = fs.find(path)
    return sorted(_to_url(url, path, p) for p in found if not is_temp_name(p))


def _to_url(base_url: str, base_path: str, found_path: str) -> str:
    """Rebuild a URL for ``found_path`` that keeps the scheme of ``base_url``."""
    rel = posixpath.relpath(found_path, base_path.rstrip("/") or "/")
    return join(base_url, rel)


def relative_to(url: str, base_url: str) -> str:
    """``url`` relative to ``base_url`` (both URLs of the same filesystem)."""
    _, path = get_fs(url)
    _, base = get_fs(base_url)
    return posixpath.relpath(path, base.rstrip("/") or "/")


def makedirs(url: str) -> None:
    fs, path = get_fs(url)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(path, exist_ok=True)
    # object stores have no folders; a bucket must exist already


def remove(url: str) -> None:
    fs, path = get_fs(url)
    if fs.exists(path):
        fs.rm(path)


def _temp_beside(path: str) -> str:
    """A temporary name in ``path``'s folder (made if missing): same filesystem, so the
    final rename or link is one atomic step."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:12]}")


@contextlib.contextmanager
def atomic_open(url: str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open ``url`` for writing; the file appears under its name only on success.

    Local: a temporary file in the same folder, then ``os.replace``. Object stores and
    other filesystems: a local temporary file, then one upload (an S3 PUT is atomic).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes only ('wb' or 'w'), got mode={mode!r}")
    fs, path = get_fs(url)
    if isinstance(fs, LocalFileSystem):
        tmp = _temp_beside(path)
        try:
            with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    with tempfile.NamedTemporaryFile(suffix=".part", delete=False) as handle:
        tmp = handle.name
    try:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
        fs.put_file(tmp, path)
    finally:
        os.remove(tmp)


def write_bytes(url: str, data: bytes) -> None:
    with atomic_open(url, "wb") as f:
        f.write(data)


def upload_folder(local: str | os.PathLike[str], url: str, marker: str) -> int:
    """Copy a local folder to ``url``, the done ``marker`` file last: a reader that sees the
    marker sees every other file, and a copy killed half-way is never taken for done.
    Returns the bytes written."""
    root = os.fspath(local)
    files = sorted(
        os.path.relpath(os.path.join(folder, name), root)
        for folder, _, names in os.walk(root)
        for name in names
    )
    if marker in files:
        files = [f for f in files if f != marker] + [marker]
    total = 0
    for rel in files:
        with open(os.path.join(root, rel), "rb") as handle:
            data = handle.read()
        write_bytes(join(url, rel.replace(os.sep, "/")), data)
        total += len(data)
    return total


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


def create_exclusive(url: str, data: bytes) -> bool:
    """Write ``url`` only if nothing is there; True when this call created it. Two writers
    racing for one name: exactly one wins, and the file is whole when it appears.

    Local: the bytes go to a temporary file that is hard-linked to the name (``link`` fails
    when the name exists). S3: one PUT with ``If-None-Match: *`` (the server answers 412 to
    the loser). Other filesystems: refused rather than racing.
    """
    fs, path = get_fs(url)
    if isinstance(fs, LocalFileSystem):
        tmp = _temp_beside(path)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    if type(fs).__name__ == "S3FileSystem":
        from botocore.exceptions import ClientError

        bucket, key, _ = fs.split_path(path)
        try:
            fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except (ClientError, OSError) as err:
            # s3fs raises an OSError whose cause is botocore's ClientError
            cause = err if isinstance(err, ClientError) else err.__cause__
            response = getattr(cause, "response", None) or {}
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = response.get("Error", {}).get("Code")
            if status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        fs.invalidate_cache(path)
        return True
    raise ValueError(f"{url}: exclusive create needs a local path or s3:// (not {fs.protocol})")


def open_for_webdataset(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any) -> IO[Any]:
    """A WebDataset ``gopen`` handler that opens any fsspec URL (``s3://``, ``memory://``)."""
    if "r" not in mode:
        raise ValueError(f"{url}: WebDataset shards are written with e4t.data.shards, not gopen")
    fs, path = get_fs(url)
    return fs.open(path, "rb")


def register_webdataset_openers() -> None:
    """Teach WebDataset to read ``s3://`` and ``memory://`` shards through fsspec."""
    import importlib

    gopen_module = importlib.import_module("webdataset.gopen")  # the package re-exports a function
    for scheme in ("s3", "s3a", "memory"):
        gopen_module.gopen_schemes[scheme] = open_for_webdataset


def _safe_relpath(rel: str, url: str) -> str:
    """A listed file's path under its prefix, refused when it would leave the destination
    (an object key may hold ``..`` or start with ``/``: it is data, not a path to follow)."""
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{url}: refusing to copy {rel!r}: it leaves the destination folder")
    return rel


def download_to(
    url: str,
    dest: str | os.PathLike[str],
    names: list[str] | None = None,
    max_bytes: int | None = None,
) -> list[str]:
    """Copy the file at ``url`` into the folder ``dest``, or every file under the folder or
    prefix ``url`` into ``dest`` keeping relative paths (``names``: only these, each
    required). ``max_bytes`` caps each file: an oversized one is refused before it is read.
    Files are written atomically; returns the local paths written.

    Raises FileNotFoundError naming the URL when it (or a required name) is missing.
    """
    root = os.fspath(dest)
    fs, path = get_fs(url)
    if names is not None:
        for name in names:
            if not fs.exists(posixpath.join(path.rstrip("/"), name)):
                raise FileNotFoundError(f"{join(url, name)}: no such file")
        pairs = [(join(url, name), _safe_relpath(name, url)) for name in names]
    elif fs.isfile(path):
        pairs = [(url, posixpath.basename(path.rstrip("/")))]
    else:
        pairs = [(u, _safe_relpath(relative_to(u, url), url)) for u in list_files(url)]
    written = []
    for src, rel in pairs:
        if max_bytes is not None:
            src_fs, src_path = get_fs(src)
            size = int(src_fs.size(src_path) or 0)
            if size > max_bytes:
                raise ValueError(f"{src}: {size:,} bytes, over the {max_bytes:,}-byte cap")
        local = os.path.join(root, *rel.split("/"))
        with atomic_open(local, "wb") as f:
            f.write(read_bytes(src))
        written.append(local)
    return written
