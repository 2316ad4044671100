"""The papers' reported BLEU, printed beside ours by the ``examples/*/run_paper.sh`` recipes.

    python -m fairseq_metabt.data.paper_figures WORK/results/summary.json --paper dds --setting ted8-related

Figures are copied from the papers in ``shared/papers`` (table and page named in ``source``); a paper whose
available text reports no BLEU table (MetaBT's appendix) has none, and the report says so rather than
quoting a number from memory.  Ours are the mean test BLEU over seeds from the evidence protocol's
``summary.json``.  The two are comparable only where the setting matches: the papers' models (LSTMs, GRUs,
Sockeye), tokenisation and BLEU variants differ from these recipes' (``docs/reproduce.md``).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, Optional, Sequence

from fairseq_metabt.errors import UserError, cli

Table = Dict[str, Dict[str, float]]  # pair "SRC-TGT" -> system -> BLEU

FIGURES: Dict[str, Dict[str, dict]] = {
    "dds": {
        "ted8-related": {
            "source": "Wang et al. 2020 (DDS), Table 1 right: test BLEU, LRL->eng, 1-layer LSTM, all 8 languages",
            "bleu": {
                f"{lang}-eng": {sys_: row[i] for sys_, row in {
                    "uniform": (10.31, 17.21, 26.05, 27.44), "spcl": (9.07, 16.99, 23.64, 21.44),
                    "related": (10.34, 15.31, 27.41, 25.92), "tcs": (11.18, 16.97, 27.28, 27.72),
                    "dds": (10.74, 17.24, 27.32, 28.20), "tcs_dds": (11.84, 17.74, 27.78, 27.74)}.items()}
                for i, lang in enumerate(("aze", "bel", "glg", "slk"))},
        },
    },
    "latent_depth": {
        "ted8-diverse": {
            "source": "Li et al. 2020, App. B.2 Table 10 (I = 2): DEV BLEU of latent layers, M2O-Diverse (the test "
                      "BLEU tables are in the main text, which shared/papers does not hold)",
            "bleu": {f"{lang}-eng": {"latent_deep": v} for lang, v in (
                ("bos", 23.4), ("mar", 15.1), ("hin", 19.0), ("mkd", 32.1), ("ell", 37.2), ("bul", 39.4),
                ("fra", 40.8), ("kor", 20.9))},
        },
    },
    "reconstruction": {
        "material+wmt18": {
            "source": "Niu et al. 2019, Table 2: test BLEU, mean of 5 seeds, bi-directional LSTM (Sockeye)",
            "bleu": {pair: dict(zip(("baseline", "hidden", "stgs-beta0", "stgs-beta0.5"), row)) for pair, row in (
                ("en-sw", (33.60, 33.41, 33.92, 33.97)), ("sw-en", (30.70, 30.91, 31.37, 31.39)),
                ("en-tl", (27.23, 27.43, 27.65, 27.65)), ("tl-en", (32.15, 32.20, 32.75, 32.65)),
                ("en-so", (12.25, 12.30, 12.47, 12.48)), ("so-en", (20.80, 20.72, 21.14, 21.20)),
                ("en-tr", (12.90, 12.77, 13.26, 13.16)), ("tr-en", (15.32, 15.34, 15.60, 15.52)))},
        },
    },
    "wake_sleep": {
        "ted": {
            "source": "Cotterell & Kreutzer 2018, Table 1, TED (IWSLT'14 test, lowercased sacreBLEU): WMT bitext, "
                      "TED monotext; GRU encoder-decoder",
            "bleu": {"en-de": {"iter0": 24.38, "iter1": 25.58, "iter2": 26.73, "iter3": 27.20},
                     "de-en": {"iter0": 27.29, "iter1": 29.80, "iter2": 30.02, "iter3": 30.21}},
        },
        "wmt": {
            "source": "Cotterell & Kreutzer 2018, Table 1, WMT 2017 (newstest2017, cased sacreBLEU)",
            "bleu": {"en-de": {"iter0": 20.73, "iter1": 21.63, "iter2": 22.33, "iter3": 21.72},
                     "de-en": {"iter0": 25.41, "iter1": 26.63, "iter2": 26.80, "iter3": 26.26},
                     "en-lv": {"iter0": 11.41, "iter1": 12.76, "iter2": 12.91, "iter3": 12.77},
                     "lv-en": {"iter0": 12.53, "iter1": 12.42, "iter2": 13.43, "iter3": 13.53}},
        },
    },
    "metabt": {
        "any": {"source": "Pham et al. 2021: shared/papers holds the appendix only, which reports no BLEU table; "
                          "no paper figure is printed", "bleu": {}},
    },
}


def paper_table(paper: str, setting: str) -> dict:
    """The reported figures of ``paper`` in ``setting``; a clear error for an unknown one."""
    if paper not in FIGURES:
        raise UserError(f"no figures for paper {paper!r}", "choose one of " + ", ".join(FIGURES))
    settings = FIGURES[paper]
    if setting not in settings:
        if len(settings) == 1:  # a paper with one setting reports it whatever the recipe's preset
            return next(iter(settings.values()))
        raise UserError(f"no figures of {paper} for setting {setting!r}", "choose one of " + ", ".join(settings))
    return settings[setting]


def _ours(summary: dict, default_pair: Optional[str]) -> Table:
    """Mean test BLEU over seeds per pair and system, from an evidence summary.json."""
    single = summary.get("pair") or default_pair or "?"
    pairs = summary.get("pairs") or ({single: summary} if "systems" in summary else {})
    out: Table = {}
    for pair, entry in pairs.items():
        for name, row in (entry.get("systems") or {}).items():
            scores = [b for b in row.get("bleu") or [] if b is not None]
            if scores:
                out.setdefault(pair, {})[name] = sum(scores) / len(scores)
    return out


def render(summary: dict, paper: str, setting: str, pair: Optional[str] = None) -> str:
    """One line per (pair, system) that either side reports: ours (mean over seeds) and the paper's."""
    table = paper_table(paper, setting)
    ours, theirs = _ours(summary, pair), table["bleu"]
    lines = [f"Paper's figures beside ours ({table['source']}):",
             f"{'pair':<10} {'system':<16} {'ours':>8} {'paper':>8}"]
    for p in sorted(ours or theirs):  # the pairs this run scored (all the paper's when none yet)
        for name in sorted(set(ours.get(p, {})) | set(theirs.get(p, {}))):
            a, b = ours.get(p, {}).get(name), theirs.get(p, {}).get(name)
            lines.append(f"{p:<10} {name:<16} {'-' if a is None else f'{a:.2f}':>8} "
                         f"{'-' if b is None else f'{b:.2f}':>8}")
    if not theirs:
        lines.append("(no paper figure available)")
    return "\n".join(lines)


@cli
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fairseq_metabt.data.paper_figures",
                                description="Print the paper's reported BLEU beside a recipe's summary.json.")
    p.add_argument("summary", help="WORK/results/summary.json written by `python -m fairseq_metabt.evidence compare`")
    p.add_argument("--paper", required=True, choices=sorted(FIGURES), help="which paper's figures")
    p.add_argument("--setting", default="", help="the paper's setting (e.g. ted8-related, ted, wmt)")
    p.add_argument("--pair", help="the pair of a summary that holds a single one (SRC-TGT)")
    args = p.parse_args(argv)
    try:
        with open(args.summary, encoding="utf-8") as f:
            summary = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{args.summary} does not exist", "run the recipe's comparison first") from None
    except ValueError as e:
        raise UserError(f"{args.summary} is not JSON ({e})", "rerun the recipe's comparison") from e
    print(render(summary, args.paper, args.setting, args.pair))
    return 0


if __name__ == "__main__":
    sys.exit(main())
