"""Listing an input folder safely: every file under it, once, with an id no other file shares.

Users' folders are phone exports, scraped dumps, network shares and S3 prefixes. Listing
never opens a file; it classifies each entry from its directory entry and ``stat``:

- a regular file (or a symlink to one inside the root) is an input to read;
- ``hidden_file``: the name, or a folder above it, starts with ``.`` (skipped);
- ``not_a_regular_file``: a FIFO, socket or device (reading one can hang forever);
- ``broken_symlink``, ``symlink_loop``, ``symlink_outside_root`` (never followed out of the
  folder: a link to ``/etc/passwd`` is not an input), ``symlink_to_folder``;
- ``too_large``: larger than the byte cap, refused from ``stat`` before any read.

Ids: :func:`input_id` is a readable slug of the name plus a hash of the relative path's
bytes, so ``a b.jpg``, ``a_b.jpg`` and ``a.b.jpg`` (one slug) get three ids; NFC and NFD
spellings of one name, case-only differences and one stem with several extensions stay
apart; non-UTF-8 names (Latin-1 ``caf\\xe9.jpg``) hash their raw bytes. A local folder and
its S3 copy give the same ids (keys are the UTF-8 bytes of the same relative paths).
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from e4t import io as eio
from e4t.data.shards import slugify

#: reasons a listed file is not read, and the status its row gets
SKIPPED = ("hidden_file", "unsupported_extension", "control_file")
REJECTED_BY_LISTING = (
    "not_a_regular_file",
    "broken_symlink",
    "symlink_loop",
    "symlink_outside_root",
    "symlink_to_folder",
    "too_large",
)


@dataclass(frozen=True)
class InputFile:
    """One entry under the root. ``reason`` is None for a file to read."""

    url: str
    relpath: str  # '/'-separated, relative to the root; may hold surrogate escapes
    size: int | None = None
    reason: str | None = None
    detail: str | None = None

    @property
    def id(self) -> str:
        return input_id(self.relpath)


def path_bytes(relpath: str) -> bytes:
    """The relative path's bytes as the filesystem spells them (surrogate escapes undone)."""
    return os.fsencode(relpath)


def display_name(relpath: str) -> str:
    """A printable, UTF-8-safe spelling of a path (undecodable bytes as \\xNN)."""
    return path_bytes(relpath).decode("utf-8", errors="backslashreplace")


def input_id(relpath: str, max_slug: int = 40) -> str:
    """``<slug of the file or folder name>-<10 hex of sha1(relative path bytes)>``:
    readable, dot-free, and different for any two different relative paths."""
    digest = hashlib.sha1(path_bytes(relpath)).hexdigest()[:10]
    name = display_name(relpath).rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name[1:] else name
    return f"{slugify(stem, max_slug)}-{digest}"


def is_hidden(relpath: str) -> bool:
    return any(part.startswith(".") for part in relpath.split("/"))


def list_inputs(root_url: str, max_bytes: int | None = None) -> list[InputFile]:
    """Every file under ``root_url`` (recursive, hidden ones included), sorted by relative
    path, each classified; raises FileNotFoundError naming the URL when it does not exist.
    A single file as the root is listed as itself."""
    if eio.is_local(root_url):
        _, root = eio.get_fs(root_url)
        entries = list(_walk_local(root_url, root))
    else:
        entries = list(_walk_remote(root_url))
    out = []
    for entry in entries:
        if entry.reason is None and is_hidden(entry.relpath):
            entry = InputFile(entry.url, entry.relpath, entry.size, "hidden_file")
        if entry.reason is None and max_bytes is not None and (entry.size or 0) > max_bytes:
            entry = InputFile(
                entry.url,
                entry.relpath,
                entry.size,
                "too_large",
                f"{entry.size} bytes > decode.max_bytes={max_bytes}",
            )
        out.append(entry)
    return sorted(out, key=lambda e: path_bytes(e.relpath))


def _walk_local(root_url: str, root: str) -> Iterator[InputFile]:
    if not os.path.lexists(root):
        raise FileNotFoundError(f"{root_url}: no such folder or prefix — check the path")
    if not os.path.isdir(root):
        name = os.path.basename(root.rstrip("/"))
        yield _classify_local(root_url, root, name, os.path.realpath(os.path.dirname(root)))
        return
    real_root = os.path.realpath(root)
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        folder = os.path.join(root, rel_dir) if rel_dir else root
        try:
            with os.scandir(folder) as listing:
                children = sorted(listing, key=lambda e: os.fsencode(e.name))
        except OSError as err:  # unreadable folder: one row for it, never a crash
            yield InputFile(eio.join(root_url, rel_dir), rel_dir, None, "unreadable", _err(err))
            continue
        for child in children:
            rel = f"{rel_dir}/{child.name}" if rel_dir else child.name
            if child.is_dir(follow_symlinks=False):
                pending.append(rel)
                continue
            yield _classify_local(eio.join(root_url, rel), child.path, rel, real_root)


def _classify_local(url: str, path: str, rel: str, real_root: str) -> InputFile:
    try:
        info = os.lstat(path)
    except OSError as err:  # vanished since the listing
        return InputFile(url, rel, None, "vanished", _err(err))
    if stat.S_ISLNK(info.st_mode):
        try:
            target = os.stat(path)  # follows the link
        except OSError as err:
            reason = "symlink_loop" if err.errno == errno.ELOOP else "broken_symlink"
            return InputFile(url, rel, None, reason, _err(err))
        resolved = os.path.realpath(path)
        if os.path.commonpath([resolved, real_root]) != real_root:
            return InputFile(url, rel, None, "symlink_outside_root", "points outside the folder")
        if stat.S_ISDIR(target.st_mode):
            return InputFile(url, rel, None, "symlink_to_folder", "links to a folder")
        info = target
    if not stat.S_ISREG(info.st_mode):
        kind = "FIFO" if stat.S_ISFIFO(info.st_mode) else "socket or device"
        return InputFile(url, rel, None, "not_a_regular_file", f"a {kind}, never opened")
    return InputFile(url, rel, int(info.st_size))


def _walk_remote(root_url: str, page_size: int = 1000) -> Iterator[InputFile]:
    """An object store: keys under the prefix, page by page (names and sizes only; an S3
    prefix of 100k objects is never held as one listing of full object records)."""
    fs, path = eio.get_fs(root_url)
    if not fs.exists(path):
        raise FileNotFoundError(
            f"{root_url}: no such folder or prefix — check the path (and, for s3://, "
            f"{eio.S3_ENDPOINT_ENV} / the AWS_* credentials)"
        )
    if fs.isfile(path):
        yield InputFile(root_url, posixpath.basename(path.rstrip("/")), fs.size(path))
        return
    base = path.rstrip("/")
    if not hasattr(fs, "call_s3"):  # another object store: fsspec's listing
        for found, info in sorted(fs.find(path, detail=True).items()):
            if info.get("type") != "directory":
                rel = posixpath.relpath(found, base)
                yield InputFile(eio.join(root_url, rel), rel, int(info.get("size") or 0))
        return
    for key, size in iter_s3_objects(fs, base, page_size):
        rel = key[len(base) + 1 :]
        if rel and not key.endswith("/"):
            yield InputFile(eio.join(root_url, rel), rel, size)


def iter_s3_objects(fs: Any, prefix_path: str, page_size: int = 1000) -> Iterator[tuple[str, int]]:
    """(``bucket/key``, size) of every object under ``bucket/prefix``, one ListObjectsV2 page
    of ``page_size`` at a time."""
    bucket, _, prefix = prefix_path.partition("/")
    request: dict[str, Any] = {"Bucket": bucket, "Prefix": f"{prefix}/" if prefix else ""}
    request["MaxKeys"] = page_size
    while True:
        page = fs.call_s3("list_objects_v2", **request)
        for obj in page.get("Contents", []):
            yield f"{bucket}/{obj['Key']}", int(obj.get("Size") or 0)
        if not page.get("IsTruncated"):
            return
        request["ContinuationToken"] = page["NextContinuationToken"]


def _err(err: OSError) -> str:
    return f"{type(err).__name__}: {err.strerror or err}"


def read_capped(url: str, max_bytes: int, root_url: str | None = None) -> bytes:
    """Read a listed file, never more than ``max_bytes + 1`` bytes (a file that grew past the
    cap since it was listed is caught by the decoder's size check).

    A local path reads what was listed, or nothing: it is opened with O_NOFOLLOW (a file
    swapped for a symlink after the listing is not followed) and O_NONBLOCK (a FIFO that
    replaced a file cannot hang the read). A symlink, which the listing accepts only when it
    points inside the folder, is followed to a regular file whose real path lies inside
    ``root_url`` (the listed folder; without it, the link's own folder), and the file opened
    must be that very file (same device and inode), so a link re-pointed between the check
    and the open is refused. Raises OSError naming ``url`` otherwise.
    """
    if eio.is_local(url):
        _, path = eio.get_fs(url)
        fd = _open_listed_local(url, path, root_url)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise IsADirectoryError(f"{url}: no longer a regular file")
            with os.fdopen(fd, "rb", closefd=False) as handle:
                return handle.read(max_bytes + 1)
        finally:
            os.close(fd)
    fs, path = eio.get_fs(url)
    with fs.open(path, "rb") as handle:
        return bytes(handle.read(max_bytes + 1))


def _open_listed_local(url: str, path: str, root_url: str | None) -> int:
    """A read-only descriptor of the local file ``path`` (see :func:`read_capped`)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW)
        followed = False
    except OSError as err:
        # Linux and macOS say ELOOP for a final symlink under O_NOFOLLOW, FreeBSD EMLINK
        if err.errno not in (errno.ELOOP, errno.EMLINK):
            raise
        fd = os.open(path, flags)
        followed = True
    try:
        if root_url is not None:
            _, root = eio.get_fs(root_url)
            real_root = os.path.realpath(root if os.path.isdir(root) else os.path.dirname(root))
        elif followed:
            real_root = os.path.realpath(os.path.dirname(path))
        else:
            return fd
        real = os.path.realpath(path)
        if os.path.commonpath([real, real_root]) != real_root:
            raise PermissionError(
                errno.EACCES, f"{url}: resolves outside the folder it was listed in, not read"
            )
        opened, named = os.fstat(fd), os.stat(real)
        if (opened.st_dev, opened.st_ino) != (named.st_dev, named.st_ino):
            raise PermissionError(errno.EACCES, f"{url}: changed while it was opened, not read")
    except BaseException:
        os.close(fd)
        raise
    return fd
