"""The ``evaluate`` job, written once: (skip a recorded evaluation) → evaluate → log the
MLflow run → promote → the run and the decision into the report → done marker.

``e4t evaluate`` runs it in-process with a progress bar; the ``evaluate`` flow runs each
step as a Prefect task (the evaluation step reports into a progress artifact). Both build
one :class:`EvaluateRequest` with :func:`request` from their flat parameters
(:data:`FLAGS`): the config resolved, the concepts checked and the model's version pinned
once, at the start; every step uses that version, wherever the alias moves meanwhile."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e4t import io as eio
from e4t.config import EvaluateConfig, Overrides, flatten, load_config
from e4t.evaluation import evaluate as ev
from e4t.evaluation.methods import primary_method
from e4t.evaluation.report import render_tracking, replace_tracking
from e4t.evaluation.results import ReportUrls
from e4t.jobs.request import PinnedModel, config_values
from e4t.jobs.steps import InProcess, StepRunner, StepTable
from e4t.tracking import (
    cached_domain_model,
    find_personalization_runs,
    get_or_create_experiment,
    log_evaluation,
    mlflow_module,
    model_lock,
    promote_if_better,
    tracking_uri,
)

STEPS = StepTable("evaluate")

FLAGS: dict[str, str] = {
    # flat parameter (the flow's argument, the CLI's dest) → config key
    "prompts": "prompts",  # prompts with {} for the concept
    "seeds": "seeds",  # image seeds per prompt
    "steps": "steps",  # tuning budgets reported (tuning steps, not sampling steps)
    # methods beside the primary one (e4t): the config's methods are [e4t, *baselines]
    "baselines": "methods",
}


@dataclass(frozen=True)
class EvaluateRequest:
    """One evaluation, decided at its entry: the model pinned to the version it named then
    (``model.version_uri``: every step loads that one), the concepts, where the report goes,
    the resolved config, the device, and how it is tracked."""

    model: PinnedModel
    concepts_url: str
    output_url: str
    config: EvaluateConfig
    device: str = "cpu"
    preset: str | None = None
    experiment: str = "e4t-evaluate"
    track: bool = True

    @property
    def registered(self) -> tuple[str, str] | None:
        """(registered name, version) of the pinned model; None for a folder or a URL."""
        uri = self.model.version_uri
        if not uri.startswith("models:/"):
            return None
        name, _, version = uri.removeprefix("models:/").rpartition("/")
        return name, version

    @property
    def eval_key(self) -> str:
        """What makes two evaluations comparable (:func:`e4t.evaluation.evaluate.eval_key`)."""
        return ev.eval_key(self.config, self.concepts_url)


def request(
    model_uri: str,
    concepts_url: str,
    output_url: str,
    *,
    preset: str | None = None,
    overrides: list[str] | Overrides | None = None,
    device: str = "cpu",
    experiment: str = "e4t-evaluate",
    track: bool = True,
    **params: Any,
) -> EvaluateRequest:
    """The request from an entry point's flat parameters: ``params`` named in
    :data:`FLAGS` (None = not given: the preset's value) over ``preset`` and ``overrides``.
    Fails fast, in this order: a bad config, no concepts at ``concepts_url``, a model URI
    the registry does not hold."""
    strays = set(params) - set(FLAGS)
    if strays:
        raise TypeError(f"evaluate: no parameter {', '.join(sorted(strays))} (see FLAGS)")
    baselines = params.get("baselines")
    if baselines is not None:
        params = {**params, "baselines": [primary_method(), *baselines]}
    config = load_config(
        EvaluateConfig, "evaluate", preset, overrides, values=config_values(FLAGS, params)
    )
    ev.check_concepts_url(concepts_url)
    model = PinnedModel.pin(model_uri)
    return EvaluateRequest(
        model, concepts_url, output_url, config, device, preset, experiment, track
    )


@dataclass(frozen=True)
class Evaluated:
    """What the evaluation step measured: the summary (method → budget → metric, as JSON:
    string budgets, None for NaN), where it wrote, how many concepts it scored and
    rejected."""

    summary: dict[str, Any]
    urls: ReportUrls
    num_concepts: int
    num_rejected: int


@dataclass(frozen=True)
class EvaluateResult:
    """The job's result: :class:`Evaluated`'s fields, the MLflow run and the promotion
    decision (None when not tracked); ``skipped`` when ``output_url`` already held this
    evaluation of this version (the recorded result)."""

    summary: dict[str, Any]
    urls: ReportUrls
    num_concepts: int
    num_rejected: int
    mlflow_run_id: str | None = None
    promotion: dict[str, Any] | None = None
    skipped: bool = False

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], **update: Any) -> EvaluateResult:
        urls = data["urls"]
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        return cls(**{**values, "urls": ReportUrls(**urls), **update})


@STEPS.step("previous-evaluation")
def previous_result(job: EvaluateRequest) -> EvaluateResult | None:
    """The recorded result when ``output_url`` already holds this evaluation of this version."""
    url = eio.join(job.output_url, "done.json")
    if not eio.exists(url):
        return None
    previous = json.loads(eio.read_text(url))
    model = list(job.registered) if job.registered else None
    if previous.get("eval_key") == job.eval_key and previous.get("model") == model:
        return EvaluateResult.from_json(previous["result"], skipped=True)
    return None


@STEPS.step("record-evaluation")
def record_done(job: EvaluateRequest, result: EvaluateResult) -> None:
    if job.registered is not None:  # only a registered version can be recognised again
        record = {
            "eval_key": job.eval_key,
            "model": list(job.registered),
            "result": result.to_json(),
        }
        eio.write_text(eio.join(job.output_url, "done.json"), json.dumps(record, indent=1))


@STEPS.step("evaluate-model", retries=1, delay_seconds=10)
def evaluate(job: EvaluateRequest, on_progress: Callable[[float], None] | None = None) -> Evaluated:
    """Tune every method at every budget, generate, score; write the report. The model is
    the version the request pinned (an alias that moved since is not followed)."""
    model = cached_domain_model(job.model.version_uri, job.device)
    with model_lock(model):  # it attaches concepts and baselines to the shared model
        registered = job.registered
        meta = {
            "model_uri": job.model.uri,
            "model_version": f"{registered[0]} v{registered[1]}"
            if registered
            else "(not registered)",
            "concepts_url": job.concepts_url,
        }
        result, urls = ev.run_evaluation(
            model, job.concepts_url, job.output_url, job.config, meta, on_progress
        )
        return Evaluated(
            ev.clean_json(result.summary), urls, len(result.concepts), len(result.rejected)
        )


@STEPS.step("log-evaluation", retries=2)
def track(job: EvaluateRequest, out: Evaluated) -> str:
    """One MLflow run, linked to the model version and the concepts' personalization runs."""
    registered = job.registered
    tags = {
        "e4t.model_uri": job.model.uri,
        "e4t.model_name": registered[0] if registered else "",
        "e4t.model_version": registered[1] if registered else "",
        "e4t.concepts_url": job.concepts_url,
        "e4t.eval_key": job.eval_key,
        "e4t.output_url": job.output_url,
    }
    parent, children = find_personalization_runs(job.concepts_url)
    if parent:
        tags["e4t.personalize_run_id"] = parent
        tags["e4t.concept_run_ids"] = ",".join(children)[:5000]
    params = {"model_uri": job.model.uri, "concepts_url": job.concepts_url, "preset": job.preset}
    params.update(flatten(job.config.model_dump(mode="json")))
    summary = {
        method: {
            int(steps): {k: float("nan") if v is None else v for k, v in values.items()}
            for steps, values in by_steps.items()
        }
        for method, by_steps in out.summary.items()
    }
    return log_evaluation(summary, dataclasses.asdict(out.urls), params, tags, job.experiment)


@STEPS.step("promote-if-better")
def promote(job: EvaluateRequest, run_id: str, summary: dict[str, Any]) -> dict[str, Any]:
    """Move ``promotion.alias`` when the criterion says so; the decision, and why."""
    config = job.config
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
    return promote_if_better(
        run_id,
        job.registered,
        float("nan") if value is None else float(value),
        config.promotion,
        job.eval_key,
        job.experiment,
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
    job: EvaluateRequest, urls: ReportUrls, run_id: str, decision: dict[str, Any]
) -> None:
    """The report and summary name their MLflow run and the promotion decision (known only
    after the run logged them); the run's copies are replaced by these."""
    run_url = run_ui_url(run_id, job.experiment)
    page, markdown = render_tracking(run_id, run_url, decision)
    for url, section in ((urls.report, page), (urls.summary, markdown)):
        eio.write_text(url, replace_tracking(eio.read_text(url), section))
    client = mlflow_module().MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        for url in (urls.report, urls.summary):
            path = Path(tmp) / url.rsplit("/", 1)[-1]
            path.write_text(eio.read_text(url), encoding="utf-8")
            client.log_artifact(run_id, str(path))


def run(job: EvaluateRequest, steps: StepRunner | None = None) -> EvaluateResult:
    """The whole job: the summary, the report URLs, the MLflow run, the promotion
    decision; the recorded result (``skipped``) when ``output_url`` already holds this
    evaluation of this version."""
    steps = steps or InProcess()
    previous = steps.call(previous_result, job)
    if previous is not None:
        return previous
    out = steps.call(evaluate, job)
    run_id, decision = None, None
    if job.track:
        run_id = steps.call(track, job, out)
        decision = steps.call(promote, job, run_id, out.summary)
        steps.call(add_tracking_to_report, job, out.urls, run_id, decision)
    result = EvaluateResult(
        out.summary, out.urls, out.num_concepts, out.num_rejected, run_id, decision
    )
    steps.call(record_done, job, result)  # a rerun of the same is skipped
    return result
