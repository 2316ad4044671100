#!/usr/bin/env python
"""Give meta back-translation a dev set of its own: a raw corpus with a selection dev set and a meta-dev set.

    python scripts/split_meta_dev.py RAW_DIR OUT_DIR --src lrl --tgt tgt                   # split valid
    python scripts/split_meta_dev.py RAW_DIR OUT_DIR --src lrl --tgt tgt --meta-dev PREFIX  # your own

MetaBT's reward reads a dev set (``--meta-dev-subset``); when that is also the set that drives early
stopping, the plateau learning rate and checkpoint choice, MetaBT is the one system that learns from the
selection set.  This script writes OUT_DIR, a corpus in the raw layout in which

* ``valid.SRC-TGT.*`` is the **selection** dev set (every system's early stopping, lr and checkpoint
  choice): by default the lines 1, 3, 5, ... (odd line numbers, counting from 1) of RAW_DIR's dev set;
* ``metadev.SRC-TGT.*`` is the **meta-dev** set (MetaBT's reward; the ``bt_mle_dev`` control's extra
  bitext): the lines 2, 4, 6, ... of RAW_DIR's dev set, so the two halves are disjoint, differ in size by
  at most one pair, and together are the dev set, line for line;
* with ``--meta-dev PREFIX``, the meta-dev pairs are ``PREFIX.SRC``/``PREFIX.TGT`` instead, and the
  selection dev set is RAW_DIR's whole dev set (meta-dev pairs that also occur in the dev or test set
  are refused);
* every other file (train, test, mono, other pairs, manifest.json) is a symbolic link to RAW_DIR's.

``OUT_DIR/meta_dev.json`` records the rule, the sizes and the sha256 of the source files;
``scripts/prepare_data.py`` binarises ``metadev.*`` as the subset ``metadev`` and copies that record into
``prepare.json``.  The last line printed is a one-line description of the split (recipes record it).
Running it again with the same inputs writes the same files, so a prepared BIN_DIR is reused.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fairseq_metabt import fileio  # noqa: E402
from fairseq_metabt.data.raw_layout import check_text, scan_raw_dir, sha256_file  # noqa: E402
from fairseq_metabt.errors import UserError, cli  # noqa: E402

RECORD = "meta_dev.json"
META_DEV_SPLIT = "metadev"


class SplitError(UserError):
    """Bad arguments for split_meta_dev.py."""


def _lines(path: str) -> List[str]:
    with fileio.open_text(path) as f:
        return [line.rstrip("\n") for line in f]


def _stored_pair(layout, src: str, tgt: str) -> Tuple[str, str]:
    for pair in ((src, tgt), (tgt, src)):
        if pair in layout.bitext:
            return pair
    raise SplitError(f"{layout.root} has no {src}-{tgt} bitext", "check --src/--tgt against the file names "
                     "(docs/data.md)")


def split(raw_dir: str, out_dir: str, src: str, tgt: str, meta_dev: Optional[str] = None) -> dict:
    """Write OUT_DIR (see the module docstring); returns the record also written to OUT_DIR/meta_dev.json."""
    layout = scan_raw_dir(raw_dir)
    out = os.path.abspath(out_dir)
    if fileio.is_inside(out, layout.root) or fileio.is_inside(layout.root, out):
        raise SplitError(f"OUT_DIR {out} and RAW_DIR {layout.root} overlap", "choose an OUT_DIR outside RAW_DIR")
    fileio.output_directory(out, "OUT_DIR", SplitError)
    old = os.path.join(out, RECORD)
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(old):
        raise SplitError(f"OUT_DIR {out} holds files that split_meta_dev.py did not write",
                         "give a new or empty directory")
    s, t = _stored_pair(layout, src, tgt)
    if "valid" not in layout.bitext[(s, t)]:
        raise SplitError(f"{layout.root} has no dev set of {s}-{t} (valid.{s}-{t}.*)", "add one (docs/data.md)")
    dev = dict(zip((s, t), layout.bitext[(s, t)]["valid"]))
    rows = list(zip(_lines(dev[s]), _lines(dev[t])))
    sources = {os.path.basename(p): sha256_file(p) for p in dev.values()}
    if meta_dev is None:
        selection, meta = rows[0::2], rows[1::2]
        if not meta:
            raise SplitError(f"the dev set {layout.bitext_prefix('valid', (s, t))} has {len(rows)} pair: too few to "
                             "split into a selection and a meta-dev set", "add dev pairs, or pass --meta-dev PREFIX")
        rule = "parity"
        how = (f"dev set valid.{s}-{t} ({len(rows)} pairs) split by line parity: selection dev set (valid: early "
               f"stopping, lr, checkpoint choice) = lines 1, 3, 5, ... ({len(selection)} pairs); meta-dev set "
               f"(metadev: MetaBT's reward, bt_mle_dev's extra bitext) = lines 2, 4, 6, ... ({len(meta)} pairs)")
    else:
        files = {lang: f"{meta_dev}.{lang}" for lang in (s, t)}
        for lang, path in files.items():
            if not os.path.isfile(path):
                raise SplitError(f"--meta-dev {meta_dev}: {path} not found",
                                 f"give the prefix of two line-aligned files {meta_dev}.{s} and {meta_dev}.{t}")
        n = {lang: check_text(path) for lang, path in files.items()}
        if n[s] != n[t] or n[s] == 0:
            raise SplitError(f"--meta-dev {meta_dev}: {files[s]} has {n[s]} lines and {files[t]} {n[t]}",
                             "give two non-empty, line-aligned files")
        meta, selection = list(zip(_lines(files[s]), _lines(files[t]))), rows
        held_out = set(rows)
        if "test" in layout.bitext[(s, t)]:
            a, b = layout.bitext[(s, t)]["test"]
            held_out |= set(zip(_lines(a), _lines(b)))
        shared = sum(p in held_out for p in meta)
        if shared:
            raise SplitError(f"--meta-dev {meta_dev}: {shared} of its {len(meta)} pairs also occur in the dev or test "
                             f"set of {s}-{t}, which MetaBT must not learn from",
                             "remove them from the meta-dev files")
        sources.update({os.path.basename(p): sha256_file(p) for p in files.values()})
        rule = "file"
        how = (f"meta-dev set (metadev: MetaBT's reward, bt_mle_dev's extra bitext) = --meta-dev "
               f"{os.path.abspath(meta_dev)} ({len(meta)} pairs); selection dev set (valid: early stopping, lr, "
               f"checkpoint choice) = valid.{s}-{t} ({len(selection)} pairs)")

    written = {}
    for split_name, part in (("valid", selection), (META_DEV_SPLIT, meta)):
        for k, lang in enumerate((s, t)):
            written[f"{split_name}.{s}-{t}.{lang}"] = "".join(row[k] + "\n" for row in part)
    linked = {os.path.basename(p): p for p in layout.files() if os.path.basename(p) not in written}
    record = {"rule": rule, "pair": f"{s}-{t}", "raw_dir": layout.root,
              "meta_dev": os.path.abspath(meta_dev) if meta_dev else None,
              "selection_pairs": len(selection), "meta_dev_pairs": len(meta), "sources": sources,
              "description": how, "files": sorted(set(written) | set(linked))}

    os.makedirs(out, exist_ok=True)
    previous = []
    if os.path.isfile(old):
        with fileio.open_text(old) as f:
            try:
                previous = list(json.load(f).get("files", []))
            except (ValueError, AttributeError):
                previous = []
    for name in set(previous) | set(record["files"]):  # only names this script writes: never a user's file
        path = os.path.join(out, os.path.basename(name))
        if os.path.islink(path) or os.path.isfile(path):
            os.remove(path)  # a link is removed, never written through
    for name, text in written.items():
        fileio.write_text(os.path.join(out, name), text)
    for name, target in linked.items():
        os.symlink(target, os.path.join(out, name))
    fileio.write_json(old, record)
    return record


@cli
def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("raw_dir", help="corpus in the raw layout (docs/data.md)")
    p.add_argument("out_dir", help="the derived corpus: selection dev set, meta-dev set, links to the rest")
    p.add_argument("--src", required=True, help="source language")
    p.add_argument("--tgt", required=True, help="target language")
    p.add_argument("--meta-dev", metavar="PREFIX",
                   help="meta-dev pairs from PREFIX.SRC and PREFIX.TGT (default: the even lines of the dev set)")
    a = p.parse_args(argv)
    record = split(a.raw_dir, a.out_dir, a.src, a.tgt, a.meta_dev)
    print(record["description"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
