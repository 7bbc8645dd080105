"""Task runners chosen by a flow parameter: threads or processes here, Dask for scale-out."""

from __future__ import annotations

from typing import Literal

from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

RunnerKind = Literal["threads", "processes", "dask"]


def make_task_runner(
    kind: RunnerKind, max_workers: int = 2, dask_address: str | None = None
) -> TaskRunner:
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=max_workers)
    if kind == "processes":
        return ProcessPoolTaskRunner(max_workers=max_workers)
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(
            cluster_kwargs={"n_workers": max_workers, "processes": True, "threads_per_worker": 1}
        )
    raise ValueError(f"task_runner={kind!r}: use 'threads', 'processes' or 'dask'")
