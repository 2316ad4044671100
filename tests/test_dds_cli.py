"""dds_translation through the real fairseq CLIs: train, resume, generate, priors, 2 workers, bad input, plot."""
import json
import os
import re
import sys

import pytest
import torch

from conftest import (ROOT, USER_DIR, assert_same_weights, fails, fairseq, in_process_trainer, make_corpus, prepare, run,
                      two_workers)
from fairseq_metabt.modules import gradients as G

PAIRS = "lrl-tgt,hrl-tgt,unra-tgt,unrb-tgt,nsy-tgt"
SIZES = "train=80,hrl=160,unra=60,unrb=60,nsy=60,valid=21,test=21,mono_tgt=40,mono_lrl=40"


@pytest.fixture(scope="module")
def multiway_bin(tmp_path_factory):
    base = tmp_path_factory.mktemp("dds_multiway")
    raw = str(base / "raw")
    run([sys.executable, "-m", "fairseq_metabt.synthetic", "--preset", "multilingual", "--multiway", "--out", raw,
         "--seed", "1", "--sizes", SIZES + ",pool=200"])
    return prepare(raw, str(base / "bin"))


def dds_args(bin_dir, save_dir, max_update, *extra, pairs=PAIRS):
    return [fairseq("fairseq-train"), bin_dir, "--user-dir", USER_DIR, "--task", "dds_translation",
            "--lang-pairs", pairs, "--dds-dev-lang-pair", "lrl-tgt", "--dds-update-interval", "2",
            "--dds-scorer-iters", "2", "--dds-scorer-batch", "16", "--dds-scorer-lr", "0.01",
            "--dds-dev-max-tokens", "300", "--arch", "transformer_lowres_tiny", "--optimizer", "adam", "--lr", "1e-3",
            "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4", "--criterion", "label_smoothed_cross_entropy",
            "--label-smoothing", "0.1", "--max-tokens", "600", "--max-update", str(max_update),
            "--save-dir", save_dir, "--cpu", "--seed", "2", "--log-format", "simple", "--log-interval", "1",
            "--num-workers", "0", "--no-progress-bar", *extra]


def records(save_dir):
    with open(os.path.join(save_dir, "dds_log.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def last_inner(out):
    return [line for line in out.splitlines() if "train_inner" in line][-1]


@pytest.fixture(scope="module")
def trained(multiway_bin, tmp_path_factory):
    save = str(tmp_path_factory.mktemp("dds_run"))
    return save, run(dds_args(multiway_bin, save, 6)).stdout


def test_training_logs_distribution_rewards_and_saves_state(trained):
    save, out = trained
    assert "target mode" in out  # multi-way targets: target-conditioned sampling
    line = last_inner(out)
    for lang in ("lrl", "hrl", "unra", "unrb", "nsy"):
        for key in ("dds_p_", "dds_r_", "dds_use_"):
            assert f"{key}{lang}=" in line, (key, lang, line)
    for key in ("dds_ema_mib=", "dds_entropy=", "dds_kl_prior=", "dds_reward_std=", "dds_reward_gap="):
        assert key in line, (key, line)
    recs = records(save)
    assert [r["update"] for r in recs] == [2, 4, 6]
    for r in recs:
        assert abs(sum(r["p"]) - 1) < 1e-4 and len(r["reward"]) == 5
        # the entropy of p, its KL to the prior, and the reward spread: std across languages vs best - mean
        assert r["entropy"] > 0 and r["kl_prior"] >= 0 and r["reward_std"] > 0 and r["reward_gap"] > 0, r
    assert recs[0]["p"] != recs[-1]["p"], "the scorer moved the distribution"
    state = torch.load(os.path.join(save, "checkpoint_last.pt"))["extra_state"]["DDSTranslationTask"]
    assert state["scorer_updates"] == 3 and state["last_update"] == 6
    assert state["ema"] is None and bool(state["reward_valid"].all())  # fresh batches: no EMA kept
    assert state["scorer_optimizer"]["state"], "the scorer's Adam state is checkpointed"


def test_resume_continues_identically(trained, multiway_bin, tmp_path):
    save, _ = trained
    split = str(tmp_path / "split")
    run(dds_args(multiway_bin, split, 3))
    with open(os.path.join(split, "dds_log.jsonl"), "a") as f:
        f.write('{"update": 4, "p": [0.2')  # a run killed while writing: a torn last line
    out = run(dds_args(multiway_bin, split, 6)).stdout
    assert "@ 3 updates" in out and "skipped 1 unreadable line" in out
    a = torch.load(os.path.join(save, "checkpoint_last.pt"))
    b = torch.load(os.path.join(split, "checkpoint_last.pt"))
    assert_same_weights(a, b)
    ta, tb = a["extra_state"]["DDSTranslationTask"], b["extra_state"]["DDSTranslationTask"]
    for k in ta["scorer"]:
        assert torch.allclose(ta["scorer"][k], tb["scorer"][k], atol=1e-7), k
    assert torch.allclose(ta["rewards"], tb["rewards"], atol=1e-5)
    ra, rb = records(save), records(split)
    assert [r["update"] for r in rb] == [2, 4, 6]
    for x, y in zip(ra, rb):
        assert x["p"] == pytest.approx(y["p"], abs=1e-5) and x["usage"] == y["usage"]


def test_dataloader_workers_do_not_change_the_run(trained, multiway_bin, tmp_path):
    # the loader yields target ids only; languages are drawn in the training process
    save, _ = trained
    other = str(tmp_path / "workers")
    args = dds_args(multiway_bin, other, 6)
    args[args.index("--num-workers") + 1] = "2"
    run(args)
    a = torch.load(os.path.join(save, "checkpoint_last.pt"))
    b = torch.load(os.path.join(other, "checkpoint_last.pt"))
    assert_same_weights(a, b)
    assert [r["usage"] for r in records(save)] == [r["usage"] for r in records(other)]


def test_generate_any_pair(trained, multiway_bin):
    save, _ = trained
    out = run([fairseq("fairseq-generate"), multiway_bin, "--user-dir", USER_DIR, "--task", "dds_translation",
               "--path", os.path.join(save, "checkpoint_last.pt"), "-s", "hrl", "-t", "tgt", "--gen-subset", "test",
               "--beam", "2", "--max-len-b", "6", "--cpu", "--required-batch-size-multiple", "1"]).stdout
    assert sum(line.startswith("H-") for line in out.splitlines()) == 21


def test_plot_script_draws_png(trained, tmp_path):
    save, _ = trained
    out = str(tmp_path / "usage.png")
    run([sys.executable, os.path.join(ROOT, "scripts", "plot_dds.py"), save, "--out", out])
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_fixed_priors_are_the_baselines(multiway_bin, tmp_path):
    # temperature baseline: sizes^(1/T), never updated
    save = str(tmp_path / "temp")
    run(dds_args(multiway_bin, save, 4, "--dds-init", "temperature", "--dds-temperature", "1",
                 "--dds-update-scorer", "false"))
    recs = records(save)
    assert recs[0]["p"] == recs[-1]["p"]
    p = dict(zip(recs[0]["langs"], recs[0]["p"]))
    assert p["hrl"] > p["lrl"] and p["hrl"] > p["unra"]  # hrl has the most data
    # TCS: imitates vocabulary overlap with lrl -> lrl where available, else its relative hrl
    save = str(tmp_path / "tcs")
    out = run(dds_args(multiway_bin, save, 2, "--dds-init", "tcs", "--dds-update-scorer", "false")).stdout
    assert "TCS prior from vocabulary overlap" in out
    p = dict(zip(records(save)[0]["langs"], records(save)[0]["p"]))
    assert p["lrl"] + p["hrl"] > 0.8, p


def test_fixed_order_does_not_move(multiway_bin, tmp_path):
    """The `fixed_order` control: each target draws the first available language of a ranking given on the
    command line, from the first update to the last (lrl wherever a target has it, then hrl, ...)."""
    save = str(tmp_path / "order")
    out = run(dds_args(multiway_bin, save, 4, "--dds-init", "order", "--dds-order", "lrl,hrl,unrb,nsy,unra",
                       "--dds-update-scorer", "false")).stdout
    assert "fixed order lrl > hrl > unrb > nsy > unra" in out
    recs = records(save)
    assert len(recs) == 2 and recs[0]["p"] == recs[-1]["p"] and not recs[-1]["learned"]
    p = dict(zip(recs[0]["langs"], recs[0]["p"]))
    assert p["lrl"] + p["hrl"] > 0.9, p  # the rest: targets that neither lrl nor hrl translates
    assert recs[0]["entropy"] < 1e-6  # one language per target: a ranking, not a weighting
    out = fails(dds_args(multiway_bin, str(tmp_path / "bad"), 2, "--dds-init", "order", "--dds-order", "lrl,hrl"))
    assert "--dds-order lrl,hrl must rank every language of --lang-pairs exactly once" in out


def test_bounded_gradient_memory(multiway_bin, tmp_path):
    ema = ("--dds-grad-source", "ema")
    out = run(dds_args(multiway_bin, str(tmp_path / "sk"), 2, *ema, "--dds-grad-sketch-dim", "256")).stdout
    assert "sketched to 256" in out
    d = int(re.search(r"gradient EMAs over (\d+) parameters", out).group(1))
    # everything DDS keeps: EMAs, shares and their mark (k each, fp32), the int32+int8 hash, and the
    # scorer update's peak: the dev gradient's running total and one backward's gradients (D fp32 each)
    expect = ((5 + 5 + 1) * 256 * 4 + d * 5 + 2 * d * 4) / 2**20
    got = float(re.search(r"dds_ema_mib=([0-9.]+)", last_inner(out)).group(1))
    assert abs(got - expect) < 2e-3, (got, expect)
    out = run(dds_args(multiway_bin, str(tmp_path / "sub"), 2, *ema, "--dds-grad-params",
                       r"decoder\.layers\.0\.")).stdout
    sub = int(re.search(r"gradient EMAs over (\d+) parameters", out).group(1))
    assert 0 < sub < d


def test_warm_up_sentences_and_a_fresh_log(multiway_bin, tmp_path):
    save = str(tmp_path / "warm")
    os.makedirs(save)
    with open(os.path.join(save, "dds_log.jsonl"), "w") as f:
        f.write('{"update": 99}\n')  # an earlier run's log in the save dir, no checkpoint
    run(dds_args(multiway_bin, save, 5, "--dds-update-unit", "sentences", "--dds-update-interval", "1",
                 "--dds-start-update", "3", "--dds-scorer-objective", "exact", "--dds-reward", "adam"))
    recs = records(save)
    assert [r["update"] for r in recs] == [1, 2, 3, 4, 5]  # any sentence count reaches K = 1 every update
    assert [r["learned"] for r in recs] == [False, False, True, True, True]
    assert recs[0]["p"] == recs[1]["p"] != recs[-1]["p"]  # no scorer update during warm-up
    with open(os.path.join(save, "dds_log.jsonl.prev0")) as f:
        assert f.read() == '{"update": 99}\n'  # kept aside, not appended to


def test_not_multiway_and_one_to_many(tmp_path):
    raw = make_corpus(str(tmp_path / "raw"), "multilingual", sizes=SIZES)
    bin_dir = prepare(raw, str(tmp_path / "bin"))
    out = run(dds_args(bin_dir, str(tmp_path / "m2o"), 2, pairs="lrl-tgt,hrl-tgt,unra-tgt")).stdout
    assert "language mode" in out
    o2m = "tgt-lrl,tgt-hrl"
    save = str(tmp_path / "o2m")
    out = run(dds_args(bin_dir, save, 2, "--dds-dev-lang-pair", "tgt-lrl", pairs=o2m)).stdout
    assert "dds_p_hrl=" in last_inner(out)
    for lang_pairs in (["--lang-pairs", o2m], []):  # without --lang-pairs, the checkpoint's pairs are used
        gen = run([fairseq("fairseq-generate"), bin_dir, "--user-dir", USER_DIR, "--task", "dds_translation",
                   *lang_pairs, "--path", os.path.join(save, "checkpoint_last.pt"), "-s", "tgt", "-t", "hrl",
                   "--gen-subset", "test", "--beam", "2", "--max-len-b", "6", "--cpu",
                   "--required-batch-size-multiple", "1"]).stdout
        assert sum(line.startswith("H-") for line in gen.splitlines()) == 21
        assert re.search(r"S-\d+\s+__hrl__", gen), "the source carries the target-language tag"


def test_two_workers_make_identical_decisions(multiway_bin, tmp_path):
    args = dds_args(multiway_bin, str(tmp_path / "ddp"), 4)[1:]
    out = two_workers(args, str(tmp_path / "logs"))
    diffs = [float(x) for x in re.findall(r"dds_replica_diff=([0-9.e-]+)", out)]
    assert diffs and max(diffs) == 0.0, diffs
    assert [r["update"] for r in records(str(tmp_path / "ddp"))] == [2, 4]



def test_bad_input_is_named(multiway_bin, tmp_path):
    out = fails(dds_args(multiway_bin, str(tmp_path / "a"), 2, "--dds-dev-lang-pair", "xyz-tgt"))
    assert "--dds-dev-lang-pair xyz-tgt is not among --lang-pairs" in out
    out = fails(dds_args(multiway_bin, str(tmp_path / "b"), 2, pairs=PAIRS + ",xyz-tgt"))
    assert "language pair xyz-tgt has no train data" in out
    out = fails(dds_args(multiway_bin, str(tmp_path / "c"), 2, "--dds-update-interval", "0"))
    assert "--dds-update-interval (K) must be a positive integer, got 0" in out
    out = fails(dds_args(multiway_bin, str(tmp_path / "d"), 2, "--dds-scorer-iters", "0"))
    assert "--dds-scorer-iters (E) must be a positive integer, got 0" in out
    out = fails(dds_args(multiway_bin, str(tmp_path / "e"), 2, "--dds-alpha1", "1.5"))
    assert "--dds-alpha1 must be in [0, 1], got 1.5" in out


@pytest.mark.parametrize("reward", ["cosine", "adam"])
def test_fresh_rewards_against_brute_force(multiway_bin, tmp_path, reward):
    """In fairseq's own Trainer: after a real update, each reward is the similarity of the training criterion's
    gradient per token on that language's fresh batch with the one pooled over the whole dev set."""
    from fairseq_metabt.data.language_sampler import seeded_generator
    from fairseq_metabt.modules.dds_rewards import adam_step_scale

    args = dds_args(multiway_bin, str(tmp_path / "bf"), 1, "--dds-grad-mode", "eval", "--dds-reward", reward)[1:]
    task, model, criterion, trainer = in_process_trainer(args)
    itr = trainer.get_train_iterator(epoch=1).next_epoch_itr(shuffle=False)
    trainer.train_step([next(itr)])
    task._model, task._optimizer = model, trainer.optimizer
    task._compute_rewards(7, trainer.optimizer)
    theta = task._theta
    scale = adam_step_scale(trainer.optimizer, theta) if reward == "adam" else torch.ones(1)

    def grad_per_token(batches):
        model.eval()
        total, size = 0.0, 0.0
        for b in batches:
            loss, sample_size, _ = criterion(model, b)
            total = total + loss
            size += float(sample_size)
        return G.flatten(torch.autograd.grad(total / size, theta, allow_unused=True), theta)

    ds_dev, batches = task._dev_batches()
    dev = grad_per_token([ds_dev.collater([ds_dev[int(i)] for i in b]) for b in batches])
    ds = task.train_data
    assert task._batch_tokens > 0
    for lang in range(len(task.langs)):
        slots = ds.language_batch_slots(lang, task._batch_tokens, seeded_generator(2, 7, 0, 37, lang))
        g = grad_per_token([ds.assemble(slots, [lang] * len(slots))[lang]]) * scale
        cos = float(torch.dot(g, dev) / (g.norm() * dev.norm()))
        assert bool(task.reward_valid[lang]) and abs(float(task.rewards[lang]) - cos) < 1e-4, (lang, cos)
    assert len({round(float(r), 4) for r in task.rewards}) == len(task.langs)  # distinct languages, distinct rewards


def test_overflowed_update_never_reaches_the_emas(multiway_bin, tmp_path):
    """fp16/AMP overflow on the EMA path: fairseq still calls optimizer_step under --amp with inf gradients;
    the update is dropped whole, and the retry (same update number, .grad cleared) starts clean shares."""
    args = dds_args(multiway_bin, str(tmp_path / "inf"), 1, "--dds-grad-source", "ema")[1:]
    task, model, criterion, trainer = in_process_trainer(args)
    itr = trainer.get_train_iterator(epoch=1).next_epoch_itr(shuffle=False)
    trainer.train_step([next(itr)])
    before = task.ema.state_dict()
    assert bool(task.ema.seen.any()) and bool(torch.isfinite(before["sums"]).all())
    sample = trainer._prepare_sample(next(itr))[0]
    update = trainer.get_num_updates()
    overflow = next(p for p in task._theta if p.grad is not None)

    # --fp16: the overflow raises before optimizer_step; fairseq clears .grad and retries the same update
    trainer.zero_grad()
    task.train_step(sample, model, criterion, trainer.optimizer, update)
    overflow.grad.view(-1)[0] = float("inf")
    task._shares.capture(0)  # as if the next group's backward pass had produced it
    assert not bool(torch.isfinite(task._shares.shares).all())
    trainer.zero_grad()
    task.train_step(sample, model, criterion, trainer.optimizer, update)
    assert bool(torch.isfinite(task._shares.shares).all()), "the retry starts with clean shares"

    # --amp: optimizer_step is called with the inf gradients
    overflow.grad.view(-1)[0] = float("inf")
    task._shares.capture(0)
    saved = [p.detach().clone() for p in model.parameters()]
    task.optimizer_step(trainer.optimizer, model, update)
    with torch.no_grad():  # AMP's scaler skips a step with inf gradients; plain Adam here does not
        for p, old in zip(model.parameters(), saved):
            p.copy_(old)
    after = task.ema.state_dict()
    assert task.nonfinite_updates == 1
    assert torch.equal(before["sums"], after["sums"]) and torch.equal(before["tokens"], after["tokens"])
    trainer.zero_grad()  # the retry of the same update: fresh shares, finite EMAs
    task.train_step(sample, model, criterion, trainer.optimizer, update)
    assert bool(torch.isfinite(task._shares.shares).all())
    task.optimizer_step(trainer.optimizer, model, update)
    assert bool(torch.isfinite(task.ema.sums).all()) and task.nonfinite_updates == 1
    r, valid = task.ema.rewards(torch.ones(task.ema.sums.shape[1]), "cosine")
    assert bool(torch.isfinite(r).all()) and bool(valid.any())
