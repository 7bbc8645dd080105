"""``e4t``: the pretrained encoder and domain offsets, each concept's word and low-rank
deltas tuned in batched passes (what personalize-bulk does)."""

from __future__ import annotations

from collections.abc import Sequence

from e4t.evaluation.methods.base import (
    EvalConcept,
    Method,
    OnTuned,
    PassTools,
    Tuned,
    tensor_bytes,
)


class E4T(Method):
    name = "e4t"
    label = "E4T"
    description = (
        "The pretrained domain model: each concept's word and low-rank deltas tuned in "
        "batched passes, v* re-predicted by the encoder at every sampling step."
    )
    colour = "#d62728"
    default = True
    primary = True

    def tune(self, tools: PassTools, chunk: Sequence[EvalConcept], on_tuned: OnTuned) -> None:
        tools.tune_batched(chunk, on_tuned)

    def artifact_bytes(self, tools: PassTools, tuned: Tuned) -> int:
        """Every tensor of the stored concept ([CLS] tokens, word, deltas, head)."""
        return tensor_bytes(tools.stored_tensors(tuned).values())
