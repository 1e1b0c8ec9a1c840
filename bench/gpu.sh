#!/bin/sh
# The GPU benchmark in one command, on a machine with one CUDA GPU and this repository's venv (under 5 minutes
# is its budget: 100 classes x (20 + 30) synthetic 224-px JPEGs, ResNet-50, P=3, J=10, control on):
#     sh bench/gpu.sh [OUT_DIR]
# writes OUT_DIR/gpu.json (default: $OUT, else ./gpu-bench) and prints the numbers bench/gpu.py measures.
set -eu
out="${1:-${OUT:-gpu-bench}}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
PYTHONPATH="$PWD/service:$PWD" timeout 290 "$python" bench/gpu.py --device cuda --work "${TMPDIR:-/tmp}/xich-gpu" \
    --json "$out/gpu.json" 2>&1 | tee "$out/gpu.log"
