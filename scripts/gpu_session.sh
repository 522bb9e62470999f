#!/usr/bin/env bash
# The book's GPU run, in one call on a GPU machine with no network (see chapter 20):
#   1. scripts/bench_gpu.py: training and sampling speed, ours and diffusers, on this card;
#   2. scripts/run_notebooks.py --size full: every chapter at full size, timed.
# Usage, from the repository root: OUT=/some/folder bash scripts/gpu_session.sh
# Wheels for what the machine lacks (diffusers, nbclient, ipykernel, ipywidgets and their
# dependencies) are read from $WHEELS (default .whl/) if it exists. Budgets in seconds: BENCH_S, NOTEBOOKS_S.
# TRAIN_MINUTES: chapter 07's training budget at full size (its own default is 30).
set -u
OUT=${OUT:?set OUT to the folder for the results}
BENCH_S=${BENCH_S:-290}
NOTEBOOKS_S=${NOTEBOOKS_S:-255}
TRAIN_MINUTES=${TRAIN_MINUTES:-0.75}
BENCH_ARGS=${BENCH_ARGS:-}
NOTEBOOK_ARGS=${NOTEBOOK_ARGS:---size full}
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
# The executed notebooks, in one archive (the device tool returns few files).
if [ -d "$OUT/notebooks/executed" ]; then
    tar -czf "$OUT/executed_notebooks.tar.gz" -C "$OUT/notebooks" executed && \
        rm -rf "$OUT/notebooks/executed"
fi
ls -lR "$OUT"
