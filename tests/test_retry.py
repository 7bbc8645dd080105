"""Retries only where they help: a deterministic error fails at once, a dropped connection
is retried."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from e4t.config import ConfigError
from e4t.data.curation import CurationError
from e4t.faces.types import LandmarkerUnavailable
from e4t.models.e4t_model import ArtifactError
from tasks.retry import is_permanent


@pytest.mark.parametrize(
    "error",
    [
        CurationError("another curation in this output"),
        ConfigError("invalid curate config"),
        ArtifactError("not an E4T domain model"),
        LandmarkerUnavailable("no face-alignment weights"),
        FileNotFoundError("no such folder"),
    ],
)
def test_deterministic_errors_are_permanent(error: BaseException) -> None:
    assert is_permanent(error)


@pytest.mark.parametrize("error", [ConnectionError("reset"), TimeoutError(), OSError("EIO")])
def test_transient_errors_are_retried(error: BaseException) -> None:
    assert not is_permanent(error)


async def _task_runs(flow_run_id: object) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        return await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )


@pytest.mark.slow
def test_a_refused_curation_is_tried_once(
    prefect_server: None, photos_dir: Path, tmp_path: Path
) -> None:
    """Another config into a finished output: the plan task fails once, not 3 times."""
    import shutil

    from flows.curate_domain import curate_domain

    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(photos_dir / "obama.jpg", src / "a.jpg")
    out = str(tmp_path / "out")
    curate_domain(source_url=str(src), output_url=out, preset="tiny", track=False)
    state = curate_domain(
        source_url=str(src),
        output_url=out,
        preset="tiny",
        overrides={"align.resolution_px": 256},
        track=False,
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(CurationError, match="another config"):
        state.result()
    runs = asyncio.run(_task_runs(state.state_details.flow_run_id))
    plans = [r for r in runs if r.name.startswith("plan-curation")]
    assert len(plans) == 1 and plans[0].run_count == 1
