"""Dataset runs: one MLflow run per curation, found again by its manifest hash."""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

from e4t import __version__
from e4t import io as eio
from e4t.config import flatten
from e4t.tracking.client import get_or_create_experiment, mlflow_module

logger = logging.getLogger(__name__)

DATASET_EXPERIMENT = "e4t-datasets"


def _dataset_runs(manifest_sha256: str, experiment: str) -> list[Any]:
    """Finished runs of ``experiment`` that logged the dataset with this manifest hash."""
    mlflow = mlflow_module()
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = mlflow.search_runs(
        experiment_ids=[exp.experiment_id],
        filter_string=f"tags.`e4t.dataset.manifest_sha256` = '{manifest_sha256}'",
        output_format="list",
    )
    return [r for r in runs if r.info.status == "FINISHED"]


def find_dataset_run(
    output_url: str, manifest_sha256: str, experiment: str = DATASET_EXPERIMENT
) -> str | None:
    """The id of the run that already logged this dataset, if any (reruns log nothing twice)."""
    for run in _dataset_runs(manifest_sha256, experiment):
        if run.data.tags.get("e4t.dataset.url") == output_url:
            return str(run.info.run_id)
    return None


def log_dataset_run(
    output_url: str,
    stats: dict[str, Any],
    config: dict[str, Any],
    experiment: str = DATASET_EXPERIMENT,
) -> str:
    """Log one curation as an MLflow run (params, counts, reasons, manifest); return its id.

    Tags name the dataset (``e4t.dataset.url``, ``e4t.dataset.manifest_sha256``) so that a
    pretraining run can point at the exact dataset it read.
    """
    existing = find_dataset_run(output_url, stats["manifest_sha256"], experiment)
    if existing is not None:
        logger.info("dataset %s is already logged as run %s", output_url, existing)
        return existing
    mlflow = mlflow_module()
    experiment_id = get_or_create_experiment(experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"curate-{stats['name']}") as run:
        mlflow.set_tags(
            {
                "e4t.stage": "curate",
                "e4t.version": __version__,
                "e4t.dataset.name": stats["name"],
                "e4t.dataset.url": output_url,
                "e4t.dataset.manifest_sha256": stats["manifest_sha256"],
                "e4t.config_hash": stats["config_hash"],
            }
        )
        params = {"source_url": stats["source_url"], "output_url": output_url, **flatten(config)}
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        from e4t.data.curation import COUNT_KEYS

        metrics: dict[str, float] = {k: float(stats[k]) for k in COUNT_KEYS if k in stats}
        metrics["num_shards"] = float(len(stats["shards"]))
        metrics.update({f"rejected.{r}": float(n) for r, n in stats["rejection_reasons"].items()})
        metrics.update({f"skipped.{r}": float(n) for r, n in stats.get("skip_reasons", {}).items()})
        mlflow.log_metrics(metrics)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "source can be interpreted in multiple ways"
            from mlflow.data.dataset_source_registry import resolve_dataset_source
            from mlflow.data.meta_dataset import MetaDataset

            dataset = MetaDataset(  # type: ignore[abstract]
                source=resolve_dataset_source(output_url),
                name=stats["name"],
                digest=stats["manifest_sha256"][:32],
            )
        mlflow.log_input(dataset, context="curated")
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("manifest.jsonl", "stats.json", "config.json"):
                local = Path(tmp) / name
                local.write_bytes(eio.read_bytes(eio.join(output_url, name)))
                mlflow.log_artifact(str(local), artifact_path="dataset")
        logger.info("logged dataset run %s (%s)", run.info.run_id, json.dumps(metrics))
        return str(run.info.run_id)


def find_dataset_run_by_manifest(
    manifest_sha256: str, experiment: str = DATASET_EXPERIMENT
) -> str | None:
    """The newest run that logged a dataset with this manifest, wherever it was written."""
    runs = _dataset_runs(manifest_sha256, experiment)
    return str(runs[0].info.run_id) if runs else None
