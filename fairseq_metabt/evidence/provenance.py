"""Provenance written by the tools: which code, which software, which machine, which command.

Every training record (``convergence.json``) and every ``summary.json`` carries these fields, so a
kept result never depends on someone typing its commit or command. :func:`caveats` reads them back
and names what a reader must know before trusting a table: seeds trained from different commits or
from a tree with uncommitted changes, runs resumed with their early-stopping state reset, and
results kept from before the tools recorded provenance.
"""
import hashlib
import json
import os
import platform
import subprocess
from typing import Dict, Iterable, List, Optional

from fairseq_metabt.errors import UserError

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
PACKAGES = ("torch", "fairseq", "sacrebleu", "sentencepiece", "numpy")
# the optimizer-state-saving lr scheduler that also keeps fairseq's early-stopping state over a resume
KEEPS_EARLY_STOP_STATE = ("plateau_updates",)


def git_state(root: str = ROOT) -> Dict[str, object]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the project's checkout.

    ``dirty`` counts changes to tracked files only: runs, checkpoints and corpora are ignored files."""
    def git(*args: str) -> Optional[str]:
        try:
            return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=30,
                                  check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip() if commit else None, "dirty": bool(status.strip()) if status is not None else None}


def versions(packages: Iterable[str] = PACKAGES) -> Dict[str, Optional[str]]:
    """Installed versions of the packages that decide a result (``None`` when one is missing)."""
    from importlib import metadata

    out: Dict[str, Optional[str]] = {}
    for name in packages:
        dist = {"fairseq": ("fairseq-fixed", "fairseq")}.get(name, (name,))
        out[name] = None
        for d in dist:
            try:
                out[name] = metadata.version(d)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def environment() -> Dict[str, object]:
    """The machine and software a summary was made on: git state, versions, cores and threads."""
    env = dict(git_state())
    env.update(versions=versions(), python=platform.python_version(), cores=os.cpu_count(),
               jobs=os.environ.get("JOBS"), omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
               cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
    return env


def pair_entries(summary: dict) -> Dict[str, dict]:
    """``{pair: entry}`` of a summary: its ``pairs``, or the summary itself under its one ``pair``."""
    return summary.get("pairs") or {summary.get("pair") or "": summary}


def runs(summary: dict) -> List[dict]:
    """Every (pair, system, seed) run record of a summary, with the names added."""
    out = []
    for pair, entry in pair_entries(summary).items():
        for name, row in entry.get("systems", {}).items():
            for run in row.get("runs") or []:
                out.append(dict(run, system=name, pair=pair))
    return out


def trained_at(summary: dict) -> Dict[str, List[str]]:
    """``{commit: ["SYSTEM seed N", ...]}``: the commits a summary's runs, and the models they start from
    (``depends_on``, e.g. the backward model), were trained at ("unknown" where none was recorded)."""
    commits: Dict[str, List[str]] = {}
    for r in runs(summary):
        for c in [r.get("commit")] + [d.get("commit") for d in r.get("depends_on") or []]:
            commits.setdefault(c or "unknown", []).append(f"{r['system']} seed {r['seed']}")
    return commits


def caveats(summary: dict) -> List[str]:
    """What a table's header must say about where its numbers come from (empty when nothing)."""
    recs = runs(summary)
    if not recs:
        return ["provenance not recorded by the tools: this table was kept before summaries recorded the commit, "
                "the commands and the update counts; its intervals use the kept per-seed scores only"]
    notes = []
    commits = trained_at(summary)
    if len(commits) > 1:
        notes.append("seeds or systems trained from different commits: " + "; ".join(
            f"{c[:10]} ({len(v)} runs)" for c, v in sorted(commits.items())))
    dirty = sorted({f"{r['system']} seed {r['seed']}" for r in recs if r.get("dirty")})
    if dirty:
        notes.append("trained from a tree with uncommitted changes: " + ", ".join(dirty))
    reset = sorted({f"{r['system']} seed {r['seed']}" for r in recs
                    if (r.get("starts") or 1) > 1 and not r.get("early_stop_state_kept")})
    if reset:
        notes.append("resumed with fairseq's early-stopping state reset (it waited a fresh --patience after the "
                     "resume): " + ", ".join(reset))
    vocab: Dict[tuple, Dict[str, List[str]]] = {}  # (pair, seed) -> dictionaries' hash -> systems
    for r in recs:
        if r.get("vocab_sha256"):
            vocab.setdefault((r["pair"], r["seed"]), {}).setdefault(r["vocab_sha256"], []).append(r["system"])
    split = [f"{pair} seed {seed}: " + " / ".join(", ".join(v) for _, v in sorted(by.items()))
             for (pair, seed), by in sorted(vocab.items()) if len(by) > 1]
    if split:
        notes.append("systems paired on a seed trained with different dictionaries (a re-made binarisation?): "
                     + "; ".join(split))
    capped = sorted({f"{r['system']} seed {r['seed']}" for r in recs if r.get("converged") is False})
    if capped:
        notes.append("not converged: " + ", ".join(capped))
    return notes


def corpus_record(raw_dir: str) -> Dict[str, object]:
    """What a summary keeps of a user's raw corpus (a recipe's ``--raw-dir``), so a table names the exact text
    it was measured on: the path, one sha256 over every corpus file (names and contents, sorted; the JSON
    descriptions left out) and, from the ``manifest.json`` that the synthetic generator and
    ``scripts/make_catalog_corpus.py`` write, the generator, preset, description, seed and the languages with
    their roles; from a catalog kit's ``catalog.json``, the kit's commit and its packages."""
    if not os.path.isdir(raw_dir):
        raise UserError(f"--raw-dir {raw_dir}: no such directory (give the raw corpus the recipe trained on)")
    digest = hashlib.sha256()
    names = sorted(f for f in os.listdir(raw_dir)
                   if os.path.isfile(os.path.join(raw_dir, f)) and not f.endswith(".json"))
    for name in names:
        digest.update(name.encode() + b"\0")
        with open(os.path.join(raw_dir, name), "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    rec: Dict[str, object] = {"path": os.path.abspath(raw_dir), "files": len(names), "sha256": digest.hexdigest()}
    for fname, keys in (("manifest.json", ("generator", "preset", "description", "seed", "target")),
                        ("catalog.json", ())):
        path = os.path.join(raw_dir, fname)
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as fh:
            meta = json.load(fh)
        if fname == "manifest.json":
            rec.update({k: meta[k] for k in keys if k in meta})
            rec["languages"] = {lang["code"]: lang.get("role") for lang in meta.get("languages") or []}
        else:
            source = meta.get("source") if isinstance(meta.get("source"), dict) else {}
            rec["kit_commit"] = meta.get("commit")
            rec["distribution"] = source.get("distribution")
            rec["packages"] = {p.get("package"): p.get("version") for p in source.get("packages") or []}
    return rec
