#!/usr/bin/env python
"""Offline wake-sleep helper (examples/wake_sleep/run.sh); plain Python, no fairseq import (fast).

    pseudo_bitext.py pairs GENERATE_LOG MONO_PIECES OUT_PREFIX GEN_LANG REAL_LANG
        Alg. 1 lines 3-5 / 8-10: the generated sentence of every monotext line (fairseq-generate's H-<id>
        lines, sentencepiece pieces) next to the monotext line itself: OUT_PREFIX.GEN_LANG and
        OUT_PREFIX.REAL_LANG, line-aligned; empty generations are dropped.  Prints a JSON summary
        (pairs, dropped, mean generated length in pieces).
    pseudo_bitext.py upsample PSEUDO_JSON BITEXT_PIECES
        How many times the real pairs are repeated beside the pseudo pairs (fairseq's --upsample-primary):
        round(pseudo pairs / real pairs), at least 1, so an epoch holds about as many of each.
"""
import json
import re
import sys


def pairs(log: str, mono_pieces: str, out_prefix: str, gen_lang: str, real_lang: str) -> dict:
    with open(mono_pieces, encoding="utf-8") as f:
        real = [line.rstrip("\n") for line in f]
    hyps = {}
    pattern = re.compile(r"^H-(\d+)\t[^\t]*\t?(.*)$")
    with open(log, encoding="utf-8") as f:
        for line in f:
            m = pattern.match(line.rstrip("\n"))
            if m:
                hyps[int(m.group(1))] = m.group(2).strip()
    missing = [i for i in range(len(real)) if i not in hyps]
    if missing:
        raise SystemExit(f"{log}: no hypothesis for {len(missing)} of {len(real)} monotext lines (first: {missing[:3]}); "
                         "was fairseq-generate interrupted? delete the log and re-run")
    kept, lengths = 0, []
    with open(f"{out_prefix}.{gen_lang}", "w", encoding="utf-8") as g, \
            open(f"{out_prefix}.{real_lang}", "w", encoding="utf-8") as r:
        for i, sentence in enumerate(real):
            if not hyps[i] or not sentence.strip():
                continue
            g.write(hyps[i] + "\n")
            r.write(sentence + "\n")
            kept += 1
            lengths.append(len(hyps[i].split()))
    return {"pairs": kept, "dropped": len(real) - kept, "mean_len": round(sum(lengths) / max(len(lengths), 1), 2)}


def upsample(pseudo_json: str, bitext_pieces: str) -> int:
    """The real pairs' repeat factor: with many more noisy pseudo pairs than real ones the model learns the pseudo
    sources' errors (the catalog kit's 1 : 11 lost BLEU to iteration 0: docs/catalog_corpus.md)."""
    with open(pseudo_json, encoding="utf-8") as f:
        pseudo = json.load(f)["pairs"]
    with open(bitext_pieces, encoding="utf-8") as f:
        real = sum(1 for _ in f)
    if real == 0:
        raise SystemExit(f"{bitext_pieces} is empty: the bitext B has no pairs to repeat")
    return max(1, round(pseudo / real))


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "pairs":
        print(json.dumps(pairs(*sys.argv[2:])))
    elif len(sys.argv) == 4 and sys.argv[1] == "upsample":
        print(upsample(*sys.argv[2:]))
    else:
        raise SystemExit(__doc__)
