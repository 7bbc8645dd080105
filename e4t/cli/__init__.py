"""The ``e4t`` command line: one sub-command per stage, plus samples and benchmarks.

Runs without Prefect (the library never imports it); the Prefect flows in ``flows/`` call
the same functions. Each command is one module here: its ``add_parser(sub)`` declares its
flags beside its handler ``run(args) -> int`` (``run_<command>`` where a module holds a
small family of commands). Building the parser imports no torch: ``e4t --help`` is fast.
"""

from __future__ import annotations

import argparse
import logging
import sys

from e4t import __version__
from e4t.cli import (
    bench,
    curate,
    evaluate,
    export,
    generate,
    models,
    personalize,
    pretrain,
    samples,
    trace,
    transfer,
)
from e4t.cli.common import printable
from e4t.cli.transfer import upload_targets

__all__ = ["build_parser", "main", "printable", "upload_targets"]

# the order of ``e4t --help``
COMMANDS = (
    curate,
    pretrain,
    personalize,
    evaluate,
    models,  # init-model, init-domain
    generate,  # encode-concept, generate
    export,
    trace,
    transfer,  # upload, download
    samples,
    bench,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="e4t",
        description="E4T domain tuning. Stages: curate (photos → aligned WebDataset shards); "
        "pretrain (encoder + offsets, torchrun); personalize (a folder → concepts); "
        "evaluate (identity, prompt alignment, baselines → report, promotion); "
        "model: init-model (base presets), init-domain, encode-concept, generate. "
        "Helpers: samples (fetch the sample photos), bench (speed and memory figures).",
    )
    parser.add_argument("--version", action="version", version=f"e4t {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from e4t.quiet import quiet_libraries

    quiet_libraries()  # one progress bar per long job, no notices about unused backends
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("alembic", "mlflow", "botocore", "s3fs", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from botocore.exceptions import BotoCoreError

    from e4t.config import ConfigError
    from e4t.data.curation import CurationError
    from e4t.faces.landmarker import LandmarkerUnavailable
    from e4t.models.e4t_model import ArtifactError
    from e4t.tracking.registry import ModelURIError
    from e4t.training.launch import TrainingFailed

    try:
        return int(args.func(args))
    except (
        ConfigError,
        CurationError,
        LandmarkerUnavailable,
        FileNotFoundError,
        ArtifactError,
        ModelURIError,
        TrainingFailed,
    ) as err:
        print(f"e4t: error: {printable(str(err))}", file=sys.stderr)
        return 2
    except BotoCoreError as err:  # s3:// with no credentials or endpoint, or unreachable
        print(
            f"e4t: error: S3: {printable(str(err))} — set AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY and E4T_S3_ENDPOINT_URL (or AWS_ENDPOINT_URL) for s3:// URLs "
            "(e.g. source .stack/stack.env)",
            file=sys.stderr,
        )
        return 2
