#!/usr/bin/env python
"""Offline wake-sleep helpers (examples/wake_sleep/run.sh).

    pseudo_bitext.py link-mono BIN LANG OTHER OUT_DIR
        OUT_DIR/test.LANG-OTHER.{LANG,OTHER}.{bin,idx} -> BIN/mono.LANG (the other side a dummy copy) and
        the dictionaries, so that fairseq-generate can translate the whole monotext.
    pseudo_bitext.py pairs GENERATE_LOG MONO_PIECES OUT_PREFIX GEN_LANG REAL_LANG
        Alg. 1 lines 3-5 / 8-10: the generated sentence of every monotext line (fairseq-generate's H-<id>
        lines, sentencepiece pieces) next to the monotext line itself: OUT_PREFIX.GEN_LANG and
        OUT_PREFIX.REAL_LANG, line-aligned; empty generations are dropped.  Prints a JSON summary
        (pairs, dropped, mean generated length in pieces).
"""
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from fairseq_metabt.data.mono import mono_as_test_split  # noqa: E402


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


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "link-mono":
        mono_as_test_split(*sys.argv[2:])
    elif len(sys.argv) == 7 and sys.argv[1] == "pairs":
        print(json.dumps(pairs(*sys.argv[2:])))
    else:
        raise SystemExit(__doc__)
