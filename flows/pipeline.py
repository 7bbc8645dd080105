"""``e4t-pipeline``: curate-domain → pretrain-domain → personalize-bulk → evaluate.

Each stage is its own flow (deployable alone) and runs here as a subflow; only URLs and
MLflow model URIs pass between them. Every stage skips work already done (finished
partitions, a registered training run, finished concepts, the same evaluation), so a
rerun after a failure resumes where it stopped.
"""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from e4t import io as eio
from e4t.config import ArchName
from flows.curate_domain import curate_domain
from flows.evaluate import evaluate
from flows.personalize_bulk import personalize_bulk
from flows.pretrain_domain import pretrain_domain
from tasks import pipeline as t


@flow(name="e4t-pipeline", log_prints=True)
def e4t_pipeline(
    photos_url: str = "data/demo/photos",
    work_url: str = "data/demo",
    images_url: str | None = None,
    base_model: str = "data/models/tiny",
    init_arch: ArchName | None = "tiny",
    preset: str | None = "tiny",
    pretrain_steps: Annotated[int | None, Field(ge=1)] = 20,
    domain: str = "faces",
    device: str = "cpu",
    nproc_per_node: Annotated[int, Field(ge=1)] = 1,
    run_evaluation: bool = True,
    stage_presets: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run every stage on ``photos_url``; outputs go under ``work_url``.

    Args:
        photos_url: Folder or s3:// prefix of the domain photos (curated, then pretrained on).
        work_url: Folder or s3:// prefix for shards/, pretrain/, concepts/, evaluation/.
        images_url: The photos to personalize (default: photos_url).
        base_model: Diffusers Stable Diffusion folder or hub id.
        init_arch: Write a random-weight base of this architecture at base_model when it is
            missing (tiny or sd15-random); null for real checkpoints or hub ids.
        preset: Every stage's preset (tiny; on GPUs see stage_presets).
        pretrain_steps: Pretraining steps.
        domain: The domain; the model is registered as e4t-DOMAIN (e.g. e4t-faces).
        device: Torch device of personalization and evaluation.
        nproc_per_node: Pretraining processes (GPUs) on this node.
        run_evaluation: Evaluate the new version (and maybe promote it).
        stage_presets: One stage's preset, e.g. {"curate": "ffhq-1024", "pretrain":
            "sd15-faces", "personalize": "sd15", "evaluate": "sd15"}.
    """
    t.validate(photos_url, images_url, preset, stage_presets, base_model, init_arch)

    def chosen(stage: str) -> str | None:
        return t.stage_preset(stage, preset, stage_presets)

    shards_url = eio.join(work_url, "shards")
    curated = curate_domain(source_url=photos_url, output_url=shards_url, preset=chosen("curate"))
    trained = pretrain_domain(
        shards_url=curated["output_url"],
        output_url=eio.join(work_url, "pretrain"),
        base_model=base_model,
        init_arch=init_arch,
        preset=chosen("pretrain"),
        steps=pretrain_steps,
        nproc_per_node=nproc_per_node,
        domain=domain,
    )
    model_uri = trained["model_uri"]  # the version just trained, not a moving alias
    personalized = personalize_bulk(
        images_url=images_url or photos_url,
        model_uri=model_uri,
        output_url=eio.join(work_url, "concepts"),
        preset=chosen("personalize"),
        device=device,
    )
    evaluated = None
    if run_evaluation:
        evaluated = evaluate(
            model_uri=model_uri,
            concepts_url=personalized["output_url"],
            output_url=eio.join(work_url, "evaluation"),
            preset=chosen("evaluate"),
            device=device,
        )
    result = {
        "shards_url": curated["output_url"],
        "dataset_run_id": curated["mlflow_run_id"],
        "model_uri": model_uri,
        "alias_uri": trained.get("alias_uri"),
        "pretrain_run_id": trained.get("run_id"),
        "concepts_url": personalized["output_url"],
        "personalize_run_id": personalized["mlflow_run_id"],
        "report_url": evaluated["urls"]["report"] if evaluated else None,
        "evaluation_run_id": evaluated["mlflow_run_id"] if evaluated else None,
        "promotion": evaluated["promotion"] if evaluated else None,
        "evaluation_skipped": bool(evaluated and evaluated.get("skipped")),
        "stats": curated["stats"],
        "final": trained.get("final", {}),
        "personalize_summary": personalized["summary"],
        "num_evaluated": evaluated.get("num_concepts") if evaluated else None,
    }
    create_markdown_artifact(
        key="e4t-pipeline",
        markdown="## e4t-pipeline\n\n| output | where |\n|---|---|\n"
        + "".join(
            f"| {k} | `{result[k]}` |\n"
            for k in (
                "shards_url",
                "model_uri",
                "concepts_url",
                "report_url",
                "dataset_run_id",
                "pretrain_run_id",
                "personalize_run_id",
                "evaluation_run_id",
            )
        ),
        description=f"pipeline run on {photos_url}",
    )
    return result
