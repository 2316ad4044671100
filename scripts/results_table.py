#!/usr/bin/env python
"""Print a results table from scripts/evaluate.py JSON files: one row per system."""
import json
import os
import sys


def main(paths):
    rows = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            r = json.load(f)
        rows.append((os.path.basename(path)[: -len(".json")], r))
    if not rows:
        print("no results found", file=sys.stderr)
        return 1
    print(f"| {'system':<14} | {'pair':<9} | {'BLEU':>6} | {'chrF':>6} | {'sentences':>9} |")
    print(f"|{'-' * 16}|{'-' * 11}|{'-' * 8}|{'-' * 8}|{'-' * 11}|")
    for name, r in rows:
        print(f"| {name:<14} | {r['pair']:<9} | {r['bleu']:>6.2f} | {r['chrf']:>6.2f} | {r['n']:>9} |")
    print(f"sacrebleu: {rows[0][1]['bleu_signature']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
