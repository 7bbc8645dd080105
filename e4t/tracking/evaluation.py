"""Evaluation runs: one MLflow run per evaluation, metrics ``<method>.<metric>`` per budget."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from e4t import __version__
from e4t import io as eio
from e4t.config import flatten
from e4t.tracking.client import get_or_create_experiment, mlflow_module

EVALUATE_EXPERIMENT = "e4t-evaluate"


def _copy_to_local(urls: dict[str, str], folder: Path) -> list[Path]:
    out = []
    for url in urls.values():
        path = folder / url.rsplit("/", 1)[-1]
        path.write_bytes(eio.read_bytes(url))
        out.append(path)
    return out


def log_evaluation(
    summary: dict[str, dict[int, dict[str, float]]],
    urls: dict[str, str],
    params: dict[str, Any],
    tags: dict[str, str],
    experiment: str = EVALUATE_EXPERIMENT,
) -> str:
    """One run per evaluation. Metrics are ``<method>.<metric>`` logged at step = the tuning
    budget, so every run has the same names, the compare view lines them up, and each
    metric's chart is the metric versus tuning steps (its latest value: the largest budget).
    """
    mlflow = mlflow_module()
    experiment_id = get_or_create_experiment(experiment)
    name = f"evaluate-{tags.get('e4t.model_name', 'model')}-v{tags.get('e4t.model_version', '')}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=name) as run:
        mlflow.set_tags({"e4t.stage": "evaluate", "e4t.version": __version__, **tags})
        mlflow.log_params({k: str(v)[:500] for k, v in flatten(params).items()})
        for method, by_steps in summary.items():
            for steps in sorted(by_steps):
                mlflow.log_metrics(
                    {f"{method}.{k}": float(v) for k, v in by_steps[steps].items()}, step=steps
                )
        with tempfile.TemporaryDirectory() as tmp:
            for path in _copy_to_local(urls, Path(tmp)):
                mlflow.log_artifact(str(path))
        return str(run.info.run_id)
