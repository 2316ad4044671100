#!/usr/bin/env python
"""Benchmark the backward-free switched-off latent layers against the full backward pass, in one run.

    python scripts/benchmark_latent_skip.py [--dim 64] [--layers 4] [--keep 2] [--tokens 2048] [--repeats 4]

One ``latent_depth_transformer`` (pre-norm, ``--dim`` wide, ffn 2 x dim, 4 heads, ``--layers`` + ``--layers``
layers, gated decoder, dropout 0.1) with polarised straight-through gates that keep ``--keep`` decoder layers
per language (two languages, different layers), as in the hard phase of a converged run.  It times one
training forward + backward on a ``--tokens``-token batch with the switched-off layers run without an
autograd graph (``skip``, the default) and with the full backward pass (``full``,
``model.skip_off_backward = False``), alternating, and prints each median and ``ratio=<skip/full>`` last
(lower is faster).  The two compute the same gradients (``tests/test_latent_depth_unit.py``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from types import SimpleNamespace

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from fairseq import options  # noqa: E402

from fairseq_metabt.models.latent_depth_transformer import LatentDepthTransformerModel  # noqa: E402
from tiny_models import tiny_dictionary  # noqa: E402


def build(a: argparse.Namespace, vocab: int) -> LatentDepthTransformerModel:
    parser = options.get_training_parser(default_task="translation")
    args = options.parse_args_and_arch(parser, [
        "/nonexistent", "--arch", "latent_depth_transformer", "--latent-langs", "aa,bb",
        "--latent-lang-pairs", "tgt-aa,tgt-bb", "--decoder-latent-layers", "--latent-hard", "--dropout", "0.1",
        "--encoder-layers", str(a.layers), "--decoder-layers", str(a.layers),
        "--encoder-embed-dim", str(a.dim), "--decoder-embed-dim", str(a.dim),
        "--encoder-ffn-embed-dim", str(2 * a.dim), "--decoder-ffn-embed-dim", str(2 * a.dim),
        "--encoder-attention-heads", "4", "--decoder-attention-heads", "4"])
    d = tiny_dictionary(vocab)
    torch.manual_seed(0)
    model = LatentDepthTransformerModel.build_model(args, SimpleNamespace(source_dictionary=d, target_dictionary=d))
    # polarised gates: language 0 keeps the first --keep layers, language 1 the last --keep
    logits = torch.full((2, a.layers), -9.0)
    logits[0, :a.keep] = 9.0
    logits[1, a.layers - a.keep:] = 9.0
    model.decoder_latent.logits.data.copy_(logits)
    return model.train()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dim", type=int, default=64, help="model width (the latent-depth miniature's is 64)")
    ap.add_argument("--layers", type=int, default=4, help="encoder and decoder layers (decoder gated)")
    ap.add_argument("--keep", type=int, default=2, help="decoder layers each language keeps (K)")
    ap.add_argument("--vocab", type=int, default=3000, help="dictionary size")
    ap.add_argument("--tokens", type=int, default=2048, help="target tokens per batch (32 per sentence)")
    ap.add_argument("--steps", type=int, default=25, help="timed steps per measurement (after 5 warm-up)")
    ap.add_argument("--repeats", type=int, default=4, help="alternating full/skip measurements of each")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if not 1 <= a.keep <= a.layers:
        ap.error(f"--keep must be between 1 and --layers ({a.layers}), got {a.keep}")
    if a.repeats < 1 or a.steps < 1:
        ap.error("--repeats and --steps must be >= 1")
    torch.set_num_threads(a.threads)
    model = build(a, a.vocab)
    g = torch.Generator().manual_seed(0)
    n, length = max(1, a.tokens // 32), 32
    src = torch.randint(4, a.vocab, (n, length), generator=g)
    prev = torch.randint(4, a.vocab, (n, length), generator=g)
    lengths = torch.full((n,), length)

    def measure(skip: bool) -> float:
        model.skip_off_backward = skip
        runs = []
        for i in range(5 + a.steps):
            t = time.perf_counter()
            out, _ = model(src, lengths, prev, latent_lang=i % 2)
            out.float().log_softmax(-1).mean().backward()
            model.zero_grad(set_to_none=True)
            runs.append(time.perf_counter() - t)
        return statistics.median(runs[5:])

    times = {"full": [], "skip": []}
    for _ in range(a.repeats):
        for name in ("full", "skip"):
            times[name].append(measure(name == "skip"))
    for name, runs in times.items():
        print(f"{name:5s} median {1000 * statistics.median(runs):.1f} ms per step "
              f"(runs {', '.join(f'{1000 * r:.1f}' for r in runs)})")
    print(f"setup: dim {a.dim}, {a.layers}+{a.layers} layers, {a.keep} of {a.layers} decoder layers kept, "
          f"{n} x {length} target tokens")
    print(f"ratio={statistics.median(times['skip']) / statistics.median(times['full']):.3f}")


if __name__ == "__main__":
    main()
