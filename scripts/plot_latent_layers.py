#!/usr/bin/env python
"""Per-language layer-selection heatmap of a latent-depth checkpoint (Li et al. 2020, Fig. 8/9).

    python scripts/plot_latent_layers.py CHECKPOINT [--out FIG.png] [--json PROBS.json]

One panel per gated side (encoder, decoder); rows are languages, columns
layers, the colour is q(z_l = 1) = sigmoid(alpha); a dot marks the layers the
language keeps at inference (``q > 0.5`` or top-K, the model's
``--latent-eval-select``).  ``--json`` also writes the probabilities and the
selection.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, ROOT)

from fairseq_metabt import fileio  # noqa: E402
from fairseq_metabt.errors import UserError, cli  # noqa: E402


def read_gates(checkpoint: str) -> dict:
    """``{"langs": [...], "encoder"/"decoder": {"q": [[...]], "selected": [[...]]}}`` from a checkpoint."""
    import torch

    from fairseq_metabt import checkpoints  # allow-lists checkpoint types
    from fairseq_metabt.modules.latent_layers import LatentLayerGates, selection_mode

    state = checkpoints.load(checkpoint, "CHECKPOINT")
    args = state["cfg"]["model"]
    langs = [x for x in str(getattr(args, "latent_langs", "") or "*").split(",") if x]
    out = {"langs": langs}
    for side in ("encoder", "decoder"):
        logits = state["model"].get(f"{side}_latent.logits")
        if logits is None:
            continue
        gates = LatentLayerGates(*logits.shape)
        gates.logits.data.copy_(logits)
        k = getattr(args, f"{side}_target_layers", None)
        mode = selection_mode(args, side)
        out[side] = {"q": torch.sigmoid(logits).tolist(),
                     "selected": [gates.select(i, mode, k).tolist() for i in range(len(langs))]}
    if "encoder" not in out and "decoder" not in out:
        raise UserError(f"{checkpoint} has no latent layer logits (not a latent_depth_transformer checkpoint)",
                        "pass a checkpoint of --task latent_depth_translation")
    return out


def plot(gates: dict, out_png: str, title: str = "") -> None:
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # fairseq's logging config shows its debug output
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sides = [s for s in ("encoder", "decoder") if s in gates]
    langs = gates["langs"]
    fig, axes = plt.subplots(len(sides), 1, figsize=(max(4, 0.5 * max(len(gates[s]["q"][0]) for s in sides) + 2),
                                                      0.6 * len(langs) * len(sides) + 1.5), squeeze=False)
    for ax, side in zip(axes[:, 0], sides):
        q = np.array(gates[side]["q"])
        sel = np.array(gates[side]["selected"])
        im = ax.imshow(q, vmin=0, vmax=1, cmap="Blues", aspect="auto")
        ys, xs = np.nonzero(sel)
        ax.scatter(xs, ys, s=12, c="orange", marker="o", label="kept at inference")
        ax.set_yticks(range(len(langs)), langs)
        ax.set_xticks(range(q.shape[1]))
        ax.set_xlabel(f"{side} layer")
        ax.set_title(f"{side}: q(z_l = 1) per language")
        fig.colorbar(im, ax=ax)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with fileio.atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=120, format=os.path.splitext(out_png)[1][1:] or "png")
    plt.close(fig)


@cli
def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--out", help="PNG path (default: CHECKPOINT with .layers.png)")
    p.add_argument("--json", help="also write probabilities and selection here")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    gates = read_gates(args.checkpoint)
    out = args.out or os.path.splitext(args.checkpoint)[0] + ".layers.png"
    plot(gates, out, args.title)
    if args.json:
        fileio.write_json(args.json, gates)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
