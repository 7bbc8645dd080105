"""How a job's steps run: the one seam between a stage's job and whoever runs it.

A job (:mod:`e4t.jobs.curate`, ``pretrain``, ``personalize``, ``evaluate``) is one sequence
of plain functions — its steps — written once. It calls each step through a
:class:`StepRunner`:

- :class:`InProcess` (the CLI, notebooks, benchmarks) calls them here, mapping over worker
  processes when asked, and hands each step the callbacks the caller registered for it
  (progress bars);
- the Prefect flows pass a runner that turns each step into its Prefect task (retries,
  logs, artifacts) and maps over the flow's task runner (``flows/steps.py``).

So a fix to a stage lands in its job, and both entry points run it.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
Step = Callable[..., Any]


class StepRunner(Protocol):
    def call(self, step: Callable[..., T], *args: Any) -> T:
        """Run one step and return its result."""
        ...

    def map(self, step: Callable[..., T], calls: Sequence[tuple[Any, ...]]) -> Iterator[T]:
        """Run ``step(*args)`` for each args tuple; results as they finish (any order)."""
        ...


class InProcess:
    """Steps run in this process; ``map`` uses ``num_workers`` processes when > 1.

    ``callbacks`` gives a step extra keyword arguments here only (e.g. ``on_event`` for a
    progress bar): ``{pretrain.train: {"on_event": bar_update}}``. Steps mapped over worker
    processes get none (callbacks do not cross processes).
    """

    def __init__(
        self,
        num_workers: int = 1,
        callbacks: Mapping[Step, Mapping[str, Any]] | None = None,
    ) -> None:
        self.num_workers = num_workers
        self.callbacks = dict(callbacks or {})

    def call(self, step: Callable[..., T], *args: Any) -> T:
        return step(*args, **self.callbacks.get(step, {}))

    def map(self, step: Callable[..., T], calls: Sequence[tuple[Any, ...]]) -> Iterator[T]:
        if self.num_workers <= 1 or len(calls) <= 1:
            for args in calls:
                yield self.call(step, *args)
            return
        # spawned, not forked: a worker starts clean (no copy of this process's threads,
        # models and memory) and imports only what its step needs
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=self.num_workers, mp_context=context) as pool:
            futures = [pool.submit(step, *args) for args in calls]
            for future in as_completed(futures):
                yield future.result()
