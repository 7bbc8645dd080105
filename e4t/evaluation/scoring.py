"""Scoring a tuned concept: generate each prompt × seed and score every image for identity,
CLIP-T and CLIP-I against what was measured once per concept and prompt."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from e4t.evaluation.clip_score import ClipScorer, clipscore, cosines
from e4t.evaluation.identity import IdentityBackend, identity_scores
from e4t.evaluation.methods import EvalConcept, Method, PassTools, Tuned
from e4t.evaluation.results import EvalResult, thumb_key
from e4t.models.e4t_model import E4TModel

THUMB_PX = 160

#: (method, budget) → {"tune_seconds": [...], "artifact_bytes": [...]}, one value a concept
Costs = dict[tuple[str, int], dict[str, list[float]]]


def jpeg(image: Image.Image, size: int = THUMB_PX) -> bytes:
    copy = image.convert("RGB")
    copy.thumbnail((size, size))
    if min(copy.size) < size:  # tiny-preset images: upscale so the grid stays legible
        copy = copy.resize((size, size), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    copy.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


@dataclass(frozen=True)
class References:
    """What every method's images are scored against, measured once: each concept's
    identity embedding (None: no face in its input) and CLIP image embedding, and each
    prompt's caption embedding (the placeholder replaced by the class word)."""

    identity: dict[str, Any]
    clip: dict[str, torch.Tensor]
    captions: dict[str, torch.Tensor]


def measure_references(
    concepts: Sequence[EvalConcept],
    prompts: list[str],
    class_word: str,
    identity: IdentityBackend,
    scorer: ClipScorer,
) -> References:
    clip = scorer.image_embeds([c.aligned for c in concepts])
    captions = scorer.text_embeds([p.replace("{}", class_word) for p in prompts])
    return References(
        identity={c.concept_id: identity.embed(c.aligned) for c in concepts},
        clip={c.concept_id: e for c, e in zip(concepts, clip, strict=True)},
        captions=dict(zip(prompts, captions, strict=True)),
    )


def score_images(
    images: list[Any],
    concept_id: str,
    method: str,
    steps: int,
    refs: References,
    identity: IdentityBackend,
    scorer: ClipScorer,
) -> list[dict[str, Any]]:
    """Each generated image's scores; its CLIP embedding is computed once for all three."""
    reference = refs.identity[concept_id]
    pil = [g.image for g in images]
    embeds = scorer.image_embeds(pil)
    clip_t = clipscore(embeds, torch.stack([refs.captions[g.prompt] for g in images]))
    clip_i = cosines(embeds, refs.clip[concept_id])
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


@dataclass
class Scoring:
    """Records each method's tuned concepts into ``result``: its costs, and the scores and
    thumbnails of the images generated with it; ``on_progress`` with the share done of
    ``total`` (concepts × budgets × methods)."""

    model: E4TModel
    tools: PassTools
    prompts: list[str]
    seeds: list[int]
    generation: Any  # e4t.generation.GenerationConfig
    refs: References
    identity: IdentityBackend
    scorer: ClipScorer
    result: EvalResult
    total: int
    on_progress: Callable[[float], None] | None = None
    costs: Costs = field(default_factory=dict)
    done: int = 0

    def record(self, method: Method, tuned: Tuned) -> None:
        costs = self.costs.setdefault((method.name, tuned.steps), {})
        costs.setdefault("tune_seconds", []).append(tuned.tune_seconds)
        costs.setdefault("artifact_bytes", []).append(method.artifact_bytes(self.tools, tuned))
        self.score(method.name, tuned)

    def score(self, method: str, tuned: Tuned) -> None:
        """Generate each prompt × seed for the concept as ``tuned`` left the model (with one
        fixed v* when it holds one), and score it."""
        from e4t.generation import generate

        images = []
        for seed in self.seeds:
            images += generate(
                self.model, tuned.cls, self.prompts, 1, seed, self.generation,
                frozen_v_star=tuned.frozen_word,
            )  # fmt: skip
        cid = tuned.concept.concept_id
        self.result.samples += score_images(
            images, cid, method, tuned.steps, self.refs, self.identity, self.scorer
        )
        for img in images:
            if img.seed == self.seeds[0]:
                key = thumb_key(cid, method, tuned.steps, img.prompt)
                self.result.thumbnails[key] = jpeg(img.image)
        self.done += 1
        if self.on_progress:
            self.on_progress(self.done / self.total)
