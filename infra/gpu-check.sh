#!/usr/bin/env bash
# The GPU check of the personalization and pretraining work, every result as one JSON line:
#
# 1. the figures (BENCH=0 leaves them out): tuning seconds per concept at K = 1 with 16 and
#    4 draws and at the best K, peak memory, ops per step, generation seconds per image,
#    pretraining samples/s with and without gradient checkpointing;
# 2. the whole DAG once (E2E=0 leaves it out): the four jobs through their CLI, curate (or
#    the crops written as shards) → pretrain under torchrun → personalize → evaluate, with a
#    handful of steps each on DEVICE, one line per stage with its status and wall seconds.
#
# Under 5 minutes on one H100 plus model init and compilation (COMPILE=off: eager figures).
# Needs no face models and no photos for the
# figures: FACES=DIR takes aligned crops (+ NAME.mask.png), else the faces are synthetic.
# The end-to-end run takes FACES=DIR (written as shards: no curation) or PHOTOS=DIR (curated);
# personalize and evaluate find the face in each input with dlib + face-recognition-models,
# and report "skipped" where those are missing.
#
#   FACES=crops bash infra/gpu-check.sh                   # sd15-random, cuda, bf16, 512 px
#   ARCH=tiny DEVICE=cpu DTYPE=fp32 RES=64 STEPS=2 PHOTOS=photos bash infra/gpu-check.sh
#                                                         # a CPU dry run
# End-to-end knobs: E2E_PRETRAIN_STEPS (4), E2E_TUNE_STEPS (STEPS), E2E_DRAWS (4),
# NPROC (pretraining processes, 1), E2E_DIR (where the jobs write; default a temp folder).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the jobs run as subprocesses, torchrun too
DEVICE=${DEVICE:-cuda}
# the figures' tuning and sampling compiled on a GPU (compile seconds reported apart), eager
# elsewhere; COMPILE=off|default|reduce-overhead chooses
COMPILE=${COMPILE:-$([[ $DEVICE == cuda* ]] && echo default || echo off)}
common=(--arch "${ARCH:-sd15-random}" --device "$DEVICE" --dtype "${DTYPE:-bf16}"
        --resolution-px "${RES:-512}")
status=0

if [ "${BENCH:-1}" != 0 ]; then
  args=("${common[@]}" --tune-steps "${STEPS:-15}" --compile "$COMPILE")
  [ -n "${FACES:-}" ] && args+=(--faces "$FACES")
  [ -n "${SKIP:-}" ] && args+=(--skip $SKIP)
  "$PYTHON" -m e4t.cli bench gpu "${args[@]}" || status=1
fi

if [ "${E2E:-1}" != 0 ]; then
  args=("${common[@]}" --tune-steps "${E2E_TUNE_STEPS:-${STEPS:-15}}"
        --train-steps "${E2E_PRETRAIN_STEPS:-4}" --draws "${E2E_DRAWS:-4}"
        --nproc-per-node "${NPROC:-1}")
  [ -n "${E2E_DIR:-}" ] && args+=(--work-dir "$E2E_DIR")
  if [ -n "${PHOTOS:-}" ]; then
    args+=(--photos "$PHOTOS")
  elif [ -n "${FACES:-}" ]; then
    args+=(--faces "$FACES")
  fi
  if [ -n "${PHOTOS:-}${FACES:-}" ]; then
    "$PYTHON" -m e4t.cli bench e2e "${args[@]}" || status=1
  else
    echo '{"stage": "e2e", "status": "skipped", "detail": "no inputs: set FACES=DIR (aligned crops) or PHOTOS=DIR"}'
  fi
fi
exit $status
