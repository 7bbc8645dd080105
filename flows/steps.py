"""Running a job's steps as Prefect tasks (the flow side of :mod:`e4t.jobs.steps`).

Each stage's ``tasks/`` module maps its job's step functions to Prefect tasks (retries,
timeouts, tags, logs). :class:`PrefectSteps` calls the task for a step, and maps a step over
a sub-flow on the chosen task runner (threads, processes, Dask) with a progress artifact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from prefect import Task, flow
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.task_runners import TaskRunner

from e4t.jobs.steps import check_step

T = TypeVar("T")


class PrefectSteps:
    """``call`` runs a step's task in the current flow; ``map`` runs a sub-flow named
    ``map_names[step]`` on ``task_runner`` that submits one task run per call and reports
    progress (artifact ``progress_key``) as they finish."""

    def __init__(
        self,
        tasks: Mapping[Callable[..., Any], Task[Any, Any]],
        task_runner: TaskRunner[Any] | None = None,
        map_names: Mapping[Callable[..., Any], str] | None = None,
        progress_key: str | None = None,
        progress_description: str = "",
        resources: Mapping[Callable[..., Any], Mapping[str, float]] | None = None,
    ) -> None:
        self.tasks = dict(tasks)
        # per mapped step, the Dask worker resources each of its task runs needs (e.g.
        # {"GPU": 1}: one at a time on a worker started with `--resources GPU=1`)
        self.resources = {k: dict(v) for k, v in (resources or {}).items()}
        self.task_runner = task_runner
        self.map_names = dict(map_names or {})
        self.progress_key = progress_key
        self.progress_description = progress_description

    def _task(self, step: Callable[..., Any]) -> Task[Any, Any]:
        check_step(step)
        try:
            return self.tasks[step]
        except KeyError:
            raise KeyError(f"no Prefect task for step {step.__qualname__}") from None

    def call(self, step: Callable[..., T], *args: Any) -> T:
        return self._task(step)(*args)

    def map(self, step: Callable[..., T], calls: Sequence[tuple[Any, ...]]) -> Iterator[T]:
        task = self._task(step)
        key, description = self.progress_key, self.progress_description
        resources = self.resources.get(step)

        def fan_out() -> list[Any]:
            progress = create_progress_artifact(0.0, key=key, description=description)
            annotate: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
            if resources:  # read by Dask's scheduler; other task runners have no resources
                import dask

                annotate = dask.annotate(resources=resources)
            with annotate:
                futures = [task.submit(*args) for args in calls]
            results = []
            for done, future in enumerate(as_completed(futures), start=1):
                results.append(future.result())
                update_progress_artifact(progress, 100.0 * done / max(1, len(calls)))
            return results

        name = self.map_names.get(step, f"{task.name}-map")
        sub = flow(fan_out, name=name)
        if self.task_runner is not None:
            sub = sub.with_options(task_runner=self.task_runner)
        yield from sub()
