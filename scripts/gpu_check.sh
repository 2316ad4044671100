#!/usr/bin/env bash
# gpu_check.sh [--cpu] [--updates N] [--methods LIST] [--work-dir DIR] [options of scripts/gpu_check.py]
#
# GPU readiness: each of the five methods trains a few dozen updates with --amp on one GPU and,
# where two or more GPUs are visible, with --distributed-world-size 2 over NCCL; one line per run
# (ok / FAILED, updates/s, peak memory).  --cpu: a dry run of the same loop on the CPU.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python
exec "$PY" "$ROOT/scripts/gpu_check.py" "$@"
