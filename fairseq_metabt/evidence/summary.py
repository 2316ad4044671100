"""Scored systems, comparison summaries and the tables generated from them.

``WORK/evals.json`` holds one record per (system, seed, pair): scores, the hypotheses' file,
the reference file and how the system's training ended. ``compare`` turns these into
``WORK/summary.json``::

    {"control": NAME, "command": ..., "corpus": ..., "systems": {NAME: {"bleu": [per seed],
     "chrf": [per seed], "delta": mean paired ΔBLEU vs control, "p": p-value, "converged": bool}}}

(``"pairs": {PAIR: {...}}`` when a recipe scores several pairs or directions), and
:func:`render_results_md` generates ``docs/results.md`` from the kept summaries.
"""
import math
import os
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

from fairseq_metabt.errors import UserError
from fairseq_metabt.evidence import convergence, significance
from fairseq_metabt.evidence.io import atomic_write_json, read_json

EVALS = "evals.json"
ALPHA = 0.05


def _key(system: str, seed: int, pair: str) -> str:
    return f"{system}|{seed}|{pair}"


def load_evals(work_dir: str) -> Dict[str, dict]:
    path = os.path.join(work_dir, EVALS)
    return read_json(path)["records"] if os.path.exists(path) else {}


def add_eval(work_dir: str, system: str, seed: int, pair: str, scores: dict, hyps_path: str, ref_path: str,
             save_dir: Optional[str]) -> dict:
    """Record one scored system (replacing an earlier record of the same system, seed and pair)."""
    rec = {"system": system, "seed": int(seed), "pair": pair, "bleu": scores["bleu"], "chrf": scores["chrf"],
           "n": scores.get("n"), "bleu_signature": scores.get("bleu_signature"), "hyps": os.path.abspath(hyps_path),
           "ref": os.path.abspath(ref_path), "save_dir": os.path.abspath(save_dir) if save_dir else None}
    if save_dir and os.path.exists(os.path.join(save_dir, convergence.RECORD)):
        c = convergence.load(save_dir)
        rec.update(converged=c.converged, status=c.status, reason=c.reason, num_updates=c.num_updates,
                   best_update=c.best_update)
    else:
        rec.update(converged=None, status="no training record", reason=None)
    import fcntl

    os.makedirs(work_dir, exist_ok=True)
    # several seeds may be scored at once (one recipe process per seed): read-modify-write under a lock
    with open(os.path.join(work_dir, ".evals.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = load_evals(work_dir)
        records[_key(system, seed, pair)] = rec
        atomic_write_json(os.path.join(work_dir, EVALS), {"records": records})
    return rec


def _lines(path: str) -> List[str]:
    with open(path, encoding="utf-8", newline="\n") as f:
        return [line.rstrip("\n") for line in f]


def _mean_std(xs: Sequence[float]) -> Tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def compare_pair(records: List[dict], control: str, systems: Sequence[str], test_type: str = significance.DEFAULT_TEST,
                 n_samples: int = significance.DEFAULT_SAMPLES) -> Dict[str, dict]:
    """Per-system scores of one pair, with Δ and p against ``control`` paired by seed."""
    by = {(r["system"], r["seed"]): r for r in records}
    seeds_of = {s: sorted(seed for (name, seed) in by if name == s) for s in systems}
    if not seeds_of.get(control):
        raise UserError(f"control system {control!r} has no scored seed; evaluate it first "
                         f"(systems scored: {sorted({r['system'] for r in records})})")
    out: Dict[str, dict] = {}
    for name in systems:
        seeds = seeds_of[name]
        if not seeds:
            continue
        rows = [by[(name, s)] for s in seeds]
        entry = {"seeds": seeds, "bleu": [r["bleu"] for r in rows], "chrf": [r["chrf"] for r in rows],
                 "converged": all(r.get("converged") is True for r in rows),
                 "status": [r.get("status") for r in rows], "n_test": [r.get("n") for r in rows]}
        paired = [s for s in seeds if (control, s) in by]
        if name == control:
            entry.update(delta=0.0, delta_chrf=0.0, p=None, p_chrf=None, p_per_seed=None)
        elif paired:
            triples = [(_lines(by[(control, s)]["hyps"]), _lines(by[(name, s)]["hyps"]), _lines(by[(name, s)]["ref"]))
                       for s in paired]
            per_seed = [_test(*t, test_type=test_type, n_samples=n_samples) for t in triples]
            pooled = _test(*[sum((list(t[i]) for t in triples), []) for i in range(3)], test_type=test_type,
                           n_samples=n_samples)
            entry.update(
                delta=round(statistics.mean(by[(name, s)]["bleu"] - by[(control, s)]["bleu"] for s in paired), 3),
                delta_chrf=round(statistics.mean(by[(name, s)]["chrf"] - by[(control, s)]["chrf"] for s in paired), 3),
                p=pooled["bleu"]["p"], p_chrf=pooled["chrf"]["p"],
                p_per_seed=[t["bleu"]["p"] for t in per_seed], paired_seeds=paired)
        else:
            entry.update(delta=None, delta_chrf=None, p=None, p_chrf=None, p_per_seed=None)
        out[name] = entry
    return out


def _test(control: Sequence[str], system: Sequence[str], refs: Sequence[str], **kw) -> Dict[str, Dict[str, float]]:
    if list(control) == list(system):  # sacrebleu's test gives p = 1/(n+1) for identical outputs; no difference
        return {m: {"control": math.nan, "system": math.nan, "p": 1.0} for m in ("bleu", "chrf")}
    return significance.paired_test(control, system, refs, **kw)


def precondition(table: Dict[str, dict], system: str, reference: str) -> dict:
    """Convergence precondition: continuing ``reference`` on its own data (``system``) must not gain.

    It holds when the paired Δ is not positive or not significant (p >= ALPHA)."""
    if system not in table or reference not in table:
        return {"system": system, "reference": reference, "holds": None, "text": f"{system} or {reference} not scored"}
    a, b = table[system], table[reference]
    seeds = [s for s in a["seeds"] if s in b["seeds"]]
    delta = statistics.mean(a["bleu"][a["seeds"].index(s)] - b["bleu"][b["seeds"].index(s)] for s in seeds)
    p = a.get("p_vs_reference")
    holds = delta <= 0 or (p is not None and p >= ALPHA)
    text = (f"continuing {reference} on its own data ({system}) no longer gains: Δ {delta:+.2f} BLEU, {_p_phrase(p)}"
            if holds else
            f"NOT MET: continuing {reference} on its own data ({system}) still gains Δ {delta:+.2f} BLEU "
            f"({_p_phrase(p)}): {reference} had not converged, so gains over it measure training length")
    return {"system": system, "reference": reference, "delta": round(delta, 3), "p": p, "holds": holds, "text": text}


def compare(work_dir: str, control: str, systems: Optional[Sequence[str]] = None,
            preconditions: Sequence[Tuple[str, str]] = (), same_schedule: Sequence[str] = (),
            also: Sequence[Tuple[str, str]] = (), command: str = "",
            corpus: str = "", title: str = "", out: Optional[str] = None, **kw) -> dict:
    """Build ``WORK/summary.json`` from ``WORK/evals.json`` (see the module docstring)."""
    records = list(load_evals(work_dir).values())
    if not records:
        raise UserError(f"no scored systems in {os.path.join(work_dir, EVALS)}; run "
                         "`python -m fairseq_metabt.evidence evaluate` for each system first")
    if systems is None:
        systems = list(dict.fromkeys(r["system"] for r in records))
    systems = list(systems)
    if control not in systems:
        systems.insert(0, control)
    pairs = sorted({r["pair"] for r in records})
    result: Dict[str, dict] = {}
    for pair in pairs:
        recs = [r for r in records if r["pair"] == pair]
        table = compare_pair(recs, control, systems, **kw)
        entry: Dict[str, object] = {"control": control, "systems": table}
        conds = []
        for sys_name, ref_name in preconditions:
            if sys_name in table and ref_name in table:
                vs_ref = compare_pair(recs, ref_name, [ref_name, sys_name], **kw)[sys_name]
                table[sys_name]["p_vs_reference"] = vs_ref["p"]
            conds.append(precondition(table, sys_name, ref_name))
        if conds:
            entry["preconditions"] = conds
        extra = []
        for sys_name, ctrl in also:  # further paired comparisons, e.g. a method against its closest control
            if sys_name in table and ctrl in table:
                row = compare_pair(recs, ctrl, [ctrl, sys_name], **kw)[sys_name]
                extra.append({"system": sys_name, "control": ctrl, "delta": row["delta"], "p": row["p"],
                              "delta_chrf": row["delta_chrf"], "p_chrf": row["p_chrf"],
                              "p_per_seed": row["p_per_seed"]})
        if extra:
            entry["also"] = extra
        if same_schedule:
            entry["schedule"] = _schedule_check(recs, same_schedule)
        result[pair] = entry
    summary: Dict[str, object] = {"title": title, "command": command, "corpus": corpus, "control": control}
    if len(result) == 1:
        summary.update(next(iter(result.values())))
        summary["pair"] = pairs[0]
    else:
        summary["pairs"] = result
    atomic_write_json(out or os.path.join(work_dir, "summary.json"), summary)
    return summary


def _schedule_check(records: List[dict], systems: Sequence[str]) -> dict:
    """Fair fine-tuning: the named systems' stages used one learning-rate schedule and stopping rule."""
    recs = {}
    for r in records:
        if r["system"] in systems and r.get("save_dir") and os.path.exists(
                os.path.join(r["save_dir"], convergence.RECORD)):
            recs.setdefault(r["system"], convergence.load(r["save_dir"]))
    problems = convergence.same_schedule(recs)
    first = next(iter(recs.values()), None)
    return {"systems": list(recs), "same": not problems, "problems": problems,
            "schedule": first.schedule if first else None, "protocol": first.protocol if first else None}


def _p_phrase(p: Optional[float]) -> str:
    """"p < 0.001" / "p = 0.123" / "p –" for prose."""
    text = _fmt_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _fmt_p(p: Optional[float]) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _agg(row: dict, metric: str) -> Tuple[Optional[float], Optional[float]]:
    """Mean and std over seeds; a legacy record without per-seed scores carries ``METRIC_mean``/``_std``."""
    vals = [v for v in row.get(metric) or [] if v is not None]
    if vals:
        return _mean_std(vals)
    return row.get(f"{metric}_mean"), row.get(f"{metric}_std")


def _pm(mean: Optional[float], std: Optional[float]) -> str:
    if mean is None:
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def render_table(entry: dict) -> str:
    """A markdown table of one pair's comparison: mean ± std, paired Δ and p, convergence."""
    control = entry["control"]
    rows = [f"| system | BLEU mean ± std | chrF mean ± std | ΔBLEU vs {control} | p | ΔchrF | seeds | converged |",
            "|---|---|---|---|---|---|---|---|"]
    for name, s in entry["systems"].items():
        bm, bs = _agg(s, "bleu")
        cm, cs = _agg(s, "chrf")
        if name == control:
            delta, p, dc = "(control)", "", ""
        else:
            delta = "–" if s.get("delta") is None else f"{s['delta']:+.2f}"
            p = _fmt_p(s.get("p"))
            dc = "–" if s.get("delta_chrf") is None else f"{s['delta_chrf']:+.2f}"
        conv = s.get("converged")
        if conv is None:
            conv_txt = "–"
        elif conv:
            conv_txt = "yes"
        else:
            conv_txt = "**no** (" + ", ".join(sorted({st or "no record" for st in s.get("status") or []})) + ")"
        rows.append(f"| {name} | {_pm(bm, bs)} | {_pm(cm, cs)} | {delta} | {p} | {dc} | "
                    f"{s.get('n_seeds') or len(s['bleu'])} | {conv_txt} |")
    notes = [c["text"] for c in entry.get("preconditions", [])]
    for c in entry.get("also", []):
        d = "–" if c.get("delta") is None else f"{c['delta']:+.2f}"
        notes.append(f"{c['system']} vs {c['control']} (paired by seed): ΔBLEU {d}, {_p_phrase(c.get('p'))}")
    sched = entry.get("schedule")
    if sched and not sched.get("same", True):
        notes.append("NOT MET: fine-tuning schedules differ: " + "; ".join(sched["problems"]))
    elif sched and sched.get("systems"):
        notes.append(f"same schedule and stopping rule for {', '.join(sched['systems'])}")
    return "\n".join(rows + ([""] + [f"- {n}" for n in notes] if notes else []))


def render_summary(summary: dict) -> str:
    """Every pair's table of a summary (``pairs`` or a single pair)."""
    pairs = summary.get("pairs") or {summary.get("pair", ""): summary}
    parts = []
    for pair, entry in pairs.items():
        if len(pairs) > 1 or pair:
            parts.append(f"**{pair}**\n")
        parts.append(render_table(entry) + "\n")
    return "\n".join(parts)


def render_results_md(results_dir: str, header: str = "") -> str:
    """``docs/results.md`` generated from every ``docs/results/*.json`` (never typed by hand)."""
    files = sorted(f for f in os.listdir(results_dir) if f.endswith(".json"))
    out = [header.rstrip() + "\n"] if header else []
    for f in files:
        s = read_json(os.path.join(results_dir, f))
        out.append(f"## {s.get('title') or f[:-5]}\n")
        out.append(f"Source: `docs/results/{f}`. Command: `{s.get('command') or '–'}`. "
                   f"Corpus: {s.get('corpus') or '–'}.\n")
        if s.get("status"):
            out.append(f"**Status: {s['status'].strip()}**\n")
        out.append(render_summary(s))
        if s.get("notes"):
            notes = s["notes"] if isinstance(s["notes"], list) else [s["notes"]]
            out.append("\n\n".join(n.strip() for n in notes) + "\n")
    return "\n".join(out)
