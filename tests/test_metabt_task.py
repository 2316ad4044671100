"""meta_backtranslation inside fairseq's real Trainer: the reward is taken at the updated theta."""
import torch

from conftest import USER_DIR, in_process_trainer
from fairseq_metabt.modules import gradients as G
from fairseq_metabt.modules.generation import sequence_log_probs


def metabt_argv(bin_dir, *extra):
    """In-process fairseq-train arguments of a tiny, dropout-free meta_backtranslation run."""
    return [bin_dir, "--user-dir", USER_DIR, "--task", "meta_backtranslation", "-s", "lrl", "-t", "tgt",
            "--arch", "dual_transformer_tiny", "--dropout", "0", "--optimizer", "adam", "--lr", "1e-3",
            "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--max-tokens", "600",
            "--cpu", "--seed", "3", "--meta-dev-max-tokens", "300", *extra]


def _trainer(bin_dir, *extra):
    task, model, criterion, trainer = in_process_trainer(metabt_argv(bin_dir, *extra))
    itr = trainer.get_train_iterator(epoch=1).next_epoch_itr(shuffle=False)
    return task, model, criterion, trainer, itr


def test_reward_is_cosine_of_pseudo_gradient_before_and_dev_gradient_after_the_update(quickstart_bin):
    task, model, criterion, trainer, itr = _trainer(quickstart_bin)
    sample = next(itr)
    trainer.train_step([sample])  # warm-up update (Adam state, first-gradient effects)
    theta = [p for p in model.parameters() if p.requires_grad]
    psi = list(model.backward_model.parameters())
    assert psi and not any(p.requires_grad for p in psi), "psi is kept out of fairseq's optimizer"

    seen = {}
    rewards_fn, dev_fn = task.rewards, task._dev_gradient

    def spy_dev(dual, th, update_num):
        seen["theta_at_dev"] = [p.detach().clone() for p in th]
        seen["update_num"] = update_num
        return dev_fn(dual, th, update_num)

    def spy_rewards(dual, th, prev, pending, g, d, h=None):
        seen.update(pending=pending, g=g.clone(), d=d.clone())
        out = rewards_fn(dual, th, prev, pending, g, d, h)
        seen["reward"] = out[0]
        return out

    task._dev_gradient, task.rewards = spy_dev, spy_rewards
    theta_before = [p.detach().clone() for p in theta]
    psi_before = [p.detach().clone() for p in psi]
    trainer.train_step([next(itr)])
    theta_after = [p.detach().clone() for p in theta]

    # the dev gradient was taken at theta_t (after the update), not at theta_{t-1}
    assert all(torch.equal(a, b) for a, b in zip(seen["theta_at_dev"], theta_after))
    assert any(not torch.equal(a, b) for a, b in zip(theta_before, theta_after))

    # brute force: g at theta_{t-1} on the pseudo pairs, d at theta_t on the same dev batch
    pseudo = seen["pending"][0]["pseudo"]
    with torch.no_grad():
        for p, old in zip(theta, theta_before):
            p.copy_(old)
    model.train()
    per_tok, _ = criterion.compute_loss(model, model(**pseudo["net_input"]), pseudo, reduce=False)
    g_bf = G.flatten(torch.autograd.grad(per_tok.sum() / pseudo["ntokens"], theta, allow_unused=True), theta)
    with torch.no_grad():
        for p, new in zip(theta, theta_after):
            p.copy_(new)
    model.eval()
    dev = task.dev_batch(seen["update_num"])
    nll = -sequence_log_probs(model, dev, task.tgt_dict.pad()).sum() / dev["ntokens"]
    d_bf = G.flatten(torch.autograd.grad(nll, theta, allow_unused=True), theta)
    assert torch.allclose(seen["g"], g_bf, atol=1e-5, rtol=1e-4)
    assert torch.allclose(seen["d"], d_bf, atol=1e-5, rtol=1e-4)
    expected = torch.nn.functional.cosine_similarity(d_bf, g_bf, dim=0)
    assert torch.allclose(seen["reward"], expected.expand_as(seen["reward"]), atol=1e-5)
    # and psi moved by its own optimizer
    assert any(not torch.equal(a, p) for a, p in zip(psi_before, psi))
    assert task.baseline.initialized and task.meta_steps == 2


def test_per_sentence_taylor_rewards_match_exact_dot_products(quickstart_bin):
    task, model, criterion, trainer, itr = _trainer(
        quickstart_bin, "--meta-reward-granularity", "sentence", "--meta-reward", "dot",
        "--meta-sentence-method", "taylor", "--meta-taylor-eps", "1e-3")
    trainer.train_step([next(itr)])
    captured = {}
    rewards_fn = task.rewards

    def spy(dual, th, prev, pending, g, d, h=None):
        out = rewards_fn(dual, th, prev, pending, g, d, h)
        task.cfg.meta_sentence_method = "double_backward"
        exact = rewards_fn(dual, th, prev, pending, g, d, h)
        task.cfg.meta_sentence_method = "taylor"
        captured.update(taylor=out[0], exact=exact[0])
        return out

    task.rewards = spy
    trainer.train_step([next(itr)])
    taylor, exact = captured["taylor"], captured["exact"]
    assert taylor.numel() > 2 and exact.shape == taylor.shape
    assert exact.abs().max() > 0
    rel = (taylor - exact).abs().max() / exact.abs().max()
    assert float(rel) < 0.1, (taylor, exact)
