"""Where MLflow runs go: the tracking URI, the UI command, experiments.

The tracking URI comes from ``MLFLOW_TRACKING_URI``; the embedded default is a local
SQLite database ``<data dir>/mlflow.db`` with artifacts under ``<data dir>/mlartifacts``,
which ``mlflow ui --backend-store-uri sqlite:///<data dir>/mlflow.db`` opens without a server.
"""

from __future__ import annotations

import os
from typing import Any

from e4t.config import data_dir


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


def mlflow_module() -> Any:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


# MLflow 3's UI opens an experiment of no declared kind on its GenAI (traces) view; these
# experiments hold training runs, so they say so and open on the runs table.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def get_or_create_experiment(name: str) -> str:
    """The experiment's id; with the embedded database its artifacts live in the data dir.
    Tagged as a model-development experiment (also one made before the tag existed)."""
    mlflow = mlflow_module()
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        if found.tags.get(EXPERIMENT_KIND_TAG) is None:
            mlflow.MlflowClient().set_experiment_tag(
                found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
            )
        return str(found.experiment_id)
    artifact_location = None
    if tracking_uri() == default_tracking_uri():
        folder = data_dir() / "mlartifacts" / name
        folder.mkdir(parents=True, exist_ok=True)
        artifact_location = folder.as_uri()
    return str(
        mlflow.create_experiment(
            name,
            artifact_location=artifact_location,
            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
        )
    )
