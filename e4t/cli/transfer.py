"""``e4t upload`` and ``e4t download``: copy files to and from any URL, as ``cp`` does."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _add_upload_parser(sub)
    _add_download_parser(sub)


def _add_download_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "download",
        help="copy a concept folder, a file or a prefix from s3:// (or any URL) to a folder",
        description="Copy the file SRC into DEST, or every file under the folder or prefix "
        "SRC (a concept folder, OUT/concepts/, a model folder) into DEST with relative paths "
        "kept. S3 settings come from AWS_* / E4T_S3_ENDPOINT_URL, as for upload.",
    )
    p.add_argument("src", help="s3://BUCKET/PREFIX, file://... or a path")
    p.add_argument("dest", help="a local folder (made if missing)")
    p.set_defaults(func=run_download)


def run_download(args: argparse.Namespace) -> int:
    """Copy from any URL (s3://, file://, a path) as ``cp -r`` does: every file under a
    folder / prefix into DEST (relative paths kept); one file to DEST itself, or into DEST
    when DEST ends with / or is an existing folder."""
    from e4t import io as eio

    fs, path = eio.get_fs(args.src)
    into = args.dest.endswith(("/", os.sep)) or Path(args.dest).is_dir()
    if fs.isfile(path) and not into:
        eio.write_bytes(args.dest, eio.read_bytes(args.src))
        print(f"downloaded 1 file to {args.dest}")
        return 0
    written = eio.download_to(args.src, args.dest)
    print(f"downloaded {len(written)} file{'s' if len(written) != 1 else ''} to {args.dest}")
    return 0


def upload_targets(src: Path, dest: str, dest_is_folder: bool) -> list[tuple[Path, str]]:
    """(local file, URL) pairs of an upload, as ``cp`` does it: a folder's files keep their
    relative paths under DEST; a file goes to DEST itself, or into DEST when DEST ends with
    ``/`` or is an existing folder/prefix (``e4t upload READY s3://b/in/b2/READY`` writes
    that one object; ``e4t upload READY s3://b/in/b2/`` writes ``b2/READY``)."""
    from e4t import io as eio

    if src.is_file():
        into = dest.endswith("/") or dest_is_folder
        return [(src, eio.join(dest, src.name) if into else dest)]
    files = sorted(p for p in src.rglob("*") if p.is_file())
    return [(p, eio.join(dest, p.relative_to(src).as_posix())) for p in files]


def _add_upload_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "upload",
        help="copy photos to s3:// (or any URL) with the S3 settings of the environment",
        description="Copy every file under a folder (relative paths kept) to the prefix "
        "DEST, or one file, as cp does: to DEST itself, or into DEST when DEST ends with / or "
        "is an existing folder (`e4t upload READY s3://e4t/inbox/b2/READY` drops a batch's "
        "marker). Credentials and endpoint come from AWS_* / E4T_S3_ENDPOINT_URL, as for "
        "every other command.",
    )
    p.add_argument("src", help="a file or a folder")
    p.add_argument("dest", help="s3://BUCKET/PREFIX, a folder, or (for one file) its new URL")
    p.set_defaults(func=run_upload)


def run_upload(args: argparse.Namespace) -> int:
    """Copy a file or a folder's files to any URL (s3://, a path), as ``cp`` does."""
    from tqdm import tqdm

    from e4t import io as eio

    src = Path(args.src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder to upload")
    dest_is_folder = False
    if src.is_file() and not args.dest.endswith("/"):
        fs, path = eio.get_fs(args.dest)
        dest_is_folder = fs.isdir(path)
    pairs = upload_targets(src, args.dest, dest_is_folder)
    for path, url in tqdm(pairs, desc="upload", unit="file", disable=len(pairs) < 2):
        eio.write_bytes(url, path.read_bytes())
    where = pairs[0][1] if src.is_file() else args.dest
    print(f"uploaded {len(pairs)} file{'s' if len(pairs) != 1 else ''} to {where}")
    return 0
