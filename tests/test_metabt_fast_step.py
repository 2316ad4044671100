"""Issue 31's faster MetaBT step computes what the step computed before: the pre-issue implementations are
kept here as references, and the new ones must give the same values and gradients on a fixed seed."""
import pytest
import torch

from fairseq_metabt.data.batches import pair_batch, strip_padding
from fairseq_metabt.modules import phases
from fairseq_metabt.modules.generation import (
    GenerationSettings, InStepGenerator, _nucleus, sampling_log_probs, sequence_log_probs,
)
from tiny_models import random_batch, tiny_dictionary, tiny_transformer


def reference_sampling_log_probs(model, batch, settings, pad, eos, max_len, min_len=1):
    """The implementation before issue 31: log-softmax, mask, renormalise over (B, T, V)."""
    sample = settings.mode == "sample"
    net_output = model(**batch["net_input"])
    logits = net_output[0]
    if sample and settings.temperature != 1.0:
        logits = logits / settings.temperature
    lprobs = model.get_normalized_probs((logits, *net_output[1:]), log_probs=True).float()
    steps = lprobs.size(1)
    ban = torch.zeros(lprobs.shape[1:], dtype=torch.bool, device=lprobs.device)
    ban[:, pad] = True
    ban[:min_len, eos] = True
    if max_len < steps:
        ban[max_len:, :] = True
        ban[max_len:, eos] = False
    lprobs = lprobs.masked_fill(ban, float("-inf"))
    if sample and settings.sampling_topp > 0:
        lprobs = lprobs.masked_fill(~_nucleus(lprobs.detach(), settings.sampling_topp), float("-inf"))
    elif sample and settings.sampling_topk > 0:
        top = lprobs.detach().topk(min(settings.sampling_topk, lprobs.size(-1)), dim=-1).indices
        keep = torch.zeros_like(lprobs, dtype=torch.bool).scatter_(-1, top, True)
        lprobs = lprobs.masked_fill(~keep, float("-inf"))
    lq = lprobs - torch.logsumexp(lprobs, dim=-1, keepdim=True)
    target = batch["target"]
    return lq.gather(-1, target.unsqueeze(-1)).squeeze(-1).masked_fill(target.eq(pad), 0.0).sum(-1)


def reference_sequence_log_probs(model, batch, pad):
    net_output = model(**batch["net_input"])
    lprobs = model.get_normalized_probs(net_output, log_probs=True)
    target = batch["target"]
    return lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1).masked_fill(target.eq(pad), 0.0).sum(-1)


def _value_and_grads(fn, model):
    model.zero_grad()
    out = fn()
    (out * torch.linspace(-1.0, 2.0, out.numel())).sum().backward()  # a generic advantage per row
    return out.detach(), [p.grad.clone() for p in model.parameters()]


def _assert_same(a, b):
    (va, ga), (vb, gb) = a, b
    assert torch.allclose(va, vb, rtol=1e-5, atol=1e-5), (va, vb)
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-6), (x - y).abs().max()


@pytest.mark.parametrize("settings", [
    dict(), dict(temperature=0.7), dict(sampling_topk=5), dict(sampling_topp=0.8), dict(temperature=1.3,
                                                                                        sampling_topp=0.5),
])
def test_log_q_and_its_gradient_equal_the_pre_issue_implementation(settings):
    d = tiny_dictionary()
    model = tiny_transformer(d, seed=1)
    batch = random_batch(d, n=6, seed=2)
    s = GenerationSettings("sample", max_len_a=0, max_len_b=5, **settings)
    torch.manual_seed(4)
    samples = InStepGenerator(model, d, s)(batch["net_input"])  # some rows end by the forced EOS at 5
    back = pair_batch(strip_padding(batch["net_input"]["src_tokens"], d.pad()), samples, d.pad(), d.eos())
    model.eval()
    args = (model, back, s, d.pad(), d.eos(), 5)
    new = _value_and_grads(lambda: sampling_log_probs(*args), model)
    ref = _value_and_grads(lambda: reference_sampling_log_probs(*args), model)
    assert bool(torch.isfinite(new[0]).all()) and bool((new[0] < 0).all())
    _assert_same(new, ref)


def test_sequence_log_probs_and_its_gradient_equal_the_pre_issue_implementation():
    d = tiny_dictionary()
    model = tiny_transformer(d, seed=5)
    batch = random_batch(d, n=5, seed=6)
    model.eval()
    _assert_same(_value_and_grads(lambda: sequence_log_probs(model, batch, d.pad()), model),
                 _value_and_grads(lambda: reference_sequence_log_probs(model, batch, d.pad()), model))


def test_phases_cost_nothing_when_off_and_time_when_on(monkeypatch):
    assert not phases.enabled()  # METABT_PHASES is not set in the test environment
    phases.start_update(100)
    with phases.phase("x"):
        pass
    assert phases.report()["phases"] == {}
    monkeypatch.setattr(phases, "_PATH", "unused")
    monkeypatch.setattr(phases, "_totals", {})
    monkeypatch.setattr(phases, "_updates", set())
    phases.start_update(phases._SKIP - 1)  # warm-up: not recorded
    with phases.phase("x"):
        pass
    assert phases.report()["phases"] == {}
    phases.start_update(phases._SKIP)
    for _ in range(2):
        with phases.phase("x"):
            sum(range(1000))
    rep = phases.report()
    assert rep["updates"] == 1 and rep["phases"]["x"]["n"] == 2 and rep["phases"]["x"]["s"] > 0
    monkeypatch.setattr(phases, "_recording", False)


def _one_update(bin_dir, *extra):
    """theta's and psi's gradients, the rewards, log q and the logged losses of the second update of a
    tiny dropout-free MetaBT run (the first warms Adam up)."""
    from test_metabt_task import _trainer

    task, model, criterion, trainer, itr = _trainer(bin_dir, *extra)
    trainer.train_step([next(itr)])
    theta = [p for p in model.parameters() if p.requires_grad]
    seen = {}
    opt_step, psi_step, rewards_fn = task.optimizer_step, task.backward_optimizer.step, task.rewards

    def spy_opt(optimizer, model, update_num):
        seen["theta_grad"] = [p.grad.clone() for p in theta]
        seen["logp"] = torch.cat([p["logp"].detach() for p in task._pending if "logp" in p])
        return opt_step(optimizer, model, update_num)

    def spy_psi(*a, **k):
        seen["psi_grad"] = [p.grad.clone() for p in model.backward_model.parameters()]
        return psi_step(*a, **k)

    def spy_rewards(*a, **k):
        out = rewards_fn(*a, **k)
        seen["reward"] = out[0].clone()
        return out

    chunked = task._pseudo_forward_backward

    def spy_chunks(model, criterion, optimizer, x_hat, y_rows, chunks, scale):
        seen["chunks"] = len(chunks)
        return chunked(model, criterion, optimizer, x_hat, y_rows, chunks, scale)

    log_q = task._log_q

    def spy_log_q(dual, psi_rows, x_hat, chunks, *rest):
        seen["x_hat"], seen["psi_chunks"] = [x.clone() for x in x_hat], chunks
        return log_q(dual, psi_rows, x_hat, chunks, *rest)

    task.optimizer_step, task.backward_optimizer.step, task.rewards = spy_opt, spy_psi, spy_rewards
    task._pseudo_forward_backward, task._log_q = spy_chunks, spy_log_q
    seen["log"] = trainer.train_step([next(itr)])
    return seen


def length_chunks_reference(n):
    return [list(range(n))]


def test_length_chunks_cover_every_row_once_within_the_budget():
    from fairseq_metabt.modules.length_chunks import length_chunks

    src, tgt = [3, 30, 4, 5, 28, 6, 2], [4, 31, 5, 3, 29, 7, 3]
    chunks = length_chunks(src, tgt, 130)
    assert sorted(i for c in chunks for i in c) == list(range(7))
    assert all(len(c) == 1 or len(c) * (max(src[i] for i in c) + max(tgt[i] for i in c)) <= 130 for c in chunks)
    assert {1, 4} in [set(c) for c in chunks]  # the two long rows together, away from the short ones
    assert length_chunks(src, tgt, 0) == length_chunks_reference(7)


def test_chunked_pseudo_pairs_give_the_gradients_of_the_whole_batch(quickstart_bin):
    """--pseudo-chunk-tokens 0 is the pre-issue step (one padded pseudo batch); small chunks must give the same
    log q, rewards, theta and psi gradients and logged losses on the same seed (dropout off)."""
    whole = _one_update(quickstart_bin, "--pseudo-chunk-tokens", "0")
    chunked = _one_update(quickstart_bin, "--pseudo-chunk-tokens", "60")
    assert whole["chunks"] == 1 and chunked["chunks"] > 2
    _assert_same_update(whole, chunked)


def _assert_same_update(a, b):
    assert torch.allclose(a["logp"], b["logp"], rtol=1e-5, atol=1e-4)
    assert torch.allclose(a["reward"], b["reward"], rtol=1e-4, atol=1e-5)
    for key in ("theta_grad", "psi_grad"):
        for x, y in zip(a[key], b[key]):
            assert torch.allclose(x, y, rtol=1e-4, atol=1e-6), (key, (x - y).abs().max())
    for key in ("loss", "nll_loss", "fwd_pseudo_loss", "fwd_bitext_loss", "bwd_mle_loss", "pseudo_len"):
        assert abs(float(a["log"][key]) - float(b["log"][key])) <= 1e-4 * abs(float(a["log"][key])), key


def test_lean_sampler_and_packed_targets_give_the_step_of_the_generator_and_padded_batches(quickstart_bin,
                                                                                           monkeypatch):
    """Issue 31, second round: the in-step sampling loop and the output layer over the targets' real
    positions only (theta's pseudo loss, psi's log q, the dev NLL) against fairseq's SequenceGenerator and the
    padded batches: the same pseudo-sources, token for token, and the same log q, rewards, theta and psi
    gradients and logged losses on one update (dropout off)."""
    from fairseq_metabt.modules import generation

    new = _one_update(quickstart_bin, "--pseudo-chunk-tokens", "0")  # one padded batch: the most padding
    monkeypatch.setattr(generation, "_packable", lambda model: False)
    monkeypatch.setattr(InStepGenerator, "_lean", property(lambda self: False))
    ref = _one_update(quickstart_bin, "--pseudo-chunk-tokens", "0")
    assert len(new["x_hat"]) == len(ref["x_hat"]) > 10
    assert all(torch.equal(x, y) for x, y in zip(new["x_hat"], ref["x_hat"]))
    _assert_same_update(new, ref)


def test_psi_log_q_chunks_go_by_the_length_of_x_hat(quickstart_bin):
    """theta's pseudo pairs are chunked by the length of y' (their target), psi's log q by that of x_hat
    (its target): every chunk of log q holds x_hat of similar length."""
    seen = _one_update(quickstart_bin, "--pseudo-chunk-tokens", "400")
    lens = [[seen["x_hat"][i].numel() for i in c] for c in seen["psi_chunks"]]
    assert len(lens) > 2 and max(len(c) for c in lens) > 3
    assert all(max(a) <= min(b) for a, b in zip(lens, lens[1:])), lens
