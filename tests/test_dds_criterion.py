"""dds_weighted_cross_entropy (Alg. 1): example weights, Taylor rewards against per-example gradients, CLI run."""
import argparse
import os

import numpy as np
import torch
from fairseq.data import LanguagePairDataset, ListDataset

from conftest import USER_DIR, assert_same_weights, fairseq, run
from fairseq_metabt.criterions.dds_weighted_cross_entropy import DDSWeightedCrossEntropyCriterion
from fairseq_metabt.modules import gradients as G
from fairseq_metabt.modules.generation import sequence_log_probs
from fairseq_metabt.modules.scorer import ExampleScorer
from tiny_models import random_batch, tiny_dictionary, tiny_transformer


def _task(d, dev_batch_rows=5):
    g = torch.Generator().manual_seed(9)
    rows = [torch.cat([torch.randint(d.nspecial, len(d), (3 + i % 3,), generator=g), torch.tensor([d.eos()])])
            for i in range(dev_batch_rows)]
    sizes = np.array([len(r) for r in rows])
    dev = LanguagePairDataset(ListDataset(rows, sizes), sizes, d, ListDataset(rows, sizes), sizes, d, shuffle=False)
    return argparse.Namespace(target_dictionary=d, source_dictionary=d, datasets={"valid": dev},
                              dataset=lambda split: dev)


def _criterion(task, **kw):
    return DDSWeightedCrossEntropyCriterion(task, False, 0.0, dds_dev_max_tokens=10_000, dds_scorer_lr=1e-2,
                                            dds_taylor_eps=1e-4, **kw)


def test_weights_are_the_batch_softmax_times_batch_size():
    d = tiny_dictionary()
    model = tiny_transformer(d, seed=1)
    crit = _criterion(_task(d))
    batch = random_batch(d, n=6, seed=2)
    model.eval()
    with torch.no_grad():
        loss, _, log = crit(model, batch)
        per_ex = crit(model, batch, reduce=False)[0]
    assert per_ex.shape == (6,) and abs(float(per_ex.sum()) - float(loss)) < 1e-4
    assert log["dds_weight_max"] >= 1.0  # mean weight 1, so the largest is at least 1


def test_taylor_rewards_match_per_example_gradients():
    torch.manual_seed(0)
    d = tiny_dictionary()
    model = tiny_transformer(d, seed=3).double()
    task = _task(d)
    crit = _criterion(task)
    theta = [p for p in model.parameters() if p.requires_grad]
    batch = random_batch(d, n=4, seed=5)
    model.train()
    crit(model, batch)  # step t: remembers the batch and the shadow theta_{t-1}
    shadow = [p.detach().clone() for p in theta]
    with torch.no_grad():  # a stand-in for fairseq's optimizer step: theta_{t-1} -> theta_t
        for p in theta:
            p.add_(torch.randn_like(p) * 1e-2)
    psi_before = [p.detach().clone() for p in crit.scorer.parameters()]
    crit(model, random_batch(d, n=4, seed=6))  # step t+1 takes the rewards of step t's batch
    d_vec, rewards = crit.last_dev_gradient, crit.last_rewards
    assert rewards is not None and rewards.shape == (4,)

    # brute force: d . grad l_i(theta_{t-1}) for each example with its own backward pass, l_i the summed
    # per-example loss that the training step weights (label smoothing 0 here: the summed NLL)
    saved = [p.detach().clone() for p in theta]
    with torch.no_grad():
        for p, s in zip(theta, shadow):
            p.copy_(s)
    model.eval()
    brute = []
    for i in range(4):
        nll = -sequence_log_probs(model, batch, d.pad())[i]
        grads = torch.autograd.grad(nll, theta, allow_unused=True)
        brute.append(float(torch.dot(G.flatten(grads, theta).double(), d_vec.double())))
    with torch.no_grad():
        for p, s in zip(theta, saved):
            p.copy_(s)
    assert np.allclose(rewards.numpy(), brute, rtol=2e-2, atol=1e-4), (rewards, brute)
    assert any(not torch.equal(a, b) for a, b in zip(psi_before, crit.scorer.parameters())), "psi was updated"
    assert all(not p.requires_grad for p in crit.scorer.parameters()), "psi stays out of fairseq's optimizer"


def test_scorer_step_uses_each_micro_batch_softmax():
    """Lines 9–10 with two micro-batches: log p_i is the softmax over the micro-batch that weighted example i
    in training (not one softmax over both): psi's step (plain SGD, lr 1) is minus the hand-computed gradient."""
    torch.manual_seed(0)
    d = tiny_dictionary()
    model = tiny_transformer(d, seed=3).double()
    crit = _criterion(_task(d))
    crit.scorer_optimizer = torch.optim.SGD(crit.scorer.parameters(), lr=1.0)
    theta = [p for p in model.parameters() if p.requires_grad]
    model.train()
    crit(model, random_batch(d, n=3, seed=5))[0].backward()  # fairseq's backward: the update has begun
    crit(model, random_batch(d, n=5, seed=7))  # a second micro-batch of the same update
    features = [f.clone() for f in crit._previous["features"]]
    with torch.no_grad():
        for p in theta:
            p.add_(torch.randn_like(p) * 1e-2)
    psi = [p.detach().clone() for p in crit.scorer.parameters()]
    crit(model, random_batch(d, n=4, seed=6))
    rewards = crit.last_rewards
    assert rewards.shape == (8,)
    ref = ExampleScorer(5, 32, seed=1)
    with torch.no_grad():
        for q, p0 in zip(ref.parameters(), psi):
            q.copy_(p0)
    logp = torch.cat([ref.log_weights(f) for f in features])
    (-(rewards.float() * logp).sum() / 8).backward()
    for q, p0, p1 in zip(ref.parameters(), psi, crit.scorer.parameters()):
        assert torch.allclose(p1.detach() - p0, -q.grad, atol=1e-7, rtol=1e-4)


def criterion_train_args(bin_dir, save_dir, max_update):
    return [fairseq("fairseq-train"), bin_dir, "--user-dir", USER_DIR, "--task", "translation",
            "-s", "lrl", "-t", "tgt", "--criterion", "dds_weighted_cross_entropy", "--label-smoothing", "0.1",
            "--dds-dev-max-tokens", "300", "--dds-scorer-lr", "1e-2", "--arch", "transformer_lowres_tiny",
            "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "600", "--max-update", str(max_update),
            "--save-dir", save_dir, "--cpu", "--seed", "2", "--log-format", "simple", "--log-interval", "1",
            "--num-workers", "0", "--no-progress-bar"]


def test_criterion_trains_with_fairseq_and_resumes_identically(quickstart_bin, tmp_path):
    whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
    out = run(criterion_train_args(quickstart_bin, whole, 4)).stdout
    last = [line for line in out.splitlines() if "train_inner" in line][-1]
    assert "dds_reward=" in last and "dds_weight_max=" in last
    run(criterion_train_args(quickstart_bin, split, 2))
    out = run(criterion_train_args(quickstart_bin, split, 4)).stdout
    assert "@ 2 updates" in out
    a = torch.load(os.path.join(whole, "checkpoint_last.pt"))
    b = torch.load(os.path.join(split, "checkpoint_last.pt"))
    # psi's weights, its Adam moments and step count, and the update counter all continue as if uninterrupted
    ea, eb = a["criterion"]["_extra_state"], b["criterion"]["_extra_state"]
    assert ea["scorer_updates"] == eb["scorer_updates"] == 3, "scorer steps after updates 2, 3 and 4"
    for k in a["criterion"]:
        if k.startswith("scorer."):
            assert torch.allclose(a["criterion"][k], b["criterion"][k], atol=1e-6), k
    sa, sb = ea["scorer_optimizer"]["state"], eb["scorer_optimizer"]["state"]
    assert sa.keys() == sb.keys() and sa
    for i in sa:
        assert torch.allclose(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"], atol=1e-9), i
    assert_same_weights(a, b)


def test_dev_gradient_is_the_training_criterion():
    """Line 7's dev gradient uses the loss training minimises (label-smoothed here, per token), not the NLL."""
    torch.manual_seed(0)
    d = tiny_dictionary()
    model = tiny_transformer(d, seed=3).double()
    task = _task(d)
    crit = DDSWeightedCrossEntropyCriterion(task, False, 0.1, dds_dev_max_tokens=10_000, dds_scorer_lr=1e-2,
                                            dds_taylor_eps=1e-4)
    theta = [p for p in model.parameters() if p.requires_grad]
    model.train()
    crit(model, random_batch(d, n=4, seed=5))
    with torch.no_grad():
        for p in theta:
            p.add_(torch.randn_like(p) * 1e-2)
    crit(model, random_batch(d, n=4, seed=6))
    dev = task.datasets["valid"]
    batch = dev.collater([dev[i] for i in range(len(dev))])
    model.eval()
    smoothed = crit._example_losses(model, batch).sum() / float(batch["ntokens"])
    want = G.flatten(torch.autograd.grad(smoothed, theta, allow_unused=True), theta)
    nll = -sequence_log_probs(model, batch, d.pad()).sum() / float(batch["ntokens"])
    old = G.flatten(torch.autograd.grad(nll, theta, allow_unused=True), theta)
    got = crit.last_dev_gradient
    assert torch.allclose(got.double(), want.double(), atol=1e-6)
    assert not torch.allclose(got.double(), old.double(), atol=1e-4)
