"""``evaluate``: a domain model and its baselines on a set of concepts → identity, prompt
alignment and speed per tuning budget; an HTML report; one MLflow run per model version;
the ``champion`` alias moved when the candidate beats it.

The job is :mod:`e4t.jobs.evaluate`; this flow makes its request once (the flat parameters
mapped to config keys by the job's ``FLAGS``, as the CLI does; the model's version pinned),
runs the job's steps as Prefect tasks and adds the summary artifact. ``baselines`` takes
the names of the method registry (:mod:`e4t.evaluation.methods`).
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from e4t import io as eio
from e4t.config import Overrides
from e4t.evaluation.methods import BaselineName
from e4t.jobs import evaluate as job
from flows.steps import PrefectSteps
from tasks import evaluate as t


@flow(name="evaluate", log_prints=True)
def evaluate(
    model_uri: str = "models:/e4t-faces@candidate",
    concepts_url: str = "data/demo/photos",
    output_url: str = "data/demo/evaluation",
    preset: str | None = "tiny",
    prompts: list[str] | None = None,
    seeds: list[int] | None = None,
    steps: list[int] | None = None,
    baselines: list[BaselineName] | None = None,
    device: str = "cpu",
    experiment: str = "e4t-evaluate",
    track: bool = True,
    overrides: Overrides | None = None,
) -> dict[str, Any]:
    """Evaluate ``model_uri`` on ``concepts_url`` against the baselines.

    Args:
        model_uri: models:/e4t-faces@candidate, models:/NAME/VERSION, or a folder; its
            version is pinned at the start (an alias moved meanwhile is not followed).
        concepts_url: Face photos, or a personalize-bulk output (its results.jsonl).
        output_url: Folder or URL for report.html, results.json and the summary.
        preset: A preset under configs/evaluate/ (tiny, sd15) or a YAML path.
        prompts: Prompts with {} for the concept (default: the preset's).
        seeds: Image seeds per prompt (default: the preset's).
        steps: Tuning budgets reported (tuning steps), e.g. [0, 5, 15, 50] (default: the
            preset's).
        baselines: Methods beside e4t, from the registry e4t.evaluation.methods (the
            choices this form lists; `e4t evaluate --help` says what each is; default:
            the preset's).
        device: Torch device, e.g. cpu or cuda.
        experiment: MLflow experiment of the evaluation run.
        track: Log the MLflow run and apply the promotion rule.
        overrides: Config values by dotted key, e.g. {"promotion.min_delta": 0.01}.
    """
    params = {name: value for name, value in locals().items() if name in job.FLAGS}
    request = job.request(
        model_uri,
        concepts_url,
        output_url,
        preset=preset,
        overrides=overrides,
        device=device,
        experiment=experiment,
        track=track,
        **params,
    )
    result = job.run(request, PrefectSteps(t.STEPS))
    if result.skipped:
        print(f"{output_url} already holds this evaluation of this version; nothing to do")
        return result.to_json()
    # the summary names its MLflow run and the promotion decision (the job wrote them in)
    markdown = eio.read_text(result.urls.summary)
    create_markdown_artifact(key="evaluation-summary", markdown=markdown, description=output_url)
    print(f"report: {result.urls.report}")
    return result.to_json()
