"""meta_backtranslation's backward-model update against brute force, its controls and its batches.

psi's step is -(r - b) grad log q(x_hat | y') (Eq. 8/17); per-sentence rewards share the batch
reward's scale; log q is the sampling distribution's; a skipped update leaves nothing behind; the
bitext part of a batch is the translation baseline's.
"""
import pytest
import torch
import torch.nn.functional as F

from conftest import USER_DIR, in_process_trainer
from fairseq_metabt.data.batches import pair_batch, strip_padding
from fairseq_metabt.modules import gradients as G
from fairseq_metabt.modules.generation import sequence_log_probs
from test_metabt_task import _trainer, metabt_argv

SHORT = ("--bt-max-len-a", "0", "--bt-max-len-b", "5")  # max_len 5: short samples, many with a forced EOS


def brute_log_q(psi_model, y, x_hat, eos, pad, max_len, temperature=1.0, topk=-1, topp=-1.0):
    """log q(x_hat | y) step by step, recomputing the whole prefix each time: the distribution fairseq's
    SequenceGenerator samples from (temperature, pad never, no EOS at step 0, EOS forced at max_len,
    top-k / nucleus truncation renormalised)."""
    total = 0.0
    src = y.unsqueeze(0)
    for t in range(x_hat.numel()):
        if t >= max_len:  # forced EOS: probability one
            assert int(x_hat[t]) == eos
            continue
        prev = torch.cat([x_hat.new_tensor([eos]), x_hat[:t]]).unsqueeze(0)
        logits = psi_model(src, torch.tensor([y.numel()]), prev)[0][0, -1] / temperature
        banned = torch.zeros(logits.numel(), dtype=torch.bool)
        banned[pad] = True
        banned[eos] = t == 0
        lp = F.log_softmax(logits.float(), dim=-1).masked_fill(banned, float("-inf"))
        allowed = torch.isfinite(lp)
        if topk > 0:
            allowed = torch.zeros_like(allowed)
            allowed[lp.topk(topk).indices] = True
        if topp > 0:
            probs = lp.exp()
            order = probs.argsort(descending=True)
            allowed = torch.zeros_like(allowed)
            mass = 0.0
            for j in order.tolist():
                allowed[j] = True
                mass += float(probs[j])
                if mass >= topp:
                    break
        lp = lp.masked_fill(~allowed, float("-inf"))
        total = total + (lp - torch.logsumexp(lp, 0))[x_hat[t]]
    return total


def pseudo_rows(pseudo, pad):
    """(x_hat, y') rows of a pseudo batch, in its order."""
    return list(zip(strip_padding(pseudo["net_input"]["src_tokens"], pad), strip_padding(pseudo["target"], pad)))


@pytest.mark.parametrize("granularity", ["batch", "sentence"])
def test_psi_step_is_reinforce_with_the_brute_force_reward(quickstart_bin, granularity):
    task, model, criterion, trainer, itr = _trainer(
        quickstart_bin, "--backward-mle-weight", "0", "--backward-clip-norm", "0", "--meta-weight", "0.7",
        "--meta-reward-granularity", granularity, "--meta-sentence-method", "double_backward", *SHORT)
    trainer.train_step([next(itr)])  # initialises the baseline
    theta = [p for p in model.parameters() if p.requires_grad]
    psi = list(model.backward_model.parameters())
    theta_prev = [p.detach().clone() for p in theta]
    psi_prev = [p.detach().clone() for p in psi]
    b = task.baseline.value
    seen = {}
    dev_fn, rewards_fn, step = task._dev_gradient, task.rewards, task.backward_optimizer.step

    def spy_dev(*args):
        seen["d"] = dev_fn(*args)
        return seen["d"]

    def spy_rewards(dual, th, prev, pending, g, d, h=None):
        seen["pending"] = pending
        return rewards_fn(dual, th, prev, pending, g, d, h)

    def spy_step(*args, **kwargs):
        seen["psi_grad"] = [p.grad.detach().clone() for p in psi]
        return step(*args, **kwargs)

    task._dev_gradient, task.rewards, task.backward_optimizer.step = spy_dev, spy_rewards, spy_step
    trainer.train_step([next(itr)])

    # brute force at theta_{t-1} and psi_{t-1}: rewards from per-sentence gradients, then REINFORCE
    with torch.no_grad():
        for p, old in zip(theta + psi, theta_prev + psi_prev):
            p.copy_(old)
    pad, eos = task.src_dict.pad(), task.src_dict.eos()
    rows = [r for p in seen["pending"] for r in pseudo_rows(p["pseudo"], pad)]
    d = seen["d"]

    def mean_loss_grad(pairs):
        batch = pair_batch([x for x, _ in pairs], [y for _, y in pairs], pad, eos)
        model.eval()
        per_tok, _ = criterion.compute_loss(model, model(**batch["net_input"]), batch, reduce=False)
        return G.flatten(torch.autograd.grad(per_tok.sum() / batch["ntokens"], theta, allow_unused=True), theta)

    g = mean_loss_grad(rows)
    if granularity == "batch":
        rewards = [float(F.cosine_similarity(d, g, dim=0))] * len(rows)
    else:
        norm = float(d.norm() * g.norm())
        rewards = [float(torch.dot(mean_loss_grad([r]), d)) / norm for r in rows]
    model.backward_model.eval()
    with task._psi_trainable(model):
        objective = sum((r - b) * brute_log_q(model.backward_model, y, x, eos, pad, max_len=5)
                        for r, (x, y) in zip(rewards, rows))
        expected = torch.autograd.grad(-0.7 * objective / len(rows), psi, allow_unused=True)
    for got, want in zip(seen["psi_grad"], expected):
        want = torch.zeros_like(got) if want is None else want
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-3), (got - want).abs().max()
    assert max(abs(r - b) for r in rewards) > 0


def test_per_sentence_rewards_of_identical_sentences_equal_the_batch_reward(quickstart_bin):
    task, model, criterion, trainer, itr = _trainer(quickstart_bin, *SHORT)
    sample = next(itr)
    trainer.train_step([sample])
    theta = [p for p in model.parameters() if p.requires_grad]
    pad, eos = task.src_dict.pad(), task.src_dict.eos()
    bitext = sample["bitext"]
    x = strip_padding(bitext["net_input"]["src_tokens"], pad)[0]
    y = strip_padding(bitext["target"], pad)[0]
    pseudo = pair_batch([x] * 4, [y] * 4, pad, eos)
    model.eval()
    per_tok, _ = criterion.compute_loss(model, model(**pseudo["net_input"]), pseudo, reduce=False)
    g = G.flatten(torch.autograd.grad(per_tok.sum() / pseudo["ntokens"], theta, allow_unused=True), theta)
    d = task._dev_gradient(model, theta, 7)
    pending = [{"pseudo": pseudo, "logp": torch.zeros(4), "ntokens": float(pseudo["ntokens"])}]
    h = torch.rand_like(g) * 10 + 0.1  # some positive diagonal preconditioner
    for kind, precondition in (("cosine", None), ("dot", None), ("cosine", h)):
        task.cfg.meta_reward = kind
        task.cfg.meta_reward_granularity = "batch"
        batch_r, ok = task.rewards(model, theta, theta, pending, g, d, precondition)
        assert ok
        hg = g if precondition is None else g * precondition
        expected = F.cosine_similarity(d, hg, dim=0) if kind == "cosine" else torch.dot(d, hg)
        assert torch.allclose(batch_r, expected.expand(4), rtol=1e-4, atol=1e-7)
        task.cfg.meta_reward_granularity = "sentence"
        for method in ("double_backward", "taylor"):
            task.cfg.meta_sentence_method = method
            sent_r, ok = task.rewards(model, theta, theta, pending, g, d, precondition)
            tol = 1e-4 if method == "double_backward" else 0.05
            assert ok and torch.allclose(sent_r, batch_r, rtol=tol, atol=tol * abs(float(batch_r[0]))), \
                (kind, method, sent_r, batch_r)


@pytest.mark.parametrize("sampling", [("--bt-temperature", "0.7", "--bt-sampling-topk", "4"),
                                      ("--bt-temperature", "1.3", "--bt-sampling-topp", "0.6")])
def test_log_q_is_the_sampling_distribution_and_pseudo_pairs_come_on_top(quickstart_bin, sampling):
    task, model, criterion, trainer, itr = _trainer(quickstart_bin, "--pseudo-weight", "0.5", *SHORT, *sampling)
    sample = next(itr)
    trainer.zero_grad()
    _, sample_size, _ = task.train_step(sample, model, criterion, trainer.optimizer, 0)
    (pending,) = task._pending
    pad, eos = task.src_dict.pad(), task.src_dict.eos()
    rows = pseudo_rows(pending["pseudo"], pad)
    temperature = float(sampling[1])
    topk = int(sampling[3]) if sampling[2] == "--bt-sampling-topk" else -1
    topp = float(sampling[3]) if sampling[2] == "--bt-sampling-topp" else -1.0
    model.backward_model.eval()
    with torch.no_grad():
        brute = torch.stack([brute_log_q(model.backward_model, y, x, eos, pad, 5, temperature, topk, topp)
                             for x, y in rows])
        plain = sequence_log_probs(model.backward_model, pair_batch([y for _, y in rows], [x for x, _ in rows],
                                                                    pad, eos), pad)
    assert torch.isfinite(brute).all() and any(x.numel() == 6 for x, _ in rows), "forced EOS exercised"
    assert torch.allclose(pending["logp"].detach(), brute, atol=1e-4), (pending["logp"], brute)
    assert not torch.allclose(plain.sort().values, brute.sort().values, atol=1e-2)  # the distortions matter

    # theta's gradient: the bitext's per-token mean (the baseline's) + 0.5 x the pseudo pairs' own mean
    theta = [p for p in model.parameters() if p.requires_grad]
    got = G.flat_grad(theta) / sample_size
    model.train()
    lb, sb, _ = criterion(model, sample["bitext"])
    pseudo = pending["pseudo"]
    lp, _ = criterion.compute_loss(model, model(**pseudo["net_input"]), pseudo, reduce=True)
    want = G.flatten(torch.autograd.grad(lb / sb + 0.5 * lp / pseudo["ntokens"], theta, allow_unused=True), theta)
    assert sample_size == sb and torch.allclose(got, want, atol=1e-6, rtol=1e-4)


def test_a_skipped_update_leaves_nothing_behind(quickstart_bin):
    """An update abandoned after an OOM in its second micro-batch, then retried, ends exactly like an
    update that never failed: no pending pseudo data and no psi gradient carry over."""
    runs = []
    for fail in (False, True):
        task, model, _, trainer, itr = _trainer(quickstart_bin, *SHORT)
        first, second = next(itr), next(itr)
        trainer.train_step([first])
        if fail:
            calls = {"n": 0}
            original = task.psi_reversed_batch

            def oom_in_second_micro_batch(bitext):
                calls["n"] += 1
                if calls["n"] == 2:
                    raise RuntimeError("CUDA out of memory (simulated)")
                return original(bitext)

            task.psi_reversed_batch = oom_in_second_micro_batch
            assert trainer.train_step([first, second]) is None and trainer.get_num_updates() == 1
            assert task._pending and any(p.grad is not None for p in model.backward_model.parameters())
            task.psi_reversed_batch = original
        trainer.train_step([first, second])
        assert trainer.get_num_updates() == 2
        runs.append(({k: v.clone() for k, v in model.state_dict().items()}, task.baseline.value))
    (clean, b_clean), (retried, b_retried) = runs
    assert b_clean == pytest.approx(b_retried, abs=1e-7)
    for k in clean:
        assert torch.allclose(clean[k], retried[k], atol=1e-7), k


@pytest.mark.parametrize("task_name,streams", [("meta_backtranslation", ("mono",)),
                                               ("wake_sleep_translation", ("mono_tgt", "mono_src"))])
def test_bitext_part_of_every_batch_is_the_translation_baselines(quickstart_bin, task_name, streams):
    """Batch for batch, epoch after epoch, through fairseq's real iterators with a data-loading worker
    (fairseq-train's default), as fairseq_cli.train asks for them."""
    common = [quickstart_bin, "--user-dir", USER_DIR, "-s", "lrl", "-t", "tgt", "--optimizer", "adam",
              "--lr", "1e-3", "--max-tokens", "600", "--cpu", "--seed", "5", "--num-workers", "1"]
    base = in_process_trainer(common + ["--task", "translation", "--arch", "transformer_lowres_tiny"])[3]
    meta = in_process_trainer(common + ["--task", task_name, "--arch", "dual_transformer_tiny"])[3]
    epochs = {}
    for name, trainer in (("base", base), ("meta", meta)):
        epochs[name] = [list(trainer.get_train_iterator(epoch=e, load_dataset=e == 1).next_epoch_itr(shuffle=True))
                        for e in (1, 2)]
    on_top = []  # per epoch: bitext batch -> the monotext ids on top of it
    for base_batches, meta_batches in zip(epochs["base"], epochs["meta"]):
        assert len(base_batches) == len(meta_batches) > 1
        for b, m in zip(base_batches, meta_batches):
            assert torch.equal(b["id"], m["bitext"]["id"])
            assert torch.equal(b["net_input"]["src_tokens"], m["bitext"]["net_input"]["src_tokens"])
            assert torch.equal(b["target"], m["bitext"]["target"])
            for stream in streams:  # one monolingual sentence per bitext sentence, on top
                assert m[stream]["id"].numel() == b["id"].numel()
        for stream in streams:  # the epoch walks the monotext evenly: 400 bitext, 200 monolingual, each twice
            counts = torch.bincount(torch.tensor([i for m in meta_batches for i in m[stream]["id"].tolist()]))
            assert counts.numel() == 200 and set(counts.tolist()) == {2}
        on_top.append({tuple(m["bitext"]["id"].tolist()): m[streams[0]]["id"].sort().values.tolist()
                       for m in meta_batches})
    assert on_top[0].keys() == on_top[1].keys()
    assert on_top[0] != on_top[1], "the monotext walk moves on with the epoch, in the data-loading worker too"


def test_controls_and_ddp_backend(quickstart_bin):
    # BT + MLE: psi moves by MLE only, no dev gradient or reward is computed
    task, model, _, trainer, itr = _trainer(quickstart_bin, "--meta-weight", "0", *SHORT)
    psi_before = [p.detach().clone() for p in model.backward_model.parameters()]
    task._dev_gradient = task.rewards = None  # would raise if called
    trainer.train_step([next(itr)])
    assert any(not torch.equal(a, p) for a, p in zip(psi_before, model.backward_model.parameters()))
    assert not task._pending and task.meta_steps == 1
    # pytorch DDP and FSDP are refused when the model is built, naming the fix
    for extra in (("--distributed-world-size", "2", "--ddp-backend", "pytorch_ddp"),
                  ("--ddp-backend", "fully_sharded")):
        with pytest.raises(ValueError, match="needs --ddp-backend legacy_ddp"):
            in_process_trainer(metabt_argv(quickstart_bin, *extra))


def test_backward_model_is_told_which_language_to_produce_with_related_pairs(tmp_path):
    from conftest import make_corpus, prepare

    raw = make_corpus(str(tmp_path / "raw"), "multilingual", sizes="train=40,hrl=80,unra=10,unrb=10,nsy=10,"
                      "valid=11,test=11,mono_tgt=30,mono_lrl=10")
    bin_dir = prepare(raw, str(tmp_path / "bin"))
    task, model, criterion, trainer, itr = _trainer(bin_dir, "--related-lang-pairs", "hrl-tgt", *SHORT)
    d = task.src_dict
    lrl, hrl = d.index("__lrl__"), d.index("__hrl__")
    assert d.unk() not in (lrl, hrl)
    inputs = []
    sampler = task._sampler(model)

    class Recorder:
        settings = sampler.settings

        def __call__(self, net_input):
            inputs.append(net_input["src_tokens"].clone())
            return sampler(net_input)

        def max_len(self, src_tokens):
            return sampler.max_len(src_tokens)

    task._sampler = lambda dual: Recorder()
    seen_langs = set()
    for _ in range(4):
        sample = next(itr)
        rev = task.psi_reversed_batch(sample["bitext"])
        firsts = {int(i): int(row[0]) for i, row in zip(rev["id"], strip_padding(rev["net_input"]["src_tokens"],
                                                                                 d.pad()))}
        for i in sample["bitext"]["id"].tolist():  # ids 0..39: lrl-tgt, 40..119: hrl-tgt
            assert firsts[i] == (lrl if i < 40 else hrl), i
            seen_langs.add(i < 40)
        trainer.train_step([sample])
    assert seen_langs == {True, False}
    # pseudo-sources for y' are asked for in the low-resource language
    assert inputs and all(int(row[0]) == lrl for batch in inputs for row in strip_padding(batch, d.pad()))
