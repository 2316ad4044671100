"""Start-up validation of the numeric options the plugin adds: finite, and in range.

One table (:data:`RULES`) says what each option of the plugin's tasks,
criterions and scripts accepts; one call per component checks its
configuration against it before anything trains::

    validate.config(cfg)                          # a task's cfg (dataclass, DictConfig or Namespace)
    validate.config(cfg, vocab=len(src_dict))     # ... whose sampling top-k must fit the vocabulary
    validate.values(stgs_tau=stgs_tau, ...)       # a criterion's keyword arguments
    validate.value("--beam", args.beam, ">=1")    # one option of a script

A float option that is not finite (``nan``, ``inf``) is refused even without a
rule: ``--pseudo-weight nan`` used to train with the meta reward silently
skipped, ``--latent-tau nan`` with another temperature.  Every refusal is a
:class:`~fairseq_metabt.errors.UserError` naming the option, the value and
the accepted range.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Dict, Iterable, Mapping, Optional

from fairseq_metabt.errors import UserError

logger = logging.getLogger(__name__)

# option (attribute name) -> accepted values.  Specs: ">0", ">=0", ">=1", "[0,1)", "[0,1]", "(0,1]", "(0,1)",
# "topk" (-1, or 1 .. the vocabulary), "topp" (-1, or (0, 1]), "any" (finite).  None values are skipped.
RULES: Dict[str, str] = {
    # meta_backtranslation
    "meta_dev_max_tokens": ">=1", "pseudo_weight": ">=0", "bt_beam": ">=1", "bt_temperature": ">0",
    "bt_sampling_topk": "topk", "bt_sampling_topp": "topp", "bt_max_len_a": ">=0", "bt_max_len_b": ">=0",
    "meta_taylor_eps": ">0", "meta_baseline_decay": "[0,1)", "meta_weight": ">=0", "backward_mle_weight": ">=0",
    "backward_lr": ">=0", "backward_clip_norm": ">=0", "pseudo_chunk_tokens": ">=0",
    # wake_sleep_translation
    "wake_updates": ">=1", "sleep_updates": ">=1", "ws_mle_updates": ">=0", "ws_iterations": ">=1",
    "ws_gen_max_tokens": ">=1", "ws_beam": ">=1", "ws_temperature": ">0", "ws_sampling_topk": "topk",
    "ws_sampling_topp": "topp", "ws_max_len_a": ">=0", "ws_max_len_b": ">=0", "ws_pseudo_weight": ">=0",
    # dds_translation and the per-example DDS criterion
    "dds_dev_max_tokens": ">=1", "dds_dev_max_batches": ">=0", "dds_update_interval": ">=1",
    "dds_start_update": ">=0", "dds_scorer_iters": ">=1", "dds_scorer_batch": ">=1", "dds_scorer_lr": ">=0",
    "dds_scorer_hidden": ">=1", "dds_probe_tokens": ">=0", "dds_alpha1": "[0,1]", "dds_alpha2": "[0,1]",
    "dds_temperature": ">0", "dds_tcs_temperature": ">0", "dds_scorer_kl_weight": ">0",
    "dds_grad_sketch_dim": ">=0", "dds_taylor_eps": ">0",
    # latent depth (task, model, criterion)
    "latent_inner_steps": ">=1", "latent_gate_lr": ">0", "latent_tau": ">0", "latent_tau_min": ">0",
    "latent_tau_anneal_rate": ">=0", "latent_soft_updates": ">=0", "latent_logit_init": "any",
    "encoder_target_layers": ">=1", "decoder_target_layers": ">=1", "latent_kl_weight": ">=0",
    "latent_kl_anneal_updates": ">=0", "latent_lk_weight": ">=0",
    # reconstruction criterions
    "stgs_tau": ">0", "stgs_beta": ">=0", "stgs_max_len_a": ">=0", "stgs_max_len_b": ">=0",
    "reconstruction_weight": ">=0", "encoder_reconstruction_weight": ">=0", "decoder_reconstruction_weight": ">=0",
    # lr scheduler plateau_updates
    "lr_shrink": "(0,1)", "lr_patience": ">=1", "min_lr_ratio": "[0,1]", "warmup_updates": ">=0",
    "warmup_init_lr": "any",
    # the per-example DDS criterion's own seed
    "seed": ">=0",
}

# names that fairseq's own components use too (with other ranges: reduce_lr_on_plateau's --lr-patience 0):
# checked in the plugin's own configs, never in a Namespace that holds every option of the run
_SHARED_WITH_FAIRSEQ = {"seed", "warmup_updates", "warmup_init_lr", "lr_shrink", "lr_patience"}

# options naming a file the component writes: a regular file or a new name (fileio.check_output)
_OUTPUT_FILE_OPTIONS = ("dds_log_file",)

# string options that name a subset; using the test set for training-time decisions is worth a warning
_TEST_SUBSET_OPTIONS = ("meta_dev_subset", "dds_dev_subset")

_RANGES = {
    ">0": (lambda v: v > 0, "> 0"),
    ">=0": (lambda v: v >= 0, ">= 0"),
    ">=1": (lambda v: v >= 1, ">= 1"),
    "[0,1)": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "[0,1]": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "(0,1]": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "(0,1)": (lambda v: 0 < v < 1, "in (0, 1)"),
    "topp": (lambda v: v == -1 or 0 < v <= 1, "-1 (off) or in (0, 1]"),
    "any": (lambda v: True, "a number"),
}


def flag(name: str) -> str:
    """``pseudo_weight`` -> ``--pseudo-weight`` (a name that already is a flag is kept)."""
    return name if name.startswith("-") else "--" + name.replace("_", "-")


def value(option: str, v: Any, spec: str = "any", vocab: Optional[int] = None) -> None:
    """Refuse ``v`` for ``option`` unless it is a finite number satisfying ``spec`` (None is accepted)."""
    if v is None or isinstance(v, bool):
        return
    try:
        x = float(v)
    except (TypeError, ValueError):
        return  # not a number: the option's own parser or component checks it
    name = flag(option)
    if not math.isfinite(x):
        raise UserError(f"{name} must be a finite number, got {v}", f"pass a finite value to {name}")
    if spec == "topk":
        limit = f"-1 (all) or 1 .. {vocab} (the vocabulary size)" if vocab else "-1 (all) or >= 1"
        if not (x == -1 or (x >= 1 and (not vocab or x <= vocab))):
            raise UserError(f"{name} must be {limit}, got {v}", f"pass a value in that range to {name}")
        return
    check, text = _RANGES[spec]
    if not check(x):
        raise UserError(f"{name} must be {text}, got {v}", f"pass a value {text} to {name}")


def _items(cfg: Any) -> Iterable[tuple]:
    """(name, value) of every option of a dataclass, DictConfig, mapping or Namespace."""
    if cfg is None:
        return []
    if dataclasses.is_dataclass(cfg):
        keys = [f.name for f in dataclasses.fields(cfg)]
    elif isinstance(cfg, Mapping) or hasattr(cfg, "keys") and callable(cfg.keys):
        keys = list(cfg.keys())
    else:
        keys = [k for k in vars(cfg) if k not in _SHARED_WITH_FAIRSEQ]
    out = []
    for k in keys:
        if k not in RULES and k not in _TEST_SUBSET_OPTIONS and k not in _OUTPUT_FILE_OPTIONS:
            continue
        try:  # an unresolvable interpolation (a node outside the full config) is not ours to judge
            out.append((k, cfg[k] if isinstance(cfg, Mapping) or hasattr(cfg, "__getitem__") else getattr(cfg, k)))
        except Exception:
            continue
    return out


def config(cfg: Any, vocab: Optional[int] = None, rules: Mapping[str, str] = RULES) -> None:
    """Check every option of ``cfg`` that :data:`RULES` knows, and warn on a test subset used as dev.

    An option naming a file the component writes (``--dds-log-file``) must be a regular file or a new
    name (never a device node, FIFO or directory: the log is rewritten and rotated).

    ``vocab`` bounds the sampling top-k options.  Options absent from ``cfg`` are skipped, so one
    table serves every component."""
    for key, v in _items(cfg):
        if key in rules:
            value(key, v, rules[key], vocab)
    for key, subset in _items(cfg):
        if key in _OUTPUT_FILE_OPTIONS and subset:
            from fairseq_metabt import fileio

            fileio.check_output(str(subset), flag(key))
        if key in _TEST_SUBSET_OPTIONS and isinstance(subset, str) and subset.startswith("test"):
            logger.warning("%s %s: the method takes training decisions from the test set, so scores on it are "
                           "no longer held-out results; use valid (or a separate dev split) for them",
                           flag(key), subset)


def values(vocab: Optional[int] = None, **options: Any) -> None:
    """:func:`config` for keyword arguments (a criterion's constructor)."""
    config(options, vocab)


def lang_pairs_have_data(data: str, lang_pairs, flag_name: str = "--lang-pairs") -> None:
    """Every language of ``lang_pairs`` has a dictionary and every pair a train split in ``data``.

    fairseq's multilingual tasks would otherwise stop on ``FileNotFoundError: .../dict.xx.txt``."""
    import os

    if not data or not lang_pairs:
        return
    root = str(data).split(os.pathsep)[0]
    pairs = lang_pairs.split(",") if isinstance(lang_pairs, str) else list(lang_pairs)
    langs = sorted({x for p in pairs for x in p.split("-") if x})
    missing = [x for x in langs if not os.path.isfile(os.path.join(root, f"dict.{x}.txt"))]
    if missing:
        raise UserError(f"{flag_name} {','.join(pairs)} names {', '.join(missing)}, but {root} holds no data for "
                        f"{'it' if len(missing) == 1 else 'them'} (no dict.{missing[0]}.txt)",
                        f"drop it from {flag_name}, or prepare a corpus with that language "
                        "(scripts/prepare_data.py)")
    for p in pairs:
        s, _, t = p.partition("-")
        if not any(os.path.isfile(os.path.join(root, f"train.{a}-{b}.{s}.idx")) for a, b in ((s, t), (t, s))):
            raise UserError(f"{flag_name} names {p}, but {root} has no train split of {s}-{t} "
                            f"(no train.{s}-{t}.{s}.idx)",
                            f"drop {p} from {flag_name}, or prepare a corpus with that pair")
