#!/usr/bin/env bash
# The GPU readiness check (benchmarks/device_check.py): quick preset, bf16 vs fp32 OPSD steps,
# generation tokens/s at batch 1/8/32, learner step vs a plain HF step; JSON in runs/device_check.json.
#   bash benchmarks/device_check.sh                                    # CUDA when present
#   bash benchmarks/device_check.sh --device cpu --model tiny-random   # CPU smoke form
# Hard limit: 8 minutes (the script also stops starting parts after --budget-s, 480 s by default).
set -euo pipefail
cd "$(dirname "$0")/.."
# python3 unless PYTHON says otherwise: GPU images often have no plain `python` on the PATH.
exec timeout 480 "${PYTHON:-python3}" benchmarks/device_check.py "$@"
