#!/usr/bin/env bash
# The GPU check of the personalization and pretraining work: every figure as one JSON line
# (tuning seconds per concept at K = 1 with 16 and 4 draws and at the best K, peak memory,
# ops per step, generation seconds per image, pretraining samples/s with and without
# gradient checkpointing). Under 5 minutes on one H100. Needs no face models and no photos:
# FACES=DIR takes aligned crops (+ NAME.mask.png), else the faces are synthetic.
#
#   bash infra/gpu-check.sh                               # sd15-random, cuda, bf16, 512 px
#   ARCH=tiny DEVICE=cpu DTYPE=fp32 RES=64 STEPS=2 bash infra/gpu-check.sh   # a CPU dry run
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
args=(--arch "${ARCH:-sd15-random}" --device "${DEVICE:-cuda}" --dtype "${DTYPE:-bf16}"
      --resolution-px "${RES:-512}" --tune-steps "${STEPS:-15}")
[ -n "${FACES:-}" ] && args+=(--faces "$FACES")
[ -n "${SKIP:-}" ] && args+=(--skip $SKIP)
PYTHONPATH=. exec "$PYTHON" -m e4t.cli bench gpu "${args[@]}"
