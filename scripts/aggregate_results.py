#!/usr/bin/env python
"""Aggregate scripts/evaluate.py JSON results over seeds: BLEU/chrF mean ± std per system.

    python scripts/aggregate_results.py --runs RUN1 RUN2 ... --systems A B ... [--out table.md]
           [--docs docs/results.md --section NAME --title T --command C]

Each RUN holds results/SYSTEM.json.  With --docs, the table replaces the block between
``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in that file (appended if absent).
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fairseq_metabt import fileio  # noqa: E402


def table(runs, systems):
    rows = ["| system | BLEU mean ± std | chrF mean ± std | seeds | BLEU per seed |", "|---|---|---|---|---|"]
    for name in systems:
        scores = []
        for run in runs:
            path = os.path.join(run, "results", f"{name}.json")
            if os.path.exists(path):
                with open(path) as f:
                    scores.append(json.load(f))
        if not scores:
            continue
        bleu = [s["bleu"] for s in scores]
        chrf = [s["chrf"] for s in scores]
        sd = (lambda x: statistics.stdev(x) if len(x) > 1 else 0.0)
        rows.append(f"| {name} | {statistics.mean(bleu):.2f} ± {sd(bleu):.2f} | {statistics.mean(chrf):.2f} ± "
                    f"{sd(chrf):.2f} | {len(bleu)} | {', '.join(f'{b:.2f}' for b in bleu)} |")
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--systems", nargs="+", required=True)
    p.add_argument("--out")
    p.add_argument("--docs")
    p.add_argument("--section", default="results")
    p.add_argument("--title", default="Results")
    p.add_argument("--command", default="")
    a = p.parse_args(argv)
    md = table(a.runs, a.systems)
    print(md)
    block = f"### {a.title}\n\nCommand: `{a.command}`\n\n{md}\n"
    if a.out:
        fileio.write_text(a.out, block)
    if a.docs:
        begin, end = f"<!-- {a.section}:begin -->", f"<!-- {a.section}:end -->"
        text = open(a.docs).read() if os.path.exists(a.docs) else "# Results\n"
        new = f"{begin}\n{block}{end}"
        if begin in text and end in text:
            text = text[: text.index(begin)] + new + text[text.index(end) + len(end):]
        else:
            text = text.rstrip("\n") + "\n\n" + new + "\n"
        fileio.write_text(a.docs, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
