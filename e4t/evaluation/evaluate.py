"""Evaluate a domain model and its baselines on a set of concepts.

For every method of the config (the registry, :mod:`e4t.evaluation.methods`: ``e4t``;
``textual-inversion``: the class word's embedding tuned alone; ``no-pretraining``: a fresh
encoder and zero offsets, tuned like E4T; ...) each concept is tuned once up to the
largest budget (:mod:`e4t.evaluation.passes`), with the same seeds and draws for every
method, and at each budget in ``steps`` (0 included: the untuned start) it generates every
prompt for every seed. Each image is scored (:mod:`e4t.evaluation.scoring`) for identity
(face-recognition cosine with the input's aligned face; no face found counts as 0 and
lowers the face rate), CLIP-T (its prompt, the placeholder replaced by the class word) and
CLIP-I (the input face); diversity is measured across seeds. Budgets share one tuning run,
so a budget's tuning seconds are the seconds spent up to it.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from typing import Any

import torch

from e4t import io as eio
from e4t.config import EvaluateConfig, config_hash
from e4t.data import concepts as concept_inputs
from e4t.evaluation.clip_score import ClipScorer, diversity
from e4t.evaluation.identity import IdentityBackend, create_identity_backend
from e4t.evaluation.methods import EvalConcept
from e4t.evaluation.passes import ModelTools, freeze_stored, plan_passes, run_method
from e4t.evaluation.results import EvalResult, ReportUrls
from e4t.evaluation.scoring import Costs, References, Scoring, jpeg, measure_references
from e4t.models.e4t_model import E4TModel

__all__ = [
    "EvalConcept",
    "check_concepts_url",
    "clean_json",
    "eval_key",
    "evaluate_concepts",
    "freeze_stored",
    "load_concepts",
    "run_evaluation",
    "summarize",
    "write_outputs",
]


def load_concepts(
    concepts_url: str, model: E4TModel, config: EvaluateConfig
) -> tuple[list[EvalConcept], list[dict[str, Any]]]:
    """Concepts of a folder of images (as personalize-bulk reads it), or of a personalize-bulk
    output folder (its ``results.jsonl`` names each concept's source photo)."""
    results_url = eio.join(concepts_url, "results.jsonl")
    if eio.exists(results_url):
        rows = [json.loads(line) for line in eio.read_text(results_url).splitlines() if line]
        specs = [
            concept_inputs.ConceptSpec(
                r["concept_id"], [r["source"]], name=r.get("name") or r["concept_id"]
            )
            for r in rows
            if r.get("status") == "done" and r.get("source")
        ]
    else:
        specs = concept_inputs.discover_concepts(concepts_url)
    if not specs:
        raise FileNotFoundError(
            f"{concepts_url}: no concepts to evaluate (a folder of face photos, or a "
            "personalize-bulk output with results.jsonl)"
        )
    concepts, rejected = [], []
    for spec in specs[: config.max_concepts]:
        prepared = concept_inputs.prepare_face(
            spec, config.curate, config.tune, model.base.image_processor
        )
        if prepared.face is None or prepared.aligned is None:
            rejected.append(
                {"concept_id": spec.concept_id, "name": spec.name, "reason": prepared.reason}
            )
            continue
        concepts.append(
            EvalConcept(
                spec.concept_id, prepared.source or "", prepared.face, prepared.aligned, spec.name
            )
        )
    return concepts, rejected


def _mean(values: list[float]) -> float:
    return float(statistics.fmean(values)) if values else float("nan")


def summarize(samples: list[dict[str, Any]], extras: Costs) -> dict:
    """Per method, per budget: the metric means over concepts, prompts and seeds."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    keys = sorted({(s["method"], s["steps"]) for s in samples})
    for method, steps in keys:
        group = [s for s in samples if s["method"] == method and s["steps"] == steps]
        ids = [s["identity"] for s in group if s["identity"] is not None]
        scored = [s for s in group if s["reference_has_face"]]
        with_zero = [s["identity"] if s["identity"] is not None else 0.0 for s in scored]
        by_prompt: dict[tuple[str, str], list[Any]] = {}
        for s in group:
            by_prompt.setdefault((s["concept_id"], s["prompt"]), []).append(s["embedding"])
        divs = [d for d in (diversity(_stack(v)) for v in by_prompt.values()) if not math.isnan(d)]
        extra = extras.get((method, steps), {})
        out.setdefault(method, {})[steps] = {
            "identity": _mean(with_zero),
            "identity_detected": _mean(ids),
            "identity_std": float(statistics.pstdev(with_zero)) if with_zero else float("nan"),
            "face_rate": len(ids) / len(scored) if scored else float("nan"),
            "clip_t": _mean([s["clip_t"] for s in group]),
            "clip_i": _mean([s["clip_i"] for s in group]),
            "diversity": _mean(divs),
            "tune_seconds": _mean(extra.get("tune_seconds", [])),
            "artifact_bytes": _mean(extra.get("artifact_bytes", [])),
        }
    return out


def _stack(embeddings: list[list[float]]) -> torch.Tensor:
    return torch.tensor(embeddings, dtype=torch.float32)


def _describe_concepts(concepts: list[EvalConcept], refs: References, result: EvalResult) -> None:
    """Each concept's row and input thumbnail in the result."""
    for c in concepts:
        result.inputs[c.concept_id] = jpeg(c.aligned)
        result.concepts.append(
            {
                "concept_id": c.concept_id,
                "name": c.name,
                "source": c.source,
                "reference_has_face": refs.identity[c.concept_id] is not None,
            }
        )


def _start_scoring(
    model: E4TModel,
    tools: ModelTools,
    concepts: list[EvalConcept],
    result: EvalResult,
    identity: IdentityBackend,
    scorer: ClipScorer,
    on_progress: Callable[[float], None] | None,
) -> Scoring:
    """References measured once, the concepts described, generation set up."""
    from e4t.generation import GenerationConfig

    config = tools.config
    refs = measure_references(concepts, config.prompts, model.config.class_word, identity, scorer)
    _describe_concepts(concepts, refs, result)
    generation = GenerationConfig(
        num_steps=config.generation_steps,
        guidance_scale=config.guidance_scale,
        height=config.resolution_px,
        width=config.resolution_px,
        batch_size=8,
    )
    total = len(config.methods) * len(concepts) * len(set(config.steps))
    return Scoring(
        model, tools, config.prompts, config.seeds, generation, refs, identity, scorer,
        result, total, on_progress,
    )  # fmt: skip


def evaluate_concepts(
    model: E4TModel,
    concepts: list[EvalConcept],
    config: EvaluateConfig,
    rejected: list[dict[str, Any]] | None = None,
    on_progress: Callable[[float], None] | None = None,
    identity: IdentityBackend | None = None,
    scorer: ClipScorer | None = None,
) -> EvalResult:
    """Every method of ``config.methods`` (the registry, :mod:`e4t.evaluation.methods`)
    tuned on ``concepts`` and scored at each budget; the summary per method and budget."""
    if not concepts:
        raise ValueError("no usable concept to evaluate (every input was rejected)")
    result = EvalResult(
        config=config.model_dump(mode="json"),
        config_hash=config_hash(config),
        concepts=[],
        rejected=list(rejected or []),
    )
    tools = ModelTools(model, config)
    scoring = _start_scoring(
        model,
        tools,
        concepts,
        result,
        identity or create_identity_backend(config.identity),
        scorer or ClipScorer(config.clip),
        on_progress,
    )
    for method, riders in plan_passes(config.methods):
        scored = method.name in config.methods
        run_method(tools, method, riders, concepts, scoring.record, scored)
    result.summary = summarize(result.samples, scoring.costs)
    for sample in result.samples:
        sample.pop("embedding", None)
    return result


def write_outputs(result: EvalResult, output_url: str, meta: dict[str, Any]) -> ReportUrls:
    """``results.json``, ``report.html`` and ``summary.md`` under ``output_url``."""
    from e4t.evaluation.report import render_html, render_markdown

    urls = ReportUrls.under(output_url)
    eio.write_text(
        urls.results,
        json.dumps(clean_json({**result.to_json(), "meta": meta}), indent=1, default=str),
    )
    eio.write_text(urls.report, render_html(result, meta))
    eio.write_text(urls.summary, render_markdown(result, meta))
    return urls


def clean_json(value: Any) -> Any:
    """NaN → null, recursively (strict JSON; NaN marks a metric with nothing to average)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return value


def check_concepts_url(concepts_url: str) -> None:
    """Fail fast, before any model loads, when there is nothing to evaluate."""
    if eio.exists(eio.join(concepts_url, "results.jsonl")):
        return
    if not concept_inputs.discover_concepts(concepts_url):
        raise FileNotFoundError(
            f"{concepts_url}: no images to evaluate; pass a folder of face photos "
            "(one per concept, or a sub-folder per concept) or a personalize-bulk output"
        )


def run_evaluation(
    model: E4TModel,
    concepts_url: str,
    output_url: str,
    config: EvaluateConfig,
    meta: dict[str, Any],
    on_progress: Callable[[float], None] | None = None,
) -> tuple[EvalResult, ReportUrls]:
    """Load the concepts, evaluate every method and write results, report and summary."""
    concepts, rejected = load_concepts(concepts_url, model, config)
    result = evaluate_concepts(model, concepts, config, rejected, on_progress)
    urls = write_outputs(
        result, output_url, {**meta, "report_url": ReportUrls.under(output_url).report}
    )
    return result, urls


def eval_key(config: EvaluateConfig, concepts_url: str) -> str:
    """Two evaluations are comparable when they measure the same way on the same concepts:
    the whole config but the promotion rule and the devices, and the concepts' location."""
    import hashlib

    measured = config.model_dump(mode="json", exclude={"promotion": True, "clip": {"device"}})
    blob = json.dumps([measured, concepts_url], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
