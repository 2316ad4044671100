"""One comparison, trained over several sessions: shards of a recipe's scored runs, and their merge.

A converged multi-seed comparison on real text takes longer than one working session of a 2-core machine,
and the machine that trained it may not be there the next time. A **shard** keeps what a finished recipe
invocation (usually one seed, ``--seeds K``) needs for the table, without its checkpoints, so it can be
committed beside the results:

    SHARD/summary.json     the recipe's own summary (its command, knobs, corpus record and compare arguments)
    SHARD/evals.json       its scored runs, with paths relative to SHARD
    SHARD/hyps/*.hyp       each run's detokenised test output
    SHARD/refs/*.ref       the references (one file per distinct content)
    SHARD/runs/.../        each run's convergence record (update counts, command, commit) and its small
                           JSON-lines logs (e.g. the DDS scorer's ``dds_log.jsonl``)

:func:`merge` builds one summary from several shards exactly as ``compare`` builds it from one work
directory, after checking that the shards are parts of the same comparison: the same compare arguments
(control, systems, checks, title), the same knobs, the same corpus (content hash), and no run twice.
"""
import hashlib
import os
import shutil
import tempfile
from typing import Callable, Dict, List, Optional, Sequence

from fairseq_metabt.data.raw_layout import sha256_file
from fairseq_metabt.errors import UserError
from fairseq_metabt.evidence import convergence, summary as summary_mod
from fairseq_metabt.evidence.io import atomic_write_json, read_json

SUMMARY = "summary.json"
MAX_LOG_BYTES = 5 * 1024 * 1024  # a run's JSON-lines log larger than this stays behind (shards are committed)


def _require_empty(dest: str) -> None:
    if os.path.isdir(dest) and os.listdir(dest):
        raise UserError(f"shard directory {dest} is not empty", "archive into a new directory; an existing shard "
                        "is never overwritten")
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise UserError(f"{dest} exists and is not a directory", "name a new directory")


def archive(work_dir: str, dest: str, summary_path: Optional[str] = None) -> Dict[str, object]:
    """Copy the scored runs of a finished recipe's ``work_dir`` into the shard ``dest`` (absent or empty).

    ``summary_path`` (default ``WORK/results/summary.json``, where the recipes write it) must exist: a shard
    is a finished invocation, with its command and compare arguments. Returns the shard's ``evals.json``."""
    summary_path = summary_path or os.path.join(work_dir, "results", SUMMARY)
    evals = summary_mod.load_evals(work_dir)
    if not evals:
        raise UserError(f"no scored systems in {os.path.join(work_dir, summary_mod.EVALS)}",
                        "archive the work directory of a recipe that has scored its systems")
    if not os.path.exists(summary_path):
        raise UserError(f"{summary_path} is missing: the recipe has not written its table",
                        "run the recipe to its end (it reuses finished runs) before archiving")
    s = read_json(summary_path)
    if "compare_args" not in s:
        raise UserError(f"{summary_path} does not record its compare arguments (written before shards existed)",
                        "re-run the recipe at this commit: it reuses the finished runs and rewrites the summary")
    _require_empty(dest)
    for key, rec in sorted(evals.items()):  # checked before anything is written: no half-made shard
        for path in (rec["hyps"], rec["ref"]):
            if not os.path.exists(path):
                raise UserError(f"{path}, recorded for {key} in {work_dir}/evals.json, is missing",
                                "re-run the recipe's scoring step (it reuses finished trainings)")
    os.makedirs(dest, exist_ok=True)
    records: Dict[str, dict] = {}
    refs: Dict[str, str] = {}  # sha -> relative path
    runs: Dict[str, str] = {}  # save_dir -> relative path
    for key, rec in sorted(evals.items()):
        rec = dict(rec)
        hyp_rel = os.path.join("hyps", f"{rec['system']}.seed{rec['seed']}.{rec['pair']}.hyp")
        os.makedirs(os.path.join(dest, "hyps"), exist_ok=True)
        shutil.copyfile(rec["hyps"], os.path.join(dest, hyp_rel))
        sha = sha256_file(rec["ref"])
        if sha not in refs:
            refs[sha] = os.path.join("refs", f"{rec['pair']}.{sha[:12]}.ref")
            os.makedirs(os.path.join(dest, "refs"), exist_ok=True)
            shutil.copyfile(rec["ref"], os.path.join(dest, refs[sha]))
        save = rec.get("save_dir")
        if save and os.path.exists(os.path.join(save, convergence.RECORD)):
            if save not in runs:
                rel = os.path.relpath(save, work_dir)
                if rel.startswith(".."):
                    rel = os.path.join("external", hashlib.sha256(save.encode()).hexdigest()[:12])
                runs[save] = os.path.join("runs", rel)
                os.makedirs(os.path.join(dest, runs[save]), exist_ok=True)
                for name in sorted(os.listdir(save)):
                    src = os.path.join(save, name)
                    small_log = name.endswith(".jsonl") and os.path.getsize(src) <= MAX_LOG_BYTES
                    if name == convergence.RECORD or small_log:
                        shutil.copyfile(src, os.path.join(dest, runs[save], name))
            rec["save_dir"] = runs[save]
        else:
            rec["save_dir"] = None
        rec.update(hyps=hyp_rel, ref=refs[sha], trained_in=save)
        records[key] = rec
    out = {"records": records, "work_dir": os.path.abspath(work_dir)}
    atomic_write_json(os.path.join(dest, summary_mod.EVALS), out)
    shutil.copyfile(summary_path, os.path.join(dest, SUMMARY))
    return out


def _same_run(a: dict, b: dict) -> bool:
    def text(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()
    # the commands differ in their work directories; 1,000 identical output lines say it is the same run
    return text(a["hyps"]) == text(b["hyps"]) and text(a["ref"]) == text(b["ref"])


def _load_shard(path: str) -> Dict[str, object]:
    for name in (SUMMARY, summary_mod.EVALS):
        if not os.path.exists(os.path.join(path, name)):
            raise UserError(f"{path} is not a shard: {name} is missing",
                            "name directories written by `python -m fairseq_metabt.evidence archive`")
    s = read_json(os.path.join(path, SUMMARY))
    if "compare_args" not in s:
        raise UserError(f"{path}/{SUMMARY} does not record its compare arguments",
                        "archive it again from a recipe re-run at this commit")
    records = {}
    for key, rec in read_json(os.path.join(path, summary_mod.EVALS))["records"].items():
        rec = dict(rec, hyps=os.path.abspath(os.path.join(path, rec["hyps"])),
                   ref=os.path.abspath(os.path.join(path, rec["ref"])))
        if rec.get("save_dir"):
            rec["save_dir"] = os.path.abspath(os.path.join(path, rec["save_dir"]))
        records[key] = rec
    return {"path": path, "summary": s, "records": records}


def import_runs(shard_dir: str, work_dir: str, systems: Optional[Sequence[str]] = None,
                seeds: Optional[Sequence[int]] = None) -> List[str]:
    """Put a shard's scored runs (of ``systems`` and ``seeds``; default all) into ``work_dir``'s ``evals.json``,
    pointing at the shard's files. So a session that trains the rest of a seed's systems does not retrain their
    control: the recipe's table finds the control's scores, and its shard holds the same run again (the same
    test output), which :func:`merge` accepts. Returns the keys imported; a key already scored in
    ``work_dir`` is an error (nothing is replaced)."""
    sh = _load_shard(shard_dir)
    chosen = {k: r for k, r in sh["records"].items()
              if (systems is None or r["system"] in systems) and (seeds is None or r["seed"] in seeds)}
    if not chosen:
        raise UserError(f"{shard_dir} holds no scored run of systems {list(systems or [])} and seeds "
                        f"{list(seeds or [])}", "check the names against its evals.json")
    clash = sorted(set(chosen) & set(summary_mod.load_evals(work_dir)))
    if clash:
        raise UserError(f"{work_dir} has already scored {', '.join(clash)}", "import into a new work directory")
    summary_mod.put_records(work_dir, chosen)
    return sorted(chosen)


def _same(shards: List[dict], what: str, get) -> object:
    first = get(shards[0])
    for sh in shards[1:]:
        if get(sh) != first:
            raise UserError(f"shards {shards[0]['path']} and {sh['path']} differ in {what}",
                            "merge only shards of one comparison: the same recipe, corpus and settings, other seeds")
    return first


# knobs that say how a session ran its trainings, not how any one trained: shards may differ in them
EXECUTION_KNOBS = ("JOBS",)


def _comparison_knobs(shard: dict) -> Dict[str, str]:
    """A shard's recorded knobs less :data:`EXECUTION_KNOBS` (each shard's own command keeps those)."""
    knobs = (shard["summary"].get("provenance") or {}).get("knobs") or {}
    return {k: v for k, v in knobs.items() if k not in EXECUTION_KNOBS}


# compare's options whose values a shard may hold a part of: a session may train some of a seed's systems
SUBSET_OPTIONS = ("systems", "same_schedule", "also")


def _widest_args(shards: List[dict], parse: Callable[[List[str]], dict]) -> List[str]:
    """The compare arguments of the whole comparison. Every shard's must be the same, except that its systems,
    schedule check and further comparisons may be a part of the whole: a session may train some of a seed's
    systems (latent depth's eight runs a seed take several sessions). The shard that holds every system gives
    its arguments as they are; when none does, those three options are the union of the shards' (in the order
    first seen)."""
    parsed = [parse(sh["summary"]["compare_args"]) for sh in shards]
    fixed = lambda f: {k: v for k, v in f.items() if k not in SUBSET_OPTIONS}  # noqa: E731

    def covers(big: dict, small: dict) -> bool:
        return fixed(big) == fixed(small) and all(set(small[k] or []) <= set(big[k] or []) for k in SUBSET_OPTIONS)

    for i, big in enumerate(parsed):
        if all(covers(big, small) for small in parsed):
            return list(shards[i]["summary"]["compare_args"])
    other = next((sh for sh, f in zip(shards, parsed) if fixed(f) != fixed(parsed[0])), None)
    if other is not None:
        raise UserError(f"shards {shards[0]['path']} and {other['path']} differ in compare arguments",
                        "merge only shards of one comparison: the same recipe, corpus and settings; a shard may "
                        "hold some of the systems")
    widest = max(range(len(shards)), key=lambda i: len(parsed[i]["systems"] or []))
    args = _without_options(list(shards[widest]["summary"]["compare_args"]), SUBSET_FLAGS.values())
    for dest, flag in SUBSET_FLAGS.items():
        union: List[str] = []
        for f in [parsed[widest]] + parsed:
            union += [v for v in f[dest] or [] if v not in union]
        if union:
            args += [flag, *union]
    return args


SUBSET_FLAGS = {"systems": "--systems", "same_schedule": "--same-schedule", "also": "--also"}
assert set(SUBSET_FLAGS) == set(SUBSET_OPTIONS)


def _without_options(args: List[str], flags) -> List[str]:
    """``args`` less each of ``flags`` and its values (the tokens up to the next option)."""
    out: List[str] = []
    skipping = False
    for tok in args:
        if tok.startswith("--"):
            skipping = tok.split("=", 1)[0] in flags
        if not skipping:
            out.append(tok)
    return out


def _with_also(args: List[str], parse: Callable[[List[str]], dict], also: Sequence[str],
               known: set) -> List[str]:
    """``args`` with further ``--also`` pairs between the ``known`` systems, in one ``--also`` list."""
    parsed = parse(args)
    for pair in also:  # SYS:CTRL (compare's own parser checks the form)
        missing = [n for n in pair.split(":", 1) if n not in known]
        if missing:
            raise UserError(f"--also {pair}: the shards hold no system {', '.join(missing)}",
                            f"pair two of {', '.join(sorted(known))} as SYS:CTRL")
    pairs = (parsed["also"] or []) + [a for a in also if a not in (parsed["also"] or [])]
    return _without_options(list(args), ("--also",)) + ["--also", *pairs]


def merge(shard_dirs: Sequence[str], out: str, compare_from_args: Callable[..., None],
          parse: Callable[[List[str]], dict], also: Sequence[str] = ()) -> dict:
    """One summary from the shards' runs, as ``compare`` would write it had one work directory held them all.

    ``compare_from_args(argv, work_dir, out, command, knobs)`` runs ``compare`` with a shard's recorded
    arguments (the CLI's parser); ``parse(argv)`` gives those arguments as a dict of compare's options. Its
    ``command`` is every shard's recipe command, one per line; the summary also lists the shards (path,
    command, seeds, commits) and keeps their common corpus record. ``also`` adds paired comparisons
    ``SYS:CTRL`` between systems the shards hold (a claim the recipe's table did not pair, e.g. metabt:bt);
    they are recorded in the summary's ``compare_args``."""
    if not shard_dirs:
        raise UserError("merge needs at least one shard", "name the shard directories")
    shards = [_load_shard(d) for d in shard_dirs]
    args = _widest_args(shards, parse)
    if also:
        held = {rec["system"] for sh in shards for rec in sh["records"].values()}
        args = _with_also(args, parse, also, held)
    knobs = _same(shards, "knobs", _comparison_knobs)
    corpus = _same(shards, "corpus (content hash)",
                   lambda sh: (sh["summary"].get("corpus_record") or {}).get("sha256"))
    records: Dict[str, dict] = {}
    owner: Dict[str, str] = {}
    for sh in shards:
        for key, rec in sh["records"].items():
            # a run may be in two shards only as the same deterministic run (e.g. the control, retrained so that
            # a shard holding some of a seed's systems has its table): the same test output
            if key in records and not _same_run(records[key], rec):
                raise UserError(f"{key.replace('|', ' seed ', 1).replace('|', ' ')} is in both {owner[key]} and "
                                f"{sh['path']} with different results", "a run belongs to one shard: leave one out")
            if key not in records:
                records[key], owner[key] = rec, sh["path"]
    command = "\n".join(sh["summary"].get("command") or "" for sh in shards)
    with tempfile.TemporaryDirectory() as work:
        atomic_write_json(os.path.join(work, summary_mod.EVALS), {"records": records})
        compare_from_args(list(args), work, out, command, knobs)
    s = read_json(out)
    if corpus:
        s["corpus_record"] = shards[0]["summary"]["corpus_record"]
    s["shards"] = [{"path": os.path.relpath(sh["path"], os.path.dirname(os.path.abspath(out))),
                    "command": sh["summary"].get("command"),
                    "seeds": sorted({r["seed"] for r in sh["records"].values()}),
                    "commits": sorted({str(r.get("commit")) for r in sh["records"].values()})} for sh in shards]
    atomic_write_json(out, s)
    return s
