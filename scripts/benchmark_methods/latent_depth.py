"""Latent depth vs. fairseq's own ``examples/latent_depth`` (or a static Transformer), same data and size.

    python scripts/benchmark.py --method latent_depth [--updates 60] [--arch transformer_lowres_small]
    LATENT_DEPTH_BASELINE=static python scripts/benchmark.py --method latent_depth

One-to-many (tgt -> lrl, hrl) on the synthetic ``multilingual`` preset, one
shared pre-norm encoder/decoder with ``--decoder-langtok``, the widths of
``--arch`` and ``LATENT_DEPTH_LAYERS`` (default 6) layers per side, decoder
latent layers with K = half the depth, beta = lambda = 0.1, tau 5, relaxed
gates for the first third of the updates and straight-through hard gates
afterwards (fairseq's ``--soft-update``), KL annealed over the same third.

* ``method``: the plugin's ``latent_depth_translation`` + ``latent_depth_transformer``, L_K on the
  utilisation aggregated over languages, the gate logits in their own Adam (``--latent-gate-lr``);
* ``baseline`` (default, ``LATENT_DEPTH_BASELINE=fairseq``): fairseq's
  ``multilingual_translation_latent_depth`` + ``latent_multilingual_transformer``
  (``--user-dir`` of the installed ``examples/latent_depth``), the same
  configuration (tau 5, its default and ours);
* ``LATENT_DEPTH_BASELINE=static``: fairseq's ``multilingual_translation`` +
  ``multilingual_transformer`` of the same depth with no gates.
"""
import os
from typing import Dict, List

from benchmark import USER_DIR, BenchmarkMethod, common_args, plain_transformer_args

LANG_PAIRS = "tgt-lrl,tgt-hrl"


def _example_dir() -> str:
    import fairseq

    return os.path.join(os.path.dirname(fairseq.__file__), "examples", "latent_depth", "latent_depth_src")


def _drop(argv: List[str], flag: str, n_values: int = 1) -> List[str]:
    if flag in argv:
        i = argv.index(flag)
        return argv[:i] + argv[i + 1 + n_values:]
    return argv


def _sizes(arch: str, layers: int) -> List[str]:
    """Widths of ``arch``, ``layers`` per side, pre-norm (the paper's setting for both systems)."""
    out = _drop(plain_transformer_args(arch), "--arch")
    for side in ("encoder", "decoder"):
        i = out.index(f"--{side}-layers")
        out[i + 1] = str(layers)
    return out + ["--encoder-normalize-before", "--decoder-normalize-before"]


def build(bin_dir: str, args) -> Dict[str, List[str]]:
    layers = int(os.environ.get("LATENT_DEPTH_LAYERS", "6"))
    k = max(1, layers // 2)
    anneal = str(max(1, args.updates // 3))
    common = common_args(bin_dir, args)
    for flag in ("-s", "-t", "--criterion"):  # multilingual tasks: -s/-t would switch to inference mode
        common = _drop(common, flag)
    shared = ["--lang-pairs", LANG_PAIRS, "--decoder-langtok", "--ddp-backend", "legacy_ddp"] + _sizes(args.arch, layers)
    method = common + shared + [
        "--user-dir", USER_DIR, "--task", "latent_depth_translation", "--arch", "latent_depth_transformer",
        "--decoder-latent-layers", "--decoder-target-layers", str(k), "--criterion", "latent_layers_loss",
        "--latent-kl-weight", "0.1", "--latent-kl-anneal-updates", anneal, "--latent-lk-weight", "0.1",
        "--latent-soft-updates", anneal, "--latent-tau", "5", "--latent-gate-lr", "0.01"]
    which = os.environ.get("LATENT_DEPTH_BASELINE", "fairseq")
    if which == "static":
        baseline = common + shared + [
            "--task", "multilingual_translation", "--arch", "multilingual_transformer",
            "--share-encoders", "--share-decoders", "--criterion", "label_smoothed_cross_entropy"]
    elif which == "fairseq":
        baseline = common + shared + [
            "--user-dir", _example_dir(), "--task", "multilingual_translation_latent_depth",
            "--arch", "latent_multilingual_transformer", "--share-encoders", "--share-decoders",
            "--decoder-latent-layer", "--target-layers", str(k), "--sparsity-weight", "0.1",
            "--share-weight", "0.1", "--anneal-updates", anneal, "--soft-update", anneal,
            "--sampling-tau", "5", "--criterion", "label_smoothed_cross_entropy"]
    else:
        raise SystemExit(f"LATENT_DEPTH_BASELINE must be fairseq or static, got {which!r}")
    return {"method": method, "baseline": baseline}


METHOD = BenchmarkMethod(build, preset="multilingual", source_lang="tgt", target_lang="lrl",
                         sizes="train=2000,hrl=4000,unra=300,unrb=300,nsy=300,valid=100,test=100,mono_tgt=300,mono_lrl=300")
