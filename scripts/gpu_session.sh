#!/usr/bin/env bash
# The book's GPU run, in one call on a GPU machine with no network (see chapter 20):
#   1. scripts/bench_gpu.py: training and sampling speed, ours and diffusers, on this card;
#   2. scripts/run_notebooks.py --size full: every chapter at full size, timed;
#   3. scripts/sampling_quality.py: chapter 09's quality against steps, 1,000 digits a point;
#   4. the class-conditional MNIST model of chapter 10: scripts/train.py --preset
#      mnist_conditional on the bundled digits, exported, then scripts/guidance_quality.py
#      --method cfg on it (accuracy and Frechet distance against the guidance weight).
# Usage, from the repository root: OUT=/some/folder bash scripts/gpu_session.sh
# Wheels for what the machine lacks (diffusers, nbclient, ipykernel, ipywidgets and their
# dependencies) are read from $WHEELS (default .whl/) if it exists. Budgets in seconds: BENCH_S,
# NOTEBOOKS_S, QUALITY_S, CONDITIONAL_S (0 skips a step; steps 3 and 4 are off by default).
# TRAIN_MINUTES: chapter 07's training budget at full size (its own default is 30).
set -u
OUT=${OUT:?set OUT to the folder for the results}
BENCH_S=${BENCH_S:-290}
NOTEBOOKS_S=${NOTEBOOKS_S:-255}
TRAIN_MINUTES=${TRAIN_MINUTES:-0.75}
BENCH_ARGS=${BENCH_ARGS:-}
NOTEBOOK_ARGS=${NOTEBOOK_ARGS:---size full}
QUALITY_S=${QUALITY_S:-0}
QUALITY_ARGS=${QUALITY_ARGS:-}
CONDITIONAL_S=${CONDITIONAL_S:-0}
CONDITIONAL_ARGS=${CONDITIONAL_ARGS:---preset mnist_conditional --data mini_mnist}
GUIDANCE_ARGS=${GUIDANCE_ARGS:-}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
WHEELS=${WHEELS-.whl}
if [ -d "$WHEELS" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true
    $PY -c 'import sys, torch; print("torch", torch.__version__, "python", sys.version.split()[0])'
    date -u
} >"$OUT/machine.txt"
cat "$OUT/machine.txt"

# Each step has a hard limit, so that the second always runs. The benchmark's is `timeout`'s
# (SIGTERM, which it records in its JSON, then SIGKILL 10 s later); its whole output goes to
# $OUT/bench/bench_gpu.log. A budget of 0 skips that step.
if [ "$BENCH_S" -gt 0 ]; then
    mkdir -p "$OUT/bench"
    # shellcheck disable=SC2086
    timeout -k 10 $((BENCH_S - 10)) $PY scripts/bench_gpu.py --out "$OUT/bench" \
        --budget-s $((BENCH_S - 40)) --hard-limit-s $((BENCH_S - 10)) $BENCH_ARGS 2>&1 |
        tee "$OUT/bench/bench_gpu.log" | tail -n 40
    echo "bench rc=${PIPESTATUS[0]}"
fi

if [ "$NOTEBOOKS_S" -gt 0 ]; then
    # shellcheck disable=SC2086
    timeout $((NOTEBOOKS_S + 15)) $PY scripts/run_notebooks.py $NOTEBOOK_ARGS \
        --budget-s $((NOTEBOOKS_S - 60)) --hard-limit-s $((NOTEBOOKS_S - 10)) \
        --param train_minutes=$TRAIN_MINUTES --out "$OUT/notebooks" >"$OUT/notebooks.log" 2>&1
    echo "notebooks rc=$?"
    tail -n 20 "$OUT/notebooks.log"
fi
if [ "$QUALITY_S" -gt 0 ]; then
    mkdir -p "$OUT/quality"
    # shellcheck disable=SC2086
    timeout -k 10 "$QUALITY_S" $PY scripts/sampling_quality.py \
        --out "$OUT/quality/sampling_quality.json" $QUALITY_ARGS >"$OUT/quality/quality.log" 2>&1
    echo "quality rc=$?"
    tail -n 5 "$OUT/quality/quality.log"
fi

if [ "$CONDITIONAL_S" -gt 0 ]; then
    mkdir -p "$OUT/conditional"
    # Training gets the budget less a margin for the export and the scores. The run's folder
    # (with the optimizer's state, too big to return) stays on the machine, outside $OUT; the
    # exported checkpoint (float16 EMA weights, config, log, samples) comes back.
    minutes=$(awk "BEGIN { print ($CONDITIONAL_S - 90) / 60 }")
    # shellcheck disable=SC2086
    timeout -k 10 "$CONDITIONAL_S" bash -c "
        $PY scripts/train.py $CONDITIONAL_ARGS --out '${CONDITIONAL_RUN:-/tmp/conditional_run}' \
            --max-minutes $minutes --no-progress --export '$OUT/conditional/mnist_conditional' &&
        $PY scripts/guidance_quality.py --method cfg \
            --checkpoint '$OUT/conditional/mnist_conditional' \
            --out '$OUT/conditional/guidance_quality.json' $GUIDANCE_ARGS" \
        >"$OUT/conditional/conditional.log" 2>&1
    echo "conditional rc=$?"
    tail -n 5 "$OUT/conditional/conditional.log"
fi

# The executed notebooks, in one archive (the device tool returns few files).
if [ -d "$OUT/notebooks/executed" ]; then
    tar -czf "$OUT/executed_notebooks.tar.gz" -C "$OUT/notebooks" executed && \
        rm -rf "$OUT/notebooks/executed"
fi
ls -lR "$OUT"
