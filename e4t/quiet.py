"""One progress bar per long job, no warning on a normal run.

transformers draws a "Loading weights" / "Writing model shards" bar for every file it reads
or writes (most are a few kB here), and diffusers' own imports name transformers'
``CLIPImageProcessor``/``SiglipImageProcessor``, which without torchvision logs a fallback
notice on every run. e4t builds its processors as ``CLIPImageProcessorPil`` itself, so the
notice says nothing about what e4t runs. Registering a model (a pyfunc ``log_model``) makes
MLflow warn about a signature, type hints and an input example that e4t's pyfunc does not
use, and MLflow and huggingface_hub draw a "Downloading artifacts" / download bar per model
fetched. The entry points (the CLI, ``make demo``, the Prefect tasks) call
:func:`quiet_libraries` once; nothing here runs on import.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from typing import Any, TextIO

FALLBACK_NOTICE = "requires torchvision (not installed); falling back to"

# MLflow's UserWarnings on logging e4t's pyfunc model (it takes no input example, no schema);
# matched from the start of the message, which MLflow colours with an ANSI escape
MLFLOW_NOTICES = (
    r"Hint: Inferred schema contains integer column",
    r"(\x1b\[[0-9;]*m)?Add type hints to the `predict` method",
    r"(\x1b\[[0-9;]*m)?An input example was not provided when logging the model",
)
_MLFLOW_NOTICE = re.compile("|".join(f"(?:{p})" for p in MLFLOW_NOTICES), re.I)


def _without_mlflow_notices(show: Any) -> Any:
    """``warnings.showwarning`` that drops MLflow's notices: MLflow shows the type-hint one
    inside its own ``catch_warnings`` + ``simplefilter("once")``, past any filter of ours."""

    def showwarning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if issubclass(category, UserWarning) and _MLFLOW_NOTICE.match(str(message)):
            return
        show(message, category, filename, lineno, file, line)

    showwarning.e4t_quiet = True  # type: ignore[attr-defined]
    return showwarning


class _DropFallbackNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return FALLBACK_NOTICE not in record.getMessage()


def quiet_libraries() -> None:
    """Per-file loading bars off (transformers, diffusers), download bars off (MLflow
    artifacts, huggingface_hub; also in child processes such as torchrun's ranks, through
    the environment); the torchvision fallback notice dropped (before diffusers is imported:
    its imports are what log it) and MLflow's model-logging hints. Warnings that matter
    still print."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for notice in MLFLOW_NOTICES:
        warnings.filterwarnings("ignore", message=notice, category=UserWarning)
    if not getattr(warnings.showwarning, "e4t_quiet", False):
        warnings.showwarning = _without_mlflow_notices(warnings.showwarning)
    import huggingface_hub.utils

    huggingface_hub.utils.disable_progress_bars()
    import transformers

    origin = logging.getLogger("transformers.utils.import_utils")
    if not any(isinstance(f, _DropFallbackNotice) for f in origin.filters):
        origin.addFilter(_DropFallbackNotice())
    transformers.utils.logging.disable_progress_bar()
    import diffusers

    diffusers.utils.logging.disable_progress_bar()
