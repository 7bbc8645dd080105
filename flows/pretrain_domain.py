"""``pretrain-domain``: curated shards → a domain model (encoder + offsets) under torchrun,
tracked in MLflow and registered as a new version of ``e4t-<domain>`` (alias ``candidate``).
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from tasks import train as t


@flow(name="pretrain-domain", log_prints=True)
def pretrain_domain(
    shards_url: str = "data/demo/shards",
    output_url: str = "data/demo/pretrain",
    base_model: str = "data/models/tiny",
    init_preset: str | None = "tiny",
    preset: str | None = "tiny",
    steps: int | None = None,
    nproc_per_node: int = 1,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
    experiment: str = "e4t-pretrain",
    domain: str = "faces",
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Pretrain on ``shards_url`` (a curated folder). ``preset`` names configs/pretrain/*.yaml;
    ``init_preset`` writes a random-weight base model at ``base_model`` when it is missing
    (leave None for real checkpoints or hub ids)."""
    sets = [
        f"data.shards={shards_url}",
        f"model.base_model={base_model}",
        f"experiment={experiment}",
        f"domain={domain}",
        *(overrides or []),
    ]
    if steps is not None:
        sets.append(f"train.num_steps={steps}")
    base = t.prepare_base_model(base_model, init_preset)
    t.validate(preset, sets, wait_for=[base])
    result = t.pretrain(preset, sets, output_url, nproc_per_node, nnodes, node_rank, rdzv_endpoint)
    final = result["final"]
    create_markdown_artifact(
        key="pretrain-domain-result",
        markdown=(
            f"## Pretraining → `{result.get('alias_uri')}`\n\n"
            f"| | |\n|---|---|\n| model version | {result.get('model_uri')} |\n"
            f"| MLflow run | {result.get('run_id')} |\n| steps | {final.get('step')} |\n"
            f"| final loss | {final.get('loss', float('nan')):.4f} |\n"
            f"| samples/s | {final.get('samples_per_second', float('nan')):.2f} |\n"
        ),
        description="pretraining result",
    )
    return result
