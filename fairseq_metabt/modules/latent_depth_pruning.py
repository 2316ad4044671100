"""Export one language's sub-network of a latent-depth model as a plain fairseq ``transformer``.

In eval mode a latent-depth model runs layer ``l`` of language ``n`` iff its
deterministic gate is 1 (``q > 0.5`` or top-K) and skips it otherwise, so the
plain Transformer that keeps exactly the selected layers (renumbered
``0..K-1``, every other parameter unchanged) computes the same outputs
(Li et al. 2020, Sec. 5 / Fig. 9: "a sub-network for the given language").
"""
from __future__ import annotations

import copy
import re
from argparse import Namespace
from typing import Dict, List, Optional, Tuple

import torch

from fairseq_metabt.errors import UserError

_LAYER_KEY = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.(.*)$")

# options that only the latent-depth model understands
_LATENT_ARGS = ("encoder_latent_layers", "decoder_latent_layers", "latent_tau", "latent_tau_min",
                "latent_tau_anneal_rate", "latent_hard", "latent_logit_init", "encoder_target_layers",
                "decoder_target_layers", "latent_eval_select", "latent_langs", "latent_soft_updates",
                "encoder_latent_select", "decoder_latent_select")


def kept_layers(model, lang: str) -> Dict[str, List[int]]:
    """Indices of the layers language ``lang`` runs at inference, per side."""
    index = model.latent_lang_index(lang)
    selection = model.layer_selection(index)
    out = {}
    for side in ("encoder", "decoder"):
        n = len(getattr(model, side).layers)
        z = selection.get(side)
        out[side] = list(range(n)) if z is None else [i for i in range(n) if z[i].item() == 1.0]
    return out


def prune_latent_model(model, lang: str) -> Tuple[Namespace, Dict[str, torch.Tensor], Dict[str, List[int]]]:
    """``(args, state_dict, kept)`` of the plain ``transformer`` equal to ``model`` for ``lang`` in eval mode."""
    kept = kept_layers(model, lang)
    renumber = {side: {old: new for new, old in enumerate(idx)} for side, idx in kept.items()}
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("_latent.logits"):
            continue
        m = _LAYER_KEY.match(key)
        if m:
            side, old, rest = m.group(1), int(m.group(2)), m.group(3)
            if old not in renumber[side]:
                continue
            key = f"{side}.layers.{renumber[side][old]}.{rest}"
        state[key] = value.clone()
    args = copy.deepcopy(model.args)
    for name in _LATENT_ARGS:
        if hasattr(args, name):
            delattr(args, name)
    args.arch = "transformer"
    args._name = "transformer"
    args.encoder_layers = len(kept["encoder"])
    args.decoder_layers = len(kept["decoder"])
    args.latent_pruned_lang = lang
    return args, state, kept


def prune_checkpoint(path: str, lang: str, out_path: str, data: Optional[str] = None) -> Dict[str, List[int]]:
    """Write the plain-Transformer checkpoint of ``lang``'s sub-network; returns the kept layers.

    ``data`` replaces the training data directory recorded in the checkpoint (for the dictionaries).
    """
    from fairseq import checkpoint_utils, tasks

    from fairseq_metabt.checkpoints import load

    state = load(path, "CHECKPOINT")
    cfg = state["cfg"]
    if data is not None:
        cfg.task.data = data
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model, from_checkpoint=True) if _is_latent(cfg.model) else None
    if model is None:
        raise UserError(f"{path} is not a latent_depth_transformer checkpoint")
    model.load_state_dict(state["model"], strict=True, model_cfg=cfg.model)
    model.eval()
    args, new_state, kept = prune_latent_model(model, lang)
    cfg.model = args
    # saved like fairseq's trainer does: a plain container (a DictConfig is not weights_only-loadable)
    from omegaconf import OmegaConf

    out = {"cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "model": new_state, "optimizer_history": state["optimizer_history"],
           "extra_state": {"latent_depth_pruned": {"lang": lang, "kept": kept, "source": path}},
           "last_optimizer_state": None}
    checkpoint_utils.torch_persistent_save(out, out_path)
    return kept


def _is_latent(args) -> bool:
    return getattr(args, "arch", "").startswith("latent_depth_transformer") or \
        getattr(args, "_name", "") == "latent_depth_transformer"
