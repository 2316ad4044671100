#!/usr/bin/env python
"""Export each language's sub-network of a latent-depth checkpoint as a plain fairseq Transformer.

    python scripts/prune_latent_depth.py CHECKPOINT --out-dir DIR [--lang L ...] [--data BIN] [--force]

For every language (default: all the model has gate logits for) it writes
``DIR/checkpoint.LANG.pt``: an ordinary ``--arch transformer`` checkpoint that
keeps only the layers the language selects in eval mode (``q > 0.5`` or top-K,
the model's ``--latent-eval-select``), so its outputs equal the gated
model's.  It loads with ``fairseq-generate --task latent_depth_translation``
(same flags as the gated model) or any fairseq tool.  Prints the kept layers.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, ROOT)

from fairseq_metabt.errors import cli  # noqa: E402


@cli
def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a latent_depth_transformer checkpoint")
    p.add_argument("--out-dir", required=True, help="where checkpoint.LANG.pt files go")
    p.add_argument("--lang", action="append", help="language(s) to export (default: every latent language)")
    p.add_argument("--data", help="prepared data directory, if it moved since training (dictionaries)")
    p.add_argument("--force", action="store_true", help="overwrite existing exports")
    args = p.parse_args(argv)

    from fairseq_metabt import checkpoints, fileio  # registers the model and task; allow-lists checkpoint types
    from fairseq_metabt.errors import UserError
    from fairseq_metabt.modules.latent_depth_pruning import prune_checkpoint

    fileio.output_directory(args.out_dir, "--out-dir")  # before any work: an existing file is no directory

    state = checkpoints.load(args.checkpoint, "CHECKPOINT")
    model_args = state["cfg"]["model"]
    langs_known = [x for x in str(getattr(model_args, "latent_langs", "") or "").split(",") if x]
    if not langs_known:
        raise UserError(f"{args.checkpoint} is not a latent_depth_transformer checkpoint trained by "
                        "latent_depth_translation", "pass a checkpoint of --task latent_depth_translation")
    langs = args.lang or langs_known
    for lang in langs:
        if lang not in langs_known and langs_known != ["*"]:
            raise UserError(f"language {lang!r} is not in the model; it has {', '.join(langs_known)}",
                            "pass --lang with one of those")
    os.makedirs(args.out_dir, exist_ok=True)
    report = {}
    for lang in langs:
        out = os.path.join(args.out_dir, f"checkpoint.{lang if lang != '*' else 'all'}.pt")
        if os.path.exists(out) and not args.force:
            raise UserError(f"{out} exists", "pass --force to overwrite it, or choose another --out-dir")
        kept = prune_checkpoint(args.checkpoint, lang, out, data=args.data)
        report[lang] = {"checkpoint": out, **kept}
        print(f"{lang}: encoder layers {kept['encoder']} decoder layers {kept['decoder']} -> {out}")
    fileio.write_json(os.path.join(args.out_dir, "pruned.json"), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
