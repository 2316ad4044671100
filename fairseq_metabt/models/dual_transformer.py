"""Two Transformers in one fairseq model: forward P(y|x; theta) and backward P(x|y; psi).

Meta back-translation and wake-sleep train both directions at once.  Holding
the backward model inside the registered model means fairseq saves, loads,
moves and wraps both together, while the model itself *is* the forward
Transformer (its ``encoder``/``decoder``), so ``fairseq-generate --path``
translates source → target with no extra flags.  ``scripts/export_direction.py``
writes either direction as a plain fairseq ``transformer`` checkpoint.

Both directions share one (joint) dictionary, so the same architecture
options build both.
"""
from __future__ import annotations

from typing import Dict

import torch
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerModel, base_architecture

from fairseq_metabt.errors import UserError
from fairseq_metabt.models.transformer_lowres import transformer_lowres_small, transformer_lowres_tiny

DIRECTIONS = ("forward", "backward")


class _Swapped:
    """A task view with source and target dictionaries swapped (for building the backward model)."""

    def __init__(self, task):
        self.source_dictionary = task.target_dictionary
        self.target_dictionary = task.source_dictionary


@register_model("dual_transformer")
class DualTransformerModel(TransformerModel):
    """The forward Transformer (this model's encoder/decoder) plus ``self.backward_model``."""

    def __init__(self, args, encoder, decoder, backward_model: TransformerModel):
        super().__init__(args, encoder, decoder)
        self.backward_model = backward_model

    @classmethod
    def build_model(cls, args, task):
        if task.source_dictionary != task.target_dictionary:
            raise UserError(
                "dual_transformer needs one joint dictionary for both directions, but "
                f"dict.{getattr(task.cfg, 'source_lang', 'SRC')}.txt and dict.{getattr(task.cfg, 'target_lang', 'TGT')}.txt "
                "differ. Prepare the data with scripts/prepare_data.py (one joint dictionary) or "
                "fairseq-preprocess --joined-dictionary."
            )
        forward = TransformerModel.build_model(args, task)
        backward = TransformerModel.build_model(args, _Swapped(task))
        return cls(args, forward.encoder, forward.decoder, backward)

    # ---- directions as plain Transformer state dicts ------------------------------------------
    def direction_state_dict(self, direction: str) -> Dict[str, torch.Tensor]:
        """``encoder.*``/``decoder.*`` weights of one direction, as a plain ``transformer`` holds them."""
        return split_directions(self.state_dict())[_check(direction)]

    def load_direction_state_dict(self, direction: str, state: Dict[str, torch.Tensor],
                                  flag: str = "the checkpoint") -> None:
        """Initialise one direction from a plain ``transformer`` checkpoint's (or a dual model's) weights."""
        if is_dual_state(state):
            state = split_directions(state)[_check(direction)]
        expected = self.direction_state_dict(direction)
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
        if missing or unexpected or wrong:
            raise UserError(
                f"cannot initialise the {direction} model from {flag}: missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}, shape mismatch {wrong[:3]}",
                "the checkpoint must be a transformer of the same architecture and dictionary (e.g. trained "
                "with --task translation on the same prepared data)"
            )
        target = self.backward_model if direction == "backward" else self
        target.load_state_dict(state, strict=False)


_BACKWARD = "backward_model."


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside fairseq's distributed wrappers (ModuleProxyWrapper around DDP around the model)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def _check(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    return direction


def is_dual_state(state: Dict[str, torch.Tensor]) -> bool:
    """True for the weights of a dual model (forward and backward), False for a plain transformer's."""
    return any(k.startswith(_BACKWARD) for k in state)


def split_directions(state: Dict[str, torch.Tensor]) -> Dict[str, Dict[str, torch.Tensor]]:
    """A dual model's state dict as two plain Transformer state dicts."""
    return {
        "forward": {k: v for k, v in state.items() if not k.startswith(_BACKWARD)},
        "backward": {k[len(_BACKWARD):]: v for k, v in state.items() if k.startswith(_BACKWARD)},
    }


@register_model_architecture("dual_transformer", "dual_transformer_tiny")
def dual_transformer_tiny(args) -> None:
    transformer_lowres_tiny(args)


@register_model_architecture("dual_transformer", "dual_transformer_small")
def dual_transformer_small(args) -> None:
    transformer_lowres_small(args)


@register_model_architecture("dual_transformer", "dual_transformer_base")
def dual_transformer_base(args) -> None:
    """Transformer-Base in each direction (Pham et al. 2021, A.2: shared embeddings)."""
    args.share_all_embeddings = getattr(args, "share_all_embeddings", True)
    base_architecture(args)
