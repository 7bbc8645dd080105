"""``e4t-full``: the paper's per-concept tuning of the encoder and the domain offsets, one
concept at a time: the reference for what batched low-rank tuning gives up (in the GPU
presets)."""

from __future__ import annotations

from collections.abc import Sequence

from e4t.evaluation.methods.base import (
    DTYPE_BYTES,
    EvalConcept,
    Method,
    OnTuned,
    PassTools,
    Tuned,
)


class E4TFull(Method):
    name = "e4t-full"
    label = "E4T, full tuning (paper)"
    description = (
        "The paper's tuning: the encoder and the domain offsets themselves, one concept at a "
        "time (rate full_tune_lr); the reference for batched low-rank tuning."
    )
    colour = "#9467bd"

    def pass_size(self, concepts_per_pass: int) -> int:
        return 1  # the domain weights are the concept: one at a time

    def tune(self, tools: PassTools, chunk: Sequence[EvalConcept], on_tuned: OnTuned) -> None:
        for concept in chunk:
            tools.tune_full(concept, on_tuned)

    def artifact_bytes(self, tools: PassTools, tuned: Tuned) -> int:
        """The whole tuned encoder and domain offsets, in the artifact dtype."""
        count = sum(p.numel() for p in tools.domain_weights())
        return count * DTYPE_BYTES[tools.artifact_dtype]
