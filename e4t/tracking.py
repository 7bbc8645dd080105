"""MLflow tracking: where runs go, and the runs each stage logs.

The tracking URI comes from ``MLFLOW_TRACKING_URI``; the embedded default is a local
SQLite database ``<data dir>/mlflow.db`` with artifacts under ``<data dir>/mlartifacts``,
which ``mlflow ui --backend-store-uri sqlite:///<data dir>/mlflow.db`` opens without a server.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from e4t import __version__
from e4t import io as eio
from e4t.config import data_dir, flatten

logger = logging.getLogger(__name__)

DATASET_EXPERIMENT = "e4t-datasets"


def default_tracking_uri() -> str:
    return f"sqlite:///{data_dir() / 'mlflow.db'}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def ui_command() -> str:
    """How a person opens the runs in the MLflow UI."""
    uri = tracking_uri()
    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
    return f"open {uri} in a browser"


def _mlflow() -> Any:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def get_or_create_experiment(name: str) -> str:
    """The experiment's id; with the embedded database its artifacts live in the data dir."""
    mlflow = _mlflow()
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    artifact_location = None
    if tracking_uri() == default_tracking_uri():
        folder = data_dir() / "mlartifacts" / name
        folder.mkdir(parents=True, exist_ok=True)
        artifact_location = folder.as_uri()
    return str(mlflow.create_experiment(name, artifact_location=artifact_location))


def find_dataset_run(
    output_url: str, manifest_sha256: str, experiment: str = DATASET_EXPERIMENT
) -> str | None:
    """The id of the run that already logged this dataset, if any (reruns log nothing twice)."""
    mlflow = _mlflow()
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = mlflow.search_runs(
        experiment_ids=[exp.experiment_id],
        filter_string=f"tags.`e4t.dataset.manifest_sha256` = '{manifest_sha256}'",
        output_format="list",
    )
    for run in runs:
        if run.data.tags.get("e4t.dataset.url") == output_url and run.info.status == "FINISHED":
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
    mlflow = _mlflow()
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
        metrics = {
            k: float(stats[k])
            for k in ("num_inputs", "num_accepted_inputs", "num_rejected_inputs", "num_samples")
        }
        metrics["num_shards"] = float(len(stats["shards"]))
        metrics.update({f"rejected.{r}": float(n) for r, n in stats["rejection_reasons"].items()})
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
