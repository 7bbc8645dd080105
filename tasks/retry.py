"""Retry only what may pass on a second try: a missing folder, a bad config or an unknown
model fails at once, with its message; a dropped connection or a busy server is retried."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import Task, task

from e4t.data.curation import CurationError
from e4t.faces.types import LandmarkerUnavailable

PERMANENT: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    NotADirectoryError,
    ValueError,  # ConfigError, ArtifactError, pydantic's ValidationError
    KeyError,
    TypeError,
    CurationError,  # another curation in the output folder, a missing partition
    LandmarkerUnavailable,  # face-model weights missing: a second try finds none either
)


def is_permanent(err: BaseException) -> bool:
    if isinstance(err, PERMANENT):
        return True
    code = str(getattr(err, "error_code", ""))  # MlflowException
    return code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """A Prefect ``retry_condition_fn``: False for permanent errors."""
    data = getattr(state, "data", None)
    if isinstance(data, BaseException):
        return not is_permanent(data)
    try:
        state.result()
    except BaseException as err:  # the failed state re-raises its exception
        return not is_permanent(err)
    return True


def retrying_task(
    fn: Callable[..., Any],
    name: str,
    retries: int = 2,
    delay_seconds: int | list[int] = 5,
    **options: Any,
) -> Task[Any, Any]:
    """``fn`` (a job step) as a Prefect task that retries only transient errors."""
    return task(
        fn,
        name=name,
        retries=retries,
        retry_delay_seconds=delay_seconds,
        retry_condition_fn=retry_transient,
        **options,
    )
