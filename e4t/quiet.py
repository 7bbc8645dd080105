"""One progress bar per long job, no warning on a normal run.

transformers draws a "Loading weights" / "Writing model shards" bar for every file it reads
or writes (most are a few kB here), and diffusers' own imports name transformers'
``CLIPImageProcessor``/``SiglipImageProcessor``, which without torchvision logs a fallback
notice on every run. e4t builds its processors as ``CLIPImageProcessorPil`` itself, so the
notice says nothing about what e4t runs: the entry points (the CLI, the Prefect tasks) call
:func:`quiet_libraries` once.
"""

from __future__ import annotations

import logging

FALLBACK_NOTICE = "requires torchvision (not installed); falling back to"


class _DropFallbackNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return FALLBACK_NOTICE not in record.getMessage()


def quiet_libraries() -> None:
    """Per-file loading bars off (transformers, diffusers); the torchvision fallback notice
    dropped (before diffusers is imported: its imports are what log it). Warnings that
    matter still print."""
    import transformers

    origin = logging.getLogger("transformers.utils.import_utils")
    if not any(isinstance(f, _DropFallbackNotice) for f in origin.filters):
        origin.addFilter(_DropFallbackNotice())
    transformers.utils.logging.disable_progress_bar()
    import diffusers

    diffusers.utils.logging.disable_progress_bar()
