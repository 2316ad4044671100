#!/usr/bin/env bash
# evaluate.sh BIN_DIR --path CKPT -s SRC -t TGT [options of scripts/evaluate.py]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python
exec "$PY" "$ROOT/scripts/evaluate.py" "$@"
