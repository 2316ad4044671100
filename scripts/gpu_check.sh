#!/usr/bin/env bash
# gpu_check.sh [--cpu] [--updates N] [--methods LIST] [--backends LIST] [--work-dir DIR] [options of scripts/gpu_check.py]
#
# GPU readiness: each of the five methods trains a few dozen updates with --amp on one GPU and, where two
# or more GPUs are visible, with two workers over NCCL under legacy_ddp and pytorch_ddp ("NCCL not tested
# (1 GPU)" otherwise).  A run fails unless it trains, its forward pass ran in fp16 (a hook on one linear
# layer), both workers end with identical parameters and task state, and a backend a method cannot use is
# refused with its one line.  A run past --timeout is killed with its whole process group.  One line per
# run; exit status 1 when any failed.  --cpu: the same matrix on the CPU (gloo, bf16 autocast).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python
exec "$PY" "$ROOT/scripts/gpu_check.py" "$@"
