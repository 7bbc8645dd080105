"""The ``personalize-bulk`` job, written once: plan passes → pin the model → tune the
passes → ``results.jsonl`` → MLflow parent run + one child run per concept.

``e4t personalize`` runs it in-process with a progress bar; the ``personalize-bulk`` flow
runs each step as a Prefect task and maps the passes over its task runner (threads,
processes, Dask). Both build the job's :class:`PersonalizeRequest` with :func:`request`
from their flat parameters (:data:`FLAGS`). The domain model is pinned once at the job's
start (:func:`check_model`) and every pass loads that version, in each process once
(:func:`e4t.tracking.cached_domain_model`), whoever runs the pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from e4t.config import Overrides, PersonalizeConfig, flatten, load_config
from e4t.data.concepts import ConceptSpec, list_concepts
from e4t.jobs.request import PinnedModel, config_values
from e4t.jobs.steps import InProcess, StepRunner, StepTable

if TYPE_CHECKING:  # the pass's module loads the models: imported where a pass runs
    from e4t.training.bulk import ConceptResult

logger = logging.getLogger(__name__)

STEPS = StepTable("personalize-bulk")

FLAGS: dict[str, str] = {"steps": "tune.num_steps", "concepts_per_pass": "concepts_per_pass"}
"""The job's flat parameters (the flow's arguments, the CLI's ``dest``) → config keys."""

EXPERIMENT = "e4t-personalize"  # e4t.tracking.PERSONALIZE_EXPERIMENT (not imported: MLflow)


@dataclass(frozen=True)
class PersonalizeRequest:
    """One personalize-bulk job, decided at its entry: the photos (``images_url``), where the
    concepts go (``output_url``), the domain ``model`` (pinned by :func:`check_model` at the
    job's start: before that ``version_uri`` is empty), the torch ``device`` of the tuning,
    the resolved ``config``, and the MLflow ``experiment`` (``track``: log to it)."""

    images_url: str
    output_url: str
    model: PinnedModel
    config: PersonalizeConfig
    device: str = "cpu"
    experiment: str = EXPERIMENT
    track: bool = True

    @property
    def images_location(self) -> str:
        """``images_url`` as recorded: a URL as is, a folder as its absolute path."""
        url = self.images_url
        return url if "://" in url else str(Path(url).resolve())


def request(
    images_url: str,
    output_url: str,
    model_uri: str,
    config: PersonalizeConfig | None = None,
    *,
    preset: str | None = None,
    overrides: list[str] | Overrides | None = None,
    device: str = "cpu",
    experiment: str = EXPERIMENT,
    track: bool = True,
    **flags: Any,
) -> PersonalizeRequest:
    """The job's request from an entry point's flat parameters: the config resolved once
    (defaults ← ``preset`` ← ``overrides`` ← ``flags`` by :data:`FLAGS`), or ``config``
    as given (then none of those). The model is pinned when the job starts."""
    unknown = sorted(set(flags) - set(FLAGS))
    if unknown:
        raise TypeError(f"personalize request: unknown parameters {unknown}; known: {[*FLAGS]}")
    if config is None:
        values = config_values(FLAGS, flags)
        config = load_config(PersonalizeConfig, "personalize", preset, overrides, values)
    elif preset or overrides or any(v is not None for v in flags.values()):
        raise TypeError("personalize request: a config, or a preset, overrides and flags")
    model = PinnedModel(model_uri, "")
    return PersonalizeRequest(images_url, output_url, model, config, device, experiment, track)


@dataclass(frozen=True)
class PersonalizePlan:
    """The folder listed once: its concepts in ``passes`` of ``concepts_per_pass``, a
    ``results.jsonl`` row for every file that is no concept's (``others``), ``num_files``
    listed (what the results must account for)."""

    passes: list[list[ConceptSpec]]
    others: list[dict[str, Any]]
    num_files: int


@dataclass(frozen=True)
class PersonalizeResult:
    """What the job made: ``summary`` (``summary.json``), ``rows`` (``results.jsonl``'s rows:
    the files that are no concept's, then each pass's as it finished), the ``model`` it
    pinned, the MLflow parent run (or None)."""

    output_url: str
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    model: PinnedModel
    mlflow_run_id: str | None


@STEPS.step("plan-personalization")
def plan(images_url: str, config: PersonalizeConfig) -> PersonalizePlan:
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
    passes = [specs[i : i + n] for i in range(0, len(specs), n)]
    return PersonalizePlan(passes, listing.others, listing.num_files)


@STEPS.step("check-model", retries=2)
def check_model(model_uri: str, device: str) -> PinnedModel:
    """Pin the domain model's version once for the whole job (an alias that moves mid-job
    does not split it) and load it up front for its fingerprint (an unknown URI fails before
    any tuning)."""
    return PinnedModel.pin(model_uri, device)


@STEPS.step("personalize-pass", retries=1, tags=["e4t-personalize"])
def tune_pass(request: PersonalizeRequest, specs: list[ConceptSpec]) -> list[ConceptResult]:
    """One pass: its unfinished concepts tuned together against the request's pinned model
    version; one result per concept."""
    from e4t.tracking import cached_domain_model, model_lock
    from e4t.training.bulk import personalize_pass

    pinned = request.model
    if not pinned.version_uri:
        raise ValueError(f"{pinned.uri}: a pass runs on the job's pinned model (check_model)")
    model = cached_domain_model(pinned.version_uri, request.device)
    with model_lock(model):  # threads of one worker share its model: one pass at a time
        results = personalize_pass(
            model,
            specs,
            request.output_url,
            request.config,
            pinned.uri,
            pinned.version_uri,
            pinned.fingerprint,  # checked against this worker's copy, not taken on trust
        )
    done = sum(r.status == "done" for r in results)
    logger.info("pass of %d concepts: %d done", len(specs), done)
    return results


@STEPS.step("write-results")
def write_results(
    output_url: str, rows: list[dict[str, Any]], extra: dict[str, Any]
) -> dict[str, Any]:
    """``results.jsonl`` (one row per concept) and ``summary.json``."""
    from e4t.training.bulk import write_results as write

    return write(output_url, rows, extra)


@STEPS.step("log-personalization", retries=2)
def track(request: PersonalizeRequest, rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """The job's MLflow parent run (the request and its config as params) and a child run
    per concept tuned now."""
    from e4t.tracking import log_personalization
    from e4t.training.bulk import results_jsonl

    params = {
        "model_uri": request.model.uri,
        "model_version_uri": request.model.version_uri,
        "images_url": request.images_location,
        "output_url": request.output_url,
        "device": request.device,
        **flatten(request.config.model_dump(mode="json")),
    }
    return log_personalization(
        request.output_url,
        rows,
        summary,
        params,
        request.experiment,
        results=results_jsonl(rows).encode(),  # the bytes write_results wrote
    )


def run(
    request: PersonalizeRequest,
    steps: StepRunner | None = None,
    on_pass: Callable[[list[ConceptResult]], None] | None = None,
) -> PersonalizeResult:
    """The whole job: the model pinned at its start, every pass run on that version."""
    steps = steps or InProcess()
    start = time.perf_counter()
    planned = steps.call(plan, request.images_url, request.config)
    request = replace(request, model=steps.call(check_model, request.model.uri, request.device))
    rows: list[dict[str, Any]] = list(planned.others)
    for results in steps.map(tune_pass, [(request, specs) for specs in planned.passes]):
        rows += [result.to_row() for result in results]
        if on_pass is not None:
            on_pass(results)
    extra = {
        "num_files_listed": planned.num_files,
        "images_url": request.images_location,
        "model_uri": request.model.uri,
        "model_version_uri": request.model.version_uri,
        "wall_seconds": time.perf_counter() - start,
    }
    summary = steps.call(write_results, request.output_url, rows, extra)
    run_id = steps.call(track, request, rows, summary) if request.track else None
    return PersonalizeResult(request.output_url, summary, rows, request.model, run_id)
