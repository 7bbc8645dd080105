"""``textual-inversion``: the class word's embedding tuned alone, no encoder, no offsets."""

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


class TextualInversion(Method):
    name = "textual-inversion"
    label = "Textual Inversion"
    description = (
        "The concept's word embedding tuned alone (from the class word), without the "
        "encoder or the domain offsets."
    )
    colour = "#1f77b4"
    default = True

    def prepared(self, tools: PassTools) -> AbstractContextManager[object]:
        return tools.without_pretraining()

    def tune(self, tools: PassTools, chunk: Sequence[EvalConcept], on_tuned: OnTuned) -> None:
        tools.tune_batched(chunk, on_tuned, trainable=["word"], use_encoder=False)

    def artifact_bytes(self, tools: PassTools, tuned: Tuned) -> int:
        """The word alone."""
        return tensor_bytes([tools.stored_tensors(tuned)["word"]])
