"""MLflow experiments as a person meets them in the UI (the embedded SQLite store)."""

from __future__ import annotations

from e4t.tracking.client import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    get_or_create_experiment,
    mlflow_module,
)


def test_experiments_open_on_training_runs_not_the_genai_view() -> None:
    """MLflow 3 opens an experiment of no declared kind on its GenAI view: ours declare
    model development, also an experiment made before the tag existed."""
    mlflow = mlflow_module()
    new = get_or_create_experiment("kind-test-new")
    assert mlflow.get_experiment(new).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    old = mlflow.create_experiment("kind-test-old")  # as an older e4t made it
    assert EXPERIMENT_KIND_TAG not in mlflow.get_experiment(old).tags
    assert get_or_create_experiment("kind-test-old") == old
    assert mlflow.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
