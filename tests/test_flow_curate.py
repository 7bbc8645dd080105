"""The curate-domain flow under a real (ephemeral) Prefect server, tracked in MLflow."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


async def _artifacts(flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["curate-domain-stats", "curate-domain-progress"])
            ),
        )


def test_flow_curates_publishes_artifacts_and_logs_mlflow(
    prefect_server: None, bad_inputs_dir: Path, tmp_path: Path
) -> None:
    from flows.curate_domain import curate_domain

    out = tmp_path / "shards"
    state = curate_domain(
        source_url=str(bad_inputs_dir),
        output_url=str(out),
        preset="tiny",
        overrides={"shards.num_images_per_partition": 3},
        return_state=True,
    )
    assert state.is_completed(), state.message
    result = state.result()
    stats = result["stats"]
    assert stats == json.loads((out / "stats.json").read_text())
    assert (
        stats["num_accepted_inputs"] + stats["num_rejected_inputs"] + stats["num_skipped_inputs"]
        == stats["num_inputs"]
        == 12
    )

    artifacts = asyncio.run(_artifacts(state.state_details.flow_run_id))
    # the newest of each key is this run's (other tests curate too)
    kinds = {a.key: a for a in sorted(artifacts, key=lambda a: a.created)}
    assert set(kinds) == {"curate-domain-stats", "curate-domain-progress"}
    table = kinds["curate-domain-stats"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert {"measure": "num_samples", "value": stats["num_samples"]} in table
    assert kinds["curate-domain-progress"].data == 100.0

    import mlflow

    from e4t.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    run = mlflow.get_run(result["mlflow_run_id"])
    assert run.data.tags["e4t.dataset.manifest_sha256"] == stats["manifest_sha256"]
    assert run.data.params["align.resolution_px"] == "128"
    assert run.data.metrics["num_samples"] == stats["num_samples"]
    assert run.data.metrics["rejected.empty_file"] == 1
    listed = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "dataset")}
    assert listed == {"dataset/manifest.jsonl", "dataset/stats.json", "dataset/config.json"}
    assert run.inputs.dataset_inputs[0].dataset.digest == stats["manifest_sha256"][:32]

    # a rerun skips the work and logs no second dataset run
    manifest_mtime = (out / "manifest.jsonl").stat().st_mtime_ns
    again = curate_domain(
        source_url=str(bad_inputs_dir),
        output_url=str(out),
        preset="tiny",
        overrides={"shards.num_images_per_partition": 3},
    )
    assert again["mlflow_run_id"] == result["mlflow_run_id"]
    assert (out / "manifest.jsonl").stat().st_mtime_ns == manifest_mtime


def test_flow_fails_fast_on_a_missing_folder(prefect_server: None, tmp_path: Path) -> None:
    from flows.curate_domain import curate_domain

    state = curate_domain(
        source_url=str(tmp_path / "missing"), output_url=str(tmp_path / "o"), return_state=True
    )
    assert state.is_failed()
    with pytest.raises(FileNotFoundError, match="missing"):
        state.result()


def test_processes_task_runner(prefect_server: None, photos_dir: Path, tmp_path: Path) -> None:
    from flows.curate_domain import curate_domain

    result = curate_domain(
        source_url=str(photos_dir),
        output_url=str(tmp_path / "o"),
        preset="tiny",
        overrides={"shards.num_images_per_partition": 5},
        task_runner="processes",
        track=False,
    )
    assert result["stats"]["num_inputs"] == 10 and len(result["stats"]["shards"]) == 2
