#!/usr/bin/env python
"""Benchmark the in-step sampler against fairseq's own ``search.Sampling``, measured in one run.

    python scripts/benchmark_sampling.py [--vocab 2200] [--batch 120] [--src-len 12] [--repeats 15]

Both generate with fairseq's ``SequenceGenerator`` from the same randomly initialised
``transformer_lowres_tiny`` (one CPU thread unless ``--threads``), the same batch and the same length limits
(a*len + b, as MetaBT's back-translation); only the draw differs (fairseq: ``torch.multinomial``; plugin:
``InverseCdfSampling``, one uniform per row).  An untrained model samples near-uniform tokens and rarely
stops early, so every hypothesis runs to the length limit: the figures are per full-length batch.  Also
``loop``: the plugin's own sampling loop (``InStepGenerator``, issue 31: the same draws as ``plugin``
without SequenceGenerator's beam bookkeeping).  Prints the median time of each, ``loop/plugin=`` and last
``ratio=<plugin/fairseq>`` (lower is faster).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from fairseq import search  # noqa: E402
from fairseq.sequence_generator import SequenceGenerator  # noqa: E402

from fairseq_metabt.modules.generation import GenerationSettings, InStepGenerator, InverseCdfSampling  # noqa: E402,E501
from tiny_models import tiny_dictionary, tiny_transformer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab", type=int, default=2200, help="dictionary size (the quickstart's is 2,172)")
    ap.add_argument("--batch", type=int, default=120, help="sentences per batch (a 2048-token MetaBT batch)")
    ap.add_argument("--src-len", type=int, default=12, help="source length in tokens")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    d = tiny_dictionary(a.vocab)
    model = tiny_transformer(d, seed=1).eval()
    g = torch.Generator().manual_seed(0)
    src = torch.randint(d.nspecial, len(d), (a.batch, a.src_len), generator=g)
    src[:, -1] = d.eos()
    sample = {"net_input": {"src_tokens": src, "src_lengths": torch.full((a.batch,), a.src_len)}}
    times = {}

    def measure(name, generate):
        """Median time of ``generate()`` (a list of token tensors) after a warm-up."""
        with torch.no_grad():
            generate()  # warm-up
            runs = []
            for _ in range(a.repeats):
                t = time.perf_counter()
                out = generate()
                runs.append(time.perf_counter() - t)
        times[name] = statistics.median(runs)
        length = statistics.mean(len(x) for x in out)
        print(f"{name:8s} median {times[name] * 1e3:7.1f} ms per batch of {a.batch} (mean length {length:.1f})")

    for name, strategy in (("fairseq", search.Sampling(d)), ("plugin", InverseCdfSampling(d))):
        gen = SequenceGenerator([model], d, beam_size=1, max_len_a=1.2, max_len_b=10, search_strategy=strategy)
        measure(name, lambda: [h[0]["tokens"] for h in gen.generate([model], sample)])
    loop = InStepGenerator(model, d, GenerationSettings("sample", max_len_a=1.2, max_len_b=10))
    measure("loop", lambda: loop(sample["net_input"]))
    print(f"loop/plugin={times['loop'] / times['plugin']:.3f}")
    print(f"ratio={times['plugin'] / times['fairseq']:.3f}")


if __name__ == "__main__":
    main()
