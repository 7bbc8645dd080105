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
) -> str:
    """One parent run for the job; one child run per concept tuned now, with its metrics,
    previews and concept artifact. Returns the parent run id.

    Idempotent: the parent carries a key of what it logs; a retry of the same logging finds
    the finished parent and returns it, and first deletes a half-logged one (and its
    children) that a failed try left, so a retried task never makes a second parent."""
    mlflow = mlflow_module()
    experiment_id = get_or_create_experiment(experiment)
    tuned_now = [r for r in rows if r.get("status") == "done" and not r.get("skipped")]
    if not tuned_now:
        # a rerun that tuned nothing: the run that logged these concepts stands for it
        # (no empty parent run); a job whose first tracking failed still gets its run
        logged = [
            run
            for run in mlflow.MlflowClient().search_runs(
                [experiment_id],
                filter_string="tags.`e4t.log_complete` = '1'",
                order_by=["attributes.start_time DESC"],
                max_results=1000,
            )
            if run.data.tags.get("e4t.output_url") == output_url  # compared here: any URL
        ]
        if logged:
            return str(logged[0].info.run_id)
    key = hashlib.sha256(
        json.dumps([output_url, rows, summary, params], sort_keys=True, default=str).encode()
    ).hexdigest()[:32]
    client = mlflow.MlflowClient()
    earlier = client.search_runs(
        [experiment_id], filter_string=f"tags.`e4t.log_key` = '{key}'", max_results=50
    )
    for run in earlier:
        if run.info.status == "FINISHED" and run.data.tags.get("e4t.log_complete") == "1":
            return str(run.info.run_id)
    for run in earlier:  # a try that failed half-way: remove it and its children
        children = client.search_runs(
            [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"
        )
        for child in children:
            client.delete_run(child.info.run_id)
        client.delete_run(run.info.run_id)
    with mlflow.start_run(experiment_id=experiment_id, run_name="personalize-bulk") as parent:
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
        with tempfile.TemporaryDirectory() as tmp:
            results = Path(tmp) / "results.jsonl"
            results.write_bytes(eio.read_bytes(eio.join(output_url, "results.jsonl")))
            mlflow.log_artifact(str(results))
        for row in rows:
            if row.get("status") != "done" or row.get("skipped"):
                continue
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
                        folder = Path(tmp) / kind
                        folder.mkdir()
                        for url in eio.list_files(prefix):
                            (folder / url.rsplit("/", 1)[-1]).write_bytes(eio.read_bytes(url))
                        mlflow.log_artifacts(str(folder), artifact_path=kind)
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
                    mlflow.MlflowClient().log_model_artifacts(
                        logged.model_id, str(Path(tmp) / "concept")
                    )
                    mlflow.set_tag("e4t.concept_model_id", logged.model_id)
        mlflow.set_tag("e4t.log_complete", "1")  # last: every child is logged
        return str(parent.info.run_id)


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
