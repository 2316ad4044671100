#!/usr/bin/env python
"""Language usage over training for a ``dds_translation`` run (the picture of DDS paper Fig. 4/5).

    python scripts/plot_dds.py RUN_DIR [--out FILE.png] [--log FILE.jsonl]

Reads ``RUN_DIR/dds_log.jsonl`` (one record every K updates: the language
distribution E_y p(S_i | y; psi), rewards and realised usage) and draws the
distribution over updates (top), the per-language rewards with their spread
(std across languages, dashed, and the gap between the best and the mean,
dotted) and, where the log has it, the mean entropy of p(.|y) and its KL to
the prior (bottom), into ``RUN_DIR/dds_languages.png``.
"""
import argparse
import json
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fairseq_metabt import fileio  # noqa: E402
from fairseq_metabt.errors import UserError, cli  # noqa: E402


def read_log(path: str) -> List[dict]:
    if not os.path.exists(path):
        raise UserError(f"{path} not found", "train with --task dds_translation (it writes the log every "
                        "--dds-update-interval updates) or pass --log")
    records, torn = [], 0
    with open(path) as f:
        for line in f:
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:  # a line torn by a killed run (logs of older versions)
                    torn += 1
    if torn:
        sys.stderr.write(f"plot_dds: skipped {torn} unreadable line(s) of {path}\n")
    if not records:
        raise UserError(f"{path} is empty", "train for at least --dds-update-interval updates")
    return records


def plot(records: List[dict], out: str, title: Optional[str] = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = records[0]["langs"]
    x = [r["update"] for r in records]
    stats = all("entropy" in r for r in records)  # logs of older versions have no entropy or spread
    rows, ratios = (3, [2, 1, 1]) if stats else (2, [2, 1])
    fig, axes = plt.subplots(rows, 1, figsize=(7, 6 + 2 * stats), sharex=True, gridspec_kw={"height_ratios": ratios})
    top, bottom = axes[0], axes[1]
    for i, lang in enumerate(langs):
        top.plot(x, [r["p"][i] for r in records], label=lang, linewidth=1.8)
        bottom.plot(x, [r["reward"][i] for r in records], label=lang, linewidth=1.2)
    if stats:
        bottom.plot(x, [r["reward_std"] for r in records], "k--", linewidth=1, label="std across languages")
        bottom.plot(x, [r["reward_gap"] for r in records], "k:", linewidth=1, label="best - mean")
        bottom.legend(loc="upper right", fontsize=7, ncol=2)
        axes[2].plot(x, [r["entropy"] for r in records], "k-", linewidth=1.5, label="entropy of p(.|y)")
        axes[2].plot(x, [r["kl_prior"] for r in records], "k--", linewidth=1.2, label="KL(p || prior)")
        axes[2].set_ylabel("nats")
        axes[2].legend(loc="upper right", fontsize=7)
    top.set_ylabel("p(language)")
    top.set_ylim(0, 1)
    top.legend(loc="upper right", ncol=min(len(langs), 4), fontsize=8)
    top.set_title(title or f"DDS language usage (dev pair {records[0].get('dev_pair', '?')})")
    bottom.set_ylabel("reward")
    axes[-1].set_xlabel("update")
    bottom.axhline(0, color="grey", linewidth=0.5)
    fig.tight_layout()
    with fileio.atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format=os.path.splitext(out)[1][1:] or "png")
    plt.close(fig)
    return out


@cli
def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="the --save-dir of a dds_translation run")
    p.add_argument("--log", help="the JSONL log (default RUN_DIR/dds_log.jsonl)")
    p.add_argument("--out", help="PNG to write (default RUN_DIR/dds_languages.png)")
    p.add_argument("--title")
    args = p.parse_args(argv)
    records = read_log(args.log or os.path.join(args.run_dir, "dds_log.jsonl"))
    out = plot(records, args.out or os.path.join(args.run_dir, "dds_languages.png"), args.title)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
