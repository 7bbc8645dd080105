"""The evaluation methods, one registry: a method is one class in one module here
(:class:`~e4t.evaluation.methods.base.Method`: its name, report label, tuning and artifact
bytes) and one entry in :data:`METHODS`. The config's ``methods``, the CLI's
``--baselines`` choices, the evaluate flow's parameter type and the report all read it.

Importable without torch (the CLI's ``--help``, :mod:`e4t.config`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from e4t.evaluation.methods.base import EvalConcept, Method, PassTools, Tuned
from e4t.evaluation.methods.e4t import E4T
from e4t.evaluation.methods.e4t_frozen import E4TFrozen
from e4t.evaluation.methods.e4t_full import E4TFull
from e4t.evaluation.methods.no_pretraining import NoPretraining
from e4t.evaluation.methods.textual_inversion import TextualInversion

__all__ = [
    "METHODS",
    "BaselineName",
    "EvalConcept",
    "Method",
    "MethodName",
    "PassTools",
    "Tuned",
    "baseline_names",
    "default_methods",
    "get_method",
    "method_names",
    "primary_method",
]

#: name → method class, in the order the report and the choices list them
METHODS: dict[str, type[Method]] = {
    m.name: m for m in (E4T, E4TFrozen, E4TFull, TextualInversion, NoPretraining)
}


def method_names() -> list[str]:
    return list(METHODS)


def default_methods() -> list[str]:
    """What an evaluation runs when its config names no methods."""
    return [name for name, m in METHODS.items() if m.default]


def primary_method() -> str:
    """The method always evaluated (the CLI's and the flow's baselines are added to it)."""
    (name,) = (name for name, m in METHODS.items() if m.primary)
    return name


def baseline_names() -> list[str]:
    """The methods a user adds beside the primary one (``--baselines``)."""
    return [name for name, m in METHODS.items() if not m.primary]


def get_method(name: str) -> Method:
    try:
        return METHODS[name]()
    except KeyError:
        raise ValueError(f"no evaluation method {name!r} (methods: {', '.join(METHODS)})") from None


if TYPE_CHECKING:
    MethodName = str
    BaselineName = str
else:  # Literal types made from the registry: pydantic's and Prefect's schemas list the names
    MethodName = Literal[tuple(method_names())]
    BaselineName = Literal[tuple(baseline_names())]
