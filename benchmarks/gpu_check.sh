#!/usr/bin/env bash
# GPU check (<= 8 minutes on one GPU): trains the 32x32 UNet (preset small32) for 400 steps with bf16 AMP on the
# built-in photos32 set, samples 1000 images with DDIM, DPM-Solver++(2M) and UniPC at NFE 20, and reports img/s,
# peak memory and the loss curve (benchmarks/results/gpu_check.md); then measures training throughput against the
# diffusers loop at an equal network on the GPU (benchmarks/results/image_train_gpu.md).
#
#   bash benchmarks/gpu_check.sh            # on a GPU machine
#   bash benchmarks/gpu_check.sh --quick    # tiny sizes on a CPU: checks that the scripts run (results in /tmp)
#
# PYTHON selects the interpreter (default: python). Extra arguments go to gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
if [[ " $* " == *" --quick "* ]]; then
  "$PY" benchmarks/gpu_check.py "$@"
  SCORELAB_BENCH_RESULTS="${TMPDIR:-/tmp}" "$PY" benchmarks/image_train.py --quick --skip-quality --name image_train_quick
else
  "$PY" benchmarks/gpu_check.py --device cuda "$@"
  "$PY" benchmarks/image_train.py --device cuda --amp bf16 --width 64 --batch 128 --steps 40 --warmup 10 \
    --repeats 2 --threads 4 --skip-quality --name image_train_gpu
fi
