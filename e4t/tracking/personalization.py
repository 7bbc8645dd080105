"""Personalization runs: one parent run per job, one child run (and logged model) per concept."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from e4t import __version__
from e4t import io as eio
from e4t.config import flatten
from e4t.tracking.client import get_or_create_experiment, mlflow_module

PERSONALIZE_EXPERIMENT = "e4t-personalize"


def log_personalization(
    output_url: str,
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    params: dict[str, Any],
    experiment: str = PERSONALIZE_EXPERIMENT,
    results: bytes | None = None,
) -> str:
    """One parent run for the job; one child run per concept tuned now, with its metrics,
    previews and concept artifact. Returns the parent run id. ``results``: the job's
    ``results.jsonl`` bytes when it holds them (read from ``output_url`` otherwise).

    Idempotent: the parent carries a key of what it logs; a retry of the same logging finds
    the finished parent and returns it, and first deletes a half-logged one (and its
    children) that a failed try left, so a retried task never makes a second parent."""
    mlflow = mlflow_module()
    experiment_id = get_or_create_experiment(experiment)
    tuned_now = [r for r in rows if r.get("status") == "done" and not r.get("skipped")]
    if not tuned_now:
        # a rerun that tuned nothing: the run that logged these concepts stands for it
        # (no empty parent run); a job whose first tracking failed still gets its run
        logged = _completed_run_of(output_url, experiment_id)
        if logged is not None:
            return logged
    key = hashlib.sha256(
        json.dumps([output_url, rows, summary, params], sort_keys=True, default=str).encode()
    ).hexdigest()[:32]
    finished = _finished_or_cleared(key, experiment_id)
    if finished is not None:
        return finished
    with mlflow.start_run(experiment_id=experiment_id, run_name="personalize-bulk") as parent:
        _log_parent(key, output_url, summary, params, results)
        for row in tuned_now:
            _log_concept_run(row, output_url, params, experiment_id)
        mlflow.set_tag("e4t.log_complete", "1")  # last: every child is logged
        return str(parent.info.run_id)


def _completed_run_of(output_url: str, experiment_id: str) -> str | None:
    """The latest completely logged parent run of ``output_url``, or None."""
    runs = (
        mlflow_module()
        .MlflowClient()
        .search_runs(
            [experiment_id],
            filter_string="tags.`e4t.log_complete` = '1'",
            order_by=["attributes.start_time DESC"],
            max_results=1000,
        )
    )
    for run in runs:
        if run.data.tags.get("e4t.output_url") == output_url:  # compared here: any URL
            return str(run.info.run_id)
    return None


def _finished_or_cleared(key: str, experiment_id: str) -> str | None:
    """The finished parent run an earlier try logged under ``key``; else None, after
    deleting what a try that failed half-way left (its parent and children)."""
    client = mlflow_module().MlflowClient()
    earlier = client.search_runs(
        [experiment_id], filter_string=f"tags.`e4t.log_key` = '{key}'", max_results=50
    )
    for run in earlier:
        if run.info.status == "FINISHED" and run.data.tags.get("e4t.log_complete") == "1":
            return str(run.info.run_id)
    for run in earlier:
        children = client.search_runs(
            [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"
        )
        for child in children:
            client.delete_run(child.info.run_id)
        client.delete_run(run.info.run_id)
    return None


def _log_parent(
    key: str,
    output_url: str,
    summary: dict[str, Any],
    params: dict[str, Any],
    results: bytes | None,
) -> None:
    """The active parent run's tags, params, summary metrics and ``results.jsonl``."""
    mlflow = mlflow_module()
    mlflow.set_tags(
        {
            "e4t.log_key": key,
            "e4t.stage": "personalize",
            "e4t.version": __version__,
            "e4t.output_url": output_url,
            "e4t.model_uri": str(params.get("model_uri", "")),
            "e4t.model_version_uri": str(params.get("model_version_uri", "")),
        }
    )
    mlflow.log_params({k: str(v)[:500] for k, v in flatten(params).items()})
    mlflow.log_metrics(
        {
            k: float(v)
            for k, v in summary.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
    )
    if results is None:
        results = eio.read_bytes(eio.join(output_url, "results.jsonl"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "results.jsonl"
        path.write_bytes(results)
        mlflow.log_artifact(str(path))


def _log_concept_run(
    row: dict[str, Any], output_url: str, params: dict[str, Any], experiment_id: str
) -> None:
    """A child run for a concept tuned now: its metrics, its concept folder and previews
    (read from ``output_url``: a pass may have run on another machine) and a logged model."""
    mlflow = mlflow_module()
    cid = row["concept_id"]
    with mlflow.start_run(
        run_name=f"concept-{cid}", nested=True, experiment_id=experiment_id
    ) as child:
        mlflow.set_tags({"e4t.concept_id": cid, "e4t.stage": "personalize-concept"})
        mlflow.log_metrics(
            {
                k: float(row[k])
                for k in ("final_loss", "seconds", "artifact_bytes", "steps")
                if row.get(k) is not None
            }
        )
        with tempfile.TemporaryDirectory() as tmp:
            for kind, prefix in (
                ("concept", eio.join(output_url, "concepts", cid)),
                ("previews", eio.join(output_url, "previews", cid)),
            ):
                _download(prefix, Path(tmp) / kind)
                mlflow.log_artifacts(str(Path(tmp) / kind), artifact_path=kind)
            # each concept version is also a logged model (MLflow 3's model entity)
            logged = mlflow.create_external_model(
                name=f"concept-{cid}",
                source_run_id=child.info.run_id,
                params={
                    "steps": str(row.get("steps")),
                    "model_uri": str(params.get("model_uri", "")),
                    "model_version_uri": str(params.get("model_version_uri", "")),
                },
                tags={"e4t.concept_id": cid},
                model_type="e4t-concept",
                experiment_id=experiment_id,
            )
            mlflow.MlflowClient().log_model_artifacts(logged.model_id, str(Path(tmp) / "concept"))
            mlflow.set_tag("e4t.concept_model_id", logged.model_id)


def _download(prefix: str, folder: Path) -> None:
    """Every file under ``prefix`` into ``folder`` (made here), by its last name."""
    folder.mkdir()
    for url in eio.list_files(prefix):
        (folder / url.rsplit("/", 1)[-1]).write_bytes(eio.read_bytes(url))


def find_personalization_runs(output_url: str) -> tuple[str | None, list[str]]:
    """The personalize-bulk parent run that wrote ``output_url`` and its concept runs."""
    mlflow = mlflow_module()
    found = mlflow.get_experiment_by_name(PERSONALIZE_EXPERIMENT)
    if found is None:
        return None, []
    quoted = output_url.replace("'", "\\'")
    parents = mlflow.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`e4t.output_url` = '{quoted}' and tags.`e4t.stage` = 'personalize'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    if not parents:
        return None, []
    # a rerun that skipped finished concepts has a parent run of its own with no children:
    # the concepts of the folder are the children of every job that wrote into it
    children: list[str] = []
    latest_with_children = None
    for parent in parents:
        found_children = mlflow.search_runs(
            [found.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
            output_format="list",
        )
        if found_children and latest_with_children is None:
            latest_with_children = parent.info.run_id
        children += [c.info.run_id for c in found_children]
    return latest_with_children or parents[0].info.run_id, sorted(children)
