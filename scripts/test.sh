#!/usr/bin/env bash
# The project's test command: set up .venv if needed, then run the pytest suite.
#   bash scripts/test.sh [pytest args...]
# The suite runs on every core (pytest-xdist, one worker per core, TEST_WORKERS overrides; whole test files
# stay on one worker, so a module's trained fixtures are built once). Each test's own processes use one
# thread each: most tests start fairseq-train/-generate subprocesses of tiny models, which do not speed up
# with threads, and a worker per core is what fills the machine. `-n 0` (or `-p no:xdist`) runs serially.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
PARALLEL=()
if [[ " $* " != *" -n "* && " $* " != *" --numprocesses"* && " $* " != *"no:xdist"* ]] \
   && "$ROOT/.venv/bin/python" -c 'import xdist' 2>/dev/null; then
  workers="${TEST_WORKERS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 1)}"
  [[ "$workers" =~ ^[0-9]+$ ]] || { echo "fairseq-metabt: error: TEST_WORKERS must be a number, got '$workers'" >&2; exit 2; }
  PARALLEL=(-n "$workers" --dist loadfile)
fi
exec "$ROOT/.venv/bin/python" -m pytest tests -ra "${PARALLEL[@]+"${PARALLEL[@]}"}" "$@"
