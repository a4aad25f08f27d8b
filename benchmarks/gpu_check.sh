#!/usr/bin/env bash
# The short GPU check (~8 min on a datacenter GPU): DDRNet-23-slim and 23 at 1024x2048 through every GPU
# path of the runtime (onnxruntime CUDA / TensorRT providers, native TensorRT FP32 / FP16 / INT8 engines
# built ahead of time and loaded from the bundle, Paddle GPU), p50 / p99 / FPS, argmax agreement with the
# CPU FP32 output. Exits non-zero when a path that should run on this GPU fails or disagrees
# (benchmarks/gpu.py says exactly what counts). Needs the train extra (export) and the runtime-gpu extra:
#   pip install -c constraints.txt -e '.[train-gpu]'   (README "Install": one GPU stack, no CPU wheel beside it)
# Results: benchmarks/results/gpu_check/gpu_check.json and the table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
exec "$PY" benchmarks/gpu.py "$@"
