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
from fairseq_metabt.evidence import convergence, provenance, significance
from fairseq_metabt.evidence import seeds as seed_level
from fairseq_metabt.evidence.io import atomic_write_json, read_json

EVALS = "evals.json"
ALPHA = 0.05
MIN_SEEDS = 5  # a comparison stated as a finding (README, method docs) has at least this many seeds


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
                   best_update=c.best_update, wall_s=c.wall_s, command=c.command, commit=c.commit, dirty=c.dirty,
                   starts=c.starts, early_stop_state_kept=c.early_stop_state_kept, depends_on=c.depends_on,
                   versions=c.versions, vocab_sha256=c.vocab_sha256)
    else:
        rec.update(converged=None, status="no training record", reason=None)
    put_records(work_dir, {_key(system, seed, pair): rec})
    return rec


def put_records(work_dir: str, new: Dict[str, dict]) -> None:
    """Add scored records to ``WORK/evals.json`` (replacing those with the same key)."""
    import fcntl

    os.makedirs(work_dir, exist_ok=True)
    # several seeds may be scored at once (one recipe process per seed): read-modify-write under a lock
    with open(os.path.join(work_dir, ".evals.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = load_evals(work_dir)
        records.update(new)
        atomic_write_json(os.path.join(work_dir, EVALS), {"records": records})


def _lines(path: str) -> List[str]:
    with open(path, encoding="utf-8", newline="\n") as f:
        return [line.rstrip("\n") for line in f]


def length_ratio(hyps: Sequence[str], refs: Sequence[str]) -> Optional[float]:
    """Output length over reference length in sacrebleu's BLEU tokens (what its brevity penalty reads: below 1
    the penalty is exp(1 - 1/ratio)), so a table shows when every system's output is short; None for an empty
    reference (no ratio to give)."""
    import sacrebleu

    with significance.quiet_sacrebleu():
        b = sacrebleu.metrics.BLEU().corpus_score(list(hyps), [list(refs)])
    return round(b.sys_len / b.ref_len, 3) if b.ref_len else None


def _record_length_ratio(rec: dict) -> Optional[float]:
    if not (rec.get("hyps") and rec.get("ref") and os.path.exists(rec["hyps"]) and os.path.exists(rec["ref"])):
        return None
    return length_ratio(_lines(rec["hyps"]), _lines(rec["ref"]))


def _mean_std(xs: Sequence[float]) -> Tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


RUN_FIELDS = ("converged", "status", "num_updates", "best_update", "wall_s", "starts", "early_stop_state_kept",
              "commit", "dirty", "command", "depends_on", "vocab_sha256")


def _paired(by: Dict[Tuple[str, int], dict], control: str, name: str, seeds: Sequence[int],
            test_type: str, n_samples: int) -> dict:
    """Δ of ``name`` against ``control`` on their common seeds: the pooled sacrebleu test, the per-seed
    tests, and the seed-level interval with its verdict (:mod:`.seeds`)."""
    paired = [s for s in seeds if (control, s) in by]
    if not paired:
        return {"delta": None, "delta_chrf": None, "p": None, "p_chrf": None, "p_per_seed": None, "verdict": None}
    lines = {}
    for key in {(n, s) for s in paired for n in (control, name)}:
        lines[key] = _lines(by[key]["hyps"])
    triples = [(lines[(control, s)], lines[(name, s)], _lines(by[(name, s)]["ref"])) for s in paired]
    per_seed = [_test(*t, test_type=test_type, n_samples=n_samples) for t in triples]
    pooled = _test(*[sum((list(t[i]) for t in triples), []) for i in range(3)], test_type=test_type,
                   n_samples=n_samples)
    bleu_iv, chrf_iv = seed_level.seed_level(triples, "bleu"), seed_level.seed_level(triples, "chrf")
    return {"delta": round(statistics.mean(by[(name, s)]["bleu"] - by[(control, s)]["bleu"] for s in paired), 3),
            "delta_chrf": round(statistics.mean(by[(name, s)]["chrf"] - by[(control, s)]["chrf"] for s in paired), 3),
            "p": pooled["bleu"]["p"], "p_chrf": pooled["chrf"]["p"],
            "p_per_seed": [t["bleu"]["p"] for t in per_seed], "paired_seeds": paired,
            "delta_per_seed": bleu_iv["per_seed"], "interval": bleu_iv, "interval_chrf": chrf_iv,
            "verdict": bleu_iv["verdict"], "verdict_chrf": chrf_iv["verdict"]}


def compare_pair(records: List[dict], control: str, systems: Sequence[str], test_type: str = significance.DEFAULT_TEST,
                 n_samples: int = significance.DEFAULT_SAMPLES) -> Dict[str, dict]:
    """Per-system scores of one pair, with Δ, p, the seed-level interval and verdict against ``control``
    paired by seed, and each seed's training record (provenance)."""
    by = {(r["system"], r["seed"]): r for r in records}
    seeds_of = {s: sorted(seed for (name, seed) in by if name == s) for s in systems}
    if not seeds_of.get(control):
        raise UserError(f"control system {control!r} has no scored seed; evaluate it first "
                         f"(systems scored: {sorted({r['system'] for r in records})})")
    out: Dict[str, dict] = {}
    for name in systems:
        seed_list = seeds_of[name]
        if not seed_list:
            continue
        rows = [by[(name, s)] for s in seed_list]
        entry = {"seeds": seed_list, "bleu": [r["bleu"] for r in rows], "chrf": [r["chrf"] for r in rows],
                 "converged": all(r.get("converged") is True for r in rows),
                 "status": [r.get("status") for r in rows], "n_test": [r.get("n") for r in rows],
                 "length_ratio": [_record_length_ratio(r) for r in rows],
                 "runs": [dict({k: r.get(k) for k in RUN_FIELDS}, seed=s) for s, r in zip(seed_list, rows)]}
        if name == control:
            entry.update(delta=0.0, delta_chrf=0.0, p=None, p_chrf=None, p_per_seed=None, verdict=None)
        else:
            entry.update(_paired(by, control, name, seed_list, test_type, n_samples))
        out[name] = entry
    return out


def _test(control: Sequence[str], system: Sequence[str], refs: Sequence[str], **kw) -> Dict[str, Dict[str, float]]:
    if list(control) == list(system):  # sacrebleu's test gives p = 1/(n+1) for identical outputs; no difference
        return {m: {"control": math.nan, "system": math.nan, "p": 1.0} for m in ("bleu", "chrf")}
    return significance.paired_test(control, system, refs, **kw)


def precondition(table: Dict[str, dict], system: str, reference: str, vs_ref: Optional[dict] = None) -> dict:
    """Convergence precondition: continuing ``reference`` on its own data (``system``) must not gain.

    It fails when the paired Δ is positive and either test says so: the pooled sentence test
    (p < ALPHA) or the seed-level verdict (``better``)."""
    if system not in table or reference not in table:
        return {"system": system, "reference": reference, "holds": None, "text": f"{system} or {reference} not scored"}
    vs_ref = vs_ref or {}
    a, b = table[system], table[reference]
    common = [s for s in a["seeds"] if s in b["seeds"]]
    delta = statistics.mean(a["bleu"][a["seeds"].index(s)] - b["bleu"][b["seeds"].index(s)] for s in common)
    p, verdict = vs_ref.get("p"), vs_ref.get("verdict")
    gains = delta > 0 and ((p is not None and p < ALPHA) or verdict == seed_level.BETTER)
    detail = f"Δ {delta:+.2f} BLEU{_ci_phrase(vs_ref.get('interval'))}, {verdict or 'no verdict'}, {_p_phrase(p)}"
    text = (f"continuing {reference} on its own data ({system}) no longer gains: {detail}" if not gains else
            f"NOT MET: continuing {reference} on its own data ({system}) still gains ({detail}): {reference} had "
            "not converged, so gains over it measure training length")
    return {"system": system, "reference": reference, "delta": round(delta, 3), "p": p, "verdict": verdict,
            "interval": vs_ref.get("interval"), "holds": not gains, "text": text}


def compare(work_dir: str, control: str, systems: Optional[Sequence[str]] = None,
            preconditions: Sequence[Tuple[str, str]] = (), same_schedule: Sequence[str] = (),
            also: Sequence[Tuple[str, str]] = (), command: str = "",
            corpus: str = "", title: str = "", out: Optional[str] = None,
            knobs: Optional[Dict[str, str]] = None, raw_dir: Optional[str] = None,
            compare_args: Optional[Sequence[str]] = None, **kw) -> dict:
    """Build ``WORK/summary.json`` from ``WORK/evals.json`` (see the module docstring). ``raw_dir``, the user's
    raw corpus, is recorded by :func:`provenance.corpus_record` (path, content hash, manifest);
    ``compare_args``, the CLI arguments that say what is compared, so that :mod:`.shards` can merge this
    comparison's other seeds the same way."""
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
        by = {(r["system"], r["seed"]): r for r in recs}
        test_kw = (kw.get("test_type", significance.DEFAULT_TEST), kw.get("n_samples", significance.DEFAULT_SAMPLES))
        for sys_name, ref_name in preconditions:
            vs_ref = None
            if sys_name in table and ref_name in table:
                vs_ref = _paired(by, ref_name, sys_name, table[sys_name]["seeds"], *test_kw)
                table[sys_name]["p_vs_reference"] = vs_ref["p"]
            conds.append(precondition(table, sys_name, ref_name, vs_ref))
        if conds:
            entry["preconditions"] = conds
        extra = []
        for sys_name, ctrl in also:  # further paired comparisons, e.g. a method against its closest control
            if sys_name in table and ctrl in table:
                row = _paired(by, ctrl, sys_name, table[sys_name]["seeds"], *test_kw)
                extra.append(dict(row, system=sys_name, control=ctrl))
        if extra:
            entry["also"] = extra
        if same_schedule:
            entry["schedule"] = _schedule_check(recs, same_schedule)
        result[pair] = entry
    summary: Dict[str, object] = {"title": title, "command": command, "corpus": corpus, "control": control,
                                  "provenance": dict(provenance.environment(), knobs=dict(knobs or {}))}
    if raw_dir:
        summary["corpus_record"] = provenance.corpus_record(raw_dir)
    if compare_args is not None:
        summary["compare_args"] = list(compare_args)
    if len(result) == 1:
        summary.update(next(iter(result.values())))
        summary["pair"] = pairs[0]
    else:
        summary["pairs"] = result
    atomic_write_json(out or os.path.join(work_dir, "summary.json"), summary)
    return summary


def _schedule_check(records: List[dict], systems: Sequence[str]) -> dict:
    """Fair fine-tuning: every seed of the named systems used one learning-rate schedule and stopping rule,
    and none was resumed with fairseq's early-stopping count reset (it would have trained longer)."""
    recs: Dict[str, convergence.Record] = {}
    for r in sorted(records, key=lambda r: (list(systems).index(r["system"]) if r["system"] in systems else 0,
                                            r["seed"])):
        if r["system"] in systems and r.get("save_dir") and os.path.exists(
                os.path.join(r["save_dir"], convergence.RECORD)):
            recs.setdefault(f"{r['system']} seed {r['seed']}", convergence.load(r["save_dir"]))
    problems = convergence.same_schedule(recs)
    problems += [f"{name} was resumed {rec.starts - 1} time(s) with the early-stopping count reset"
                 for name, rec in recs.items() if rec.starts > 1 and not rec.early_stop_state_kept]
    first = next(iter(recs.values()), None)
    return {"systems": list(dict.fromkeys(n.rsplit(" seed ", 1)[0] for n in recs)), "same": not problems,
            "problems": problems, "schedule": first.schedule if first else None,
            "protocol": first.protocol if first else None}


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


def _ci_phrase(iv: Optional[dict]) -> str:
    """" [lo, hi]" of a seed-level interval ("" when there is none)."""
    if not iv or iv.get("lo") is None:
        return ""
    return f" [{iv['lo']:+.2f}, {iv['hi']:+.2f}]"


def verdict_text(row: dict) -> str:
    """The verdict as a table prints it: a verdict from fewer than MIN_SEEDS seeds is marked
    (``better*``): it is indicative, and the project states no finding from it."""
    v = row.get("verdict")
    if v is None:
        return "–"
    n = (row.get("interval") or {}).get("n_seeds") or len(row.get("paired_seeds") or row.get("seeds") or [])
    return v if n >= MIN_SEEDS else f"{v}*"


def _updates(s: dict) -> str:
    runs = s.get("runs") or []
    if not runs or all(r.get("num_updates") is None for r in runs):
        return "–"
    return ", ".join(f"{r.get('best_update')}/{r.get('num_updates')}" for r in runs)


def render_table(entry: dict) -> str:
    """A markdown table of one pair's comparison: mean ± std, paired Δ with its seed-level 95 % interval and
    verdict, the pooled sentence-level p, best/last update per seed, convergence."""
    control = entry["control"]
    rows = [f"| system | BLEU mean ± std | chrF mean ± std | ΔBLEU vs {control} [95 % CI] | verdict | p (pooled) | "
            "ΔchrF | seeds | best/last update | converged |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in entry["systems"].items():
        bm, bs = _agg(s, "bleu")
        cm, cs = _agg(s, "chrf")
        if name == control:
            delta, verdict, p, dc = "(control)", "", "", ""
        else:
            delta = "–" if s.get("delta") is None else f"{s['delta']:+.2f}{_ci_phrase(s.get('interval'))}"
            verdict, p = verdict_text(s), _fmt_p(s.get("p"))
            dc = "–" if s.get("delta_chrf") is None else f"{s['delta_chrf']:+.2f}"
        conv = s.get("converged")
        if conv is None:
            conv_txt = "–"
        elif conv:
            conv_txt = "yes"
        else:
            conv_txt = "**no** (" + ", ".join(sorted({st or "no record" for st in s.get("status") or []})) + ")"
        rows.append(f"| {name} | {_pm(bm, bs)} | {_pm(cm, cs)} | {delta} | {verdict} | {p} | {dc} | "
                    f"{s.get('n_seeds') or len(s['bleu'])} | {_updates(s)} | {conv_txt} |")
    notes = [c["text"] for c in entry.get("preconditions", [])]
    ratios = _length_note(entry["systems"])
    if ratios:
        notes.append(ratios)
    for c in entry.get("also", []):
        d = "–" if c.get("delta") is None else f"{c['delta']:+.2f}{_ci_phrase(c.get('interval'))}"
        per = ", ".join(f"{x:+.2f}" for x in c.get("delta_per_seed") or [])
        notes.append(f"{c['system']} vs {c['control']} (paired by seed): ΔBLEU {d}, verdict **{verdict_text(c)}**"
                     f"{f' (per seed {per})' if per else ''}; pooled {_p_phrase(c.get('p'))}")
    sched = entry.get("schedule")
    if sched and not sched.get("same", True):
        notes.append("NOT MET: fine-tuning schedules differ: " + "; ".join(sched["problems"]))
    elif sched and sched.get("systems"):
        notes.append(f"same schedule and stopping rule for {', '.join(sched['systems'])}")
    return "\n".join(rows + ([""] + [f"- {n}" for n in notes] if notes else []))


def _length_note(systems: Dict[str, dict]) -> str:
    """One line: each system's output/reference length, mean over seeds (summaries kept before it was
    recorded have none, and print nothing)."""
    parts = []
    for name, s in systems.items():
        xs = [x for x in s.get("length_ratio") or [] if x is not None]
        if xs:
            parts.append(f"{name} {statistics.mean(xs):.2f}")
    if not parts:
        return ""
    return ("output/reference length (sacrebleu tokens, mean over seeds; below 1 BLEU's brevity penalty applies): "
            + ", ".join(parts))


def _method_line(summary: dict) -> str:
    """How the table's intervals were computed (from the first interval found)."""
    pairs = provenance.pair_entries(summary)
    for entry in pairs.values():
        for row in list(entry.get("systems", {}).values()) + entry.get("also", []):
            if row.get("interval"):
                iv = row["interval"]
                return (f"95 % interval of the mean Δ over seeds: {iv['method']}. Verdict: better/worse when the "
                        f"interval excludes 0, else level; * marks a verdict from fewer than {MIN_SEEDS} seeds "
                        "(indicative, not stated as a finding).")
    return ""


def render_summary(summary: dict) -> str:
    """Every pair's table of a summary (``pairs`` or a single pair), under its provenance caveats."""
    pairs = provenance.pair_entries(summary)
    parts = [f"**Caveat: {c}.**\n" for c in provenance.caveats(summary)]
    for pair, entry in pairs.items():
        if len(pairs) > 1 or pair:
            parts.append(f"**{pair}**\n")
        parts.append(render_table(entry) + "\n")
    method = _method_line(summary)
    if method:
        parts.append(method + "\n")
    return "\n".join(parts)


def _provenance_line(s: dict) -> str:
    prov = s.get("provenance") or {}
    if not prov:
        return ""
    v = prov.get("versions") or {}
    soft = ", ".join(f"{k} {v[k]}" for k in v if v[k])
    dirty = " (uncommitted changes)" if prov.get("dirty") else ""
    # a summary may reuse runs trained at an earlier commit: say which, so the line is not read as theirs
    trained = set(provenance.trained_at(s))  # several commits: provenance.caveats says so in the header
    runs_at = (f" (every run trained at `{next(iter(trained))[:10]}`)"
               if len(trained) == 1 and trained != {prov.get("commit")} and "unknown" not in trained else "")
    return (f"Summarised at commit `{(prov.get('commit') or 'unknown')[:10]}`{dirty}{runs_at}; {soft}; python "
            f"{prov.get('python')}; {prov.get('cores')} cores, JOBS {prov.get('jobs') or 'default'}.\n")


def _corpus_line(s: dict) -> str:
    """The recorded corpus (``corpus_record``): what it is, where it came from and its content hash."""
    rec = s.get("corpus_record")
    if not rec:
        return ""
    what = [f"preset `{rec['preset']}`" if rec.get("preset") else "",
            f"seed {rec['seed']}" if rec.get("seed") is not None else "",
            f"written by `{rec['generator']}`" if rec.get("generator") else "",
            f"kit at commit `{rec['kit_commit'][:10]}`" if rec.get("kit_commit") else "",
            (f"catalogs of {len(rec['packages'])} pinned {rec.get('distribution') or ''} packages".replace("  ", " ")
             if rec.get("packages") else "")]
    desc = f" ({rec['description']})" if rec.get("description") else ""
    return (f"Corpus files: {', '.join(w for w in what if w) or 'no manifest'}{desc}; {rec.get('files')} files, "
            f"sha256 `{(rec.get('sha256') or '')[:16]}`.\n")


def notes_path(json_path: str) -> str:
    """The human reading kept beside a tool-written result: ``NAME.notes.md`` next to ``NAME.json``."""
    return json_path[:-len(".json")] + ".notes.md"


INDICATIVE_DIR = "indicative"
INDICATIVE_HEADER = """# Indicative tables: kept before the tools recorded provenance

These comparisons were kept before summaries recorded the commit, the commands and the update counts, with 3
seeds: every system converged and each Δ has its seed-level verdict (from the kept per-seed scores), but
they are descriptions of those runs, not findings. Each is re-run under the full protocol (5 seeds,
tool-written provenance) and moves up when it is; the JSON and the reading are in
`docs/results/indicative/`.
"""


def kept_tables(results_dir: str) -> List[str]:
    """The ``NAME.json`` summaries directly in ``results_dir``, sorted: the tables with tool-written
    provenance (the ones kept before it are in its ``indicative/`` folder)."""
    return sorted(f for f in os.listdir(results_dir) if f.endswith(".json"))


def _commands_phrase(s: dict, shown_dir: str) -> str:
    """The recipe command of a summary, or of each shard it was merged from (:mod:`.shards`)."""
    if not s.get("shards"):
        return f"Command: `{s.get('command') or '–'}`."
    parts = [f"`{sh.get('command') or '–'}` (seeds {', '.join(map(str, sh['seeds']))}: `{shown_dir}/{sh['path']}`)"
             for sh in s["shards"]]
    return f"Merged from {len(parts)} shards, one recipe run each: " + "; ".join(parts) + "."


def _render_tables(results_dir: str, shown_dir: str) -> List[str]:
    out = []
    for f in kept_tables(results_dir):
        s = read_json(os.path.join(results_dir, f))
        out.append(f"## {s.get('title') or f[:-5]}\n")
        out.append(f"Source: `{shown_dir}/{f}`. {_commands_phrase(s, shown_dir)} "
                   f"Corpus: {s.get('corpus') or '–'}.\n")
        line = _corpus_line(s)
        if line:
            out.append(line)
        line = _provenance_line(s)
        if line:
            out.append(line)
        if s.get("status"):
            out.append(f"**Status: {s['status'].strip()}**\n")
        out.append(render_summary(s))
        notes_file = notes_path(os.path.join(results_dir, f))
        if os.path.exists(notes_file):
            with open(notes_file, encoding="utf-8") as nf:
                out.append(nf.read().strip() + "\n")
    return out


CATALOG_SUFFIX = "_catalog"  # docs/results/METHOD_catalog.json: METHOD's recipe on the real-text catalog kit
# the roles of the low-resource pair's two languages, as the manifests name them (synthetic / catalog kit)
_ROLES = {"lrl": "LRL", "low-resource source": "LRL", "tgt": "TGT", "target": "TGT"}


def _language_roles(s: dict) -> Dict[str, str]:
    """Language code -> LRL / TGT (other roles as named) from the summary's recorded corpus; without one, the
    synthetic presets' codes (``lrl``, ``tgt``)."""
    langs = (s.get("corpus_record") or {}).get("languages")
    if langs:
        return {code: _ROLES.get(role, role) for code, role in langs.items()}
    return {"lrl": "LRL", "tgt": "TGT"}


def comparisons(s: dict) -> Dict[Tuple[str, str, str], dict]:
    """``{(direction, system, control): row}``: every Δ a summary states on its low-resource pair, in either
    direction (``LRL→TGT``, ``TGT→LRL``), whatever the languages are called in that corpus."""
    roles = _language_roles(s)
    out: Dict[Tuple[str, str, str], dict] = {}
    for pair, entry in provenance.pair_entries(s).items():
        a, _, b = pair.partition("-")
        if sorted([roles.get(a, ""), roles.get(b, "")]) != ["LRL", "TGT"]:
            continue
        direction = f"{roles[a]}→{roles[b]}"
        control = entry["control"]
        for name, row in entry.get("systems", {}).items():
            if name != control and row.get("delta") is not None:
                out[(direction, name, control)] = dict(row, pair=pair)
        for row in entry.get("also", []):
            out[(direction, row["system"], row["control"])] = dict(row, pair=pair)
    return out


def _delta_cell(row: Optional[dict]) -> str:
    if not row or row.get("delta") is None:
        return "–"
    n = (row.get("interval") or {}).get("n_seeds") or len(row.get("paired_seeds") or [])
    seeds = f"{n} seed{'' if n == 1 else 's'}"
    return f"{row['delta']:+.2f}{_ci_phrase(row.get('interval'))} **{verdict_text(row)}** ({seeds})"


def render_side_by_side(results_dir: str) -> str:
    """One table of every comparison on the low-resource pair that a method's synthetic table
    (``METHOD.json``, else ``indicative/METHOD.json``) and its real-text table (``METHOD_catalog.json``)
    state: ΔBLEU with its 95 % interval, verdict and seeds on each corpus ("" without a real-text table)."""
    rows = []
    for f in kept_tables(results_dir):
        if not f.endswith(CATALOG_SUFFIX + ".json"):
            continue
        method = f[:-len(CATALOG_SUFFIX + ".json")]
        real = comparisons(read_json(os.path.join(results_dir, f)))
        synth: Dict[Tuple[str, str, str], dict] = {}
        for d in (results_dir, os.path.join(results_dir, INDICATIVE_DIR)):
            if os.path.exists(os.path.join(d, method + ".json")):
                synth = comparisons(read_json(os.path.join(d, method + ".json")))
                break
        for key in list(synth) + [k for k in real if k not in synth]:
            direction, system, control = key
            pairs = " / ".join(dict.fromkeys(r["pair"] for r in (synth.get(key), real.get(key)) if r))
            rows.append(f"| {method} | {direction} ({pairs}) | {system} vs {control} | {_delta_cell(synth.get(key))} "
                        f"| {_delta_cell(real.get(key))} |")
    if not rows:
        return ""
    return "\n".join([
        "# Synthetic and real text side by side\n",
        "Every comparison on the low-resource pair that a method's synthetic table and its table on the real-text "
        "catalog kit (`docs/catalog_corpus.md`) state, in the same recipe: ΔBLEU [95 % interval over seeds], "
        "verdict, seeds. A verdict marked * rests on fewer than "
        f"{MIN_SEEDS} seeds (indicative). The full tables and their readings follow.\n",
        "| method | direction (pairs) | comparison | synthetic corpus | real text (catalog kit) |",
        "|---|---|---|---|---|", *rows]) + "\n"


def render_results_md(results_dir: str, header: str = "") -> str:
    """``docs/results.md`` generated from every ``docs/results/*.json`` (never typed by hand): the synthetic and
    real-text verdicts side by side (when a ``METHOD_catalog.json`` exists), each table followed by its human
    reading from ``NAME.notes.md``; then, under their own heading, the tables in ``docs/results/indicative/``
    (kept before provenance was recorded)."""
    out = [header.rstrip() + "\n"] if header else []
    side = render_side_by_side(results_dir)
    if side:
        out.append(side)
    out += _render_tables(results_dir, "docs/results")
    indicative = os.path.join(results_dir, INDICATIVE_DIR)
    if os.path.isdir(indicative) and kept_tables(indicative):
        out.append(INDICATIVE_HEADER)
        out += _render_tables(indicative, f"docs/results/{INDICATIVE_DIR}")
    return "\n".join(out)


def add_kept_verdicts(summary: dict) -> dict:
    """Seed-level intervals and verdicts for a summary kept before they were computed, from its kept per-seed
    scores (the hypotheses are gone, so the interval lacks the sentence component; its ``method`` says so).
    Rows that already have an interval are left as they are."""
    pairs = provenance.pair_entries(summary)
    for entry in pairs.values():
        table = entry["systems"]

        def fill(row: dict, name: str, control: str) -> None:
            if row.get("interval") or name not in table or control not in table:
                return
            a, b = table[name], table[control]
            common = [s for s in a["seeds"] if s in b["seeds"]]
            if not common:
                return
            for metric, key in (("bleu", "interval"), ("chrf", "interval_chrf")):
                d = [a[metric][a["seeds"].index(s)] - b[metric][b["seeds"].index(s)] for s in common]
                row[key] = seed_level.interval(d, sentence_var=None)
            row.update(delta_per_seed=row["interval"]["per_seed"], verdict=row["interval"]["verdict"],
                       verdict_chrf=row["interval_chrf"]["verdict"], paired_seeds=common)

        for name, row in table.items():
            if name != entry["control"]:
                fill(row, name, entry["control"])
        for row in entry.get("also", []):
            fill(row, row["system"], row["control"])
        for cond in entry.get("preconditions", []):
            fill(cond, cond["system"], cond["reference"])
            if cond.get("interval"):
                cond.update(precondition(table, cond["system"], cond["reference"], cond))
    return summary
