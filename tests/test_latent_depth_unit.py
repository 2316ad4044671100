"""Latent depth (Li et al. 2020): gate math, KL, L_K, annealing, eval determinism, pruning, inner loop, bad input."""
import math
from argparse import Namespace
from types import SimpleNamespace

import pytest
import torch

import fairseq_metabt  # noqa: F401  (registers the model, criterion and task)
from fairseq import options
from fairseq.data import Dictionary
from fairseq.models import build_model as fairseq_build_model

from fairseq_metabt.criterions.latent_layers_loss import LatentLayersLossCriterion
from fairseq_metabt.models.latent_depth_transformer import LatentDepthTransformerModel
from fairseq_metabt.modules.gumbel import gumbel_sigmoid
from fairseq_metabt.modules.latent_depth_pruning import prune_latent_model
from fairseq_metabt.modules.latent_layers import (
    LatentLayerGates,
    annealed_beta,
    annealed_tau,
    bernoulli_kl,
    kl_aggregated_prior,
    kl_uniform_prior,
    layer_count_loss,
)
from fairseq_metabt.tasks.latent_depth_translation import LatentDepthTranslationTask, latent_languages


def _dictionary() -> Dictionary:
    d = Dictionary()
    for i in range(30):
        d.add_symbol(f"w{i}")
    return d


def _args(*extra: str) -> Namespace:
    parser = options.get_training_parser(default_task="translation")
    return options.parse_args_and_arch(parser, [
        "/nonexistent", "--arch", "latent_depth_transformer_tiny", "--latent-langs", "aa,bb",
        "--latent-lang-pairs", "aa-tgt,bb-tgt", "--dropout", "0", *extra])


def _model(*extra: str) -> LatentDepthTransformerModel:
    args = _args("--encoder-latent-layers", "--decoder-latent-layers", *extra)
    d = _dictionary()
    torch.manual_seed(0)
    return LatentDepthTransformerModel.build_model(args, SimpleNamespace(source_dictionary=d, target_dictionary=d))


def _batch(n: int = 3, src_len: int = 7, tgt_len: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 30, (n, src_len), generator=g)
    src[:, -1] = 2
    prev = torch.randint(4, 30, (n, tgt_len), generator=g)
    prev[:, 0] = 2
    return src, torch.full((n,), src_len), prev


def _bare_task(**args) -> LatentDepthTranslationTask:
    """The task's Alg. 2 machinery without data (optimizer_step and its checkpoint state)."""
    task = LatentDepthTranslationTask.__new__(LatentDepthTranslationTask)
    task.args = Namespace(**{"latent_inner_steps": 1, "latent_gate_lr": None, **args})
    task.reset_gate_state()
    return task


# -- Gumbel-sigmoid gates (Eq. 5) ----------------------------------------------------------------------
def test_gumbel_sigmoid_moments():
    alpha = torch.tensor([-2.0, 0.0, 1.5]).repeat(200_000, 1)
    g = torch.Generator().manual_seed(1)
    z = gumbel_sigmoid(alpha, tau=1.0, generator=g)
    # P(z > 1/2) = sigmoid(alpha) for every tau
    assert torch.allclose((z > 0.5).float().mean(0), torch.sigmoid(alpha[0]), atol=0.01)
    # logistic noise is symmetric: E[z(alpha)] + E[z(-alpha)] = 1; E[z(0)] = 1/2
    z_neg = gumbel_sigmoid(-alpha, tau=1.0, generator=g)
    assert torch.allclose(z.mean(0) + z_neg.mean(0), torch.ones(3), atol=0.01)
    assert abs(z[:, 1].mean().item() - 0.5) < 0.01
    # a low temperature concentrates the relaxed sample on {0, 1}: E[z] -> sigmoid(alpha)
    cold = gumbel_sigmoid(alpha, tau=0.05, generator=g)
    assert ((cold > 0.05) & (cold < 0.95)).float().mean() < 0.1
    assert torch.allclose(cold.mean(0), torch.sigmoid(alpha[0]), atol=0.02)
    assert cold.var(0).sum() > z.var(0).sum()


def test_straight_through_hard_gate_has_relaxed_gradient():
    alpha = torch.tensor([0.3, -1.0, 2.0], requires_grad=True)
    hard = gumbel_sigmoid(alpha, tau=0.7, hard=True, generator=torch.Generator().manual_seed(5))
    assert set(hard.detach().tolist()) <= {0.0, 1.0}
    (hard * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    g_hard = alpha.grad.clone()
    alpha.grad = None
    soft = gumbel_sigmoid(alpha, tau=0.7, hard=False, generator=torch.Generator().manual_seed(5))
    assert torch.equal(hard.detach(), (soft.detach() > 0.5).float())
    (soft * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.allclose(g_hard, alpha.grad) and g_hard.abs().sum() > 0


# -- KL (closed form vs Monte Carlo), L_K, annealing ----------------------------------------------------
def test_closed_form_kl_matches_monte_carlo():
    q_all = torch.tensor([[0.9, 0.2, 0.5, 0.05], [0.6, 0.7, 0.1, 0.5]])
    q = q_all[0]
    n = 400_000
    # z ~ q through the model's own sampler: P(hard gate = 1) = sigmoid(logit) = q
    z = gumbel_sigmoid(torch.logit(q).repeat(n, 1), tau=1.0, hard=True, generator=torch.Generator().manual_seed(3))
    log_q = z * torch.log(q) + (1 - z) * torch.log1p(-q)
    mc_uniform = (log_q - math.log(0.5)).mean(0).mean()  # averaged over layers
    assert abs(kl_uniform_prior(q).item() - mc_uniform.item()) < 0.01
    p = q_all.mean(0)
    mc_agg = (log_q - (z * torch.log(p) + (1 - z) * torch.log1p(-p))).mean(0).mean()
    assert abs(kl_aggregated_prior(q, q_all).item() - mc_agg.item()) < 0.01
    # uniform prior: log 2 - H(q), zero exactly at q = 1/2
    h = -(q * q.log() + (1 - q) * (1 - q).log())
    assert torch.allclose(kl_uniform_prior(q), (math.log(2) - h).mean(), atol=1e-5)
    assert kl_uniform_prior(torch.full((3,), 0.5)).item() == pytest.approx(0.0, abs=1e-7)
    assert (bernoulli_kl(q, p) >= 0).all()


def test_layer_count_loss_value_and_gradient():
    logits = torch.tensor([2.0, -1.0, 0.0, 0.5], requires_grad=True)
    q = torch.sigmoid(logits)
    loss = layer_count_loss(q, 2)
    assert loss.item() == pytest.approx((q.sum().item() - 2) ** 2)
    loss.backward()
    expected = 2 * (q.sum() - 2) * q * (1 - q)
    assert torch.allclose(logits.grad, expected.detach())
    assert layer_count_loss(torch.tensor([1.0, 1.0, 0.0]), 2).item() == 0.0


def test_beta_anneals_from_zero_and_is_never_negative():
    betas = [annealed_beta(t, 0.5, 10) for t in range(-3, 20)]
    assert betas[3] == 0.0 and min(betas) == 0.0
    assert all(b2 >= b1 for b1, b2 in zip(betas, betas[1:]))
    assert betas[-1] == 0.5 and annealed_beta(5, 0.5, 10) == pytest.approx(0.25)
    assert annealed_beta(0, 0.3, 0) == 0.3
    with pytest.raises(ValueError, match="KL weight"):
        annealed_beta(1, -1.0, 10)
    taus = [annealed_tau(t, 2.0, 0.5, 0.1) for t in range(0, 100, 10)]
    assert taus[0] == 2.0 and min(taus) == 0.5 and all(b <= a for a, b in zip(taus, taus[1:]))


# -- the model --------------------------------------------------------------------------------------------
def test_logits_are_explicitly_initialised():
    model = _model("--latent-logit-init", "0.25")
    for gates in (model.encoder_latent, model.decoder_latent):
        assert gates.logits.shape == (2, 4)
        assert torch.equal(gates.logits.data, torch.full((2, 4), 0.25))


def test_eval_gates_are_deterministic_and_training_gates_are_sampled():
    model = _model("--latent-logit-init", "0.01")  # q ~ 1/2: samples would differ run to run
    src, lengths, prev = _batch()
    model.eval()
    outs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        with torch.no_grad():
            outs.append(model(src, lengths, prev, latent_lang=1)[0])
    assert torch.equal(outs[0], outs[1])
    model.train()
    samples = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        samples.append(model(src, lengths, prev, latent_lang=1)[1]["latent"]["decoder"]["z"])
    assert not torch.equal(samples[0], samples[1])


def test_threshold_and_topk_selection():
    gates = LatentLayerGates(2, 5, 0.0)
    gates.logits.data = torch.tensor([[2.0, -1.0, 0.5, -0.2, 3.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    assert gates.select(0, "threshold").tolist() == [1, 0, 1, 0, 1]
    assert gates.select(0, "topk", 2).tolist() == [1, 0, 0, 0, 1]
    assert gates.select(1, "topk", 2).tolist() == [1, 1, 0, 0, 0]  # ties: lower layers, reproducibly
    with pytest.raises(ValueError, match="1 <= K <= 5"):
        gates.select(0, "topk", 6)


@pytest.mark.parametrize("select", ["threshold", "topk"])
def test_pruned_plain_transformer_reproduces_gated_model(select):
    model = _model("--latent-eval-select", select, "--encoder-target-layers", "2", "--decoder-target-layers", "3")
    model.encoder_latent.logits.data = torch.tensor([[2.0, -1.0, 0.5, -3.0], [-1.0, 2.0, 2.0, 1.0]])
    model.decoder_latent.logits.data = torch.tensor([[-2.0, 1.0, 3.0, 0.7], [1.0, -1.0, 2.0, -2.0]])
    model.eval()
    src, lengths, prev = _batch(4)
    d = _dictionary()
    task = SimpleNamespace(source_dictionary=d, target_dictionary=d)
    for lang, index in (("aa", 0), ("bb", 1)):
        args, state, kept = prune_latent_model(model, lang)
        n_enc, n_dec = len(kept["encoder"]), len(kept["decoder"])
        assert n_enc < 4 and n_dec < 4  # something was really pruned
        plain = fairseq_build_model(args, task)
        assert type(plain).__name__ == "TransformerModel"
        plain.load_state_dict(state, strict=True)
        plain.eval()
        with torch.no_grad():
            gated_out = model(src, lengths, prev, latent_lang=index)[0]
            plain_out = plain(src, lengths, prev)[0]
        assert len(plain.encoder.layers) == n_enc and len(plain.decoder.layers) == n_dec
        assert torch.equal(gated_out, plain_out)


@pytest.mark.parametrize("utilisation", ["language", "aggregated"])
def test_criterion_one_backward_kl_on_the_batch_language_lk_on_the_utilisation(utilisation):
    model = _model("--decoder-target-layers", "2")
    d = _dictionary()
    lam = 0.5
    crit = LatentLayersLossCriterion(SimpleNamespace(target_dictionary=d), False, 0.1, latent_kl_weight=1.0,
                                     latent_kl_anneal_updates=0, latent_prior="uniform", latent_lk_weight=lam,
                                     latent_lk_utilisation=utilisation, latent_lk_form="mean")
    src, lengths, prev = _batch()
    sample = {"net_input": {"src_tokens": src, "src_lengths": lengths, "prev_output_tokens": prev,
                            "latent_lang": 1},
              "target": torch.cat([prev[:, 1:], torch.full((3, 1), 2)], 1), "ntokens": 18}
    model.train()
    loss, sample_size, log = crit(model, sample)
    loss.backward()
    q = torch.sigmoid(torch.tensor(1.0)).item()
    dq = q * (1 - q)
    # NLL and KL reach only the batch language's row; the encoder has no L_K
    assert model.encoder_latent.logits.grad[0].abs().sum() == 0
    assert model.encoder_latent.logits.grad[1].abs().sum() > 0
    other = model.decoder_latent.logits.grad[0]
    if utilisation == "language":
        assert other.abs().sum() == 0
    else:
        # L_K on u = mean over the 2 languages reaches the other row: d/d alpha_0l = ss * lam * 2 (sum u - K) q(1-q) / 2
        expected = sample_size * lam * 2 * (4 * q - 2) * dq / 2
        assert torch.allclose(other, torch.full((4,), expected), rtol=1e-5)
    assert log["latent_lk"] == pytest.approx((4 * q - 2) ** 2, rel=1e-5)  # u = q: both rows start equal
    # KL averaged over each side's 4 layers, summed over the 2 sides
    assert log["latent_kl"] == pytest.approx(2 * (math.log(2) + q * math.log(q) + (1 - q) * math.log(1 - q)),
                                             rel=1e-4)
    # per-token gradient norms of the weighted terms on the logits: d KL_mean / d alpha_l = logit(q) q(1-q) / 4
    assert log["latent_kl_gnorm"] == pytest.approx(math.sqrt(8) * 1.0 * dq / 4, rel=1e-4)
    rows = 2 if utilisation == "aggregated" else 1
    per_gate = lam * 2 * (4 * q - 2) * dq / rows
    assert log["latent_lk_gnorm"] == pytest.approx(math.sqrt(4 * rows) * per_gate, rel=1e-4)
    assert log["latent_q_margin"] == pytest.approx(q - 0.5, rel=1e-5)
    assert "q_dec_bb_3" in log and "q_enc_bb_0" in log


def _brute_lk(q_all: torch.Tensor, k: int, sampled: bool) -> torch.Tensor:
    """Enumerate every joint 0/1 gate configuration z of all languages (2^(N L) of them): E_z[(count(z) - K)^2]
    (sampled) or (E_z[count(z)] - K)^2 (mean), count(z) = sum_l mean_n z_{n,l}."""
    import itertools

    n_langs, layers = q_all.shape
    e_count, e_square = 0.0, 0.0
    for bits in itertools.product([0.0, 1.0], repeat=n_langs * layers):
        z = torch.tensor(bits, dtype=q_all.dtype).view(n_langs, layers)
        p = torch.prod(q_all ** z * (1 - q_all) ** (1 - z))
        count = z.sum() / n_langs
        e_count, e_square = e_count + p * count, e_square + p * (count - k) ** 2
    return e_square if sampled else (e_count - k) ** 2


@pytest.mark.parametrize("form", ["sampled", "mean"])
def test_lk_equals_brute_force_expectation_over_sampled_gates(form):
    """L_K on the utilisation aggregated over languages: value and gradient against an enumeration of all gate
    configurations. ``sampled`` (default) is E_z[L_K(z)]: it has the variance term that discretises the gates;
    ``mean`` is L_K of the expected count."""
    torch.manual_seed(0)
    logits = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    k = 2
    crit = LatentLayersLossCriterion(SimpleNamespace(target_dictionary=_dictionary()), False, 0.0,
                                     latent_lk_weight=1.0, latent_lk_utilisation="aggregated", latent_lk_form=form)
    q_all = torch.sigmoid(logits)
    ours = crit.latent_terms({"lang": 1, "decoder": {"q_all": q_all, "k": k}})[1]
    brute = _brute_lk(q_all, k, form == "sampled")
    assert torch.allclose(ours, brute)
    g_ours, = torch.autograd.grad(ours, logits, retain_graph=True)
    g_brute, = torch.autograd.grad(brute, logits)
    assert torch.allclose(g_ours, g_brute) and g_ours.abs().min() > 0  # every language's logits are pulled
    # per language instead: only the batch language's row, and its own count pushed to K
    crit.lk_utilisation = "language"
    per_lang = crit.latent_terms({"lang": 1, "decoder": {"q_all": q_all, "k": k}})[1]
    assert torch.allclose(per_lang, _brute_lk(q_all[1:2], k, form == "sampled"))


def test_sampled_lk_separates_gates_that_share_the_expected_count():
    """Three gates at q = 1/3 meet K = 1 in expectation: the mean form is flat there (zero gradient), the sampled
    form moves the gates apart (the mean term then restores the count), away from the symmetric spread."""
    logits = torch.logit(torch.tensor([[1 / 3 + 0.01, 1 / 3, 1 / 3 - 0.01]], dtype=torch.float64)).requires_grad_()
    grads = {}
    for form in ("sampled", "mean"):
        crit = LatentLayersLossCriterion(SimpleNamespace(target_dictionary=_dictionary()), False, 0.0,
                                         latent_lk_weight=1.0, latent_lk_form=form)
        lk = crit.latent_terms({"lang": 0, "decoder": {"q_all": torch.sigmoid(logits), "k": 1}})[1]
        grads[form], = torch.autograd.grad(lk, logits)
    assert grads["mean"].abs().max() < 1e-12
    descent = -grads["sampled"][0]
    assert descent[0] > descent[1] > descent[2], descent  # the spread widens: the leader is held back least


def test_lk_starts_after_the_kl_anneal():
    crit = LatentLayersLossCriterion(SimpleNamespace(target_dictionary=_dictionary()), False, 0.0,
                                     latent_kl_weight=0.2, latent_kl_anneal_updates=10, latent_lk_weight=0.4)
    weights = [crit.latent_weights(t) for t in range(0, 25)]
    assert weights[0] == (0.0, 0.0) and weights[5] == (pytest.approx(0.1), 0.0)
    assert weights[10] == (pytest.approx(0.2), 0.0)  # anneal over: L_K only starts now
    assert weights[15] == (pytest.approx(0.2), pytest.approx(0.2)) and weights[24] == (pytest.approx(0.2), 0.4)
    assert LatentLayersLossCriterion(SimpleNamespace(target_dictionary=_dictionary()), False, 0.0,
                                     latent_lk_weight=0.4).latent_weights(0) == (1.0, 0.4)


def test_soft_then_straight_through_hard_gates():
    model = _model("--latent-soft-updates", "3", "--latent-logit-init", "0.3")
    src, lengths, prev = _batch()
    model.train()
    for update, hard in ((0, False), (2, False), (3, True), (50, True)):
        model.set_num_updates(update)
        torch.manual_seed(update)
        out, extra = model(src, lengths, prev, latent_lang=0)
        z = extra["latent"]["decoder"]["z"]
        assert extra["latent"]["hard"] == float(hard)
        assert bool(((z == 0) | (z == 1)).all()) == hard
        # the forward pass uses exactly these gates, and the gradient still reaches the logits
        assert torch.equal(torch.stack([layer.gate.detach() for layer in model.decoder.layers]), z)
        out.sum().backward()
        assert model.decoder_latent.logits.grad[0].abs().min() > 0
        model.zero_grad()
    with pytest.raises(ValueError, match="--latent-soft-updates must be >= 0"):
        _model("--latent-soft-updates", "-1")


def _train_steps(model, steps: int = 3):
    """Adam steps on straight-through hard gates from a fixed RNG; the outputs, gradients and fc1 calls."""
    src, lengths, prev = _batch()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    fc1_with_graph = []
    hooks = [layer.fc1.register_forward_hook(lambda m, i, o: fc1_with_graph.append(o.requires_grad))
             for layer in model.decoder.layers]
    outs, grads = [], []
    model.train()
    for step in range(steps):
        model.set_num_updates(step)
        torch.manual_seed(100 + step)  # same gate samples and dropout draws for both models
        out, extra = model(src, lengths, prev, latent_lang=step % 2)
        (out.float().log_softmax(-1).mean() + out.pow(2).mean()).backward()
        outs.append((out.detach(), extra["latent"]["decoder"]["z"]))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        opt.step()
        opt.zero_grad()
    for h in hooks:
        h.remove()
    return outs, grads, fc1_with_graph


def test_switched_off_hard_gates_skip_the_layer_backward_with_identical_gradients():
    """A straight-through gate of value 0: the layer runs without an autograd graph, and the outputs, every
    gradient (the gate logits' included) and the Adam trajectory equal those of the full backward pass."""
    import copy

    fast = _model("--latent-soft-updates", "0", "--dropout", "0.2")
    fast.decoder_latent.logits.data = torch.tensor([[3.0, -3.0, 3.0, -3.0], [-3.0, 3.0, -3.0, 3.0]])
    fast.encoder_latent.logits.data = torch.tensor([[-3.0, 3.0, 3.0, 3.0], [3.0, 3.0, -3.0, -3.0]])
    full = copy.deepcopy(fast)
    full.skip_off_backward = False
    outs_fast, grads_fast, graph_fast = _train_steps(fast)
    outs_full, grads_full, graph_full = _train_steps(full)
    assert all(graph_full) and not all(graph_fast)  # the fast model ran some layers without a graph
    zs = torch.stack([z for _, z in outs_fast])
    assert graph_fast == [bool(v) for v in zs.flatten().tolist()]  # exactly the layers whose gate is 0
    for (o1, z1), (o2, z2) in zip(outs_fast, outs_full):
        assert torch.equal(z1, z2) and torch.allclose(o1, o2, atol=1e-6, rtol=0)
    for g1, g2 in zip(grads_fast, grads_full):
        assert g1.keys() == g2.keys()  # a switched-off layer's parameters get a zero gradient, not None
        for name in g1:
            assert torch.allclose(g1[name], g2[name], atol=1e-6, rtol=1e-5), name
    off = [i for i, v in enumerate(zs[0].tolist()) if v == 0.0]
    layer = f"decoder.layers.{off[0]}." if off else None
    assert layer and all(g.abs().max() == 0 for n, g in grads_fast[0].items() if n.startswith(layer))
    for (n1, p1), (n2, p2) in zip(fast.named_parameters(), full.named_parameters()):
        assert torch.allclose(p1, p2, atol=1e-6, rtol=1e-5), n1


def test_selection_mode_per_side():
    model = _model("--decoder-latent-select", "topk", "--decoder-target-layers", "1")
    model.encoder_latent.logits.data = torch.tensor([[2.0, -1.0, 0.5, -3.0], [-1.0, 2.0, 2.0, 1.0]])
    model.decoder_latent.logits.data = torch.tensor([[2.0, 1.0, 3.0, 0.7], [1.0, -1.0, 2.0, -2.0]])
    sel = model.layer_selection(0)
    assert sel["encoder"].tolist() == [1, 0, 1, 0]  # threshold (no K on the encoder needed)
    assert sel["decoder"].tolist() == [0, 0, 1, 0]  # top-1
    with pytest.raises(ValueError, match="top-K selection of the encoder .* needs --encoder-target-layers K"):
        _model("--latent-eval-select", "topk", "--decoder-target-layers", "1")


def test_inner_loop_updates_phi_only_on_the_last_inner_step():
    model = _model()
    task = _bare_task(latent_inner_steps=3)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    optimizer = SimpleNamespace(step=opt.step)
    phi = model.decoder_latent.logits
    theta = model.decoder.layers[0].fc1.weight
    for update_num in range(6):
        before_phi, before_theta = phi.detach().clone(), theta.detach().clone()
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        task.optimizer_step(optimizer, model, update_num)
        assert not torch.equal(theta, before_theta)  # Theta: every inner step
        assert torch.equal(phi, before_phi) == (update_num % 3 != 2)  # q_phi: last inner step only
    assert task.phi_updates == 2
    assert task.get_checkpoint_dict() == {"LatentDepthTranslationTask": {"phi_updates": 2}}
    task.set_checkpoint_dict({"phi_updates": 7})
    assert task.phi_updates == 7


# -- language indices and bad input -------------------------------------------------------------------
def test_contiguous_language_indices_per_direction():
    assert latent_languages(["tgt-lrl", "tgt-hrl", "tgt-nsy"]) == ("target", ["hrl", "lrl", "nsy"])
    assert latent_languages(["lrl-tgt", "hrl-tgt"]) == ("source", ["hrl", "lrl"])
    assert latent_languages(["lrl-tgt"]) == ("bilingual", ["lrl-tgt"])
    assert latent_languages(["a-b", "c-d"], "target") == ("target", ["b", "d"])
    with pytest.raises(ValueError, match="--latent-lang-side"):
        latent_languages(["a-b", "c-d"])
    with pytest.raises(ValueError, match="twice"):
        latent_languages(["a-b", "a-b"])


def test_bad_input_one_clear_error_each():
    with pytest.raises(ValueError, match=r"--decoder-target-layers K=5 must be between 1 and the number of decoder layers \(4\)"):
        _model("--decoder-target-layers", "5")
    with pytest.raises(ValueError, match="--latent-tau must be > 0"):
        _model("--latent-tau", "0")
    with pytest.raises(ValueError, match="--latent-tau must be > 0"):
        _model("--latent-tau", "-1")
    with pytest.raises(ValueError, match="needs --encoder-latent-layers and/or --decoder-latent-layers"):
        d = _dictionary()
        LatentDepthTransformerModel.build_model(_args(), SimpleNamespace(source_dictionary=d, target_dictionary=d))
    model = _model()
    with pytest.raises(ValueError, match="language 'zz' has no latent layers in this model; it was trained for aa, bb"):
        model.latent_lang_index("zz")
    with pytest.raises(ValueError, match="out of range"):
        model.set_latent_lang(2)


def test_pruned_checkpoint_serves_only_its_language():
    model = _model()
    model.args.latent_side = "source"
    args, _, _ = prune_latent_model(model, "aa")
    d = _dictionary()
    task = LatentDepthTranslationTask.__new__(LatentDepthTranslationTask)
    task.training, task.latent_side, task.dicts = False, "source", {"aa": d, "bb": d, "tgt": d}
    task.args = Namespace(source_lang="aa", target_lang="tgt")
    task.lang_pairs = ["aa-tgt"]
    assert type(task.build_model(args)).__name__ == "TransformerModel"
    task.args, task.lang_pairs = Namespace(source_lang="bb", target_lang="tgt"), ["bb-tgt"]
    with pytest.raises(ValueError, match="pruned sub-network of aa; it cannot translate bb-tgt"):
        task.build_model(args)
