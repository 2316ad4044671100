"""The in-step sampler's draw (inverse CDF) against the exact distribution fairseq's Sampling draws from."""
import pytest
import torch
from fairseq import search

from fairseq_metabt.modules.generation import InverseCdfSampling, inverse_cdf_sample
from tiny_models import tiny_dictionary


def _freq(idx: torch.Tensor, v: int) -> torch.Tensor:
    return torch.bincount(idx.flatten(), minlength=v).double() / idx.numel()


def test_inverse_cdf_draw_matches_the_probabilities_and_skips_zero_entries():
    torch.manual_seed(0)
    p = torch.tensor([0.0, 0.1, 0.0, 0.45, 0.05, 0.4, 0.0])
    n = 400_000
    idx = inverse_cdf_sample(p.expand(n, -1) * 3.0)  # unnormalised rows, like fairseq's truncated probs
    f = _freq(idx, p.numel())
    assert f[p == 0].sum() == 0, "zero-probability tokens are never drawn"
    # 5 standard errors of a binomial proportion
    assert torch.all((f - p.double()).abs() <= 5 * (p.double() * (1 - p.double()) / n).sqrt() + 1e-12), f


@pytest.mark.parametrize("topk,topp", [(-1, -1.0), (3, -1.0), (-1, 0.7)])
def test_sampling_step_draws_what_fairseq_draws(topk, topp):
    """Same truncation, same scores (log-prob of the drawn token under the truncated distribution), and the
    same distribution of tokens as fairseq's multinomial Sampling, at step 0 (beams from one row) and later."""
    d = tiny_dictionary()
    ours, theirs = InverseCdfSampling(d, topk, topp), search.Sampling(d, topk, topp)
    torch.manual_seed(1)
    bsz, beam, v = 2, 3, 9
    lprobs = torch.log_softmax(torch.randn(bsz, beam, v), -1)
    n = 20_000
    big = lprobs.repeat(n, 1, 1)  # n copies of the batch: empirical frequencies per (row, beam)
    prev = torch.randn(bsz, beam, 4).repeat(n, 1, 1)  # cumulative scores of the hypotheses so far
    for step in (0, 2):
        s1, i1, b1 = ours.step(step, big.clone(), prev)
        s2, i2, b2 = theirs.step(step, big.clone(), prev)
        assert torch.equal(b1, b2)
        for r in range(bsz):
            for b in range(beam):
                f1 = _freq(i1.view(n, bsz, beam)[:, r, b], v)
                f2 = _freq(i2.view(n, bsz, beam)[:, r, b], v)
                assert (f1 - f2).abs().max() < 0.03, (step, r, b, f1, f2)
        # a token's score is the same whichever sampler drew it
        flat1, flat2 = i1.flatten(), i2.flatten()
        for tok in set(flat1.tolist()) & set(flat2.tolist()):
            a, c = s1.flatten()[flat1 == tok], s2.flatten()[flat2 == tok]
            rows1 = torch.arange(s1.numel())[flat1 == tok] % (bsz * beam)
            rows2 = torch.arange(s2.numel())[flat2 == tok] % (bsz * beam)
            for rb in set(rows1.tolist()) & set(rows2.tolist()):
                assert torch.allclose(a[rows1 == rb][0], c[rows2 == rb][0], atol=1e-5)


def _ending_transformer(d):
    """A tiny random transformer whose samples end at different lengths: an untrained one with shared
    embeddings repeats its last token and rarely draws EOS, so its output layer gets a bias towards EOS."""
    from tiny_models import tiny_transformer

    model = tiny_transformer(d, seed=3)
    shared = model.decoder.output_projection.weight
    head = torch.nn.Linear(shared.size(1), shared.size(0), bias=True)
    head.weight = shared
    with torch.no_grad():
        head.bias.zero_()[d.eos()] = 2.0
    model.decoder.output_projection = head
    return model


@pytest.mark.parametrize("settings", [
    dict(), dict(temperature=0.6), dict(sampling_topk=4), dict(sampling_topp=0.7),
    dict(max_len_a=0.0, max_len_b=3),  # most rows end by the forced EOS
])
def test_in_step_sampler_draws_the_tokens_fairseqs_generator_draws(settings):
    """The in-step sampling loop (issue 31) against SequenceGenerator with the same strategy: on the same seed
    the same tokens, row for row (the same uniforms in the same order, finished rows dropped at the same
    steps), for every decoding setting the sampler accepts; a second call continues the same RNG stream."""
    from fairseq_metabt.modules.generation import GenerationSettings, InStepGenerator, eval_mode
    from tiny_models import random_batch

    d = tiny_dictionary()
    model = _ending_transformer(d)
    gen = InStepGenerator(model, d, GenerationSettings("sample", **settings))
    assert gen._lean
    batch = random_batch(d, n=9, seed=4, max_len=8)
    sample = {"net_input": batch["net_input"]}
    torch.manual_seed(5)
    ours = [gen(batch["net_input"]) for _ in range(2)]
    torch.manual_seed(5)
    with eval_mode(model), torch.no_grad():
        theirs = [[h[0]["tokens"] for h in gen.generator.generate([model], sample)] for _ in range(2)]
    assert model.training, "the caller's mode is restored"
    lengths = set()
    for a, b in zip(ours, theirs):
        assert len(a) == len(b) == 9
        for x, y in zip(a, b):
            assert torch.equal(x, y), (x, y)
            assert int(x[-1]) == d.eos() and int(x[:-1].eq(d.eos()).sum()) == 0
            lengths.add(x.numel())
    assert len(lengths) > 1, "rows end at different steps (the dropping of finished rows is exercised)"


def test_in_step_generator_keeps_fairseqs_generator_for_greedy_and_beam():
    from fairseq_metabt.modules.generation import GenerationSettings, InStepGenerator
    from tiny_models import tiny_transformer

    d = tiny_dictionary()
    model = tiny_transformer(d, seed=3)
    for mode in ("greedy", "beam"):
        assert not InStepGenerator(model, d, GenerationSettings(mode, beam=2))._lean
