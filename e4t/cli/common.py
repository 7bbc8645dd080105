"""What the commands share: config flags, the model check, terminal-safe text.

Nothing here imports torch or diffusers: ``e4t --help`` builds every parser.
"""

from __future__ import annotations

import argparse

from e4t.models.arch_names import ARCH_NAMES

ARCH_CHOICES: list[str] = list(ARCH_NAMES)  # --arch of init-model, pretrain --init-arch, bench


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help="YAML preset: a path or a name under configs/<stage>/")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set align.resolution_px=256 (repeatable)",
    )


def checked_model(model_uri: str) -> str:
    """The pinned form of ``--model`` (one registry look-up, before any heavy work); a
    domain model folder or URL that is not there fails here, naming it."""
    from e4t import io as eio
    from e4t.tracking.registry import check_model_folder, resolve_model_version_uri

    pinned = resolve_model_version_uri(model_uri)
    if not pinned.startswith(("models:/", "runs:/")) and not eio.is_local(pinned):
        check_model_folder(pinned)
    return pinned


def add_allow_model_mismatch(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-model-mismatch",  # e4t_model.ALLOW_MISMATCH_FLAG (not imported: fast --help)
        action="store_true",
        help="use a concept tuned against another domain model (its concept.json's "
        "domain_fingerprint differs from --model's): refused without this flag",
    )


def printable(text: str, cap: int = 2000) -> str:
    """Text for the terminal on one line: control characters escaped, long text cut (error
    messages and ids can carry what an untrusted file held)."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:cap])
    return out + ("…" if len(text) > cap else "")
