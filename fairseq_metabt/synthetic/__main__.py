"""Command line: ``python -m fairseq_metabt.synthetic --preset NAME --out DIR --seed S``."""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from fairseq_metabt.errors import cli
from fairseq_metabt.synthetic.corpus import generate_corpus, parse_sizes
from fairseq_metabt.synthetic.presets import PRESETS


def _epilog() -> str:
    lines = ["presets (size keys with their defaults):"]
    for p in PRESETS.values():
        lines.append(f"  {p.name}: {p.description}")
        lines.append("      " + " ".join(f"{k}={v}" for k, v in p.defaults.items()))
        if p.supports_multiway:
            lines.append("      (--multiway available; 'pool' is the multi-way target pool size)")
    lines.append("size keys: train = lrl-tgt train; a language code = its train bitext; "
                 "valid/test = every pair; mono_LANG = mono.LANG")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="python -m fairseq_metabt.synthetic",
        description="Generate a synthetic language-family corpus in the raw layout.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", default="quickstart", help=f"one of: {', '.join(PRESETS)} (default: quickstart)")
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    parser.add_argument("--sizes", default="", metavar="KEY=N,...", help="override default sizes, e.g. train=500,valid=50")
    parser.add_argument("--multiway", action="store_true",
                        help="multilingual preset: sources translate subsets of one shared target pool")
    parser.add_argument("--force", action="store_true", help="replace a corpus already in --out")
    return parser


@cli
def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI; returns 0, or exits with status 2 and one line on stderr for a bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    manifest = generate_corpus(args.preset, args.out, args.seed, parse_sizes(args.sizes),
                               multiway=args.multiway, force=args.force)
    total = sum(manifest["sizes"].values())
    print(f"wrote {len(manifest['files'])} files ({total} lines) of preset {args.preset!r}, seed {args.seed}, "
          f"to {args.out} (see {os.path.join(args.out, 'manifest.json')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
