"""Evaluate a domain model and its baselines on a set of concepts.

For every method (``e4t``; ``textual-inversion``: the class word's embedding tuned alone;
``no-pretraining``: a fresh encoder and zero offsets, tuned like E4T) each concept is
tuned once up to the largest budget, with the same seeds and draws for every method, and
at each budget in ``steps`` (0 included: the untuned start) it generates every prompt for
every seed. Each image is scored for identity (face-recognition cosine with the input's
aligned face; no face found counts as 0 and lowers the face rate), CLIP-T (its prompt,
the placeholder replaced by the class word) and CLIP-I (the input face); diversity is
measured across seeds. Budgets share one tuning run, so a budget's tuning seconds are the
seconds spent up to it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from e4t import io as eio
from e4t.config import EvaluateConfig, config_hash
from e4t.data import concepts as concept_inputs
from e4t.data.transforms import FaceInput
from e4t.evaluation.clip_score import ClipScorer, clipscore, cosines, diversity
from e4t.evaluation.identity import IdentityBackend, create_identity_backend, identity_scores
from e4t.evaluation.results import EvalResult, thumb_key
from e4t.models.base import DTYPES
from e4t.models.concept import ConceptBank
from e4t.models.e4t_model import E4TModel
from e4t.training.tune import tune_concepts, tune_full

if TYPE_CHECKING:
    from e4t.generation import FrozenConcept

THUMB_PX = 160


@dataclass
class EvalConcept:
    concept_id: str
    source: str
    face: FaceInput
    aligned: Image.Image
    name: str = ""  # the file stem or folder name the concept came from


def _jpeg(image: Image.Image, size: int = THUMB_PX) -> bytes:
    copy = image.convert("RGB")
    copy.thumbnail((size, size))
    if min(copy.size) < size:  # tiny-preset images: upscale so the grid stays legible
        copy = copy.resize((size, size), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    copy.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


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


def full_artifact_bytes(model: E4TModel, dtype: str) -> int:
    """e4t-full stores a concept's whole tuned encoder and domain offsets."""
    size = {"fp16": 2, "bf16": 2, "fp32": 4}[dtype]
    return sum(p.numel() for m in (model.encoder, model.offsets) for p in m.parameters()) * size


def artifact_bytes(bank: ConceptBank, index: int, method: str, dtype: str) -> int:
    """Bytes a concept of this method needs: the word alone for Textual Inversion; the word
    and the deltas (a LoRA) for e4t-frozen, the stock-diffusers export."""
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    tensors = bank.tensors_of(index, torch_dtype)
    if method == "textual-inversion":
        tensors = {"word": tensors["word"]}
    elif method == "e4t-frozen":
        tensors = {k: t for k, t in tensors.items() if k == "word" or k.startswith("delta.")}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def freeze_stored(model: E4TModel, bank: ConceptBank, index: int, dtype: str) -> FrozenConcept:
    """Concept ``index`` of a tuned bank as its export runs it: round-tripped through the
    dtype concepts are stored in (the tensors :meth:`ConceptBank.save` writes), then frozen
    by :func:`e4t.generation.freeze_concept` — the export's function, steps and seed.
    Leaves the stored concept attached."""
    from e4t.generation import freeze_concept

    return freeze_concept(model, bank.tensors_of(index, DTYPES[dtype]), bank.rank)


def _mean(values: list[float]) -> float:
    return float(statistics.fmean(values)) if values else float("nan")


def summarize(samples: list[dict[str, Any]], extras: dict[tuple[str, int], dict]) -> dict:
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


@contextlib.contextmanager
def _method_context(model: E4TModel, method: str, seed: int) -> Iterator[None]:
    if method == "e4t":
        yield
    else:
        with model.without_pretraining(seed):
            yield


def evaluate_concepts(
    model: E4TModel,
    concepts: list[EvalConcept],
    config: EvaluateConfig,
    rejected: list[dict[str, Any]] | None = None,
    on_progress: Callable[[float], None] | None = None,
    identity: IdentityBackend | None = None,
    scorer: ClipScorer | None = None,
) -> EvalResult:
    from e4t.generation import GenerationConfig, generate

    if not concepts:
        raise ValueError("no usable concept to evaluate (every input was rejected)")
    identity = identity or create_identity_backend(config.identity)
    scorer = scorer or ClipScorer(config.clip)
    class_word = model.config.class_word
    result = EvalResult(
        config=config.model_dump(mode="json"),
        config_hash=config_hash(config),
        concepts=[],
        rejected=list(rejected or []),
    )
    # computed once: each concept's identity and CLIP embedding, each prompt's caption
    references, clip_references = {}, {}
    input_embeds = scorer.image_embeds([c.aligned for c in concepts])
    for c, clip_ref in zip(concepts, input_embeds, strict=True):
        ref = identity.embed(c.aligned)
        references[c.concept_id] = ref
        clip_references[c.concept_id] = clip_ref
        result.inputs[c.concept_id] = _jpeg(c.aligned)
        result.concepts.append(
            {
                "concept_id": c.concept_id,
                "name": c.name,
                "source": c.source,
                "reference_has_face": ref is not None,
            }
        )
    caption_embeds = dict(
        zip(
            config.prompts,
            scorer.text_embeds([p.replace("{}", class_word) for p in config.prompts]),
            strict=True,
        )
    )
    gen = GenerationConfig(
        num_steps=config.generation_steps,
        guidance_scale=config.guidance_scale,
        height=config.resolution_px,
        width=config.resolution_px,
        batch_size=8,
    )
    budgets = set(config.steps)
    extras: dict[tuple[str, int], dict[str, list[float]]] = {}
    total = len(config.methods) * len(concepts) * len(budgets)
    done = 0

    def score(
        method: str,
        step: int,
        concept: EvalConcept,
        cls: torch.Tensor,
        frozen: torch.Tensor | None = None,
    ) -> None:
        """Generate each prompt × seed for the concept as the model stands (with one fixed
        v* when ``frozen``), and score it."""
        nonlocal done
        images = []
        for seed in config.seeds:
            images += generate(model, cls, config.prompts, 1, seed, gen, frozen_v_star=frozen)
        result.samples += _score(
            images,
            concept.concept_id,
            method,
            step,
            references[concept.concept_id],
            clip_references[concept.concept_id],
            caption_embeds,
            identity,
            scorer,
        )
        for img in images:
            if img.seed == config.seeds[0]:
                key = thumb_key(concept.concept_id, method, step, img.prompt)
                result.thumbnails[key] = _jpeg(img.image)
        done += 1
        if on_progress:
            on_progress(done / total)

    # e4t-frozen scores the concepts e4t tunes (frozen after tuning): one tuning pass for both
    frozen_wanted = "e4t-frozen" in config.methods
    passes = [m for m in config.methods if m != "e4t-frozen"]
    if frozen_wanted and "e4t" not in passes:
        passes.insert(0, "e4t")
    for method in passes:
        tune = config.tune.model_copy(update={"num_steps": max(budgets)})
        if method == "e4t-full":  # one concept at a time, the domain weights themselves
            for concept in concepts:
                cls = model.clip_cls(concept.face.clip_pixel_values[None].to(model.base.device))

                def on_full_step(
                    step: int,
                    seconds: float,
                    concept: EvalConcept = concept,
                    cls: Any = cls,
                    tune_dtype: str = tune.artifact_dtype,
                ) -> None:
                    if step not in budgets:
                        return
                    extra = extras.setdefault(("e4t-full", step), {})
                    extra.setdefault("tune_seconds", []).append(seconds)
                    extra.setdefault("artifact_bytes", []).append(
                        full_artifact_bytes(model, tune_dtype)
                    )
                    score("e4t-full", step, concept, cls)

                with model.restoring_domain_weights():
                    seed = config.seed + concept_inputs.stable_seed(concept.concept_id)
                    tune_full(model, concept.face, seed, tune, config.full_tune_lr, on_full_step)
            continue
        if method == "textual-inversion":
            tune = tune.model_copy(update={"trainable": ["word"]})
        with _method_context(model, method, config.seed):
            for start in range(0, len(concepts), config.concepts_per_pass):
                chunk = concepts[start : start + config.concepts_per_pass]

                def on_step(
                    step: int,
                    bank: ConceptBank,
                    seconds: float,
                    chunk: list[EvalConcept] = chunk,
                    method: str = method,
                    tune_dtype: str = tune.artifact_dtype,
                ) -> None:
                    if step not in budgets:
                        return
                    for index, concept in enumerate(chunk):
                        single = model.attach_concepts(bank.subset(index))
                        if method in config.methods:
                            extra = extras.setdefault((method, step), {})
                            extra.setdefault("tune_seconds", []).append(seconds / len(chunk))
                            extra.setdefault("artifact_bytes", []).append(
                                artifact_bytes(bank, index, method, tune_dtype)
                            )
                            score(method, step, concept, single.cls)
                        if method == "e4t" and frozen_wanted:
                            began = time.perf_counter()
                            frozen = freeze_stored(model, bank, index, tune_dtype)
                            extra = extras.setdefault(("e4t-frozen", step), {})
                            extra.setdefault("tune_seconds", []).append(
                                seconds / len(chunk) + time.perf_counter() - began
                            )
                            extra.setdefault("artifact_bytes", []).append(
                                artifact_bytes(bank, index, "e4t-frozen", tune_dtype)
                            )
                            score("e4t-frozen", step, concept, frozen.cls, frozen.word)

                seeds = [config.seed + concept_inputs.stable_seed(c.concept_id) for c in chunk]
                tune_concepts(
                    model,
                    [c.face for c in chunk],
                    seeds,
                    tune,
                    on_step=on_step,
                    use_encoder=method != "textual-inversion",
                )
                model.detach_concepts()
    result.summary = summarize(result.samples, extras)
    for sample in result.samples:
        sample.pop("embedding", None)
    return result


def _score(
    images: list[Any],
    concept_id: str,
    method: str,
    steps: int,
    reference: Any,
    clip_reference: torch.Tensor,
    caption_embeds: dict[str, torch.Tensor],
    identity: IdentityBackend,
    scorer: ClipScorer,
) -> list[dict[str, Any]]:
    """Each generated image's scores; its CLIP embedding is computed once for all three."""
    pil = [g.image for g in images]
    embeds = scorer.image_embeds(pil)
    clip_t = clipscore(embeds, torch.stack([caption_embeds[g.prompt] for g in images]))
    clip_i = cosines(embeds, clip_reference)
    ids = identity_scores(identity, reference, pil) if reference is not None else [None] * len(pil)
    return [
        {
            "concept_id": concept_id,
            "method": method,
            "steps": steps,
            "prompt": g.prompt,
            "seed": g.seed,
            "identity": ids[i],
            "reference_has_face": reference is not None,
            "clip_t": clip_t[i],
            "clip_i": clip_i[i],
            "embedding": embeds[i].tolist(),
        }
        for i, g in enumerate(images)
    ]


def write_outputs(result: EvalResult, output_url: str, meta: dict[str, Any]) -> dict[str, str]:
    """``results.json``, ``report.html`` and ``summary.md`` under ``output_url``."""
    from e4t.evaluation.report import render_html, render_markdown

    urls = {
        "results": eio.join(output_url, "results.json"),
        "report": eio.join(output_url, "report.html"),
        "summary": eio.join(output_url, "summary.md"),
    }
    eio.write_text(
        urls["results"],
        json.dumps(clean_json({**result.to_json(), "meta": meta}), indent=1, default=str),
    )
    eio.write_text(urls["report"], render_html(result, meta))
    eio.write_text(urls["summary"], render_markdown(result, meta))
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
) -> tuple[EvalResult, dict[str, str]]:
    """Load the concepts, evaluate every method and write results, report and summary."""
    concepts, rejected = load_concepts(concepts_url, model, config)
    result = evaluate_concepts(model, concepts, config, rejected, on_progress)
    urls = write_outputs(
        result, output_url, {**meta, "report_url": eio.join(output_url, "report.html")}
    )
    return result, urls


def eval_key(config: EvaluateConfig, concepts_url: str) -> str:
    """Two evaluations are comparable when they measure the same way on the same concepts:
    the whole config but the promotion rule and the devices, and the concepts' location."""
    import hashlib

    measured = config.model_dump(mode="json", exclude={"promotion": True, "clip": {"device"}})
    blob = json.dumps([measured, concepts_url], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
