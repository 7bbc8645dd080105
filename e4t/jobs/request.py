"""What every stage's request carries: the pinned model and the flat entry-point parameters
mapped to config keys once.

Each stage's job module defines its typed request (a frozen dataclass built once at the
entry: the CLI command and the flow make it from their arguments with the job's
``request(...)``) and ``FLAGS``, the one mapping from a flat parameter (the flow's argument,
the CLI's ``dest``) to its dotted config key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PinnedModel:
    """A domain model as a job uses it from its start to its end: ``uri`` as the user gave
    it (``models:/e4t-faces@candidate``), ``version_uri`` the version it named when the job
    began (``models:/e4t-faces/3``; every pass loads this one), ``fingerprint`` of that
    version as loaded (what a concept is bound to; empty until loaded)."""

    uri: str
    version_uri: str
    fingerprint: str = ""

    @classmethod
    def pin(cls, model_uri: str, device: str | None = None) -> PinnedModel:
        """Resolve ``model_uri`` now; with ``device``, also load it (this process's cached
        copy) for its fingerprint, so an unknown or broken model fails here."""
        from e4t.tracking.registry import cached_domain_model, resolve_model_version_uri

        version_uri = resolve_model_version_uri(model_uri)
        fingerprint = ""
        if device is not None:
            fingerprint = str(cached_domain_model(version_uri, device).fingerprint())
        return cls(model_uri, version_uri, fingerprint)


def config_values(flags: Mapping[str, str], params: Mapping[str, Any]) -> dict[str, Any]:
    """``{config key: value}`` of the flat parameters ``flags`` names (None = not given), for
    :func:`e4t.config.load_config`'s ``values``; ``params`` may hold other names too."""
    return {key: params.get(name) for name, key in flags.items()}
