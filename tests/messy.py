"""A messy folder, as users' folders are: built from the real sample photos.

Names that collide once slugged, non-UTF-8 bytes, NFC and NFD spellings, quotes, a newline,
a 255-byte name, case-only differences, one stem with several extensions, a file and a folder
with one stem, hidden files, a FIFO, a socket, broken / looping / escaping symlinks, a link
inside the folder, a non-image and a file over the byte cap.

:func:`build_messy_folder` returns what each entry must become: ``None`` for a face that is
read (a person), else the reason its row must carry.
"""

from __future__ import annotations

import os
import shutil
import socket
import unicodedata
from pathlib import Path

#: the byte cap the messy-folder runs set (``--set decode.max_bytes=...``)
MAX_BYTES = 400_000


def build_messy_folder(photos: Path, dest: Path) -> dict[bytes, str | None]:
    """Write the folder; returns relative path (bytes) → None (a face) or expected reason."""
    dest.mkdir(parents=True, exist_ok=True)
    obama, biden = (photos / "obama.jpg").read_bytes(), (photos / "biden.jpg").read_bytes()
    astronaut = (photos / "astronaut.png").read_bytes()
    assert max(len(obama), len(biden)) < MAX_BYTES < len(astronaut) + len(obama)
    expected: dict[bytes, str | None] = {}

    def put(rel: str | bytes, data: bytes, reason: str | None = None) -> None:
        raw = rel if isinstance(rel, bytes) else rel.encode()
        path = os.path.join(os.fsencode(dest), raw)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
        expected[raw] = reason

    # five people whose names slug alike or are not ASCII
    put("a b.jpg", obama)
    put("a_b.jpg", biden)
    put("a.b.jpg", obama)
    put("張三.png", biden)
    put("李四.jpg", obama)
    # names a filesystem allows and tools trip on
    put(b"caf\xe9.jpg", biden)  # Latin-1 bytes, not UTF-8
    put(unicodedata.normalize("NFC", "été.jpg"), obama)
    put(unicodedata.normalize("NFD", "été.jpg"), biden)
    put('it\'s "quoted".jpg', obama)
    put("new\nline.jpg", biden)
    put("x" * 251 + ".jpg", obama)  # 255 bytes, the longest name ext4 takes
    put("Face.jpg", obama)
    put("face.jpg", biden)
    put("same.jpg", obama)
    put("same.png", biden)
    put("dup.jpg", obama)
    put("dup/one.jpg", biden)  # a folder with the stem of a file: a concept of its own
    # skipped
    put(".hidden.jpg", obama, "hidden_file")
    put(".thumbs/small.jpg", biden, "hidden_file")
    put("notes.txt", b"not a photo\n", "unsupported_extension")
    # refused from stat, never read
    put("big.jpg", astronaut + obama, "too_large")
    # not regular files: never opened
    os.mkfifo(dest / "pipe.jpg")
    expected[b"pipe.jpg"] = "not_a_regular_file"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(dest / "sock.jpg"))
    server.close()  # the socket file stays
    expected[b"sock.jpg"] = "not_a_regular_file"
    os.symlink(dest / "missing.jpg", dest / "broken.jpg")
    expected[b"broken.jpg"] = "broken_symlink"
    os.symlink("/etc/passwd", dest / "passwd.jpg")
    expected[b"passwd.jpg"] = "symlink_outside_root"
    os.symlink(dest / "loop.jpg", dest / "loop.jpg")
    expected[b"loop.jpg"] = "symlink_loop"
    os.symlink("a_b.jpg", dest / "link.jpg")  # inside the folder: read as the file it names
    expected[b"link.jpg"] = None
    return expected


def copy_for_s3(messy: Path, dest: Path) -> Path:
    """The part of the messy folder an object store can hold: regular files with UTF-8 names."""
    for path in sorted(messy.rglob("*")):
        rel = path.relative_to(messy)
        if path.is_symlink() or not path.is_file():
            continue
        try:
            str(rel).encode("utf-8")
        except UnicodeEncodeError:
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return dest
