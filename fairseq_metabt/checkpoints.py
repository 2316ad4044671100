"""Checkpoints the user names: read with clear errors, checked before their weights are used.

* :func:`load` / :func:`check_readable`: a missing, corrupt or truncated file
  is a :class:`~fairseq_metabt.errors.UserError` naming it and the fix, not an
  ``OSError: [Errno 22]`` from deep inside ``torch.load``.
* :func:`initialise_directions` (``--forward-init`` / ``--backward-init`` of
  every task with a forward and a backward model): the checkpoint must
  translate in the direction of the model it initialises, and must have been
  trained with the run's dictionary (same symbols in the same order, compared
  by :func:`dictionary_fingerprint`), not merely one of the same size.
* :func:`check_translates` (``scripts/evaluate.py --path``): the same two
  checks against the data being scored, so a checkpoint of another corpus or
  with ``-s``/``-t`` swapped is refused instead of scoring near zero.
"""
from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from typing import Optional, Tuple

from fairseq_metabt.errors import UserError, UserFileError

logger = logging.getLogger(__name__)

FINGERPRINT_KEY = "dictionary_fingerprint"  # in a checkpoint's extra_state (written by export_direction.py)
_FIX_CORRUPT = ("the file is corrupt or truncated (e.g. a copy or a save that was cut short): copy it again, "
                "re-export it, or use another checkpoint such as checkpoint_last.pt or checkpoint_best.pt")


def _missing(path: str, flag: str) -> UserFileError:
    return UserFileError(f"{flag} {path} does not exist", "train or export it first, or fix the path")


def _corrupt(path: str, flag: str, error: BaseException) -> UserError:
    detail = " ".join(f"{type(error).__name__}: {error}".split())[:160]
    return UserError(f"{flag} {path} cannot be read as a checkpoint ({detail})", _FIX_CORRUPT)


def check_readable(path: str, flag: str = "checkpoint") -> None:
    """Fail early and clearly on a missing or damaged checkpoint without unpickling it.

    ``torch.save`` writes a zip archive: its CRCs show truncation or
    corruption.  Files in torch's legacy format are loaded fully instead."""
    if not os.path.isfile(path):
        raise _missing(path, flag)
    if not zipfile.is_zipfile(path):
        load(path, flag)
        return
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise _corrupt(path, flag, e) from e
    if bad is not None:
        raise _corrupt(path, flag, zipfile.BadZipFile(f"bad CRC in {bad}"))


def load(path: str, flag: str = "checkpoint") -> dict:
    """``checkpoint_utils.load_checkpoint_to_cpu(path)``; a missing or unreadable file is a :class:`UserError`."""
    from fairseq import checkpoint_utils

    if not os.path.isfile(path):
        raise _missing(path, flag)
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
    except Exception as e:  # whatever torch.load/unpickling raises on a damaged file, the file is the problem
        if _readable_torch_file(path):  # a whole torch file that fairseq cannot use: not a checkpoint
            raise _not_a_checkpoint(path, flag) from e
        raise _corrupt(path, flag, e) from e
    if not isinstance(state, dict) or "model" not in state:
        raise _not_a_checkpoint(path, flag)
    return state


def _readable_torch_file(path: str) -> bool:
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return False
    return True


def _not_a_checkpoint(path: str, flag: str) -> UserError:
    return UserError(f"{flag} {path} is not a fairseq checkpoint (it holds no model weights and training state)",
                     "pass a checkpoint written by fairseq-train or by the plugin's export scripts")


def dictionary_fingerprint(dictionary) -> str:
    """A short hash of a fairseq dictionary's symbols in order: equal iff token ids mean the same pieces."""
    return hashlib.sha256("\n".join(dictionary.symbols).encode("utf-8")).hexdigest()[:16]


def _task_cfg(state: dict):
    cfg = state.get("cfg") or {}
    task = cfg.get("task") if hasattr(cfg, "get") else None
    if task is None and state.get("args") is not None:  # legacy checkpoints keep an argparse.Namespace
        task = vars(state["args"])
    return task or {}


def _get(cfg, key: str):
    return cfg.get(key) if hasattr(cfg, "get") else getattr(cfg, key, None)


def checkpoint_languages(state: dict) -> Tuple[Optional[str], Optional[str]]:
    """(source, target) languages a checkpoint was trained on, or (None, None) when it does not say."""
    task = _task_cfg(state)
    return _get(task, "source_lang"), _get(task, "target_lang")


def checkpoint_fingerprint(state: dict) -> Tuple[Optional[str], str]:
    """The fingerprint of the dictionary a checkpoint was trained with, and where it came from.

    Exported checkpoints carry it; otherwise it is computed from the
    dictionary in the training data directory the checkpoint records (None
    when that directory is gone)."""
    extra = state.get("extra_state") or {}
    if extra.get(FINGERPRINT_KEY):
        return extra[FINGERPRINT_KEY], "recorded in the checkpoint"
    from fairseq.data import Dictionary

    task = _task_cfg(state)
    data, src = _get(task, "data"), _get(task, "source_lang")
    if not data:
        return None, "no data directory recorded"
    data = str(data).split(os.pathsep)[0]
    for name in ([f"dict.{src}.txt"] if src else []) + ["dict.txt"]:
        path = os.path.join(data, name)
        if os.path.isfile(path):
            return dictionary_fingerprint(Dictionary.load(path)), path
    return None, f"no dictionary found in its data directory {data}"


def checkpoint_directions(state: dict) -> Optional[set]:
    """The (source, target) directions a checkpoint translates, or None when it does not say.

    ``--lang-pairs`` (multilingual tasks) gives its pairs; ``bidirectional_translation`` translates both
    ways; otherwise ``-s``/``-t``."""
    task = _task_cfg(state)
    pairs = _get(task, "lang_pairs")
    if pairs:
        pairs = pairs.split(",") if isinstance(pairs, str) else list(pairs)
        return {tuple(p.split("-", 1)) for p in pairs if "-" in p}
    src, tgt = checkpoint_languages(state)
    if src is None or tgt is None:
        return None
    if (_get(task, "_name") or _get(task, "task")) == "bidirectional_translation":
        return {(src, tgt), (tgt, src)}
    return {(src, tgt)}


def load_dictionary(data_dir: str, lang: Optional[str] = None):
    """The fairseq dictionary of a prepared data directory (``dict.LANG.txt``, else ``dict.txt``), or None."""
    from fairseq.data import Dictionary

    for name in ([f"dict.{lang}.txt"] if lang else []) + ["dict.txt"]:
        path = os.path.join(data_dir, name)
        if os.path.isfile(path):
            return Dictionary.load(path)
    return None


def check_translates(state: dict, path: str, flag: str, src: str, tgt: str, data_dir: str) -> None:
    """``state`` (read from ``path`` for ``flag``) translates ``src``->``tgt`` with the dictionary of ``data_dir``.

    The direction and dictionary checks of the init checkpoints, applied to a checkpoint being scored."""
    directions = checkpoint_directions(state)
    if directions is None:
        logger.warning("%s %s does not record its languages; cannot check that it translates %s->%s",
                       flag, path, src, tgt)
    elif (src, tgt) not in directions:
        trained = ", ".join(f"{a}->{b}" for a, b in sorted(directions))
        raise UserError(f"{flag} {path} translates {trained}, not {src}->{tgt}: its scores would be meaningless",
                        f"pass -s/-t of a direction it was trained on, or a checkpoint trained with -s {src} -t {tgt}")
    dictionary = load_dictionary(data_dir, src)
    theirs, origin = checkpoint_fingerprint(state)
    if dictionary is None or theirs is None:
        logger.warning("%s %s: cannot check its dictionary against %s (%s); make sure it was trained on this "
                       "prepared data", flag, path, data_dir, origin if theirs is None else "no dictionary there")
        return
    ours = dictionary_fingerprint(dictionary)
    if theirs != ours:
        raise UserError(
            f"{flag} {path} was trained with another dictionary than {data_dir}'s (fingerprint {theirs}, {origin}; "
            f"{data_dir}: {ours}): its token ids mean other pieces, so it cannot translate this data",
            "score it on the data directory it was trained on, or prepare this corpus with that checkpoint's "
            "--spm-model and --dict")


def check_init_checkpoint(state: dict, path: str, flag: str, direction: str, langs: Tuple[str, str],
                          dictionary) -> None:
    """``state`` (read from ``path`` for ``flag``) may initialise the run's ``direction`` model.

    ``langs`` is (source, target) of that model, ``dictionary`` the run's dictionary."""
    from fairseq_metabt.models.dual_transformer import is_dual_state

    src, tgt = checkpoint_languages(state)
    if is_dual_state(state["model"]) and direction == "backward":
        src, tgt = tgt, src  # a dual checkpoint's backward model translates its target into its source
    if src is None or tgt is None:
        logger.warning("%s %s does not record its languages; cannot check that it translates %s->%s",
                       flag, path, *langs)
    elif (src, tgt) != tuple(langs):
        raise UserError(
            f"{flag} {path} translates {src}->{tgt}, but the {direction} model of this run translates "
            f"{langs[0]}->{langs[1]}",
            f"pass a {langs[0]}->{langs[1]} checkpoint (trained with -s {langs[0]} -t {langs[1]}, or exported "
            f"with scripts/export_direction.py --direction {direction})")
    theirs, origin = checkpoint_fingerprint(state)
    ours = dictionary_fingerprint(dictionary)
    if theirs is None:
        logger.warning("%s %s: cannot check its dictionary (%s); make sure it was trained on the same "
                       "prepared data as this run", flag, path, origin)
    elif theirs != ours:
        raise UserError(
            f"{flag} {path} was trained with another dictionary than this run's (fingerprint {theirs}, "
            f"{origin}; this run: {ours}): its token ids mean other pieces",
            "initialise from a checkpoint trained on the same prepared data, or prepare this corpus with that "
            "checkpoint's --spm-model and --dict")


def initialise_directions(model, task, forward_init: Optional[str], backward_init: Optional[str],
                          from_checkpoint: bool = False) -> None:
    """Load ``--forward-init`` / ``--backward-init`` into a new dual model, after checking each checkpoint.

    Nothing is loaded when the model comes from a checkpoint (resume): its own weights win."""
    if from_checkpoint:
        return
    src, tgt = task.cfg.source_lang, task.cfg.target_lang
    for direction, path, langs in (("forward", forward_init, (src, tgt)), ("backward", backward_init, (tgt, src))):
        if not path:
            continue
        flag = f"--{direction}-init"
        state = load(path, flag)
        check_init_checkpoint(state, path, flag, direction, langs, task.source_dictionary)
        model.load_direction_state_dict(direction, state["model"], flag=f"{flag} {path}")
        logger.info("initialised the %s model from %s", direction, path)
