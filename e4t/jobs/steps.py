"""How a job's steps run: the one seam between a stage's job and whoever runs it.

A job (:mod:`e4t.jobs.curate`, ``pretrain``, ``personalize``, ``evaluate``) is one sequence
of plain functions — its steps — written once. It calls each step through a
:class:`StepRunner`:

- :class:`InProcess` (the CLI, notebooks, benchmarks) calls them here, mapping over worker
  processes when asked, and hands each step the callbacks the caller registered for it
  (progress bars);
- :class:`OnDask` maps over a ``dask.distributed`` cluster (an address, or a
  ``LocalCluster`` of worker processes it starts) without Prefect: benchmarks and scripts;
- the Prefect flows pass a runner that turns each step into its Prefect task (retries,
  logs, artifacts) and maps over the flow's task runner (``flows/steps.py``).

So a fix to a stage lands in its job, and both entry points run it.

Each job declares its steps in one :class:`StepTable` (``STEPS``) with their Prefect
options (task name, retries, tags). ``tasks/`` makes one task per entry of that table, and
every runner refuses a function that is no step of a table, so a step without a task
cannot exist: the in-process runs of the fast tier fail as the flows would.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
Step = Callable[..., Any]


@dataclass(frozen=True)
class StepSpec:
    """A step of a job and how a Prefect task runs it: ``retries`` extra tries of transient
    errors only (``tasks.retry``), ``delay_seconds`` between them, ``tags`` (concurrency
    limits), ``timeout_seconds``."""

    fn: Step
    name: str
    retries: int = 0
    delay_seconds: float | tuple[float, ...] = 5
    tags: tuple[str, ...] = ()
    timeout_seconds: float | None = None


class StepTable:
    """A job's steps, in the job's module: ``@STEPS.step("task-name", retries=2)`` on each
    step function. Runners check membership (:func:`check_step`)."""

    def __init__(self, job: str) -> None:
        self.job = job
        self.specs: dict[Step, StepSpec] = {}

    def step(
        self,
        name: str,
        *,
        retries: int = 0,
        delay_seconds: float | tuple[float, ...] = 5,
        tags: Sequence[str] = (),
        timeout_seconds: float | None = None,
    ) -> Callable[[F], F]:
        def register(fn: F) -> F:
            if any(spec.name == name for spec in self.specs.values()):
                raise ValueError(f"{self.job}: two steps named {name!r}")
            spec = StepSpec(fn, name, retries, delay_seconds, tuple(tags), timeout_seconds)
            self.specs[fn] = spec
            fn.__e4t_step__ = spec  # type: ignore[attr-defined]
            return fn

        return register

    def __iter__(self) -> Iterator[StepSpec]:
        return iter(self.specs.values())

    def __contains__(self, fn: object) -> bool:
        return fn in self.specs

    def __len__(self) -> int:
        return len(self.specs)


def check_step(step: Step) -> StepSpec:
    """The step's entry in its job's table, or a TypeError naming the function and the fix."""
    spec = getattr(step, "__e4t_step__", None)
    if not isinstance(spec, StepSpec):
        name = getattr(step, "__qualname__", repr(step))
        raise TypeError(
            f"{name} is not a job step: declare it in its job's table "
            "(@STEPS.step(...) in e4t/jobs/<stage>.py) so every runner has a task for it"
        )
    return spec


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
        check_step(step)
        return step(*args, **self.callbacks.get(step, {}))

    def map(self, step: Callable[..., T], calls: Sequence[tuple[Any, ...]]) -> Iterator[T]:
        check_step(step)
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


class OnDask:
    """Steps run here; ``map`` submits each call to a Dask cluster: the scheduler at
    ``address``, or a ``LocalCluster`` of ``num_workers`` single-threaded worker processes
    started for the block (``with OnDask(...) as runner``). ``resources`` (e.g.
    ``{"GPU": 1}``) is what each mapped call needs from a worker."""

    def __init__(
        self,
        address: str | None = None,
        num_workers: int = 2,
        resources: Mapping[str, float] | None = None,
    ) -> None:
        self.address = address
        self.num_workers = num_workers
        self.resources = dict(resources or {})
        self._client: Any = None
        self._cluster: Any = None

    def __enter__(self) -> OnDask:
        from distributed import Client, LocalCluster

        if self.address is None:
            self._cluster = LocalCluster(
                n_workers=self.num_workers, threads_per_worker=1, processes=True,
                dashboard_address=None,
            )  # fmt: skip
        self._client = Client(self.address or self._cluster)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()

    def call(self, step: Callable[..., T], *args: Any) -> T:
        check_step(step)
        return step(*args)

    def map(self, step: Callable[..., T], calls: Sequence[tuple[Any, ...]]) -> Iterator[T]:
        from distributed import as_completed as dask_completed

        check_step(step)

        if self._client is None:
            raise RuntimeError("OnDask maps inside its with-block (it owns the cluster)")
        futures = [
            self._client.submit(step, *args, pure=False, resources=self.resources or None)
            for args in calls
        ]
        for future in dask_completed(futures):
            yield future.result()
