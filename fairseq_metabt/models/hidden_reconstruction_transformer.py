"""Transformer with two hidden-state reconstructors: the HIDDEN baseline of Niu et al. (2019, §4.3).

Following Tu et al. (2017) and Wang et al. (2018a), the source f is
reconstructed, teacher forced, by two auxiliary decoders: one attends to the
encoder's hidden states, the other to the translation decoder's hidden states.
Each reconstructor is a fairseq ``TransformerDecoder`` (``--reconstructor-layers``
layers) whose "encoder output" is those hidden states; both share the model's
(source) embedding matrix and tie it to their output layer.  Translation
(``forward``, ``fairseq-generate``) is the plain Transformer's: the
reconstructors are used only by the ``hidden_reconstruction`` criterion.

A legacy ``add_args`` model like fairseq's own ``transformer`` (whose
architectures it reuses), so every Transformer flag applies unchanged.
"""
import copy
import logging
from typing import Dict, List

from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerDecoder, TransformerModel, base_architecture
from torch import Tensor

from fairseq_metabt.models.transformer_lowres import transformer_lowres_small, transformer_lowres_tiny

logger = logging.getLogger(__name__)


@register_model("transformer_hidden_reconstruction")
class HiddenReconstructionTransformer(TransformerModel):
    """Transformer + encoder-states and decoder-states reconstructors of the source (Wang et al. 2018a)."""

    @classmethod
    def add_args(cls, parser) -> None:
        super().add_args(parser)
        parser.add_argument("--reconstructor-layers", type=int, metavar="N",
                            help="Transformer decoder layers of each of the two reconstructors")

    @classmethod
    def build_model(cls, args, task) -> "HiddenReconstructionTransformer":
        model = super().build_model(args, task)
        rec_args = copy.deepcopy(args)
        rec_args.decoder_layers = args.reconstructor_layers
        rec_args.share_decoder_input_output_embed = True
        # reconstructors write the source language: the encoder's embeddings (all shared with
        # --share-all-embeddings)
        embed = model.encoder.embed_tokens
        model.encoder_reconstructor = TransformerDecoder(rec_args, task.source_dictionary, embed)
        model.decoder_reconstructor = TransformerDecoder(rec_args, task.source_dictionary, embed)
        return model

    def upgrade_state_dict_named(self, state_dict: Dict[str, Tensor], name: str) -> None:
        """Fine-tuning from a plain Transformer (the L_T pre-training): new reconstructors start fresh."""
        prefix = name + "." if name else ""
        missing = [k for k in self.state_dict() if k.startswith(("encoder_reconstructor.", "decoder_reconstructor."))
                   and prefix + k not in state_dict]
        if missing:
            logger.info("checkpoint has no hidden-state reconstructors: %d tensors keep their initialisation",
                        len(missing))
            own = self.state_dict()
            for k in missing:
                state_dict[prefix + k] = own[k]
        super().upgrade_state_dict_named(state_dict, name)

    @staticmethod
    def states_as_memory(states: Tensor, padding_mask: Tensor) -> Dict[str, List[Tensor]]:
        """(B, T, C) decoder states + (B, T) padding mask, as the encoder_out a decoder attends to."""
        return {"encoder_out": [states.transpose(0, 1)], "encoder_padding_mask": [padding_mask]}


def _hidden_reconstruction_defaults(args) -> None:
    if getattr(args, "reconstructor_layers", None) is None:
        args.reconstructor_layers = 1


@register_model_architecture("transformer_hidden_reconstruction", "transformer_hidden_reconstruction")
def hidden_reconstruction_base(args) -> None:
    _hidden_reconstruction_defaults(args)
    base_architecture(args)


@register_model_architecture("transformer_hidden_reconstruction", "transformer_hidden_reconstruction_tiny")
def hidden_reconstruction_tiny(args) -> None:
    """``transformer_lowres_tiny`` + two 1-layer reconstructors (tests)."""
    _hidden_reconstruction_defaults(args)
    transformer_lowres_tiny(args)


@register_model_architecture("transformer_hidden_reconstruction", "transformer_hidden_reconstruction_small")
def hidden_reconstruction_small(args) -> None:
    """``transformer_lowres_small`` + two 1-layer reconstructors (miniature reproduction)."""
    _hidden_reconstruction_defaults(args)
    transformer_lowres_small(args)
