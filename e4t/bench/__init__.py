"""Benchmarks that print figures (``e4t bench ...``); never timed tests: machines are noisy.

One module per benchmark: ``curate`` (images/s by stage), ``model`` (parameters, step time,
memory), ``pretrain`` (samples/s on 1 and 2 DDP processes), ``personalize`` (seconds per
concept, one at a time and K at a time). Model benchmarks build an architecture
(``--arch``) with random weights and read the rest of the model config from the preset
``configs/model/<preset>.yaml`` that goes with it (:func:`model_config`).
"""

from e4t.bench.common import model_config
from e4t.bench.curate import CurateBench, bench_curate, make_bench_photos
from e4t.bench.model import ModelBench, bench_model
from e4t.bench.personalize import (
    OpsBench,
    PersonalizeBench,
    bench_personalize,
    bench_personalize_ops,
)
from e4t.bench.pretrain import PretrainBench, bench_pretrain

__all__ = [
    "CurateBench",
    "ModelBench",
    "OpsBench",
    "PersonalizeBench",
    "PretrainBench",
    "bench_curate",
    "bench_model",
    "bench_personalize",
    "bench_personalize_ops",
    "bench_pretrain",
    "make_bench_photos",
    "model_config",
]
