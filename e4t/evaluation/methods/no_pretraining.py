"""``no-pretraining``: E4T's tuning from a fresh encoder and zero domain offsets."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

from e4t.evaluation.methods.base import (
    EvalConcept,
    Method,
    OnTuned,
    PassTools,
    Tuned,
    tensor_bytes,
)


class NoPretraining(Method):
    name = "no-pretraining"
    label = "E4T without pretraining"
    description = (
        "E4T's tuning from a fresh (seeded) encoder and zero domain offsets: what the "
        "domain pretraining adds."
    )
    colour = "#2ca02c"
    default = True

    def prepared(self, tools: PassTools) -> AbstractContextManager[object]:
        return tools.without_pretraining()

    def tune(self, tools: PassTools, chunk: Sequence[EvalConcept], on_tuned: OnTuned) -> None:
        tools.tune_batched(chunk, on_tuned)

    def artifact_bytes(self, tools: PassTools, tuned: Tuned) -> int:
        """Every tensor of the stored concept, as e4t's."""
        return tensor_bytes(tools.stored_tensors(tuned).values())
