#!/usr/bin/env bash
# Create (or reuse) .venv with torch, fairseq-fixed and this plugin.
#
# Idempotent: every step is skipped when what it installs is already there.
# Order matters: fairseq-fixed is built with --no-build-isolation against the
# torch/numpy/cython already in the venv, so pip never pulls a CUDA torch into
# an isolated build environment.
#
# Environment knobs:
#   VENV=path            where the virtual environment lives (default: <repo>/.venv)
#   PYTHON=python3.11    interpreter used to create it
#   TORCH_SPEC=...       torch requirement when torch is missing (default torch==2.13.0)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
FAIRSEQ_SPEC="${FAIRSEQ_SPEC:-fairseq-fixed==0.12.3.1}"

log() { echo "[setup_env] $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

have() { "$PY" - "$1" <<'PYEOF' >/dev/null 2>&1
import importlib.util, sys
sys.exit(0 if importlib.util.find_spec(sys.argv[1]) else 1)
PYEOF
}

"$PY" -c 'import sys; assert sys.version_info >= (3, 8), sys.version' \
  || { log "Python >= 3.8 is required (found $("$PY" --version))"; exit 1; }

if have torch; then
  log "torch already installed: $("$PY" -c 'import torch; print(torch.__version__)')"
else
  log "installing $TORCH_SPEC"
  "${PIP[@]}" install "$TORCH_SPEC"
fi

if ! have numpy || ! have Cython; then
  log "installing build prerequisites (numpy, cython, setuptools, wheel, ninja)"
  "${PIP[@]}" install numpy cython setuptools wheel ninja
fi

if (cd / && "$PY" -c 'import fairseq.models.transformer') >/dev/null 2>&1; then
  log "fairseq already importable"
else
  log "building $FAIRSEQ_SPEC against the installed torch (takes a few minutes)"
  "${PIP[@]}" install --no-build-isolation "$FAIRSEQ_SPEC"
fi

# Checked by distribution metadata from a neutral directory: the checkout itself
# is importable from the repo root whether or not it is installed.
# Reinstalled when setup.py changed since the last install (a new dependency reaches old venvs).
STAMP="$VENV/.fairseq_metabt_setup.sha256"
want="$(sha256sum "$ROOT/setup.py" | cut -d' ' -f1)"
if (cd / && "$PY" -c 'import importlib.metadata as m; m.version("fairseq-metabt")') >/dev/null 2>&1 \
   && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ] && [ -z "${SETUP_FORCE_PLUGIN:-}" ]; then
  log "fairseq_metabt already installed"
else
  log "installing the plugin (editable) with test extras"
  "${PIP[@]}" install --no-build-isolation -e "$ROOT[test]"
  echo "$want" > "$STAMP"
fi
log "ready: $VENV"
