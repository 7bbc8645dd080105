"""The model registry: pretraining runs, registered domain-model versions, loading them.

A domain model is logged as a pyfunc (models-from-code: nothing pickled) and registered as
a version of ``e4t-<domain>``; ``models:/e4t-faces@candidate`` names the newest trained one,
``@champion`` the one evaluation promoted (:mod:`e4t.tracking.promotion`).
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any

from e4t import __version__
from e4t.config import flatten
from e4t.tracking.client import get_or_create_experiment, mlflow_module
from e4t.tracking.datasets import find_dataset_run_by_manifest

PRETRAIN_ALIAS = "candidate"


def start_pretrain_run(
    config: dict[str, Any],
    output_url: str,
    dataset: dict[str, str],
    experiment: str,
    tags: dict[str, str],
) -> str:
    """Create the job's run (params = the resolved config) and return its id; the ranks log
    into it, the launcher registers the model in it."""
    mlflow = mlflow_module()
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
    if "e4t.global_batch" in tags:  # batch × accumulation × ranks: what one step averages
        params["global_batch"] = tags["e4t.global_batch"]
    for start in range(0, len(params), 100):
        chunk = dict(list(params.items())[start : start + 100])
        client.log_batch(
            run.info.run_id,
            params=[mlflow.entities.Param(k, str(v)[:6000]) for k, v in chunk.items()],
        )
    return str(run.info.run_id)


def resume_run(run_id: str) -> Any:
    """Make ``run_id`` the active run of this process; returns the mlflow module."""
    mlflow = mlflow_module()
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
    mlflow = mlflow_module()
    code = Path(__file__).parent.parent / "mlflow_model.py"
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
    mlflow = mlflow_module()
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


def resolve_model_version(model_uri: str) -> tuple[str, str] | None:
    """(registered name, version) of ``models:/name@alias`` or ``models:/name/3``; None for
    a folder or a run URI."""
    if not model_uri.startswith("models:/"):
        return None
    ref = model_uri[len("models:/") :]
    client = mlflow_module().MlflowClient()
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


@functools.lru_cache(maxsize=2)
def _cached_model(model_uri: str, device: str) -> Any:
    return load_domain_model(model_uri, device=device)


_CACHE_LOCK = threading.Lock()
_MODEL_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()


def model_lock(model: Any) -> threading.Lock:
    """The lock of one cached model: a step that attaches concepts to it (tuning, sampling)
    holds it, so threads sharing the process's model take turns instead of mixing their
    concept banks (one model per process, used by one pass at a time)."""
    with _CACHE_LOCK:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.Lock()
        return lock


def cached_domain_model(model_uri: str, device: str) -> Any:
    """This process's copy of a domain model, loaded once per pinned version and device
    (the CLI and every Prefect worker process share the loading rule).

    ``models:/name@alias`` is pinned to the version it names now, so a moved alias loads the
    new version instead of serving the cached old one."""
    pinned = pin_model_uri(model_uri)
    with _CACHE_LOCK:
        return _cached_model(pinned, device)
