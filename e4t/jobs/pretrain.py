"""The ``pretrain-domain`` job, written once: base model → checks → torchrun → registry.

``e4t pretrain`` runs it in-process with a progress bar; the ``pretrain-domain`` flow runs
each step as a Prefect task (the training step streams torchrun's lines into the run log
and a progress artifact). Both build one :class:`PretrainRequest` with :func:`request`
from their flat parameters (:data:`FLAGS`); the config in it is resolved for the launch's
world size and travels typed: to torchrun as one JSON file, validated once per rank.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from e4t.config import (
    LaunchConfig,
    Overrides,
    PretrainConfig,
    for_world,
    global_batch_size,
    load_config,
)
from e4t.jobs.request import config_values
from e4t.jobs.steps import InProcess, StepRunner, StepTable

logger = logging.getLogger(__name__)

STEPS = StepTable("pretrain-domain")

FLAGS: dict[str, str] = {
    # flat parameter (the flow's argument, the CLI's dest) → config key
    "shards_url": "data.shards",  # curated folder (with stats.json), .tar URL or pattern
    "base_model": "model.base_model",  # diffusers Stable Diffusion folder or hub id
    "device": "model.device",  # torch device of each rank
    # training steps (optimizer steps) here; in other flows `steps` counts other things
    # (tuning steps, sampling steps): each flow's FLAGS says which
    "steps": "train.num_steps",
    "batch_size": "train.batch_size",  # per rank per micro-step (see global_batch_size)
    "experiment": "experiment",  # MLflow experiment of the run
    "domain": "domain",  # the model is registered as e4t-<domain>
}


@dataclass(frozen=True)
class PretrainRequest:
    """One pretraining job, decided at its entry: ``config`` already resolved for the
    launch's world size (``train.global_batch`` → ``optim.grad_accum``), where it writes
    (``output_url``; a rerun resumes there), how torchrun starts the ranks, the random base
    architecture to write when the base model is missing, and whether to track and
    register."""

    config: PretrainConfig
    output_url: str
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    init_arch: str | None = None
    track: bool = True

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step over all ranks."""
        return global_batch_size(self.config, self.launch.world_size)

    def describe_batch(self) -> str:
        """``global batch 16 = 4 per rank × 2 accumulation × 2 rank(s)``."""
        return (
            f"global batch {self.global_batch} = {self.config.train.batch_size} per rank × "
            f"{self.config.optim.grad_accum} accumulation × {self.launch.world_size} rank(s)"
        )


def request(
    output_url: str,
    *,
    preset: str | None = None,
    overrides: list[str] | Overrides | None = None,
    launch: LaunchConfig | None = None,
    init_arch: str | None = None,
    track: bool = True,
    **params: Any,
) -> PretrainRequest:
    """The request from an entry point's flat parameters: ``params`` named in
    :data:`FLAGS` (None = not given: the preset's value) over ``preset`` and ``overrides``;
    the config is resolved for ``launch``'s world size."""
    strays = set(params) - set(FLAGS)
    if strays:
        raise TypeError(f"pretrain: no parameter {', '.join(sorted(strays))} (see FLAGS)")
    launch = launch or LaunchConfig()
    config = load_config(
        PretrainConfig, "pretrain", preset, overrides, values=config_values(FLAGS, params)
    )
    config = for_world(config, launch.world_size)  # train.global_batch → optim.grad_accum
    return PretrainRequest(config, output_url, launch, init_arch, track)


@dataclass(frozen=True)
class PretrainResult:
    """Where the model is (``output_url``/model), its MLflow run, its registered version
    (``name``, ``version``, ``model_uri``, and ``alias_uri`` ``models:/e4t-<domain>@candidate``;
    None when not tracked) and the final step's figures (``final``: step, fingerprint,
    loss terms, samples/s)."""

    output_url: str
    run_id: str | None = None
    name: str | None = None
    version: str | None = None
    model_uri: str | None = None
    alias_uri: str | None = None
    final: Mapping[str, Any] = field(default_factory=dict)


@STEPS.step("prepare-pretraining", retries=1)
def prepare(job: PretrainRequest) -> int:
    """Write a random-weight base model of ``init_arch`` when asked and missing, then fail
    fast on a bad base model or shards URL before torchrun starts. Returns the shard count."""
    from e4t.models.architectures import ensure_base_model
    from e4t.training.launch import validate_inputs

    ensure_base_model(job.config.model.base_model, job.init_arch)
    return len(validate_inputs(job.config))


@STEPS.step("pretrain", retries=1, delay_seconds=10)
def train(
    job: PretrainRequest,
    on_line: Callable[[str], None] | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> PretrainResult:
    """torchrun the ranks (a rerun resumes from the latest checkpoint in ``output_url``) and
    register the model; returns URIs and the final step's figures."""
    from e4t.training.launch import run_pretraining

    out = run_pretraining(
        job.config, job.output_url, job.launch, track=job.track, on_line=on_line, on_event=on_event
    )
    return PretrainResult(
        output_url=out.get("output_url", job.output_url),
        run_id=out.get("run_id"),
        name=out.get("name"),
        version=out.get("version"),
        model_uri=out.get("model_uri"),
        alias_uri=out.get("alias_uri"),
        final=dict(out.get("result", {})),
    )


def run(job: PretrainRequest, steps: StepRunner | None = None) -> PretrainResult:
    """The whole job; returns what :func:`train` returns."""
    steps = steps or InProcess()
    logger.info("%s", job.describe_batch())
    steps.call(prepare, job)
    return steps.call(train, job)
