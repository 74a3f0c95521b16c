#!/usr/bin/env bash
# Issue 29's GPU check (benchmarks/gpu_check.py), run from the repository root; results and this log
# in $OUT. Arguments go to the module: --small checks the plumbing on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p "${OUT:?set OUT to the folder for the results}"
PYTHONUNBUFFERED=1 python3 -m lowssl.benchmarks.gpu_check --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
