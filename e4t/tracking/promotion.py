"""The promotion policy: move ``@champion`` only when a comparable evaluation says so.

Only "the alias is not set yet" counts as "no champion": any other MLflow error (an outage,
a permission) raises, so it can never be mistaken for a free slot and promote. The move is
compare-and-set: the alias is re-read just before it moves, and left alone if it changed
since the decision read it.
"""

from __future__ import annotations

import threading
from typing import Any

from e4t.evaluation.results import FEW_FACES
from e4t.tracking.client import get_or_create_experiment, mlflow_module
from e4t.tracking.evaluation import EVALUATE_EXPERIMENT

# the re-read and the move are one step for every evaluation in this process; across
# processes MLflow has no conditional alias update, so the window is the one round trip
# between the re-read and the move (milliseconds, against an evaluation's minutes)
_MOVE_LOCK = threading.Lock()


def alias_version(client: Any, name: str, alias: str) -> str | None:
    """The version ``alias`` points at, or None when it is not set; other errors raise."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import (
        INVALID_PARAMETER_VALUE,
        RESOURCE_DOES_NOT_EXIST,
        ErrorCode,
    )

    not_set = {
        ErrorCode.Name(INVALID_PARAMETER_VALUE),
        ErrorCode.Name(RESOURCE_DOES_NOT_EXIST),
    }
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as err:
        if err.error_code in not_set and "not found" in str(err).lower():
            return None
        raise


def check_face_rate(face_rate: float | None, min_face_rate: float) -> tuple[bool, str]:
    """Whether enough generated samples held a detected face for the scores to mean anything
    (``face_rate``: the share of samples with a face; NaN: no input had one; None: not
    measured, nothing to check), and what the decision should say about it ("": nothing)."""
    if face_rate is None or (face_rate == face_rate and face_rate >= max(min_face_rate, FEW_FACES)):
        return True, ""
    known = face_rate == face_rate  # NaN: no input had a face
    shown = f"{face_rate:.0%}" if known else "none (no input had a face)"
    if min_face_rate <= 0.0:
        return True, (
            f"faces found in {shown} of the generated samples, allowed by promotion.min_face_rate=0"
        )
    if not known:
        return False, (
            "no input had a detected face, so identity was not measured "
            f"(promotion.min_face_rate={min_face_rate:g} needs faces)"
        )
    if face_rate < min_face_rate:
        return False, (
            f"faces found in only {shown} of the generated samples "
            f"(< promotion.min_face_rate={min_face_rate:g}): the model draws no faces here, "
            "so its scores say nothing about identity"
        )
    return True, f"faces found in only {shown} of the generated samples"


def decide_promotion(
    candidate: float,
    champion: float | None,
    mode: str,
    min_delta: float,
    face_rate: float | None = None,
    min_face_rate: float = 0.0,
) -> tuple[bool, str]:
    """Whether the candidate's value beats the champion's by ``min_delta`` (NaN never does),
    and why. A candidate whose samples held a face less often than ``min_face_rate`` is
    refused; one promoted with few faces (``min_face_rate=0``) says so in the reason."""
    faces_ok, faces_note = check_face_rate(face_rate, min_face_rate)
    if not faces_ok:
        return False, faces_note
    ok, why = _beats(candidate, champion, mode, min_delta)
    return ok, f"{why}; {faces_note}" if faces_note else why


def _beats(
    candidate: float, champion: float | None, mode: str, min_delta: float
) -> tuple[bool, str]:
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
    mlflow = mlflow_module()
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
    face_rate: float | None,
) -> dict[str, Any]:
    """What to do with the alias, and why; moves it when the rule says so."""
    decision: dict[str, Any] = {
        "promoted": False,
        "metric": promotion.metric,
        "alias": promotion.alias,
        "face_rate": face_rate,
    }
    if not promotion.enabled:
        return {**decision, "reason": "promotion disabled"}
    if model is None:
        return {**decision, "reason": "not a registered model version (a folder or run URI)"}
    name, version = model
    champion = alias_version(client, name, promotion.alias)
    decision.update({"model": name, "version": version, "previous": champion})
    if champion == version:
        return {**decision, "reason": f"version {version} already holds @{promotion.alias}"}
    faces_ok, faces_note = check_face_rate(face_rate, promotion.min_face_rate)
    if not faces_ok:  # whatever the champion: a model that draws no faces is not promoted
        return {**decision, "reason": faces_note}
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
    ok, why = decide_promotion(
        candidate_value,
        champion_value,
        promotion.mode,
        promotion.min_delta,
        face_rate,
        promotion.min_face_rate,
    )
    if ok:
        # compare-and-set: the alias moves only if it still names the champion this decision
        # was made against (another evaluation may have moved it meanwhile)
        with _MOVE_LOCK:
            now = alias_version(client, name, promotion.alias)
            if now != champion:
                return {
                    **decision,
                    "reason": f"@{promotion.alias} moved from v{champion} to v{now} while this "
                    "evaluation decided; not moved (evaluate against the new champion)",
                    "champion_value": champion_value,
                }
            client.set_registered_model_alias(name, promotion.alias, version)
    return {**decision, "promoted": ok, "reason": why, "champion_value": champion_value}


def promote_if_better(
    run_id: str,
    model: tuple[str, str] | None,
    candidate_value: float,
    promotion: Any,
    eval_key: str,
    experiment: str = EVALUATE_EXPERIMENT,
    face_rate: float | None = None,
) -> dict[str, Any]:
    """Move ``promotion.alias`` to the evaluated version when it beats the current holder on
    ``promotion.metric`` in a comparable evaluation (same config and concepts: ``eval_key``)
    and its samples held a face often enough (``face_rate`` against
    ``promotion.min_face_rate``). The decision, and why, is recorded as tags of the run."""
    client = mlflow_module().MlflowClient()
    decision = _promotion_decision(
        client, run_id, model, candidate_value, promotion, eval_key, experiment, face_rate
    )
    decision["candidate_value"] = candidate_value
    tags = {
        "e4t.promotion": "promoted" if decision["promoted"] else "kept",
        "e4t.promotion.reason": str(decision.get("reason", ""))[:5000],
        "e4t.promotion.previous": str(decision.get("previous")),
        "e4t.promotion.metric": promotion.metric,
        "e4t.promotion.face_rate": str(face_rate),
    }
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    return decision
