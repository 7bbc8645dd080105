"""The ``pretrain-domain`` job, written once: base model → checks → torchrun → registry.

``e4t pretrain`` runs it in-process with a progress bar; the ``pretrain-domain`` flow runs
each step as a Prefect task (the training step streams torchrun's lines into the run log
and a progress artifact). The config arrives resolved (:func:`e4t.config.load_config` at
the entry point) and travels typed: to torchrun as one JSON file, validated once per rank.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from e4t.config import LaunchConfig, PretrainConfig, for_world
from e4t.jobs.steps import InProcess, StepRunner, StepTable

logger = logging.getLogger(__name__)

STEPS = StepTable("pretrain-domain")


@STEPS.step("prepare-pretraining", retries=1)
def prepare(config: PretrainConfig, init_arch: str | None) -> int:
    """Write a random-weight base model of ``init_arch`` when asked and missing, then fail
    fast on a bad base model or shards URL before torchrun starts. Returns the shard count."""
    from e4t.models.architectures import ensure_base_model
    from e4t.training.launch import validate_inputs

    ensure_base_model(config.model.base_model, init_arch)
    return len(validate_inputs(config))


@STEPS.step("pretrain", retries=1, delay_seconds=10)
def train(
    config: PretrainConfig,
    output_url: str,
    launch: LaunchConfig,
    track_run: bool,
    on_line: Callable[[str], None] | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """torchrun the ranks (a rerun resumes from the latest checkpoint in ``output_url``) and
    register the model; returns URIs and the final step's figures."""
    from e4t.training.launch import run_pretraining

    result = run_pretraining(
        config, output_url, launch, track=track_run, on_line=on_line, on_event=on_event
    )
    keys = ("output_url", "run_id", "name", "version", "model_uri", "alias_uri")
    return {k: result.get(k) for k in keys} | {"final": result.get("result", {})}


def run(
    config: PretrainConfig,
    output_url: str,
    launch: LaunchConfig | None = None,
    steps: StepRunner | None = None,
    *,
    init_arch: str | None = None,
    track_run: bool = True,
) -> dict[str, Any]:
    """The whole job; returns what :func:`train` returns."""
    steps = steps or InProcess()
    launch = launch or LaunchConfig()
    config = for_world(config, launch.world_size)  # train.global_batch → optim.grad_accum
    logger.info(
        "global batch %d = %d per rank × %d accumulation × %d ranks",
        config.train.batch_size * config.optim.grad_accum * launch.world_size,
        config.train.batch_size,
        config.optim.grad_accum,
        launch.world_size,
    )
    steps.call(prepare, config, init_arch)
    result = steps.call(train, config, output_url, launch, track_run)
    global_batch = config.train.batch_size * config.optim.grad_accum * launch.world_size
    return {**result, "global_batch": global_batch, "grad_accum": config.optim.grad_accum}
