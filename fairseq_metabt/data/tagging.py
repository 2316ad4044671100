"""Language tags: the special tokens that name a language inside a sentence.

One convention for the whole plugin (fairseq's multilingual tasks use the same
``__xx__`` form), so a dictionary prepared once serves every task.
"""
from typing import Iterable, List

from fairseq_metabt.errors import UserError


def lang_tag(lang: str) -> str:
    """The dictionary symbol that tags language ``lang``, e.g. ``__tgt__``."""
    if not lang or any(c.isspace() for c in lang):
        raise UserError(f"invalid language code {lang!r}: it must be non-empty without spaces")
    return f"__{lang}__"


def lang_tags(langs: Iterable[str]) -> List[str]:
    """Tags for several languages, in sorted order (deterministic dictionaries)."""
    return [lang_tag(lang) for lang in sorted(set(langs))]


def missing_tags(dictionary, langs: Iterable[str]) -> List[str]:
    """The tags of ``langs`` that ``dictionary`` (a fairseq ``Dictionary``) lacks, in sorted order."""
    return [tag for tag in lang_tags(langs) if tag not in dictionary.indices]
