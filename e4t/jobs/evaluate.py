"""The ``evaluate`` job, written once: check inputs → (skip a recorded evaluation) →
evaluate → log the MLflow run → promote → the run and the decision into the report → done
marker.

``e4t evaluate`` runs it in-process with a progress bar; the ``evaluate`` flow runs each
step as a Prefect task (the evaluation step reports into a progress artifact)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from e4t import io as eio
from e4t.config import EvaluateConfig, flatten
from e4t.evaluation import evaluate as ev
from e4t.evaluation.report import render_tracking, replace_tracking
from e4t.jobs.steps import InProcess, StepRunner, StepTable
from e4t.tracking import (
    cached_domain_model,
    find_personalization_runs,
    get_or_create_experiment,
    log_evaluation,
    mlflow_module,
    model_lock,
    promote_if_better,
    resolve_model_version,
    tracking_uri,
)

STEPS = StepTable("evaluate")


@STEPS.step("check-evaluation-inputs", retries=2)
def check_inputs(model_uri: str, concepts_url: str, config: EvaluateConfig) -> dict[str, Any]:
    """Concepts and model version resolve (or fail with their message) before heavy work."""
    ev.check_concepts_url(concepts_url)
    version = resolve_model_version(model_uri)
    return {
        "model": list(version) if version else None,
        "eval_key": ev.eval_key(config, concepts_url),
    }


@STEPS.step("previous-evaluation")
def previous_result(output_url: str, checked: dict[str, Any]) -> dict[str, Any] | None:
    """The recorded result when ``output_url`` already holds this evaluation of this version."""
    url = eio.join(output_url, "done.json")
    if not eio.exists(url):
        return None
    previous = json.loads(eio.read_text(url))
    if (
        previous.get("eval_key") == checked["eval_key"]
        and previous.get("model") == checked["model"]
    ):
        return {**previous["result"], "skipped": True}
    return None


@STEPS.step("record-evaluation")
def record_done(output_url: str, checked: dict[str, Any], result: dict[str, Any]) -> None:
    if checked["model"] is not None:  # only a registered version can be recognised again
        record = {"eval_key": checked["eval_key"], "model": checked["model"], "result": result}
        eio.write_text(eio.join(output_url, "done.json"), json.dumps(record, indent=1))


@STEPS.step("evaluate-model", retries=1, delay_seconds=10)
def evaluate(
    model_uri: str,
    device: str,
    concepts_url: str,
    output_url: str,
    config: EvaluateConfig,
    checked: dict[str, Any],
    on_progress: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Tune every method at every budget, generate, score; write the report. The model is
    the version :func:`check_inputs` pinned (an alias that moved since is not followed)."""
    version = checked["model"]
    pinned = f"models:/{version[0]}/{version[1]}" if version else model_uri
    model = cached_domain_model(pinned, device)
    with model_lock(model):  # it attaches concepts and baselines to the shared model
        meta = {
            "model_uri": model_uri,
            "model_version": f"{version[0]} v{version[1]}" if version else "(not registered)",
            "concepts_url": concepts_url,
        }
        result, urls = ev.run_evaluation(model, concepts_url, output_url, config, meta, on_progress)
        return {
            "summary": ev.clean_json(result.summary),
            "urls": urls,
            "num_concepts": len(result.concepts),
            "num_rejected": len(result.rejected),
        }


@STEPS.step("log-evaluation", retries=2)
def track(
    out: dict[str, Any],
    model_uri: str,
    concepts_url: str,
    output_url: str,
    config: EvaluateConfig,
    checked: dict[str, Any],
    preset: str | None,
    experiment: str,
) -> str:
    """One MLflow run, linked to the model version and the concepts' personalization runs."""
    version = checked["model"]
    tags = {
        "e4t.model_uri": model_uri,
        "e4t.model_name": version[0] if version else "",
        "e4t.model_version": version[1] if version else "",
        "e4t.concepts_url": concepts_url,
        "e4t.eval_key": checked["eval_key"],
        "e4t.output_url": output_url,
    }
    parent, children = find_personalization_runs(concepts_url)
    if parent:
        tags["e4t.personalize_run_id"] = parent
        tags["e4t.concept_run_ids"] = ",".join(children)[:5000]
    params = {"model_uri": model_uri, "concepts_url": concepts_url, "preset": preset}
    params.update(flatten(config.model_dump(mode="json")))
    summary = {
        method: {
            int(steps): {k: float("nan") if v is None else v for k, v in values.items()}
            for steps, values in by_steps.items()
        }
        for method, by_steps in out["summary"].items()
    }
    return log_evaluation(summary, out["urls"], params, tags, experiment)


@STEPS.step("promote-if-better")
def promote(
    run_id: str,
    summary: dict[str, Any],
    config: EvaluateConfig,
    checked: dict[str, Any],
    experiment: str,
) -> dict[str, Any]:
    """Move ``promotion.alias`` when the criterion says so; the decision, and why."""
    method, _, metric = config.promotion.metric.partition(".")
    by_steps = summary.get(method) or {}
    if not by_steps or not metric:
        raise ValueError(
            f"promotion.metric={config.promotion.metric!r}: use <method>.<metric> of an "
            f"evaluated method, e.g. e4t.identity (methods: {', '.join(summary)})"
        )
    final = by_steps[max(by_steps, key=int)]
    if metric not in final:
        raise ValueError(f"promotion.metric: {metric!r} is not one of {', '.join(final)}")
    value = final[metric]
    # share of the method's samples with a detected face (None in JSON: no input had one)
    face_rate = final.get("face_rate")
    version = checked["model"]
    return promote_if_better(
        run_id,
        (version[0], version[1]) if version else None,
        float("nan") if value is None else float(value),
        config.promotion,
        checked["eval_key"],
        experiment,
        float("nan") if face_rate is None else float(face_rate),
    )


def run_ui_url(run_id: str, experiment: str) -> str:
    """Where the run opens in the MLflow UI: on the tracking server, or (a local database)
    on ``mlflow ui``'s default address."""
    base = tracking_uri()
    if not base.startswith(("http://", "https://")):
        base = "http://127.0.0.1:5000"
    return f"{base.rstrip('/')}/#/experiments/{get_or_create_experiment(experiment)}/runs/{run_id}"


@STEPS.step("add-tracking-to-report", retries=2)
def add_tracking_to_report(
    urls: dict[str, str], run_id: str, decision: dict[str, Any], experiment: str
) -> None:
    """The report and summary name their MLflow run and the promotion decision (known only
    after the run logged them); the run's copies are replaced by these."""
    run_url = run_ui_url(run_id, experiment)
    page, markdown = render_tracking(run_id, run_url, decision)
    for key, section in (("report", page), ("summary", markdown)):
        eio.write_text(urls[key], replace_tracking(eio.read_text(urls[key]), section))
    client = mlflow_module().MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        for key in ("report", "summary"):
            path = Path(tmp) / urls[key].rsplit("/", 1)[-1]
            path.write_text(eio.read_text(urls[key]), encoding="utf-8")
            client.log_artifact(run_id, str(path))


def run(
    model_uri: str,
    concepts_url: str,
    output_url: str,
    config: EvaluateConfig,
    steps: StepRunner | None = None,
    *,
    device: str = "cpu",
    preset: str | None = None,
    experiment: str = "e4t-evaluate",
    track_run: bool = True,
) -> dict[str, Any]:
    """The whole job. Returns the summary, the report URLs, ``mlflow_run_id``, the promotion
    decision; ``skipped`` when ``output_url`` already holds this evaluation of this version."""
    steps = steps or InProcess()
    checked = steps.call(check_inputs, model_uri, concepts_url, config)
    previous = steps.call(previous_result, output_url, checked)
    if previous is not None:
        return previous
    out = steps.call(evaluate, model_uri, device, concepts_url, output_url, config, checked)
    run_id, decision = None, None
    if track_run:
        run_id = steps.call(
            track, out, model_uri, concepts_url, output_url, config, checked, preset, experiment
        )
        decision = steps.call(promote, run_id, out["summary"], config, checked, experiment)
        steps.call(add_tracking_to_report, out["urls"], run_id, decision, experiment)
    result = {**out, "mlflow_run_id": run_id, "promotion": decision}
    steps.call(record_done, output_url, checked, result)  # a rerun of the same is skipped
    return result
