#!/usr/bin/env python
"""Export one direction of a dual_transformer checkpoint as a plain fairseq ``transformer`` checkpoint.

    python scripts/export_direction.py CKPT OUT.pt --direction forward|backward

The result holds only that direction's weights, names ``--arch transformer``
with the sizes spelled out, and stores its configuration as plain data (no
pickled ``argparse.Namespace``), so ``fairseq-generate`` loads it without the
plugin, also on torch >= 2.6 with ``weights_only=True``.  The backward
direction's source and target languages are swapped.  An existing OUT is
kept unless ``--force``.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import fairseq_metabt  # noqa: E402,F401  (allow-lists checkpoint types, registers dual_transformer)
from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from fairseq_metabt import checkpoints, fileio  # noqa: E402
from fairseq_metabt.errors import UserError, cli  # noqa: E402
from fairseq_metabt.models.dual_transformer import DIRECTIONS, is_dual_state, split_directions  # noqa: E402

# architecture options a plain fairseq transformer needs to rebuild the same network
_ARCH_KEYS = [
    "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads", "encoder_layers",
    "decoder_embed_dim", "decoder_ffn_embed_dim", "decoder_attention_heads", "decoder_layers",
    "encoder_normalize_before", "decoder_normalize_before", "encoder_learned_pos", "decoder_learned_pos",
    "share_decoder_input_output_embed", "share_all_embeddings", "dropout", "attention_dropout",
    "activation_dropout", "activation_fn", "no_token_positional_embeddings", "no_scale_embedding",
    "layernorm_embedding", "max_source_positions", "max_target_positions", "decoder_output_dim",
    "decoder_input_dim", "adaptive_input", "no_cross_attention", "cross_self_attention",
]


def export(path: str, out: str, direction: str, force: bool = False) -> None:
    if direction not in DIRECTIONS:
        raise UserError(f"--direction {direction!r} is unknown", f"choose one of {', '.join(DIRECTIONS)}")
    if os.path.exists(out) and not force:
        raise UserError(f"{out} exists", "pass --force to overwrite it, or choose another output file")
    state = checkpoints.load(path, "CHECKPOINT")
    cfg = state["cfg"]
    model_cfg = cfg["model"]
    if not is_dual_state(state["model"]):
        raise UserError(f"{path} is not a dual_transformer checkpoint (no backward model)",
                        "pass a checkpoint trained by meta_backtranslation or wake_sleep_translation")
    fingerprint, _ = checkpoints.checkpoint_fingerprint(state)
    get = (lambda k: getattr(model_cfg, k, None)) if isinstance(model_cfg, argparse.Namespace) else model_cfg.get
    args = argparse.Namespace(arch="transformer", _name="transformer",
                              **{k: get(k) for k in _ARCH_KEYS if get(k) is not None})
    task_cfg = OmegaConf.to_container(cfg["task"], resolve=True) if OmegaConf.is_config(cfg["task"]) else dict(cfg["task"])
    src, tgt = task_cfg["source_lang"], task_cfg["target_lang"]
    if direction == "backward":
        src, tgt = tgt, src
    new_cfg = convert_namespace_to_omegaconf(argparse.Namespace(
        task="translation", data=task_cfg["data"], source_lang=src, target_lang=tgt,
        **{k: v for k, v in vars(args).items() if k != "_name"}))
    plain = OmegaConf.to_container(new_cfg, resolve=False)
    plain["model"] = {"_name": "transformer", **{k: v for k, v in vars(args).items() if k not in ("arch", "_name")}}
    # the dictionary's fingerprint travels with the weights: --forward/--backward-init check it
    # even when the training data directory has moved
    extra = {checkpoints.FINGERPRINT_KEY: fingerprint} if fingerprint else {}
    fileio.torch_save({"cfg": plain, "args": None, "model": split_directions(state["model"])[direction],
                       "optimizer_history": state.get("optimizer_history") or [{"num_updates": 0}],
                       "extra_state": extra, "last_optimizer_state": None}, out)


@cli
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--direction", required=True, choices=DIRECTIONS)
    p.add_argument("--force", action="store_true", help="overwrite OUT")
    a = p.parse_args(argv)
    export(a.checkpoint, a.out, a.direction, a.force)
    print(f"wrote the {a.direction} model of {a.checkpoint} to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
