#!/usr/bin/env bash
# train_ddp.sh N [fairseq-train arguments...]
#
# Multi-worker fairseq training on one CPU machine: starts N ranks over gloo,
# one hand-launched process per rank.  This is the combination measured to
# work with fairseq on CPU (--distributed-no-spawn is essential: without it
# fairseq spawns nothing and exits 0 having trained nothing).  On GPUs use
# fairseq's own launch (fairseq-train --distributed-world-size N ...).
#
# Rank 0 logs to the terminal; rank r > 0 logs to $DDP_LOG_DIR/rank<r>.log
# (default: a temporary directory, printed at start).  The exit status is the
# first non-zero status of any rank.
set -euo pipefail
if [ $# -lt 1 ] || ! [[ "$1" =~ ^[0-9]+$ ]] || [ "$1" -lt 1 ]; then
  echo "usage: $0 N [fairseq-train args...]  (N = number of worker processes, >= 1)" >&2
  exit 2
fi
N="$1"; shift
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${FAIRSEQ_TRAIN:-}"
if [ -z "$BIN" ]; then
  if [ -x "$ROOT/.venv/bin/fairseq-train" ]; then BIN="$ROOT/.venv/bin/fairseq-train"; else BIN="fairseq-train"; fi
fi
PORT="${DDP_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
LOG_DIR="${DDP_LOG_DIR:-$(mktemp -d -t train_ddp.XXXXXX)}"
mkdir -p "$LOG_DIR"
echo "[train_ddp] $N ranks over gloo on tcp://127.0.0.1:$PORT; logs of ranks > 0 in $LOG_DIR" >&2

COMMON=(--cpu --distributed-world-size "$N" --distributed-init-method "tcp://127.0.0.1:$PORT"
        --distributed-no-spawn --distributed-backend gloo --ddp-backend legacy_ddp)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup INT TERM
for ((r = N - 1; r >= 0; r--)); do
  if [ "$r" -eq 0 ]; then
    "$BIN" "$@" "${COMMON[@]}" --distributed-rank 0 &
  else
    "$BIN" "$@" "${COMMON[@]}" --distributed-rank "$r" >"$LOG_DIR/rank$r.log" 2>&1 &
  fi
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do
  rc=0; wait "$p" || rc=$?
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
    status=$rc
    cleanup   # one rank failing would leave the others blocked in a collective
  fi
done
exit "$status"
