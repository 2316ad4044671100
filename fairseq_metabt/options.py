"""Print the command-line options of a registered task, criterion or model.

``fairseq-train --task X --help`` lists only fairseq's generic options: its
parser handles ``--help`` before it adds the task's, criterion's and model's
own.  This prints those, with their help texts and defaults::

    python -m fairseq_metabt.options meta_backtranslation          # a task, criterion or model name
    python -m fairseq_metabt.options stgs_reconstruction dds_weighted_cross_entropy
"""
import argparse
import sys
from typing import List, Optional

import fairseq_metabt  # noqa: F401  (registers the plugin's components)
from fairseq_metabt.errors import UserError, cli


def component_parser(name: str) -> argparse.ArgumentParser:
    """An argparse parser holding the options of the task, criterion or model registered as ``name``."""
    from fairseq.dataclass.utils import gen_parser_from_dataclass
    from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_REGISTRY
    from fairseq.registry import REGISTRIES
    from fairseq.tasks import TASK_REGISTRY

    parser = argparse.ArgumentParser(prog=name, add_help=False, allow_abbrev=False,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    found = []
    candidates = [("task", TASK_REGISTRY.get(name))]
    candidates += [(kind, reg["registry"].get(name)) for kind, reg in REGISTRIES.items()]
    candidates.append(("model", MODEL_REGISTRY.get(name) or ARCH_MODEL_REGISTRY.get(name)))
    for kind, cls in candidates:
        if cls is None:
            continue
        group = parser.add_argument_group(f"{kind} {name}")
        dc = getattr(cls, "__dataclass", None)
        if dc is not None:
            gen_parser_from_dataclass(group, dc())
        elif hasattr(cls, "add_args"):
            cls.add_args(group)
        found.append(kind)
    if not found:
        raise KeyError(f"no task, criterion or model is registered as {name!r}: see `fairseq-train --help` "
                       "for the registered names (with --user-dir for the plugin's)")
    return parser


@cli
def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="+", help="registered task, criterion or model names")
    args = ap.parse_args(argv)
    for name in args.names:
        try:
            component_parser(name).print_help()
        except KeyError as e:
            raise UserError(e.args[0]) from None
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
