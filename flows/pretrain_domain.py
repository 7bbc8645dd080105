"""``pretrain-domain``: curated shards → a domain model (encoder + offsets) under torchrun,
tracked in MLflow and registered as a new version of ``e4t-DOMAIN`` (alias ``candidate``).

The job is :mod:`e4t.jobs.pretrain`; this flow makes its request once (the flat parameters
mapped to config keys by the job's ``FLAGS``, as the CLI does), runs the job's steps as
Prefect tasks and adds the result artifact.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from e4t.config import ArchName, LaunchConfig, Overrides
from e4t.jobs import pretrain as job
from flows.steps import PrefectSteps
from tasks import pretrain as t


@flow(name="pretrain-domain", log_prints=True)
def pretrain_domain(
    shards_url: str = "data/demo/shards",
    output_url: str = "data/demo/pretrain",
    base_model: str = "data/models/tiny",
    init_arch: ArchName | None = "tiny",
    preset: str | None = "tiny",
    steps: Annotated[int | None, Field(ge=1)] = None,
    batch_size: Annotated[int | None, Field(ge=1)] = None,
    device: str | None = None,
    nproc_per_node: Annotated[int, Field(ge=1)] = 1,
    nnodes: Annotated[int, Field(ge=1)] = 1,
    node_rank: Annotated[int, Field(ge=0)] = 0,
    rdzv_endpoint: str | None = None,
    experiment: str = "e4t-pretrain",
    domain: Annotated[str, Field(pattern=r"^[a-z0-9-]+$")] = "faces",
    overrides: Overrides | None = None,
    track: bool = True,
) -> dict[str, Any]:
    """Pretrain the encoder and weight offsets on ``shards_url`` (a curated folder).

    Args:
        shards_url: Curated folder (with stats.json), one .tar URL or a brace pattern.
        output_url: Folder or URL for checkpoints and the model; a rerun resumes there.
        base_model: Diffusers Stable Diffusion folder or hub id.
        init_arch: Write a random-weight base of this architecture at base_model when it is
            missing (tiny or sd15-random); null for real checkpoints or hub ids.
        preset: A preset under configs/pretrain/ (tiny, sd15-faces) or a YAML path.
        steps: Optimizer (training) steps (train.num_steps); not sampling or tuning steps.
        batch_size: Samples per rank per micro-step (train.batch_size); the global batch is
            batch_size × optim.grad_accum × nproc_per_node × nnodes.
        device: Torch device of each rank (model.device), e.g. cpu or cuda.
        nproc_per_node: Processes (GPUs) on this node.
        nnodes: Nodes taking part (several need rdzv_endpoint).
        node_rank: This node's rank; node 0 tracks and registers.
        rdzv_endpoint: HOST:PORT of the c10d rendezvous, reachable from every node.
        experiment: MLflow experiment of the run.
        domain: The domain; the model is registered as e4t-DOMAIN (e.g. e4t-faces).
        overrides: Config values by dotted key, e.g. {"optim.lr": 1e-5}.
        track: Track in MLflow and register the model.
    """
    # this flow's parameters that FLAGS maps to config keys (the CLI passes its dests)
    params = {name: value for name, value in locals().items() if name in job.FLAGS}
    launch = LaunchConfig(
        nproc_per_node=nproc_per_node,
        nnodes=nnodes,
        node_rank=node_rank,
        rdzv_endpoint=rdzv_endpoint,
    )
    request = job.request(
        output_url,
        preset=preset,
        overrides=overrides,
        launch=launch,
        init_arch=init_arch,
        track=track,
        **params,
    )
    result = job.run(request, PrefectSteps(t.STEPS))
    final = result.final
    create_markdown_artifact(
        key="pretrain-domain-result",
        markdown=(
            f"## Pretraining → `{result.alias_uri}`\n\n"
            f"| | |\n|---|---|\n| model version | {result.model_uri} |\n"
            f"| MLflow run | {result.run_id} |\n| steps | {final.get('step')} |\n"
            f"| global batch | {request.global_batch} |\n"
            f"| final loss | {final.get('loss', float('nan')):.4f} |\n"
            f"| samples/s | {final.get('samples_per_second', float('nan')):.2f} |\n"
        ),
        description="pretraining result",
    )
    # the flow's result as before: the job's fields, the global batch and the accumulation
    return {
        **dataclasses.asdict(result),
        "global_batch": request.global_batch,
        "grad_accum": request.config.optim.grad_accum,
    }
