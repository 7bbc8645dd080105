"""``e4t trace``: from an image e4t wrote back to its concept, model, runs and photo."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "trace",
        help="walk from an image e4t wrote back to its concept, model, runs and photo",
        description="Print every hop from IMAGE (a PNG e4t wrote: generate, previews) to "
        "the photo it came from: concept → personalization row → source photo → domain "
        "model version → pretraining run → dataset run → the dataset manifest's row.",
    )
    p.add_argument("image", help="a PNG written by e4t")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from e4t.trace import TraceError, trace

    try:
        hops = trace(args.image)
    except TraceError as err:  # an image that is not one e4t wrote: one line, no traceback
        print(f"e4t: error: {err}", file=sys.stderr)
        return 2
    for hop in hops:
        print(hop.line())
    return 0
