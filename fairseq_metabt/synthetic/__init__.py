"""Embedded synthetic language-family corpus (standard library only).

Generates parallel and monolingual text in the project's raw layout from a
probabilistic grammar realised by a family of synthetic languages; see
``docs/synthetic.md``.  Command line::

    python -m fairseq_metabt.synthetic --preset quickstart --out DIR --seed 1

Python::

    from fairseq_metabt.synthetic import generate_corpus
    manifest = generate_corpus(preset="quickstart", out_dir="data/raw", seed=1, sizes={"train": 500})
"""
from fairseq_metabt.synthetic.corpus import (
    GENERATOR_VERSION,
    Corpus,
    OutputExistsError,
    SyntheticError,
    build_corpus,
    existing_outputs,
    generate_corpus,
    get_preset,
    list_presets,
    parse_sizes,
    resolve_sizes,
)
from fairseq_metabt.synthetic.presets import PRESETS

__all__ = [
    "GENERATOR_VERSION",
    "PRESETS",
    "Corpus",
    "OutputExistsError",
    "SyntheticError",
    "build_corpus",
    "existing_outputs",
    "generate_corpus",
    "get_preset",
    "list_presets",
    "parse_sizes",
    "resolve_sizes",
]
