"""MLflow tracking: where runs go, and the runs each stage logs.

The tracking URI comes from ``MLFLOW_TRACKING_URI``; the embedded default is a local
SQLite database ``<data dir>/mlflow.db`` with artifacts under ``<data dir>/mlartifacts``,
which ``mlflow ui --backend-store-uri sqlite:///<data dir>/mlflow.db`` opens without a server.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from e4t import __version__
from e4t import io as eio
from e4t.config import data_dir, flatten

logger = logging.getLogger(__name__)

DATASET_EXPERIMENT = "e4t-datasets"


def default_tracking_uri() -> str:
    return f"sqlite:///{data_dir() / 'mlflow.db'}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def ui_command() -> str:
    """How a person opens the runs in the MLflow UI."""
    uri = tracking_uri()
    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
    return f"open {uri} in a browser"


def _mlflow() -> Any:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def get_or_create_experiment(name: str) -> str:
    """The experiment's id; with the embedded database its artifacts live in the data dir."""
    mlflow = _mlflow()
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    artifact_location = None
    if tracking_uri() == default_tracking_uri():
        folder = data_dir() / "mlartifacts" / name
        folder.mkdir(parents=True, exist_ok=True)
        artifact_location = folder.as_uri()
    return str(mlflow.create_experiment(name, artifact_location=artifact_location))


def _dataset_runs(manifest_sha256: str, experiment: str) -> list[Any]:
    """Finished runs of ``experiment`` that logged the dataset with this manifest hash."""
    mlflow = _mlflow()
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = mlflow.search_runs(
        experiment_ids=[exp.experiment_id],
        filter_string=f"tags.`e4t.dataset.manifest_sha256` = '{manifest_sha256}'",
        output_format="list",
    )
    return [r for r in runs if r.info.status == "FINISHED"]


def find_dataset_run(
    output_url: str, manifest_sha256: str, experiment: str = DATASET_EXPERIMENT
) -> str | None:
    """The id of the run that already logged this dataset, if any (reruns log nothing twice)."""
    for run in _dataset_runs(manifest_sha256, experiment):
        if run.data.tags.get("e4t.dataset.url") == output_url:
            return str(run.info.run_id)
    return None


def log_dataset_run(
    output_url: str,
    stats: dict[str, Any],
    config: dict[str, Any],
    experiment: str = DATASET_EXPERIMENT,
) -> str:
    """Log one curation as an MLflow run (params, counts, reasons, manifest); return its id.

    Tags name the dataset (``e4t.dataset.url``, ``e4t.dataset.manifest_sha256``) so that a
    pretraining run can point at the exact dataset it read.
    """
    existing = find_dataset_run(output_url, stats["manifest_sha256"], experiment)
    if existing is not None:
        logger.info("dataset %s is already logged as run %s", output_url, existing)
        return existing
    mlflow = _mlflow()
    experiment_id = get_or_create_experiment(experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"curate-{stats['name']}") as run:
        mlflow.set_tags(
            {
                "e4t.stage": "curate",
                "e4t.version": __version__,
                "e4t.dataset.name": stats["name"],
                "e4t.dataset.url": output_url,
                "e4t.dataset.manifest_sha256": stats["manifest_sha256"],
                "e4t.config_hash": stats["config_hash"],
            }
        )
        params = {"source_url": stats["source_url"], "output_url": output_url, **flatten(config)}
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        metrics = {
            k: float(stats[k])
            for k in ("num_inputs", "num_accepted_inputs", "num_rejected_inputs", "num_samples")
        }
        metrics["num_shards"] = float(len(stats["shards"]))
        metrics.update({f"rejected.{r}": float(n) for r, n in stats["rejection_reasons"].items()})
        mlflow.log_metrics(metrics)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "source can be interpreted in multiple ways"
            from mlflow.data.dataset_source_registry import resolve_dataset_source
            from mlflow.data.meta_dataset import MetaDataset

            dataset = MetaDataset(  # type: ignore[abstract]
                source=resolve_dataset_source(output_url),
                name=stats["name"],
                digest=stats["manifest_sha256"][:32],
            )
        mlflow.log_input(dataset, context="curated")
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("manifest.jsonl", "stats.json", "config.json"):
                local = Path(tmp) / name
                local.write_bytes(eio.read_bytes(eio.join(output_url, name)))
                mlflow.log_artifact(str(local), artifact_path="dataset")
        logger.info("logged dataset run %s (%s)", run.info.run_id, json.dumps(metrics))
        return str(run.info.run_id)


# --------------------------------------------------------------------------- pretraining

PRETRAIN_ALIAS = "candidate"


def find_dataset_run_by_manifest(
    manifest_sha256: str, experiment: str = DATASET_EXPERIMENT
) -> str | None:
    """The newest run that logged a dataset with this manifest, wherever it was written."""
    runs = _dataset_runs(manifest_sha256, experiment)
    return str(runs[0].info.run_id) if runs else None


def start_pretrain_run(
    config: dict[str, Any],
    output_url: str,
    dataset: dict[str, str],
    experiment: str,
    tags: dict[str, str],
) -> str:
    """Create the job's run (params = the resolved config) and return its id; the ranks log
    into it, the launcher registers the model in it."""
    mlflow = _mlflow()
    experiment_id = get_or_create_experiment(experiment)
    run_tags = {
        "e4t.stage": "pretrain",
        "e4t.version": __version__,
        "e4t.output_url": output_url,
        **tags,
    }
    if dataset.get("manifest_sha256"):
        run_tags["e4t.dataset.manifest_sha256"] = dataset["manifest_sha256"]
        dataset_run = find_dataset_run_by_manifest(dataset["manifest_sha256"])
        if dataset_run:
            run_tags["e4t.dataset.run_id"] = dataset_run
    client = mlflow.MlflowClient()
    run = client.create_run(
        experiment_id, tags=run_tags, run_name=f"pretrain-{config.get('domain', 'domain')}"
    )
    params = flatten(config)
    for start in range(0, len(params), 100):
        chunk = dict(list(params.items())[start : start + 100])
        client.log_batch(
            run.info.run_id,
            params=[mlflow.entities.Param(k, str(v)[:6000]) for k, v in chunk.items()],
        )
    return str(run.info.run_id)


def resume_run(run_id: str) -> Any:
    """Make ``run_id`` the active run of this process; returns the mlflow module."""
    mlflow = _mlflow()
    mlflow.start_run(run_id=run_id)
    return mlflow


def register_domain_model(
    run_id: str,
    model_dir: str | Path,
    domain: str,
    base_model: str | None = None,
    alias: str = PRETRAIN_ALIAS,
) -> dict[str, str]:
    """Log the domain model as a pyfunc (models-from-code: nothing pickled) in ``run_id``,
    register it as a new version of ``e4t-<domain>`` and point ``alias`` at it."""
    folders = {"domain_model": Path(model_dir)}
    if base_model and Path(base_model).is_dir():
        size = sum(p.stat().st_size for p in Path(base_model).rglob("*") if p.is_file())
        if size < 512 * 2**20:  # bundle small local bases (the tiny preset); hub ids stay ids
            folders["base_model"] = Path(base_model)
    with tempfile.TemporaryDirectory() as staging:
        # pyfunc stores each artifact folder under its own base name: stage them under the
        # names download_domain_model looks for
        artifacts = {}
        for key, folder in folders.items():
            if folder.name != key:
                folder = Path(shutil.copytree(folder, Path(staging) / key))
            artifacts[key] = str(folder)
        return _log_and_register(run_id, artifacts, domain, alias)


def _log_and_register(
    run_id: str, artifacts: dict[str, str], domain: str, alias: str
) -> dict[str, str]:
    mlflow = _mlflow()
    code = Path(__file__).parent / "mlflow_model.py"
    name = f"e4t-{domain}"
    import pandas as pd
    from mlflow.models import infer_signature

    signature = infer_signature(
        pd.DataFrame([{"image": "<path or base64>", "prompt": "a photo of {}", "seed": 0}]),
        pd.DataFrame([{"prompt": "a photo of {}", "seed": 0, "image": "<base64 PNG>"}]),
        params={"num_steps": 30, "guidance_scale": 7.5},
    )
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(code),
            artifacts=artifacts,
            signature=signature,
            pip_requirements=[
                f"e4t=={__version__}",
                "torch",
                "diffusers",
                "transformers",
                "safetensors",
                "pillow",
                "pandas",
            ],
        )
    version = mlflow.register_model(info.model_uri, name)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(name, alias, version.version)
    client.set_tag(run_id, "e4t.model.version", str(version.version))
    return {
        "name": name,
        "version": str(version.version),
        "model_uri": f"models:/{name}/{version.version}",
        "alias_uri": f"models:/{name}@{alias}",
    }


def download_domain_model(model_uri: str, dest: str | Path | None = None) -> dict[str, Path]:
    """Local folders of a registered domain model: ``domain_model`` and maybe ``base_model``."""
    mlflow = _mlflow()
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=model_uri, dst_path=str(dest) if dest else None
        )
    )
    found = {
        name: local / "artifacts" / name
        for name in ("domain_model", "base_model")
        if (local / "artifacts" / name).exists()
    }
    if "domain_model" not in found:
        raise FileNotFoundError(f"{model_uri} holds no E4T domain model (artifacts/domain_model)")
    return found


def load_domain_model(model_uri: str, device: str = "cpu") -> Any:
    """An :class:`~e4t.models.e4t_model.E4TModel` from ``models:/e4t-faces@candidate``, or a
    domain model folder."""
    from e4t.models.e4t_model import E4TModel

    if not model_uri.startswith(("models:/", "runs:/")):
        return E4TModel.from_pretrained(model_uri, overrides={"device": device})
    folders = download_domain_model(model_uri)
    overrides: dict[str, Any] = {"device": device}
    if "base_model" in folders:
        overrides["base_model"] = str(folders["base_model"])
    return E4TModel.from_pretrained(folders["domain_model"], overrides=overrides)


# --------------------------------------------------------------------------- personalization

PERSONALIZE_EXPERIMENT = "e4t-personalize"


def log_personalization(
    output_url: str,
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    params: dict[str, Any],
    experiment: str = PERSONALIZE_EXPERIMENT,
) -> str:
    """One parent run for the job; one child run per concept tuned now, with its metrics,
    previews and concept artifact. Returns the parent run id."""
    mlflow = _mlflow()
    experiment_id = get_or_create_experiment(experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name="personalize-bulk") as parent:
        mlflow.set_tags(
            {
                "e4t.stage": "personalize",
                "e4t.version": __version__,
                "e4t.output_url": output_url,
                "e4t.model_uri": str(params.get("model_uri", "")),
            }
        )
        mlflow.log_params({k: str(v)[:500] for k, v in flatten(params).items()})
        mlflow.log_metrics(
            {
                k: float(v)
                for k, v in summary.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
        )
        with tempfile.TemporaryDirectory() as tmp:
            results = Path(tmp) / "results.jsonl"
            results.write_bytes(eio.read_bytes(eio.join(output_url, "results.jsonl")))
            mlflow.log_artifact(str(results))
        for row in rows:
            if row.get("status") != "done" or row.get("skipped"):
                continue
            cid = row["concept_id"]
            with mlflow.start_run(
                run_name=f"concept-{cid}", nested=True, experiment_id=experiment_id
            ) as child:
                mlflow.set_tags({"e4t.concept_id": cid, "e4t.stage": "personalize-concept"})
                mlflow.log_metrics(
                    {
                        k: float(row[k])
                        for k in ("final_loss", "seconds", "artifact_bytes", "steps")
                        if row.get(k) is not None
                    }
                )
                with tempfile.TemporaryDirectory() as tmp:
                    for kind, prefix in (
                        ("concept", eio.join(output_url, "concepts", cid)),
                        ("previews", eio.join(output_url, "previews", cid)),
                    ):
                        folder = Path(tmp) / kind
                        folder.mkdir()
                        for url in eio.list_files(prefix):
                            (folder / url.rsplit("/", 1)[-1]).write_bytes(eio.read_bytes(url))
                        mlflow.log_artifacts(str(folder), artifact_path=kind)
                    # each concept version is also a logged model (MLflow 3's model entity)
                    logged = mlflow.create_external_model(
                        name=f"concept-{cid}",
                        source_run_id=child.info.run_id,
                        params={
                            "steps": str(row.get("steps")),
                            "model_uri": str(params.get("model_uri", "")),
                        },
                        tags={"e4t.concept_id": cid},
                        model_type="e4t-concept",
                        experiment_id=experiment_id,
                    )
                    mlflow.MlflowClient().log_model_artifacts(
                        logged.model_id, str(Path(tmp) / "concept")
                    )
                    mlflow.set_tag("e4t.concept_model_id", logged.model_id)
        return str(parent.info.run_id)


def _copy_to_local(urls: dict[str, str], folder: Path) -> list[Path]:
    out = []
    for url in urls.values():
        path = folder / url.rsplit("/", 1)[-1]
        path.write_bytes(eio.read_bytes(url))
        out.append(path)
    return out


# --------------------------------------------------------------------------- evaluation

EVALUATE_EXPERIMENT = "e4t-evaluate"


def resolve_model_version(model_uri: str) -> tuple[str, str] | None:
    """(registered name, version) of ``models:/name@alias`` or ``models:/name/3``; None for
    a folder or a run URI."""
    if not model_uri.startswith("models:/"):
        return None
    ref = model_uri[len("models:/") :]
    client = _mlflow().MlflowClient()
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name, str(client.get_model_version_by_alias(name, alias).version)
    name, _, version = ref.partition("/")
    if not version.isdigit():
        raise ValueError(f"{model_uri}: use models:/NAME@ALIAS or models:/NAME/VERSION")
    return name, str(client.get_model_version(name, version).version)


def pin_model_uri(model_uri: str) -> str:
    """``models:/name@alias`` → ``models:/name/<version it points at now>`` (cache keys must
    not outlive an alias move); other URIs unchanged."""
    if model_uri.startswith("models:/") and "@" in model_uri:
        found = resolve_model_version(model_uri)
        if found:
            return f"models:/{found[0]}/{found[1]}"
    return model_uri


def find_personalization_runs(output_url: str) -> tuple[str | None, list[str]]:
    """The personalize-bulk parent run that wrote ``output_url`` and its concept runs."""
    mlflow = _mlflow()
    found = mlflow.get_experiment_by_name(PERSONALIZE_EXPERIMENT)
    if found is None:
        return None, []
    quoted = output_url.replace("'", "\\'")
    parents = mlflow.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`e4t.output_url` = '{quoted}' and tags.`e4t.stage` = 'personalize'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    if not parents:
        return None, []
    # a rerun that skipped finished concepts has a parent run of its own with no children:
    # the concepts of the folder are the children of every job that wrote into it
    children: list[str] = []
    latest_with_children = None
    for parent in parents:
        found_children = mlflow.search_runs(
            [found.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
            output_format="list",
        )
        if found_children and latest_with_children is None:
            latest_with_children = parent.info.run_id
        children += [c.info.run_id for c in found_children]
    return latest_with_children or parents[0].info.run_id, sorted(children)


def log_evaluation(
    summary: dict[str, dict[int, dict[str, float]]],
    urls: dict[str, str],
    params: dict[str, Any],
    tags: dict[str, str],
    experiment: str = EVALUATE_EXPERIMENT,
) -> str:
    """One run per evaluation. Metrics are ``<method>.<metric>`` logged at step = the tuning
    budget, so every run has the same names, the compare view lines them up, and each
    metric's chart is the metric versus tuning steps (its latest value: the largest budget).
    """
    mlflow = _mlflow()
    experiment_id = get_or_create_experiment(experiment)
    name = f"evaluate-{tags.get('e4t.model_name', 'model')}-v{tags.get('e4t.model_version', '')}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=name) as run:
        mlflow.set_tags({"e4t.stage": "evaluate", "e4t.version": __version__, **tags})
        mlflow.log_params({k: str(v)[:500] for k, v in flatten(params).items()})
        for method, by_steps in summary.items():
            for steps in sorted(by_steps):
                mlflow.log_metrics(
                    {f"{method}.{k}": float(v) for k, v in by_steps[steps].items()}, step=steps
                )
        with tempfile.TemporaryDirectory() as tmp:
            for path in _copy_to_local(urls, Path(tmp)):
                mlflow.log_artifact(str(path))
        return str(run.info.run_id)


def decide_promotion(
    candidate: float, champion: float | None, mode: str, min_delta: float
) -> tuple[bool, str]:
    """Whether the candidate's value beats the champion's by ``min_delta`` (NaN never does)."""
    if candidate != candidate:  # NaN
        return False, "candidate metric is NaN"
    if champion is None:
        return True, "no champion yet"
    if champion != champion:
        return True, "champion metric is NaN"
    gain = candidate - champion if mode == "max" else champion - candidate
    if gain > min_delta:
        return True, f"beats the champion by {gain:.4g} (> {min_delta:g})"
    return False, f"does not beat the champion by more than {min_delta:g} (gain {gain:.4g})"


def _comparable_run(
    name: str, version: str, metric: str, eval_key: str, exclude: str, experiment: str
) -> Any | None:
    """The latest evaluation of ``name`` v``version`` with the same ``eval_key`` that holds
    ``metric`` (``exclude``: the run being decided)."""
    mlflow = _mlflow()
    found = mlflow.search_runs(
        [get_or_create_experiment(experiment)],
        filter_string=(
            f"tags.`e4t.model_name` = '{name}' and "
            f"tags.`e4t.model_version` = '{version}' and "
            f"tags.`e4t.eval_key` = '{eval_key}'"
        ),
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    return next((r for r in found if metric in r.data.metrics and r.info.run_id != exclude), None)


def _promotion_decision(
    client: Any,
    run_id: str,
    model: tuple[str, str] | None,
    candidate_value: float,
    promotion: Any,
    eval_key: str,
    experiment: str,
) -> dict[str, Any]:
    """What to do with the alias, and why; moves it when the rule says so."""
    decision: dict[str, Any] = {"promoted": False, "metric": promotion.metric}
    if not promotion.enabled:
        return {**decision, "reason": "promotion disabled"}
    if model is None:
        return {**decision, "reason": "not a registered model version (a folder or run URI)"}
    name, version = model
    try:
        champion: str | None = str(client.get_model_version_by_alias(name, promotion.alias).version)
    except Exception:  # MlflowException: the alias is not set yet
        champion = None
    decision.update({"model": name, "version": version, "previous": champion})
    if champion == version:
        return {**decision, "reason": f"version {version} already holds @{promotion.alias}"}
    champion_value: float | None = None
    if champion is not None:
        comparable = _comparable_run(name, champion, promotion.metric, eval_key, run_id, experiment)
        if comparable is None:
            return {
                **decision,
                "reason": f"champion v{champion} has no evaluation comparable to this one "
                f"(same config and concepts); evaluate models:/{name}@{promotion.alias} first",
            }
        champion_value = float(comparable.data.metrics[promotion.metric])
        decision["champion_run_id"] = comparable.info.run_id
    ok, why = decide_promotion(candidate_value, champion_value, promotion.mode, promotion.min_delta)
    if ok:
        client.set_registered_model_alias(name, promotion.alias, version)
    return {**decision, "promoted": ok, "reason": why, "champion_value": champion_value}


def promote_if_better(
    run_id: str,
    model: tuple[str, str] | None,
    candidate_value: float,
    promotion: Any,
    eval_key: str,
    experiment: str = EVALUATE_EXPERIMENT,
) -> dict[str, Any]:
    """Move ``promotion.alias`` to the evaluated version when it beats the current holder on
    ``promotion.metric`` in a comparable evaluation (same config and concepts: ``eval_key``).
    The decision, and why, is recorded as tags of the evaluation run."""
    client = _mlflow().MlflowClient()
    decision = _promotion_decision(
        client, run_id, model, candidate_value, promotion, eval_key, experiment
    )
    decision["candidate_value"] = candidate_value
    tags = {
        "e4t.promotion": "promoted" if decision["promoted"] else "kept",
        "e4t.promotion.reason": str(decision.get("reason", ""))[:5000],
        "e4t.promotion.previous": str(decision.get("previous")),
        "e4t.promotion.metric": promotion.metric,
    }
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    return decision
