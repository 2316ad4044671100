"""DDS rewards without sampling bias (issue 11): per-language rewards must not depend on how often a
language is sampled, the scorer update must keep its prior when rewards carry no information, overflow
must never reach the rewards, and each new scorer objective matches its brute-force definition."""
import argparse
import math

import pytest
import torch

from fairseq_metabt.data.language_sampler import LanguageSampledDataset, seeded_generator
from fairseq_metabt.modules import gradients as G
from fairseq_metabt.modules.dds_rewards import LanguageGradientEMA, adam_step_scale, language_reward
from fairseq_metabt.modules.scorer import LanguageScorer, language_objective_loss, language_reinforce_loss
from conftest import central_differences
from test_dds_unit import _pairs
from tiny_models import tiny_dictionary


def _simulated_rewards(probs, updates=200, trials=100, tokens=40, dim=20, sigma2=10.0, seed=0):
    """Mean reward per language when every target token's gradient is ``g + noise`` for *every* language
    (the same true gradient), languages drawn per token with ``probs``; ``trials`` runs packed side by side
    as separate languages of one EMA."""
    gen = torch.Generator().manual_seed(seed)
    n = len(probs)
    g = torch.randn(dim, generator=gen)
    g = g / g.norm()
    ema = LanguageGradientEMA(n * trials, dim, alpha1=0.9)
    p = torch.tensor(probs, dtype=torch.float64)
    for t in range(updates):
        counts = torch.multinomial(p, tokens * trials, replacement=True, generator=gen).view(trials, tokens)
        m = torch.stack([(counts == i).sum(1) for i in range(n)], 1).reshape(-1).double()  # (trials * n,)
        noise = torch.randn(n * trials, dim, generator=gen) * (sigma2 * m.float()).sqrt()[:, None]
        sums = m.float()[:, None] * g + noise  # the sum over m tokens of (g + per-token noise)
        ema.update(sums, m, t)
    r, valid = ema.rewards(g, "cosine")
    assert bool(valid.all())
    return r.view(trials, n).mean(0)


def test_rewards_do_not_depend_on_sampling_probability():
    """Two languages with the same true gradient get the same reward in expectation, p = 0.9 vs 0.1."""
    r = _simulated_rewards([0.9, 0.1])
    assert abs(float(r[0] - r[1])) < 0.03, r


def test_old_per_update_ema_was_biased():
    """The rule Alg. 2 line 7 states (mean gradient per token of *this update*, EMA over updates) gives the
    rarely sampled language a far lower cosine for the same true gradient: why the EMA is counted in tokens."""
    gen = torch.Generator().manual_seed(1)
    g = torch.nn.functional.normalize(torch.randn(20, generator=gen), dim=0)
    ema = torch.zeros(2 * 100, 20)
    for _ in range(200):
        m = torch.multinomial(torch.tensor([0.9, 0.1]), 40 * 100, True, generator=gen).view(100, 40)
        m = torch.stack([(m == i).sum(1) for i in range(2)], 1).reshape(-1).float()
        sums = m[:, None] * g + torch.randn(200, 20, generator=gen) * (10.0 * m).sqrt()[:, None]
        for i in range(200):
            if m[i] > 0:
                G.ema_update_(ema[i], sums[i], 0.9, 0.1 / float(m[i]))
    cos = torch.nn.functional.cosine_similarity(ema, g[None], dim=1).view(100, 2).mean(0)
    assert float(cos[0] - cos[1]) > 0.2, cos


def test_fresh_batches_have_the_same_size_whatever_p():
    """The fresh-batch path: each language's probe batch is filled to the same target tokens; p is not an input."""
    d = tiny_dictionary(40)
    ds = LanguageSampledDataset(["a", "b", "c"], _pairs([list(range(0, 30)), list(range(10, 25)), [2, 5, 7, 9]], d),
                                hub_is_target=True)
    for lang in range(3):
        for seed in range(5):
            slots = ds.language_batch_slots(lang, 12, seeded_generator(seed, lang))
            assert ds.index.avail[slots, lang].all() and len(set(slots.tolist())) == len(slots)
            tokens = ds.pairs[lang].tgt_sizes[ds.index.table[slots, lang]]
            # the shortest prefix reaching 12 target tokens (or every target of a small language)
            assert tokens.sum() >= 12 or len(slots) == int(ds.index.avail[:, lang].sum())
            assert tokens[:-1].sum() < 12


# ---- rewards: cosine, dot, Adam-corrected (A.1) ------------------------------------------------------
@pytest.mark.parametrize("kind", ["cosine", "dot", "adam"])
def test_reward_kinds_match_hand_written(kind):
    gen = torch.Generator().manual_seed(3)
    g, dev, scale = torch.randn(9, generator=gen), torch.randn(9, generator=gen), torch.rand(9, generator=gen) + 0.1
    r, ok = language_reward(g, dev, kind, scale if kind == "adam" else None)
    gg = [float(g[j]) * (float(scale[j]) if kind == "adam" else 1.0) for j in range(9)]
    dot = sum(gg[j] * float(dev[j]) for j in range(9))
    if kind != "dot":
        dot /= math.sqrt(sum(x * x for x in gg)) * math.sqrt(sum(float(x) ** 2 for x in dev))
    assert ok and abs(r - dot) < 1e-5


def test_adam_step_scale_reads_the_optimizer():
    """P = sqrt(1 - beta2^t) / (sqrt(v) + eps), coordinate by coordinate (Eq. 17 without the lr)."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4))
    opt = torch.optim.Adam([w], lr=0.1, betas=(0.9, 0.99), eps=1e-8)
    grads = [torch.randn(4) for _ in range(3)]
    for grad in grads:
        w.grad = grad.clone()
        opt.step()
    v = torch.zeros(4)
    for grad in grads:
        v = 0.99 * v + 0.01 * grad ** 2
    expect = math.sqrt(1 - 0.99 ** 3) / (v.sqrt() + 1e-8)
    assert torch.allclose(adam_step_scale(argparse.Namespace(optimizer=opt), [w]), expect, rtol=1e-5)
    with pytest.raises(ValueError, match="--dds-reward adam reads Adam's second moments"):
        adam_step_scale(torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1),
                        [torch.nn.Parameter(torch.zeros(2))])


# ---- overflow: nothing non-finite ever enters ------------------------------------------------------
def test_no_nan_after_an_inf_gradient():
    ema = LanguageGradientEMA(2, 5, alpha1=0.9)
    assert ema.update(torch.ones(2, 5), torch.tensor([3.0, 1.0]), 0)
    before = ema.state_dict()
    bad = torch.ones(2, 5)
    bad[1, 2] = float("inf")
    assert not ema.update(bad, torch.tensor([3.0, 1.0]), 1)  # an overflowed update is dropped whole
    after = ema.state_dict()
    assert torch.equal(before["sums"], after["sums"]) and torch.equal(before["tokens"], after["tokens"])
    assert ema.update(torch.full((2, 5), 2.0), torch.tensor([1.0, 1.0]), 2)
    r, valid = ema.rewards(torch.ones(5), "cosine")
    assert bool(torch.isfinite(r).all()) and bool(valid.all())
    # a fresh gradient that overflowed gives no reward rather than a NaN
    r, ok = language_reward(torch.tensor([1.0, float("nan")]), torch.ones(2), "cosine")
    assert r == 0.0 and not ok


def test_gradient_shares_flag_nothing_silently_and_sketch_keeps_no_full_copy():
    m = torch.nn.Linear(6, 5)
    params = list(m.parameters())
    d = sum(p.numel() for p in params)
    sketch = G.CountSketch(d, 8, seed=1)
    assert sketch.bucket.dtype == torch.int32
    shares = G.GradientShares(params, 3, sketch)
    assert shares.nbytes() == (3 * 8 + 8) * 4  # shares and the mark, both of the sketch's size
    assert sketch.nbytes() == d * 5  # int32 bucket and int8 sign


def test_stale_languages_get_no_reward():
    ema = LanguageGradientEMA(3, 4, alpha1=0.9)
    ema.update(torch.ones(3, 4), torch.tensor([2.0, 2.0, 2.0]), 0)
    ema.update(torch.ones(3, 4), torch.tensor([2.0, 2.0, 0.0]), 5)  # language 2: nothing since update 0
    r, valid = ema.rewards(torch.ones(4), "cosine", stale_after=3)
    assert valid.tolist() == [True, True, False] and ema.stale(3).tolist() == [False, False, True]


# ---- scorer objectives against brute force ----------------------------------------------------------
AVAIL = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
REWARDS = torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=torch.float64)
VALID = torch.tensor([True, True, True, False])
WEIGHTS = torch.tensor([0.5, 0.2, 0.3], dtype=torch.float64)


def _brute_objective(scorer, objective, fills=None):
    """The objective written out target by target, language by language (plain floats).  ``exact``: an
    invalid language's reward is the p-weighted mean of the valid ones in its set, held at ``fills`` (the
    values at the current psi; a constant, so that language gets no push)."""
    total, used = 0.0, []
    with torch.no_grad():
        for j, row in enumerate(AVAIL):
            z = scorer.logits(row[None])[0]
            zs = {i: float(z[i]) for i in range(4) if row[i]}
            logz = math.log(sum(math.exp(v) for v in zs.values()))
            logp = {i: v - logz for i, v in zs.items()}
            ok = [i for i in zs if VALID[i]]
            if objective == "alg2":
                part = sum(float(REWARDS[i]) * logp[i] for i in ok)
            elif objective == "centered":
                mean = sum(float(REWARDS[i]) for i in ok) / len(ok)
                part = sum((float(REWARDS[i]) - mean) * logp[i] for i in ok)
            else:  # exact: sum_i p_i r_i with an invalid language at the p-weighted mean of the valid ones
                p = {i: math.exp(v) for i, v in logp.items()}
                fill = sum(p[i] * float(REWARDS[i]) for i in ok) / sum(p[i] for i in ok)
                used.append(fill)
                fill = fills[j] if fills is not None else fill
                part = sum(p[i] * (float(REWARDS[i]) if i in ok else fill) for i in zs)
            total += float(WEIGHTS[j]) * part
    return (total, used) if fills is None and objective == "exact" else total


@pytest.mark.parametrize("objective", ["alg2", "centered", "exact"])
def test_objective_gradients_match_finite_differences(objective):
    scorer = LanguageScorer(4, hidden=5, seed=3).double()
    scorer.zero_grad()
    loss = language_objective_loss(scorer, AVAIL, REWARDS, VALID, objective, WEIGHTS)
    fills = None
    if objective == "exact":  # the exact loss is minus the objective itself (alg2/centred: a surrogate)
        value, fills = _brute_objective(scorer, objective)
        assert abs(float(loss.detach()) + value) < 1e-10
    loss.backward()
    for p, k, numeric in central_differences(scorer.parameters(), lambda: _brute_objective(scorer, objective, fills)):
        # the loss's gradient is minus the objective's (the paper's d_psi, ascended)
        assert abs(float(p.grad.view(-1)[k]) + numeric) < 1e-6, (objective, k)


def test_alg2_matches_the_original_loss_when_all_rewards_are_valid():
    scorer = LanguageScorer(4, hidden=5, seed=3).double()
    a = language_objective_loss(scorer, AVAIL, REWARDS, None, "alg2")
    b = language_reinforce_loss(scorer, AVAIL, REWARDS)
    assert abs(float(a) - float(b)) < 1e-12


def _prior_after(objective, rewards, steps=30):
    scorer = LanguageScorer(3, hidden=8, seed=0)
    scorer.set_prior([1.5, 0.0, -1.0])  # a TCS-like prior: language 0 favoured
    opt = torch.optim.Adam(scorer.parameters(), lr=1e-2)
    patterns = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 1, 0]], dtype=torch.bool)
    before = scorer.probs(patterns).detach()
    for step in range(steps):
        avail = patterns[torch.randint(3, (16,), generator=torch.Generator().manual_seed(step))]
        loss = language_objective_loss(scorer, avail, rewards, None, objective)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, scorer.probs(patterns).detach()


@pytest.mark.parametrize("objective", ["centered", "exact"])
def test_equal_rewards_keep_the_prior(objective):
    before, after = _prior_after(objective, torch.full((3,), 0.9))
    assert torch.allclose(before, after, atol=1e-6), (before, after)


def test_alg2_flattens_the_prior_when_all_rewards_are_equal():
    """Why centring matters: Alg. 2 as written turns a shared positive reward into a push towards uniform."""
    before, after = _prior_after("alg2", torch.full((3,), 0.9))
    assert float(after[0, 0]) < float(before[0, 0]) - 0.05, (before, after)


def test_centered_still_follows_reward_differences():
    before, after = _prior_after("centered", torch.tensor([0.0, 1.0, 0.0]))
    assert (after[:, 1] > before[:, 1] + 0.05).all(), (before, after)


def test_central_difference_is_exact_on_a_quadratic():
    """Alg. 1 line 8 (Eq. 7): the central difference costs the same two forwards as the one-sided one and
    has no first-order error (exact for a quadratic loss, where the one-sided one is off by e d'Hd/2)."""
    theta = [torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))]
    a = torch.tensor([[1.0, 2.0, 0.5], [3.0, -1.0, 1.0]], dtype=torch.float64)

    def losses():
        return (a * theta[0] ** 2).sum(1)  # l_i = sum_j a_ij theta_j^2

    d = torch.tensor([0.3, -0.2, 0.4], dtype=torch.float64)
    exact = (a * 2 * theta[0].detach() * d).sum(1)
    central = G.per_example_dot_taylor(losses, theta, d, eps=0.5, central=True)
    one_sided = G.per_example_dot_taylor(losses, theta, d, eps=0.5)
    assert torch.allclose(central.double(), exact, atol=1e-5)
    assert (one_sided.double() - exact).abs().max() > 0.1
