"""``e4t-frozen``: the e4t concepts as a stock pipeline runs their export (:mod:`e4t.export`):
one fixed v* instead of re-predicting it per step; scored on the same tuned concepts as
e4t (no tuning of its own)."""

from __future__ import annotations

from e4t.evaluation.methods.base import Method, PassTools, Tuned, tensor_bytes


class E4TFrozen(Method):
    name = "e4t-frozen"
    label = "E4T, frozen export"
    description = (
        "The e4t concepts as their stock-diffusers export runs them: stored dtype, one "
        "fixed v* (a textual-inversion word) and the deltas as a LoRA."
    )
    colour = "#17becf"
    scored_on = "e4t"

    def derive(self, tools: PassTools, tuned: Tuned) -> Tuned:
        return tools.freeze(tuned)

    def artifact_bytes(self, tools: PassTools, tuned: Tuned) -> int:
        """The word and the deltas (the LoRA): what the export writes besides the base."""
        tensors = tools.stored_tensors(tuned)
        return tensor_bytes(t for k, t in tensors.items() if k == "word" or k.startswith("delta."))
