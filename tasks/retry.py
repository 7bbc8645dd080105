"""Retry only what may pass on a second try: a missing folder, a bad config or an unknown
model fails at once, with its message; a dropped connection or a busy server is retried."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prefect import Task, task

from e4t.data.curation import CurationError
from e4t.faces.types import LandmarkerUnavailable
from e4t.jobs.steps import StepSpec, StepTable

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


def task_options(spec: StepSpec) -> dict[str, Any]:
    """A table entry as Prefect task options: its name, tags and timeout, and its retries of
    transient errors only (:func:`retry_transient`)."""
    delay = spec.delay_seconds
    return {
        "name": spec.name,
        "tags": list(spec.tags) or None,
        "timeout_seconds": spec.timeout_seconds,
        "retries": spec.retries,
        "retry_delay_seconds": list(delay) if isinstance(delay, tuple) else delay,
        "retry_condition_fn": retry_transient if spec.retries else None,
    }


def tasks_for(
    table: StepTable, custom: Mapping[Callable[..., Any], Task[Any, Any]] | None = None
) -> dict[Callable[..., Any], Task[Any, Any]]:
    """One Prefect task per step of a job's table, made from its entry (name, retries of
    transient errors, tags, timeout). ``custom`` gives a step its own task (e.g. one that
    reports progress); it must be a step of the table, and gets the table's settings."""
    custom = dict(custom or {})
    strays = [fn for fn in custom if fn not in table]
    if strays:
        names = ", ".join(getattr(fn, "__qualname__", repr(fn)) for fn in strays)
        raise ValueError(f"custom tasks for functions outside the {table.job} table: {names}")
    made: dict[Callable[..., Any], Task[Any, Any]] = {}
    for spec in table:
        options = task_options(spec)
        base = custom.get(spec.fn) or task(spec.fn)
        made[spec.fn] = base.with_options(**options)
    return made
