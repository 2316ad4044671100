#!/usr/bin/env python
"""What DDS's scorer did in one or more ``dds_translation`` runs, in figures (the reading of a DDS table).

    python scripts/dds_report.py RUN_DIR [RUN_DIR ...] [--json FILE]

For each run (its ``dds_log.jsonl``: one record every ``--dds-update-interval`` updates) and each language:
its mean reward (cos(g_i, g_dev), DDS Alg. 2, line 9), how often that reward was the highest and the lowest of
the languages with a valid reward, its sampling probability E_y p(S_i | y; psi) at the start, averaged over
the run from the first scorer update on, and at the end; and per run the entropy of p(.|y) and its KL to the
prior from the first scorer update on (run average, extreme, end). Runs are grouped by their directory's name
(a recipe's system), and each group prints the range over its runs: a recipe's seeds read as one line per
language.
"""
import argparse
import json
import os
import sys
from collections import OrderedDict
from typing import Dict, List, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fairseq_metabt import fileio  # noqa: E402
from fairseq_metabt.errors import UserError, cli  # noqa: E402
from plot_dds import read_log  # noqa: E402


def summarize(records: List[dict]) -> Dict[str, object]:
    """The figures of one run's log (see the module docstring)."""
    langs = records[0]["langs"]
    learned = [i for i, r in enumerate(records) if r.get("learned")]
    after = records[learned[0]:] if learned else []
    top = {lang: 0 for lang in langs}
    bottom = {lang: 0 for lang in langs}
    scored = 0
    for r in records:
        valid = [i for i, ok in enumerate(r.get("valid") or []) if ok]
        if len(valid) < 2:  # a ranking needs two languages with a reward
            continue
        scored += 1
        rewards = [r["reward"][i] for i in valid]
        top[langs[valid[rewards.index(max(rewards))]]] += 1
        bottom[langs[valid[rewards.index(min(rewards))]]] += 1
    per_lang = OrderedDict()
    for i, lang in enumerate(langs):
        per_lang[lang] = {
            "top_share": top[lang] / scored if scored else None,
            "bottom_share": bottom[lang] / scored if scored else None,
            "p_start": records[0]["p"][i],
            "p_mean": sum(r["p"][i] for r in after) / len(after) if after else None,
            "p_end": records[-1]["p"][i],
            "reward_mean": (sum(r["reward"][i] for r in records if r["valid"][i])
                            / max(1, sum(1 for r in records if r["valid"][i]))) if scored else None,
        }
    ent = [r["entropy"] for r in after if "entropy" in r]
    kl = [r["kl_prior"] for r in after if "kl_prior" in r]
    return {"updates": records[-1]["update"], "scorer_updates": len(learned), "ranked_records": scored,
            "entropy_start": records[0].get("entropy"), "entropy_mean": sum(ent) / len(ent) if ent else None,
            "entropy_min": min(ent) if ent else None, "entropy_max": max(ent) if ent else None,
            "entropy_end": records[-1].get("entropy"), "kl_mean": sum(kl) / len(kl) if kl else None,
            "kl_max": max(kl) if kl else None, "kl_end": records[-1].get("kl_prior"), "languages": per_lang}


def _range(xs: List[Optional[float]], fmt: str) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    lo, hi = min(xs), max(xs)
    return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else f"{format(lo, fmt)}–{format(hi, fmt)}"


def render(groups: Dict[str, List[dict]]) -> str:
    """One markdown table per group (a system over its seeds): ranges over the group's runs."""
    out = []
    for name, runs in groups.items():
        langs = list(runs[0]["languages"])
        out.append(f"**{name}** ({len(runs)} run{'s' if len(runs) > 1 else ''}; updates "
                   f"{_range([r['updates'] for r in runs], 'd')}, scorer updates "
                   f"{_range([r['scorer_updates'] for r in runs], 'd')}; entropy of p(.|y) at the start "
                   f"{_range([r['entropy_start'] for r in runs], '.3f')}, run average "
                   f"{_range([r['entropy_mean'] for r in runs], '.3f')}, lowest "
                   f"{_range([r['entropy_min'] for r in runs], '.3f')}, at the end "
                   f"{_range([r['entropy_end'] for r in runs], '.3f')}; KL to the prior, run average "
                   f"{_range([r['kl_mean'] for r in runs], '.3f')}, "
                   f"largest {_range([r['kl_max'] for r in runs], '.3f')}, "
                   f"at the end {_range([r['kl_end'] for r in runs], '.3f')})\n")
        out.append("| language | mean reward | top reward (share of updates) | lowest reward | p at start "
                   "| p, run average | p at end |")
        out.append("|---|---|---|---|---|---|---|")
        for lang in langs:
            cells = [_range([r["languages"][lang][k] for r in runs], f)
                     for k, f in (("reward_mean", ".2f"), ("top_share", ".0%"), ("bottom_share", ".0%"),
                                  ("p_start", ".3f"), ("p_mean", ".3f"), ("p_end", ".3f"))]
            out.append(f"| {lang} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


@cli
def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", help="--save-dir of dds_translation runs (e.g. WORK/seed*/dds)")
    p.add_argument("--json", help="also write the per-run figures here")
    args = p.parse_args(argv)
    groups: Dict[str, List[dict]] = OrderedDict()
    per_run = {}
    for d in args.run_dirs:
        if not os.path.isdir(d):
            raise UserError(f"{d}: no such run directory", "give the --save-dir of a dds_translation run")
        s = summarize(read_log(os.path.join(d, "dds_log.jsonl")))
        per_run[d] = s
        groups.setdefault(os.path.basename(os.path.normpath(d)), []).append(s)
    print(render(groups))
    if args.json:
        with fileio.atomic_path(args.json) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(per_run, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
