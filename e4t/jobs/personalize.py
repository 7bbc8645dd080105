"""The ``personalize-bulk`` job, written once: plan passes → check the model → tune the
passes → ``results.jsonl`` → MLflow parent run + one child run per concept.

``e4t personalize`` runs it in-process with a progress bar; the ``personalize-bulk`` flow
runs each step as a Prefect task and maps the passes over its task runner (threads,
processes, Dask). The domain model is loaded once per process (and pinned version) by
:func:`e4t.tracking.cached_domain_model`, whoever runs the pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from e4t.config import PersonalizeConfig, flatten
from e4t.data.concepts import ConceptSpec, list_concepts
from e4t.jobs.steps import InProcess, StepRunner, StepTable

logger = logging.getLogger(__name__)

STEPS = StepTable("personalize-bulk")


@STEPS.step("plan-personalization")
def plan(images_url: str, config: PersonalizeConfig) -> dict[str, Any]:
    """The folder listed once, here: its concepts in passes of ``concepts_per_pass`` and a
    row for every file that is no concept's; fails fast when the folder is missing or holds
    no images."""
    listing = list_concepts(
        images_url, config.curate.decode.max_bytes, config.max_prompts_per_concept
    )
    specs = listing.concepts
    if not specs:
        raise FileNotFoundError(f"{images_url}: no images to personalize")
    n = config.concepts_per_pass
    logger.info(
        "%d files: %d concepts in passes of %d, %d other files",
        listing.num_files,
        len(specs),
        n,
        len(listing.others),
    )
    return {
        "passes": [specs[i : i + n] for i in range(0, len(specs), n)],
        "others": listing.others,
        "num_files": listing.num_files,
    }


@STEPS.step("check-model", retries=2)
def check_model(model_uri: str, device: str) -> dict[str, str]:
    """Pin the domain model's version once for the whole job (an alias that moves mid-job
    does not split it) and load it up front (an unknown URI fails before any tuning):
    ``model_uri`` as given, ``model_version_uri`` pinned, ``fingerprint``."""
    from e4t.tracking import cached_domain_model
    from e4t.tracking.registry import resolve_model_version_uri

    pinned = resolve_model_version_uri(model_uri)
    fingerprint = str(cached_domain_model(pinned, device).fingerprint())
    return {"model_uri": model_uri, "model_version_uri": pinned, "fingerprint": fingerprint}


@STEPS.step("personalize-pass", retries=1, tags=["e4t-personalize"])
def tune_pass(
    output_url: str,
    specs: list[ConceptSpec],
    model_uri: str,
    device: str,
    config: PersonalizeConfig,
    model_version_uri: str = "",
) -> list[dict[str, Any]]:
    """One pass: its unfinished concepts tuned together; one result row per concept.
    ``model_version_uri``: the job's pinned model (:func:`check_model`), loaded and recorded
    beside ``model_uri``; resolved here when not given."""
    from e4t.tracking import cached_domain_model, model_lock
    from e4t.tracking.registry import resolve_model_version_uri
    from e4t.training.bulk import personalize_pass

    pinned = model_version_uri or resolve_model_version_uri(model_uri)
    model = cached_domain_model(pinned, device)
    with model_lock(model):  # threads of one worker share its model: one pass at a time
        rows = personalize_pass(model, specs, output_url, config, model_uri, pinned)
    by_id = {spec.concept_id: spec for spec in specs}
    for row in rows:  # which person, which model version, every file the row accounts for
        spec = by_id[row["concept_id"]]
        row.update(
            kind="concept",
            name=spec.name,
            files=list(spec.files),
            model_uri=model_uri,
            model_version_uri=pinned,
        )
    done = sum(r["status"] == "done" for r in rows)
    logger.info("pass of %d concepts: %d done", len(specs), done)
    return rows


@STEPS.step("write-results")
def write_results(
    output_url: str, rows: list[dict[str, Any]], extra: dict[str, Any]
) -> dict[str, Any]:
    """``results.jsonl`` (one row per concept) and ``summary.json``."""
    from e4t.training.bulk import write_results as write

    return write(output_url, rows, extra)


@STEPS.step("log-personalization", retries=2)
def track(
    output_url: str,
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    params: dict[str, Any],
    experiment: str,
) -> str:
    """The job's MLflow parent run and a child run per concept tuned now."""
    from e4t.tracking import log_personalization

    return log_personalization(output_url, rows, summary, params, experiment)


def run(
    images_url: str,
    output_url: str,
    model_uri: str,
    config: PersonalizeConfig,
    steps: StepRunner | None = None,
    *,
    device: str = "cpu",
    track_run: bool = True,
    experiment: str = "e4t-personalize",
    on_pass: Callable[[list[dict[str, Any]]], None] | None = None,
) -> dict[str, Any]:
    """The whole job. Returns ``output_url``, ``summary``, ``rows``, ``mlflow_run_id``."""
    steps = steps or InProcess()
    start = time.perf_counter()
    planned = steps.call(plan, images_url, config)
    pinned = steps.call(check_model, model_uri, device)["model_version_uri"]
    rows: list[dict[str, Any]] = list(planned["others"])
    calls = [(output_url, specs, model_uri, device, config, pinned) for specs in planned["passes"]]
    for chunk in steps.map(tune_pass, calls):
        rows += chunk
        if on_pass is not None:
            on_pass(chunk)
    extra = {
        "num_files_listed": planned["num_files"],
        "images_url": images_url if "://" in images_url else str(Path(images_url).resolve()),
        "model_uri": model_uri,
        "model_version_uri": pinned,
        "wall_seconds": time.perf_counter() - start,
    }
    summary = steps.call(write_results, output_url, rows, extra)
    run_id = None
    if track_run:
        params = {
            "model_uri": model_uri,
            "model_version_uri": pinned,
            "images_url": images_url if "://" in images_url else str(Path(images_url).resolve()),
            "output_url": output_url,
            "device": device,
            **flatten(config.model_dump(mode="json")),
        }
        run_id = steps.call(track, output_url, rows, summary, params, experiment)
    return {"output_url": output_url, "summary": summary, "rows": rows, "mlflow_run_id": run_id}
