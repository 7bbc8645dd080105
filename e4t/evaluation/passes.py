"""The tuning an evaluation lends its methods, and the passes it runs them in.

:class:`ModelTools` is :class:`e4t.evaluation.methods.PassTools` for one model and one
config: the batched and the full tuning loops, the no-pretraining state, the freezing of a
stored concept. :func:`plan_passes` and :func:`run_method` run each registered method's
passes; every method sees the same seeds and draws for a concept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from e4t.config import EvaluateConfig, TuneConfig
from e4t.data.concepts import stable_seed
from e4t.evaluation.methods import EvalConcept, Method, Tuned, get_method
from e4t.evaluation.methods.base import OnTuned
from e4t.models.base import DTYPES
from e4t.models.concept import ConceptBank
from e4t.models.e4t_model import E4TModel
from e4t.training.tune import tune_concepts, tune_full

if TYPE_CHECKING:
    from e4t.generation import FrozenConcept


def freeze_stored(model: E4TModel, bank: ConceptBank, index: int, dtype: str) -> FrozenConcept:
    """Concept ``index`` of a tuned bank as its export runs it: round-tripped through the
    dtype concepts are stored in (the tensors :meth:`ConceptBank.save` writes), then frozen
    by :func:`e4t.generation.freeze_concept` — the export's function, steps and seed.
    Leaves the stored concept attached."""
    from e4t.generation import freeze_concept

    return freeze_concept(model, bank.tensors_of(index, DTYPES[dtype]), bank.rank)


@dataclass
class ModelTools:
    """:class:`~e4t.evaluation.methods.PassTools` over ``model`` with ``config``'s budgets
    (``steps``: tuning runs up to the largest, reporting at each), seeds and tuning."""

    model: E4TModel
    config: EvaluateConfig

    @property
    def artifact_dtype(self) -> str:
        return self.config.tune.artifact_dtype

    @property
    def budgets(self) -> frozenset[int]:
        return frozenset(self.config.steps)

    def _tune_config(self, **update: object) -> TuneConfig:
        return self.config.tune.model_copy(update={"num_steps": max(self.budgets), **update})

    def _seed(self, concept: EvalConcept) -> int:
        return self.config.seed + stable_seed(concept.concept_id)

    def tune_batched(
        self,
        chunk: Sequence[EvalConcept],
        on_tuned: OnTuned,
        *,
        trainable: list[str] | None = None,
        use_encoder: bool = True,
    ) -> None:
        tune = self._tune_config(**({} if trainable is None else {"trainable": trainable}))

        def on_step(step: int, bank: ConceptBank, seconds: float) -> None:
            if step not in self.budgets:
                return
            for index, concept in enumerate(chunk):
                single = self.model.attach_concepts(bank.subset(index))
                on_tuned(Tuned(concept, step, seconds / len(chunk), single.cls, bank, index))

        seeds = [self._seed(c) for c in chunk]
        faces = [c.face for c in chunk]
        tune_concepts(self.model, faces, seeds, tune, on_step=on_step, use_encoder=use_encoder)
        self.model.detach_concepts()

    def tune_full(self, concept: EvalConcept, on_tuned: OnTuned) -> None:
        model = self.model
        cls = model.clip_cls(concept.face.clip_pixel_values[None].to(model.base.device))

        def on_step(step: int, seconds: float) -> None:
            if step in self.budgets:
                on_tuned(Tuned(concept, step, seconds, cls))

        with model.restoring_domain_weights():
            tune = self._tune_config()
            lr = self.config.full_tune_lr
            tune_full(model, concept.face, self._seed(concept), tune, lr, on_step)

    def without_pretraining(self) -> AbstractContextManager[object]:
        return self.model.without_pretraining(self.config.seed)

    def freeze(self, tuned: Tuned) -> Tuned:
        if tuned.bank is None:
            raise ValueError(f"{tuned.concept.concept_id}: only a batched concept freezes")
        began = time.perf_counter()
        frozen = freeze_stored(self.model, tuned.bank, tuned.index, self.artifact_dtype)
        seconds = tuned.tune_seconds + time.perf_counter() - began
        return replace(tuned, tune_seconds=seconds, cls=frozen.cls, frozen_word=frozen.word)

    def stored_tensors(self, tuned: Tuned) -> dict[str, torch.Tensor]:
        if tuned.bank is None:
            raise ValueError(f"{tuned.concept.concept_id}: no stored concept (not batched)")
        return tuned.bank.tensors_of(tuned.index, DTYPES[self.artifact_dtype])

    def domain_weights(self) -> Iterable[torch.Tensor]:
        for module in (self.model.encoder, self.model.offsets):
            yield from module.parameters()


def plan_passes(names: Sequence[str]) -> list[tuple[Method, list[Method]]]:
    """The tuning passes ``names`` need, in order: each method with its own passes, and the
    methods scored on its tuning (``scored_on``; its passes run even when it is not asked
    for itself, first)."""
    wanted = [get_method(name) for name in names]
    own = [m for m in wanted if m.scored_on is None]
    for rider in wanted:
        base = rider.scored_on
        if base is not None and all(m.name != base for m in own):
            own.insert(0, get_method(base))
    return [(m, [r for r in wanted if r.scored_on == m.name]) for m in own]


Record = Callable[[Method, Tuned], None]


def run_method(
    tools: ModelTools,
    method: Method,
    riders: list[Method],
    concepts: Sequence[EvalConcept],
    record: Record,
    scored: bool = True,
) -> None:
    """Every pass of ``method`` over ``concepts``; each tuned concept at each budget is
    recorded for ``method`` (when ``scored``) and then for each rider from it."""

    def on_tuned(tuned: Tuned) -> None:
        if scored:
            record(method, tuned)
        for rider in riders:
            record(rider, rider.derive(tools, tuned))

    size = method.pass_size(tools.config.concepts_per_pass)
    with method.prepared(tools):
        for start in range(0, len(concepts), size):
            method.tune(tools, concepts[start : start + size], on_tuned)
