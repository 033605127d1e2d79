#!/usr/bin/env bash
# The prepared GPU check of issue 12 (benchmarks/gpu_check.py says what it prints).
# Under 8 minutes on one H100/H200; --cpu-smoke checks it in seconds on a CPU.
#
#   benchmarks/gpu_check.sh                 # on a GPU machine, from anywhere
#   benchmarks/gpu_check.sh --cpu-smoke     # tiny sizes on the CPU
#   PYTHON=.venv/bin/python benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
echo "gpu_check: commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u '+%F %T') UTC"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 480 "$python" -m benchmarks.gpu_check "$@"
