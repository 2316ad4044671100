"""Small Transformer architectures for low-resource experiments on CPU.

They are ordinary fairseq ``transformer`` models (any fairseq tool can read the
weights); only the sizes differ.  ``transformer_lowres_tiny`` is for tests,
``transformer_lowres_small`` is the quickstart's and the miniature
reproductions' model.
"""
from fairseq.models import register_model_architecture
from fairseq.models.transformer import base_architecture


def setdefault(args, name: str, value) -> None:
    """Set ``args.name`` unless the command line already did (fairseq's architecture convention)."""
    if getattr(args, name, None) is None:
        setattr(args, name, value)


def set_sizes(args, dim: int, ffn: int, heads: int, layers: int, dropout: float) -> None:
    """Default width, depth and dropout of both sides of an encoder-decoder architecture."""
    for side in ("encoder", "decoder"):
        setdefault(args, f"{side}_embed_dim", dim)
        setdefault(args, f"{side}_ffn_embed_dim", ffn)
        setdefault(args, f"{side}_attention_heads", heads)
        setdefault(args, f"{side}_layers", layers)
    setdefault(args, "dropout", dropout)


def _lowres(args, dim: int, ffn: int, heads: int, layers: int, dropout: float) -> None:
    set_sizes(args, dim, ffn, heads, layers, dropout)
    # A joint dictionary is the plugin's convention: tie what can be tied.
    setdefault(args, "share_decoder_input_output_embed", True)
    base_architecture(args)


@register_model_architecture("transformer", "transformer_lowres_tiny")
def transformer_lowres_tiny(args) -> None:
    """2+2 layers, dim 64, ffn 128, 2 heads (tests)."""
    _lowres(args, dim=64, ffn=128, heads=2, layers=2, dropout=0.1)


@register_model_architecture("transformer", "transformer_lowres_small")
def transformer_lowres_small(args) -> None:
    """2+2 layers, dim 128, ffn 256, 4 heads (quickstart, miniature reproductions on 2 CPU cores)."""
    _lowres(args, dim=128, ffn=256, heads=4, layers=2, dropout=0.1)
