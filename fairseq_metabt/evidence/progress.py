"""What a running recipe is doing: one line per running system at each of its dev validations, and an
overall line, read from the job logs that ``scripts/recipe_lib.sh`` writes (``WORK/logs/NAME.log``).

A recipe trains every system to convergence, which takes minutes to hours; without this the user sees one
``--- start`` line per job and then nothing until it ends. The monitor (``python -m fairseq_metabt.evidence
progress``, started by the recipe's first job) polls the logs and prints, for each job with a new
validation::

    [progress] seed1.metabt (metabt): update 850, dev loss 3.412, best 3.398 at 800, early stop after 3 more
               validations without a new best, 0.93 s/update

and then one overall line: jobs done / running / failed, time elapsed, and how long the running systems
take at most if their dev score stops improving now (the time left to their early stop at the measured
rate; a new best pushes it back by up to ``patience`` validations).
"""
import os
import re
import sys
import time
from datetime import datetime
from typing import Dict, List, Optional, TextIO, Tuple

from fairseq_metabt.evidence import convergence

_STAGE = re.compile(r"^=== train (\S+) ", re.M)
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \| INFO \| valid \|.*\| num_updates (\d+)", re.M)
# fairseq.trainer's line when a run resumes: its earlier validations are in that save dir's train.log
_RESUMED = re.compile(r"Loaded checkpoint (\S+) \(epoch \d+ @ (\d+) updates\)")


def job_state(log_text: str, patience: int, validate_every: int, metric: str = "loss",
              maximize: bool = False) -> Optional[Dict[str, object]]:
    """The training stage a job log is in: last update validated, dev score, best, validations left before
    early stopping and seconds per update (from the last validations' timestamps). ``None`` before the first
    validation of the job's current stage."""
    starts = list(_STAGE.finditer(log_text))
    if not starts:
        return None
    stage_text = log_text[starts[-1].start():]
    vals = _with_earlier_starts(stage_text, convergence.validations(stage_text, metric), metric)
    if not vals:
        return None
    best_update, best = (max if maximize else min)(vals, key=lambda uv: uv[1])
    since_best = sum(1 for u, _ in vals if u > best_update)
    stamps = [(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"), int(m.group(2)))
              for m in _STAMP.finditer(stage_text)]
    rate = None
    if len(stamps) >= 2:
        (t0, u0), (t1, u1) = stamps[max(0, len(stamps) - 4)], stamps[-1]  # the last few intervals
        if u1 > u0:
            rate = (t1 - t0).total_seconds() / (u1 - u0)
    return {"stage": starts[-1].group(1), "update": vals[-1][0], "value": vals[-1][1], "best": best,
            "best_update": best_update, "left": max(0, patience - since_best), "s_per_update": rate,
            "metric": metric, "finished": "[evidence] " in stage_text and (" converged " in stage_text
                                                                       or "capped, not converged" in stage_text)}


def _with_earlier_starts(stage_text: str, vals: List[Tuple[int, float]], metric: str) -> List[Tuple[int, float]]:
    """A resumed run's validations from its first start on: the job log holds only this start's, so the best
    and the validations left before the early stop would otherwise ignore everything before the resume
    (fairseq's early-stopping state, restored from the checkpoint, does not). Earlier validations come from
    the save dir's ``train.log`` up to the resumed update; one repeated by a later start counts once, as
    last run."""
    resumed = _RESUMED.search(stage_text)
    earlier = _read(os.path.join(os.path.dirname(resumed.group(1)), convergence.LOG)) if resumed else None
    if not earlier:
        return vals
    upto = int(resumed.group(2))
    merged = {u: v for u, v in convergence.validations(earlier, metric) if u <= upto}
    merged.update(vals)
    return sorted(merged.items())


def format_job(name: str, st: Dict[str, object]) -> str:
    rate = st["s_per_update"]
    return (f"[progress] {name} ({st['stage']}): update {st['update']}, dev {st['metric']} {st['value']:.3f}, "
            f"best {st['best']:.3f} at {st['best_update']}, early stop after {st['left']} more validations "
            f"without a new best" + (f", {rate:.2f} s/update" if rate is not None else ""))


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def scan(work_dir: str, patience: int, validate_every: int, metric: str = "loss",
         maximize: bool = False, run_id: Optional[int] = None) -> Dict[str, Dict[str, object]]:
    """``{job: {"status": running|done|failed|interrupted, "state": job_state or None}}`` for every job log of
    a recipe.

    With ``run_id`` (the recipe's pid, which ``ev_pool_run`` writes to ``NAME.started`` when it starts a
    job), a log without an exit status that this run has not started is ``interrupted``: the job of an
    earlier, stopped run, waiting for a lane (counting it as running would promise a wrong time left)."""
    logs = os.path.join(work_dir, "logs")
    out: Dict[str, Dict[str, object]] = {}
    if not os.path.isdir(logs):
        return out
    for f in sorted(os.listdir(logs)):
        if not f.endswith(".log"):
            continue
        name = f[:-4]
        rc_path = os.path.join(logs, name + ".rc")
        status = "running"
        if os.path.exists(rc_path):
            with open(rc_path, encoding="utf-8") as r:
                status = "done" if r.read().strip() == "0" else "failed"
        elif run_id is not None and _read(os.path.join(logs, name + ".started")) != str(run_id):
            status = "interrupted"
        with open(os.path.join(logs, f), encoding="utf-8", errors="replace") as g:
            text = g.read()
        out[name] = {"status": status, "state": job_state(text, patience, validate_every, metric, maximize)}
    return out


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def overall(jobs: Dict[str, Dict[str, object]], elapsed: float, validate_every: int) -> str:
    count = {k: sum(1 for j in jobs.values() if j["status"] == k)
             for k in ("done", "running", "failed", "interrupted")}
    bound, unmeasured = 0.0, 0
    for j in jobs.values():
        st = j["state"]
        if j["status"] != "running":
            continue
        if st and not st["finished"] and st["s_per_update"] is not None:
            bound = max(bound, st["left"] * validate_every * st["s_per_update"])
        else:  # no two validations of its current stage yet: no rate to extrapolate from
            unmeasured += 1
    line = (f"[progress] {_minutes(elapsed)} elapsed: {count['done']} jobs done, {count['running']} running"
            + (f", {count['failed']} FAILED" if count["failed"] else "")
            + (f", {count['interrupted']} interrupted in an earlier run (resumed when a lane frees)"
               if count["interrupted"] else ""))
    if count["running"] > unmeasured:
        line += (f"; the running systems stop within ~{_minutes(bound)} if their dev score stops improving now "
                 "(each new best adds up to the patience again; queued jobs start as lanes free up)")
    if unmeasured:
        line += f"; {unmeasured} running job(s) not yet timed (fewer than two validations in their stage)"
    return line


def monitor(work_dir: str, patience: int, validate_every: int, metric: str = "loss", maximize: bool = False,
            poll: float = 10.0, parent_pid: Optional[int] = None, out: TextIO = sys.stdout,
            max_polls: Optional[int] = None) -> None:
    """Print a line per job at each new validation, and an overall line after them, until the parent exits."""
    start = time.time()
    seen: Dict[str, object] = {}
    polls = 0
    while max_polls is None or polls < max_polls:
        polls += 1
        jobs = scan(work_dir, patience, validate_every, metric, maximize, run_id=parent_pid)
        lines: List[str] = []
        for name, j in jobs.items():
            st = j["state"]
            key = (st["stage"], st["update"]) if st else None
            if j["status"] == "running" and st and not st["finished"] and seen.get(name) != key:
                lines.append(format_job(name, st))
                seen[name] = key
        if lines:
            lines.append(overall(jobs, time.time() - start, validate_every))
            out.write("\n".join(lines) + "\n")
            out.flush()
        if parent_pid is not None and not _alive(parent_pid):
            return
        time.sleep(poll)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
