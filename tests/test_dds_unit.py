"""DDS math against brute force: EMAs, rewards, the REINFORCE gradient of the scorer, sampling, priors, sketch."""
import argparse
import math

import numpy as np
import pytest
import torch
from fairseq.data import LanguagePairDataset, ListDataset
from conftest import central_differences

from fairseq_metabt.data.language_sampler import LanguageSampledDataset, marginal, seeded_generator
from fairseq_metabt.modules import gradients as G
from fairseq_metabt.modules.scorer import LanguageScorer, language_reinforce_loss
from fairseq_metabt.tasks.dds_translation import check_dds_config, hub_of, parse_lang_pairs
from tiny_models import tiny_dictionary


# ---- EMA (Alg. 2 line 7) ----------------------------------------------------------------------------
def test_ema_matches_closed_form():
    torch.manual_seed(0)
    a1, a2 = 0.7, 0.3
    gs = [torch.randn(11) for _ in range(6)]
    buf = torch.zeros(11)
    for g in gs:
        G.ema_update_(buf, g, a1, a2)
    brute = sum(a2 * a1 ** (len(gs) - 1 - k) * g for k, g in enumerate(gs))
    assert torch.allclose(buf, brute, atol=1e-6)


# ---- REINFORCE gradient of the MLP (Alg. 2 line 11) ----------------------------------------------
def test_reinforce_gradient_matches_finite_differences():
    scorer = LanguageScorer(4, hidden=5, seed=3).double()
    avail = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    rewards = torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=torch.float64)

    def objective() -> float:  # the paper's J = (1/B) sum_j sum_{i avail} r_i log p(i | y_j), written out
        total = 0.0
        with torch.no_grad():
            for row in avail:
                z = scorer.logits(row[None])[0]
                logz = math.log(sum(math.exp(float(z[i])) for i in range(4) if row[i]))
                total += sum(float(rewards[i]) * (float(z[i]) - logz) for i in range(4) if row[i])
        return total / len(avail)

    scorer.zero_grad()
    language_reinforce_loss(scorer, avail, rewards).backward()
    for p, k, numeric in central_differences(scorer.parameters(), objective):
        # the loss is -J, so its gradient is minus the paper's d_psi
        assert abs(float(p.grad.view(-1)[k]) + numeric) < 1e-6


def test_consistent_positive_reward_raises_that_language():
    scorer = LanguageScorer(3, hidden=8, seed=0)
    scorer.set_prior([0.0, 0.0, 0.0])
    opt = torch.optim.Adam(scorer.parameters(), lr=1e-2)
    patterns = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 1, 0]], dtype=torch.bool)
    before = scorer.probs(patterns).detach()
    for step in range(30):
        avail = patterns[torch.randint(3, (16,), generator=torch.Generator().manual_seed(step))]
        loss = language_reinforce_loss(scorer, avail, torch.tensor([0.0, 1.0, 0.0]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = scorer.probs(patterns).detach()
    assert (after[:, 1] > before[:, 1] + 0.1).all(), (before, after)
    assert (after[~patterns] == 0).all()  # still masked to available languages


# ---- sampling ------------------------------------------------------------------------------------
def _pairs(targets_per_lang, d):
    """LanguagePairDatasets whose target sentence k is the token row [k+4, eos]."""
    out = []
    for lang, targets in enumerate(targets_per_lang):
        tgt = [torch.tensor([t + d.nspecial, d.eos()]) for t in targets]
        src = [torch.tensor([d.nspecial + lang] * (1 + (t % 3)) + [d.eos()]) for t in targets]
        ss, ts = np.array([len(x) for x in src]), np.array([len(x) for x in tgt])
        out.append(LanguagePairDataset(ListDataset(src, ss), ss, d, ListDataset(tgt, ts), ts, d))
    return out


def test_availability_from_shared_targets():
    d = tiny_dictionary(30)
    ds = LanguageSampledDataset(["a", "b", "c"], _pairs([[0, 1, 2], [1, 2, 3], [2, 5]], d), hub_is_target=True)
    assert ds.index.mode == "target" and len(ds) == 5  # targets 0, 1, 2, 3, 5
    avail = {tuple(ds.index.table[u].tolist()): tuple(ds.index.avail[u].tolist()) for u in range(len(ds))}
    assert avail[(2, 1, 0)] == (True, True, True)  # target 2: line 2 of a, line 1 of b, line 0 of c
    assert avail[(-1, 2, -1)] == (False, True, False)
    batches = ds.assemble(np.arange(len(ds)), [int(np.flatnonzero(ds.index.avail[u])[0]) for u in range(len(ds))])
    assert sum(b["nsentences"] for b in batches.values()) == len(ds)


def test_not_multiway_is_a_distribution_over_languages():
    d = tiny_dictionary(30)
    ds = LanguageSampledDataset(["a", "b"], _pairs([[0, 1, 2], [5, 6, 7, 8, 9]], d), hub_is_target=True)
    assert ds.index.mode == "language" and len(ds) == 8 and ds.index.avail.all()
    assert sorted(set(ds.index.table[:, 1].tolist())) == list(range(5))  # every example of b reachable


def test_sampling_follows_p():
    d = tiny_dictionary(30)
    ds = LanguageSampledDataset(["a", "b", "c"], _pairs([[0, 1, 2], [1, 2, 3], [2, 5]], d), hub_is_target=True)
    scorer = LanguageScorer(3, hidden=4, seed=5)
    table = scorer.probs(torch.from_numpy(ds.index.patterns)).detach()
    slots = np.repeat(np.arange(len(ds)), 4000)
    chosen = ds.choose_languages(slots, table, seeded_generator(1, 2, 3))
    for u in range(len(ds)):
        p = table[ds.index.pattern_of[u]].double()
        freq = np.bincount(chosen[slots == u], minlength=3) / 4000.0
        assert (freq[~ds.index.avail[u]] == 0).all()
        tol = 5 * np.sqrt(p.numpy() * (1 - p.numpy()) / 4000.0) + 1e-9
        assert (np.abs(freq - p.numpy()) <= tol).all(), (u, freq, p)
    # the realised language shares match E_y p(. | y)
    freq_all = np.bincount(chosen, minlength=3) / len(chosen)
    assert np.allclose(freq_all, marginal(table, ds.index.pattern_of).numpy(), atol=0.01)
    # same seed, same draws (every worker, every resumed run)
    again = ds.choose_languages(slots, table, seeded_generator(1, 2, 3))
    assert (again == chosen).all()


# ---- priors --------------------------------------------------------------------------------------
def test_prior_and_imitation():
    scorer = LanguageScorer(3, hidden=8, seed=0)
    sizes = torch.tensor([10.0, 100.0, 1000.0])
    scorer.set_prior((sizes.log() / 2).tolist())
    p = scorer.probs(torch.ones(1, 3, dtype=torch.bool))[0]
    assert torch.allclose(p, sizes.sqrt() / sizes.sqrt().sum(), atol=1e-6)  # temperature T=2
    patterns = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 0, 1]], dtype=torch.bool)
    q = torch.softmax(torch.tensor([0.9, 0.5, 0.1]) / 0.1, 0)
    kl = scorer.imitate(patterns, q.expand(3, -1).clone(), steps=400, lr=2e-2)
    assert kl < 0.01
    got = scorer.probs(patterns).detach()
    assert int(got[0].argmax()) == 0 and int(got[1].argmax()) == 1 and int(got[2].argmax()) == 0


# ---- sketch and parameter subsets ------------------------------------------------------------------
def test_count_sketch_preserves_inner_products_on_average():
    torch.manual_seed(0)
    a, b = torch.randn(40), torch.randn(40)
    b = b + a  # correlated, a clear positive inner product
    est = [float(torch.dot(sk(a), sk(b))) for sk in (G.CountSketch(40, 16, seed=s) for s in range(400))]
    assert abs(np.mean(est) - float(torch.dot(a, b))) < 0.1 * float(torch.dot(a, b))
    sk = G.CountSketch(40, 16, seed=7)
    assert torch.allclose(sk(2 * a + b), 2 * sk(a) + sk(b), atol=1e-5)  # linear
    assert torch.equal(G.CountSketch(40, 16, seed=7)(a), sk(a))  # a function of the seed only


def test_parameter_subset_names_the_pattern():
    m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    assert [n for n, _ in G.select_named_params(m.named_parameters(), r"^1\.")] == ["1.weight", "1.bias"]
    with pytest.raises(ValueError, match="no trainable parameter name matches 'decoder'"):
        G.select_named_params(m.named_parameters(), "decoder")


# ---- configuration errors ------------------------------------------------------------------------
def _cfg(**kw):
    base = dict(dds_update_interval=2, dds_scorer_iters=1, dds_scorer_batch=4, dds_dev_max_tokens=100,
                dds_scorer_hidden=8, dds_alpha1=0.9, dds_alpha2=0.1, dds_scorer_lr=1e-4, dds_temperature=5.0,
                dds_tcs_temperature=0.1, dds_grad_sketch_dim=0, dds_dev_max_batches=0, dds_start_update=0,
                dds_probe_tokens=0, dds_grad_source="fresh", dds_reward="cosine", dds_scorer_kl_weight=0.1,
                dds_init="uniform", dds_order=None)
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.mark.parametrize("kw,msg", [
    (dict(dds_update_interval=0), r"--dds-update-interval \(K\) must be a positive integer"),
    (dict(dds_scorer_iters=-1), r"--dds-scorer-iters \(E\) must be a positive integer"),
    (dict(dds_alpha1=1.5), r"--dds-alpha1 must be in \[0, 1\]"),
    (dict(dds_alpha2=-0.1), r"--dds-alpha2 must be in \[0, 1\]"),
    (dict(dds_grad_sketch_dim=-3), "--dds-grad-sketch-dim must be >= 0"),
    (dict(dds_start_update=-1), "--dds-start-update must be >= 0"),
    (dict(dds_grad_sketch_dim=8), "--dds-grad-sketch-dim bounds the EMAs of --dds-grad-source ema"),
    (dict(dds_grad_sketch_dim=8, dds_grad_source="ema", dds_reward="adam"), "--dds-reward adam scales each"),
    (dict(dds_scorer_kl_weight=0.0), "--dds-scorer-kl-weight must be > 0"),
    (dict(dds_order="lrl,hrl"), "--dds-order ranks the languages of --dds-init order"),
])
def test_bad_settings_are_named(kw, msg):
    check_dds_config(_cfg())
    with pytest.raises(ValueError, match=msg):
        check_dds_config(_cfg(**kw))


def test_language_pairs():
    assert hub_of(parse_lang_pairs("a-t,b-t")) == ("t", True)
    assert hub_of(parse_lang_pairs("t-a,t-b")) == ("t", False)
    with pytest.raises(ValueError, match="sharing one language"):
        hub_of(parse_lang_pairs("a-t,b-u"))
    with pytest.raises(ValueError, match="twice"):
        parse_lang_pairs("a-t,a-t")


# ---- per-language gradient shares without extra backward passes ------------------------------------
@pytest.mark.parametrize("sketch_dim", [0, 8])
def test_gradient_shares_equal_separate_backward_passes(sketch_dim):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    params = list(m.parameters())
    sketch = G.CountSketch(sum(p.numel() for p in params), sketch_dim, seed=1) if sketch_dim else None
    shares = G.GradientShares(params, 3, sketch)
    xs = [torch.randn(5, 4) for _ in range(4)]
    groups = [0, 2, 0, 1]  # two micro-batches of group 0 accumulate
    m.zero_grad()
    shares.reset()
    shares.mark()
    for x, grp in zip(xs, groups):
        (m(x) ** 2).sum().mul(2.0).backward()  # a loss scale of 2, divided out below
        shares.capture(grp, scale=2.0)
    for grp in range(3):
        brute = torch.zeros(sum(p.numel() for p in params))
        for x, gg in zip(xs, groups):
            if gg == grp:
                grads = torch.autograd.grad((m(x) ** 2).sum(), params)
                brute += G.flatten(grads, params)
        expect = sketch(brute) if sketch else brute
        assert torch.allclose(shares.shares[grp], expect, atol=1e-5), grp
    # the shares add up to fairseq's accumulated gradient
    if not sketch_dim:
        assert torch.allclose(shares.shares.sum(0) * 2.0, G.flat_grad(params), atol=1e-5)
