"""The domain model of a worker process: loaded once per pinned version and device."""

from __future__ import annotations

import functools
from typing import Any

from e4t.tracking import load_domain_model, pin_model_uri


@functools.lru_cache(maxsize=2)
def _load(model_uri: str, device: str) -> Any:
    return load_domain_model(model_uri, device=device)


def domain_model(model_uri: str, device: str) -> Any:
    """``models:/name@alias`` is pinned to the version it names now, so a moved alias loads
    the new version instead of serving the cached old one."""
    return _load(pin_model_uri(model_uri), device)
