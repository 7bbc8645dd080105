"""``evaluate``: a domain model and its baselines on a set of concepts → identity, prompt
alignment and speed per tuning budget; an HTML report; one MLflow run per model version;
the ``champion`` alias moved when the candidate beats it."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from e4t import io as eio
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
    baselines: list[str] | None = None,
    device: str = "cpu",
    experiment: str = "e4t-evaluate",
    track: bool = True,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Evaluate ``model_uri`` on ``concepts_url`` (face photos, or a personalize-bulk output).

    ``baselines``: any of ``textual-inversion``, ``no-pretraining`` (default: the preset's);
    ``steps``: the tuning budgets reported, e.g. [0, 5, 15, 50].
    """
    sets = list(overrides or [])
    if prompts is not None:
        sets.append(f"prompts={prompts!r}")
    if seeds is not None:
        sets.append(f"seeds={list(seeds)!r}")
    if steps is not None:
        sets.append(f"steps={list(steps)!r}")
    if baselines is not None:
        sets.append(f"methods={['e4t', *baselines]!r}")
    checked = t.check_inputs(model_uri, concepts_url, preset, sets)
    previous = t.previous_result(output_url, checked)
    if previous is not None:
        print(f"{output_url} already holds this evaluation of this version; nothing to do")
        return previous
    out = t.evaluate(model_uri, concepts_url, output_url, device, preset, sets, checked)
    run_id, decision = None, None
    if track:
        run_id = t.track(
            out, model_uri, concepts_url, output_url, preset, sets, checked, experiment
        )
        decision = t.promote(run_id, out["summary"], preset, sets, checked, experiment)
    markdown = eio.read_text(out["urls"]["summary"])
    if decision is not None:
        markdown += (
            f"\n**Promotion** ({decision['metric']}): "
            f"{'promoted' if decision['promoted'] else 'kept'} — {decision.get('reason')}\n"
        )
    if run_id:
        markdown += f"\nMLflow run: `{run_id}`\n"
    create_markdown_artifact(key="evaluation-summary", markdown=markdown, description=output_url)
    print(f"report: {out['urls']['report']}")
    result = {**out, "mlflow_run_id": run_id, "promotion": decision}
    t.record_done(output_url, checked, result)  # a rerun of the same evaluation is skipped
    return result
