"""The model registry: pretraining runs, registered domain-model versions, loading them.

A domain model is logged as a pyfunc (models-from-code: nothing pickled) and registered as
a version of ``e4t-<domain>``; ``models:/e4t-faces@candidate`` names the newest trained one,
``@champion`` the one evaluation promoted (:mod:`e4t.tracking.promotion`).
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from e4t import __version__
from e4t.config import flatten
from e4t.tracking.client import get_or_create_experiment, mlflow_module, tracking_uri
from e4t.tracking.datasets import find_dataset_run_by_manifest

PRETRAIN_ALIAS = "candidate"


def pretrain_run_name(config: dict[str, Any]) -> str:
    """What tells two pretraining runs apart in the MLflow UI: domain, steps, preset when
    known, and the UTC start time (``pretrain-faces-200steps-1127-1602``)."""
    steps = config.get("train", {}).get("num_steps")
    parts = ["pretrain", str(config.get("domain", "domain"))]
    if steps:
        parts.append(f"{steps}steps")
    if config.get("preset"):
        parts.append(str(config["preset"]))
    parts.append(time.strftime("%m%d-%H%M%S", time.gmtime()))
    return "-".join(parts)


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
    run = client.create_run(experiment_id, tags=run_tags, run_name=pretrain_run_name(config))
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
    describe_version(client, name, str(version.version), run_id, artifacts["domain_model"])
    client.set_registered_model_alias(name, alias, version.version)
    client.set_tag(run_id, "e4t.model.version", str(version.version))
    return {
        "name": name,
        "version": str(version.version),
        "model_uri": f"models:/{name}/{version.version}",
        "alias_uri": f"models:/{name}@{alias}",
    }


def describe_version(client: Any, name: str, version: str, run_id: str, model_dir: str) -> None:
    """A version a person can tell apart in the registry: a one-line description and tags
    with its training run, dataset run, steps, last held-out loss and fingerprint."""
    run = client.get_run(run_id)
    from e4t.models.e4t_model import CONFIG_NAME

    meta_path = Path(model_dir) / CONFIG_NAME
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    tags = {
        "e4t.run_id": run_id,
        "e4t.dataset.run_id": run.data.tags.get("e4t.dataset.run_id", ""),
        "e4t.train.num_steps": run.data.params.get("train.num_steps", ""),
        "e4t.heldout_loss": (
            f"{run.data.metrics['heldout_loss']:.5f}" if "heldout_loss" in run.data.metrics else ""
        ),
        "e4t.fingerprint": str(meta.get("fingerprint", "")),
        "e4t.base_model": str(meta.get("model", {}).get("base_model", ""))[:500],
    }
    tags = {k: v for k, v in tags.items() if v}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    steps = tags.get("e4t.train.num_steps", "?")
    loss = tags.get("e4t.heldout_loss", "n/a")
    description = (
        f"{name} v{version}: {steps} pretraining steps (run {run.info.run_name}), held-out "
        f"loss {loss}, fingerprint {tags.get('e4t.fingerprint', 'n/a')}"
    )
    client.update_model_version(name, version, description=description)


class ModelURIError(ValueError):
    """A domain-model URI that names nothing: malformed, unknown, or no registry to ask."""


MODEL_URI_FORMS = "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH or a folder"
_ALIAS = re.compile(r"^[A-Za-z0-9_.-]+$")
MAX_MODEL_FOLDER_BYTES = 64 * 2**30  # a staged remote domain-model folder (SDXL fits)


def _parse_registered(model_uri: str) -> tuple[str, str, str]:
    """(name, "alias" | "version", value) of ``models:/NAME@ALIAS`` / ``models:/NAME/3``;
    checked before any registry call, so a typo is one clear line, not an MLflow traceback."""
    ref = model_uri[len("models:/") :]
    if "@" in ref:
        name, _, alias = ref.partition("@")
        if name and "/" not in name and _ALIAS.match(alias):
            return name, "alias", alias
    else:
        name, _, version = ref.partition("/")
        if name and version.isdigit():
            return name, "version", version
    raise ModelURIError(f"{model_uri!r} is not a model URI: use {MODEL_URI_FORMS}")


def _registry_client() -> Any:
    """An MLflow client for a read: the embedded SQLite store must exist already (opening a
    missing one would create an empty database, ./data/mlflow.db, as a side effect)."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :].split("?", 1)[0])
        if not db.exists():
            raise ModelURIError(
                f"no MLflow registry at {db} to look the model up in: set MLFLOW_TRACKING_URI "
                "to the tracking server, or pass a domain model folder"
            )
    return mlflow_module().MlflowClient()


def download_domain_model(model_uri: str, dest: str | Path | None = None) -> dict[str, Path]:
    """Local folders of a registered domain model: ``domain_model`` and maybe ``base_model``."""
    if model_uri.startswith("models:/"):
        _parse_registered(model_uri)
    _registry_client()  # refuses a missing embedded database before MLflow makes one
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
    """An :class:`~e4t.models.e4t_model.E4TModel` from ``models:/e4t-faces@candidate``, a
    ``runs:/`` URI, or a domain model folder (a path, ``file://``, ``s3://``...)."""
    from e4t import io as eio
    from e4t.models.e4t_model import E4TModel

    if not model_uri.startswith(("models:/", "runs:/")):
        if eio.is_local(model_uri):
            folder = eio.get_fs(model_uri)[1]
            return E4TModel.from_pretrained(folder, overrides={"device": device})
        check_model_folder(model_uri)
        with tempfile.TemporaryDirectory(prefix="e4t-model-") as tmp:
            eio.download_to(model_uri, tmp, max_bytes=MAX_MODEL_FOLDER_BYTES)
            return E4TModel.from_pretrained(tmp, overrides={"device": device})
    folders = download_domain_model(model_uri)
    overrides: dict[str, Any] = {"device": device}
    if "base_model" in folders:
        overrides["base_model"] = str(folders["base_model"])
    return E4TModel.from_pretrained(folders["domain_model"], overrides=overrides)


def check_model_folder(url: str) -> None:
    """Fail fast when ``url`` holds no domain model (its config file), naming the URL."""
    from e4t import io as eio
    from e4t.models.e4t_model import CONFIG_NAME

    if not eio.exists(eio.join(url, CONFIG_NAME)):
        raise FileNotFoundError(
            f"{url}: no E4T domain model there ({CONFIG_NAME} missing): pass a domain model "
            f"folder or URL (e4t pretrain writes OUTPUT/model), or {MODEL_URI_FORMS}"
        )


def resolve_model_version(model_uri: str) -> tuple[str, str] | None:
    """(registered name, version) of ``models:/name@alias`` or ``models:/name/3``; None for
    a folder or a run URI. Raises :class:`ModelURIError` (one line) for a malformed URI, a
    missing registry, or a name / alias / version the registry does not hold."""
    if not model_uri.startswith("models:/"):
        return None
    name, kind, value = _parse_registered(model_uri)
    client = _registry_client()
    from mlflow.exceptions import MlflowException

    try:
        if kind == "alias":
            return name, str(client.get_model_version_by_alias(name, value).version)
        return name, str(client.get_model_version(name, value).version)
    except MlflowException as err:
        if err.get_http_status_code() in (400, 404):  # unknown name, alias or version
            first = str(err.message).strip().splitlines()[0][:300] if err.message else ""
            raise ModelURIError(
                f"{model_uri}: the registry at {tracking_uri()} has no such model ({first})"
            ) from err
        raise


def resolve_model_version_uri(model_uri: str) -> str:
    """The pinned form of a domain-model URI, resolved once per job and recorded beside the
    URI the user gave (``model_version_uri``): ``models:/name@alias`` →
    ``models:/name/<version it points at now>``; ``models:/name/3`` as is (checked);
    ``runs:/`` as is; a local folder → its absolute path; another URL (s3://) as is."""
    if model_uri.startswith("models:/"):
        found = resolve_model_version(model_uri)
        assert found is not None
        return f"models:/{found[0]}/{found[1]}"
    if model_uri.startswith("runs:/") or "://" in model_uri:
        return model_uri
    return str(Path(model_uri).resolve())


def pin_model_uri(model_uri: str) -> str:
    """``models:/name@alias`` → ``models:/name/<version it points at now>`` (cache keys must
    not outlive an alias move); other URIs unchanged."""
    if model_uri.startswith("models:/") and "@" in model_uri:
        return resolve_model_version_uri(model_uri)
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
