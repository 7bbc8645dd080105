"""What an evaluation method is: one class with its name, its place in the report, how it
tunes a pass of concepts and what its artifact weighs.

A method's module imports no e4t module but this one (and this one only for type
checking): :mod:`e4t.config` reads the registry to validate ``EvaluateConfig.methods``,
so the model and the tuning loops reach a method through the :class:`PassTools` the
evaluation lends each pass (:class:`e4t.evaluation.passes.ModelTools`). torch is imported
inside functions only: the registry loads for ``e4t --help`` and the flows' parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from e4t.data.transforms import FaceInput
    from e4t.models.concept import ConceptBank

#: bytes per stored value of a concept's artifact dtype (``tune.artifact_dtype``)
DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}


@dataclass
class EvalConcept:
    """A concept under evaluation: its input face, prepared once for every method."""

    concept_id: str
    source: str
    face: FaceInput
    aligned: Image.Image
    name: str = ""  # the file stem or folder name the concept came from


@dataclass(frozen=True)
class Tuned:
    """A concept as a method's tuning left it at one budget: what generation needs.

    ``cls`` (1, L, C): the [CLS] tokens the encoder reads; ``bank``/``index``: a batched
    pass's concept bank and this concept's row in it (None for a method that tunes the
    domain weights themselves); ``frozen_word`` (D,): one fixed v* generation uses instead
    of the encoder's per-step prediction; ``tune_seconds``: this concept's share of the
    tuning up to this budget."""

    concept: EvalConcept
    steps: int
    tune_seconds: float
    cls: torch.Tensor
    bank: ConceptBank | None = None
    index: int = 0
    frozen_word: torch.Tensor | None = None


OnTuned = Callable[[Tuned], None]


class PassTools(Protocol):
    """What the evaluation lends a method: the model's tuning loops and states, bound to
    the model and the evaluation's config (budgets, seeds, tuning settings)."""

    @property
    def artifact_dtype(self) -> str:
        """The dtype concepts are stored in (``tune.artifact_dtype``)."""
        ...

    def tune_batched(
        self,
        chunk: Sequence[EvalConcept],
        on_tuned: OnTuned,
        *,
        trainable: list[str] | None = None,
        use_encoder: bool = True,
    ) -> None:
        """Tune the chunk's concepts together up to the largest budget (``trainable``: the
        concept tensors tuned, default the config's); ``on_tuned`` at each budget, for each
        concept, with that concept alone attached."""
        ...

    def tune_full(self, concept: EvalConcept, on_tuned: OnTuned) -> None:
        """Tune the encoder and the domain offsets for one concept (restored afterwards);
        ``on_tuned`` at each budget."""
        ...

    def without_pretraining(self) -> AbstractContextManager[object]:
        """The model with a fresh encoder and zero offsets for the block."""
        ...

    def freeze(self, tuned: Tuned) -> Tuned:
        """The concept as its stock-diffusers export runs it (stored dtype, one fixed v*);
        its ``tune_seconds`` include the freezing."""
        ...

    def stored_tensors(self, tuned: Tuned) -> dict[str, torch.Tensor]:
        """The tensors a batched concept is stored as (``concept.safetensors``)."""
        ...

    def domain_weights(self) -> Iterable[torch.Tensor]:
        """The encoder's and the domain offsets' parameters."""
        ...


class Method:
    """One evaluated method. A subclass sets the class attributes and :meth:`tune` (or
    ``scored_on`` and :meth:`derive`) and :meth:`artifact_bytes`; its registry entry
    (:data:`e4t.evaluation.methods.METHODS`) makes it a config value, a CLI choice, a flow
    parameter value and a report entry."""

    name: ClassVar[str]
    label: ClassVar[str]  # a few words for the report
    description: ClassVar[str]  # what it is, one or two sentences (report, --help)
    colour: ClassVar[str]  # the report's plots
    default: ClassVar[bool] = False  # evaluated when the config names no methods
    primary: ClassVar[bool] = False  # always evaluated: the others are its baselines
    # scored on another method's tuning (no pass of its own): derive() makes its concept
    scored_on: ClassVar[str | None] = None

    def pass_size(self, concepts_per_pass: int) -> int:
        """Concepts tuned together in one pass."""
        return concepts_per_pass

    def prepared(self, tools: PassTools) -> AbstractContextManager[object]:
        """The model's state around all of this method's passes."""
        return nullcontext()

    def tune(self, tools: PassTools, chunk: Sequence[EvalConcept], on_tuned: OnTuned) -> None:
        """Tune one pass of concepts; ``on_tuned`` for each concept at each budget."""
        raise NotImplementedError(f"{self.name} has no pass of its own (scored_on)")

    def derive(self, tools: PassTools, tuned: Tuned) -> Tuned:
        """This method's concept from ``scored_on``'s tuned one (at the same budget)."""
        raise NotImplementedError(f"{self.name} tunes its own passes")

    def artifact_bytes(self, tools: PassTools, tuned: Tuned) -> int:
        """Bytes this method stores per concept."""
        raise NotImplementedError


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)
