#!/usr/bin/env bash
# prepare_data.sh RAW_DIR BIN_DIR [options of scripts/prepare_data.py]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python
exec "$PY" "$ROOT/scripts/prepare_data.py" "$@"
