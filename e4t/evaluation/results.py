"""What an evaluation produces: the metric names, the result record and its thumbnail keys.

Its own module so that the evaluation (:mod:`e4t.evaluation.evaluate`) and the report
(:mod:`e4t.evaluation.report`) both read it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["FEW_FACES", "METRICS", "EvalResult", "ReportUrls", "count_faces", "thumb_key"]

# below this share of generated samples with a detected face, identity (and the CLIP scores
# of a face model) measure nothing: the report warns at the top, promotion refuses by default
FEW_FACES = 0.5

METRICS = (
    "identity",
    "identity_detected",
    "identity_std",
    "face_rate",
    "clip_t",
    "clip_i",
    "diversity",
    "tune_seconds",
    "artifact_bytes",
)


@dataclass
class EvalResult:
    config: dict[str, Any]
    config_hash: str
    concepts: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    samples: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    thumbnails: dict[str, bytes] = field(default_factory=dict)  # thumb_key → JPEG
    inputs: dict[str, bytes] = field(default_factory=dict)  # concept id → JPEG

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "config_hash": self.config_hash,
            "concepts": self.concepts,
            "rejected": self.rejected,
            "summary": {m: {str(k): v for k, v in by.items()} for m, by in self.summary.items()},
            "samples": self.samples,
        }


@dataclass(frozen=True)
class ReportUrls:
    """Where an evaluation wrote its files."""

    results: str  # results.json: config, concepts, every sample, the summary
    report: str  # report.html: self-contained (images inline, plots as SVG)
    summary: str  # summary.md: the table at the largest budget (the Prefect artifact)

    @classmethod
    def under(cls, output_url: str) -> ReportUrls:
        from e4t import io as eio

        return cls(
            eio.join(output_url, "results.json"),
            eio.join(output_url, "report.html"),
            eio.join(output_url, "summary.md"),
        )


def thumb_key(concept_id: str, method: str, steps: int, prompt: str) -> str:
    return f"{concept_id}|{method}|{steps}|{prompt}"


def count_faces(samples: list[dict[str, Any]]) -> tuple[int, int]:
    """(samples whose generated image had a detected face, samples scored for identity: those
    whose input had a face)."""
    scored = [s for s in samples if s.get("reference_has_face")]
    return sum(1 for s in scored if s.get("identity") is not None), len(scored)
