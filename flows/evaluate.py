"""``evaluate``: a domain model and its baselines on a set of concepts → identity, prompt
alignment and speed per tuning budget; an HTML report; one MLflow run per model version;
the ``champion`` alias moved when the candidate beats it.

The job is :mod:`e4t.jobs.evaluate`; this flow runs its steps as Prefect tasks and adds the
summary artifact.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from e4t import io as eio
from e4t.config import EvaluateConfig, Overrides, load_config
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
    baselines: list[Literal["e4t-full", "textual-inversion", "no-pretraining"]] | None = None,
    device: str = "cpu",
    experiment: str = "e4t-evaluate",
    track: bool = True,
    overrides: Overrides | None = None,
) -> dict[str, Any]:
    """Evaluate ``model_uri`` on ``concepts_url`` against the baselines.

    Args:
        model_uri: models:/e4t-faces@candidate, models:/NAME/VERSION, or a folder.
        concepts_url: Face photos, or a personalize-bulk output (its results.jsonl).
        output_url: Folder or URL for report.html, results.json and the summary.
        preset: A preset under configs/evaluate/ (tiny, sd15) or a YAML path.
        prompts: Prompts with {} for the concept (default: the preset's).
        seeds: Image seeds per prompt (default: the preset's).
        steps: Tuning budgets reported, e.g. [0, 5, 15, 50] (default: the preset's).
        baselines: Any of e4t-full (the paper's per-concept full tuning, the reference),
            textual-inversion, no-pretraining (default: the preset's).
        device: Torch device, e.g. cpu or cuda.
        experiment: MLflow experiment of the evaluation run.
        track: Log the MLflow run and apply the promotion rule.
        overrides: Config values by dotted key, e.g. {"promotion.min_delta": 0.01}.
    """
    config = load_config(
        EvaluateConfig,
        "evaluate",
        preset,
        overrides,
        values={
            "prompts": prompts,
            "seeds": seeds,
            "steps": steps,
            "methods": None if baselines is None else ["e4t", *baselines],
        },
    )
    result = job.run(
        model_uri,
        concepts_url,
        output_url,
        config,
        PrefectSteps(t.STEPS),
        device=device,
        preset=preset,
        experiment=experiment,
        track_run=track,
    )
    if result.get("skipped"):
        print(f"{output_url} already holds this evaluation of this version; nothing to do")
        return result
    # the summary names its MLflow run and the promotion decision (the job wrote them in)
    markdown = eio.read_text(result["urls"]["summary"])
    create_markdown_artifact(key="evaluation-summary", markdown=markdown, description=output_url)
    print(f"report: {result['urls']['report']}")
    return result
