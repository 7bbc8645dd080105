"""WebDataset shards: deterministic, atomic writing and plain reading of ``{name}-{000000}.tar``.

A sample is a dict of field name (``jpg``, ``json``, ``mask.png``) → bytes plus ``__key__``.
Keys hold no dots (WebDataset splits the file name at the first dot) and no slashes.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterable, Iterator
from typing import Any

from e4t import io as eio

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")


def shard_name(name: str, index: int) -> str:
    return f"{name}-{index:06d}.tar"


def slugify(text: str, max_len: int = 48) -> str:
    """A key-safe slug: letters, digits, ``_`` and ``-`` only (dots become ``_``)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
    return slug[:max_len] or "x"


def write_shard(url: str, samples: Iterable[dict[str, bytes | str]]) -> int:
    """Write samples to a tar at ``url`` atomically; same samples → byte-identical file.

    Returns the number of samples written.
    """
    count = 0
    with (
        eio.atomic_open(url, "wb") as f,
        tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        for sample in samples:
            key = str(sample["__key__"])
            if not KEY_PATTERN.match(key):
                raise ValueError(f"sample key {key!r} must match {KEY_PATTERN.pattern}")
            for field in sorted(k for k in sample if not k.startswith("__")):
                data = sample[field]
                payload = data.encode("utf-8") if isinstance(data, str) else data
                info = tarfile.TarInfo(name=f"{key}.{field}")
                info.size = len(payload)
                info.mtime = 0  # deterministic bytes: a rerun converges on the same file
                info.mode = 0o444
                info.uname = info.gname = "e4t"
                tar.addfile(info, io.BytesIO(payload))
            count += 1
    return count


def read_shard(url: str) -> Iterator[dict[str, Any]]:
    """Samples of one shard in file order (fields grouped by key, as WebDataset groups them).

    Member names with absolute paths or ``..`` are refused: shards may come from anywhere.
    """
    data = eio.read_bytes(url)
    current: dict[str, Any] | None = None
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = member.name
            if name.startswith("/") or ".." in name.split("/"):
                raise ValueError(f"{url}: refusing tar member with unsafe path {name!r}")
            base = name.rsplit("/", 1)[-1]
            if "." not in base:
                continue
            key, field = base.split(".", 1)
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key, "__url__": url}
            handle = tar.extractfile(member)
            assert handle is not None
            current[field] = handle.read()
    if current is not None:
        yield current
