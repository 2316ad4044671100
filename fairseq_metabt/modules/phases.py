"""Named phases of a training step, for ``scripts/benchmark.py --profile`` (issue 31).

Tasks wrap the parts of their ``train_step`` / ``optimizer_step`` in :func:`phase`; the profile is then of
the real fairseq update, not of a re-implementation.  Off (the default) a phase costs one function call and
one global read.  On (``METABT_PHASES=FILE`` in the environment, which the benchmark sets for its child
``fairseq-train``), each phase is

* a ``torch.profiler.record_function`` range, so ``torch.profiler`` traces show the same names, and
* a wall-clock timer (``time.perf_counter``, after a CUDA synchronize on GPU so the time is the phase's
  own), summed per name over the updates from ``METABT_PHASES_SKIP`` (default 5: start-up and warm-up
  left out) and written as JSON to FILE when the process exits:
  ``{"updates": N, "step_s": mean seconds per update, "phases": {name: {"s": total seconds, "n": calls}}}``,
  where ``step_s`` is the wall time from the first recorded update's start to the last one's, per update
  (fairseq's own work between the task's calls included).

Phases may nest (``train_step`` holds ``generation``); the report keeps each name's inclusive time.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import time
from typing import Dict, Iterator, List

import torch

_PATH = os.environ.get("METABT_PHASES") or None
_SKIP = int(os.environ.get("METABT_PHASES_SKIP", "5"))
_totals: Dict[str, List[float]] = {}
_updates: set = set()
_starts: Dict[int, float] = {}  # update number -> wall time of its first micro-batch
_recording = False


def enabled() -> bool:
    """True when this process records phases (``METABT_PHASES`` set)."""
    return _PATH is not None


def start_update(update_num: int) -> None:
    """Called by the task at every micro-batch: phases count once ``update_num`` reaches the skip count."""
    global _recording
    if _PATH is None:
        return
    _recording = update_num >= _SKIP
    if _recording:
        _updates.add(int(update_num))
        _starts.setdefault(int(update_num), time.perf_counter())


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Time the block as phase ``name`` (a no-op unless recording)."""
    if not _recording:
        yield
        return
    _sync()
    start = time.perf_counter()
    with torch.profiler.record_function(name):
        try:
            yield
        finally:
            _sync()
            total = _totals.setdefault(name, [0.0, 0])
            total[0] += time.perf_counter() - start
            total[1] += 1


def report() -> Dict:
    """What has been recorded so far (the JSON written at exit)."""
    nums = sorted(_starts)
    step_s = (_starts[nums[-1]] - _starts[nums[0]]) / (nums[-1] - nums[0]) if len(nums) > 1 else float("nan")
    return {"updates": len(_updates), "skip": _SKIP, "step_s": step_s,
            "phases": {k: {"s": v[0], "n": int(v[1])} for k, v in _totals.items()}}


def _write() -> None:
    if _PATH is not None and _totals:
        with open(_PATH, "w") as f:
            json.dump(report(), f, indent=1)


if _PATH is not None:
    atexit.register(_write)
