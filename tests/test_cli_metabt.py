"""meta_backtranslation through the real fairseq CLIs: train, resume, generate, export, 2 workers, bad input."""
import os
import re
import shutil
import sys

import pytest
import torch

from conftest import ROOT, USER_DIR, assert_same_weights, fails, fairseq, run, two_workers


def metabt_args(bin_dir, save_dir, max_update, *extra):
    return [fairseq("fairseq-train"), bin_dir, "--user-dir", USER_DIR, "--task", "meta_backtranslation",
            "-s", "lrl", "-t", "tgt", "--arch", "dual_transformer_tiny", "--optimizer", "adam", "--lr", "1e-3",
            "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4", "--criterion", "label_smoothed_cross_entropy",
            "--label-smoothing", "0.1", "--max-tokens", "600", "--max-update", str(max_update),
            "--save-dir", save_dir, "--cpu", "--seed", "2", "--log-format", "simple", "--log-interval", "1",
            "--num-workers", "0", "--no-progress-bar", "--meta-dev-max-tokens", "300", "--bt-max-len-b", "8",
            "--bt-max-len-a", "0", *extra]


@pytest.fixture(scope="module")
def trained(quickstart_bin, tmp_path_factory):
    save = str(tmp_path_factory.mktemp("metabt"))
    out = run(metabt_args(quickstart_bin, save, 6)).stdout
    return save, out


def test_training_logs_meta_metrics_and_saves_both_models(trained):
    save, out = trained
    last = [line for line in out.splitlines() if "train_inner" in line][-1]
    for key in ("reward=", "baseline=", "similarity=", "meta_loss=", "bwd_mle_loss=", "fwd_bitext_loss=",
                "fwd_pseudo_loss=", "pseudo_len="):
        assert key in last, (key, last)
    state = torch.load(os.path.join(save, "checkpoint_last.pt"))
    assert any(k.startswith("backward_model.") for k in state["model"])
    task_state = state["extra_state"]["MetaBacktranslationTask"]
    assert task_state["meta_steps"] == 6 and task_state["baseline"]["initialized"]
    assert task_state["backward_optimizer"]["state"], "the backward model's Adam state is checkpointed"


def test_resume_continues_as_if_uninterrupted(trained, quickstart_bin, tmp_path):
    save, _ = trained
    split = str(tmp_path / "split")
    run(metabt_args(quickstart_bin, split, 3))
    out = run(metabt_args(quickstart_bin, split, 6)).stdout
    assert "@ 3 updates" in out
    a = torch.load(os.path.join(save, "checkpoint_last.pt"))
    b = torch.load(os.path.join(split, "checkpoint_last.pt"))
    assert_same_weights(a, b)
    ta, tb = a["extra_state"]["MetaBacktranslationTask"], b["extra_state"]["MetaBacktranslationTask"]
    assert abs(ta["baseline"]["value"] - tb["baseline"]["value"]) < 1e-6
    assert ta["meta_steps"] == tb["meta_steps"] == 6


def test_generate_and_exported_directions(trained, quickstart_bin, tmp_path):
    save, _ = trained
    ckpt = os.path.join(save, "checkpoint_last.pt")
    gen = ["--gen-subset", "test", "--beam", "2", "--max-len-b", "6", "--cpu", "--required-batch-size-multiple", "1"]
    out = run([fairseq("fairseq-generate"), quickstart_bin, "--user-dir", USER_DIR, "--path", ckpt,
               "--task", "meta_backtranslation", "-s", "lrl", "-t", "tgt", *gen]).stdout
    hyps_dual = sorted(line for line in out.splitlines() if line.startswith("H-"))
    assert len(hyps_dual) == 45
    export = [sys.executable, os.path.join(ROOT, "scripts", "export_direction.py"), ckpt]
    run(export + [str(tmp_path / "fwd.pt"), "--direction", "forward"])
    run(export + [str(tmp_path / "bwd.pt"), "--direction", "backward"])
    # plain fairseq, no plugin: the exported forward model translates exactly like the dual model
    out = run([fairseq("fairseq-generate"), quickstart_bin, "--path", str(tmp_path / "fwd.pt"),
               "-s", "lrl", "-t", "tgt", *gen]).stdout
    assert sorted(line for line in out.splitlines() if line.startswith("H-")) == hyps_dual
    out = run([fairseq("fairseq-generate"), quickstart_bin, "--path", str(tmp_path / "bwd.pt"),
               "-s", "tgt", "-t", "lrl", *gen]).stdout
    assert sum(line.startswith("H-") for line in out.splitlines()) == 45
    refused = run(export + [str(tmp_path / "fwd.pt"), "--direction", "forward"], check=False)
    assert refused.returncode != 0 and "--force" in refused.stdout


def test_sentence_rewards_by_double_backward_train(quickstart_bin, tmp_path):
    out = run(metabt_args(quickstart_bin, str(tmp_path / "s"), 2, "--meta-reward-granularity", "sentence",
                          "--meta-sentence-method", "double_backward", "--meta-reward-precondition")).stdout
    last = [line for line in out.splitlines() if "train_inner" in line][-1]
    assert "reward_std=" in last and "reward=" in last


def test_frozen_backward_model_is_online_backtranslation(quickstart_bin, tmp_path):
    save = str(tmp_path / "bt")
    out = run(metabt_args(quickstart_bin, save, 2, "--freeze-backward")).stdout
    last = [line for line in out.splitlines() if "train_inner" in line][-1]
    assert "fwd_pseudo_loss=" in last and " reward=" not in last and "bwd_mle_loss" not in last


def test_two_workers_keep_both_models_identical(quickstart_bin, tmp_path):
    args = metabt_args(quickstart_bin, str(tmp_path / "ddp"), 4)[1:]
    out = two_workers(args, str(tmp_path / "logs"))
    diffs = [float(x) for x in re.findall(r"replica_diff=([0-9.e-]+)", out)]
    assert diffs and max(diffs) == 0.0, diffs
    assert os.path.exists(tmp_path / "ddp" / "checkpoint_last.pt")



def test_bad_input_is_named(quickstart_bin, tmp_path):
    broken = tmp_path / "bin"
    shutil.copytree(quickstart_bin, broken)
    for ext in ("bin", "idx"):
        os.remove(broken / f"mono.tgt.{ext}")
    out = fails(metabt_args(str(broken), str(tmp_path / "a"), 2))
    assert "needs target monolingual data" in out and "mono.tgt" in out

    out = fails(metabt_args(quickstart_bin, str(tmp_path / "b"), 2, "--meta-dev-subset", "nodev"))
    assert "--meta-dev-subset nodev" in out

    with open(broken / "dict.lrl.txt", "a") as f:
        f.write("extra_symbol 1\n")
    shutil.copy(os.path.join(quickstart_bin, "mono.tgt.bin"), broken / "mono.tgt.bin")
    shutil.copy(os.path.join(quickstart_bin, "mono.tgt.idx"), broken / "mono.tgt.idx")
    out = fails(metabt_args(str(broken), str(tmp_path / "c"), 2))
    assert "one joint dictionary" in out

    out = fails(metabt_args(quickstart_bin, str(tmp_path / "d"), 2, "--meta-baseline-decay", "1.5"))
    assert "--meta-baseline-decay must be in [0, 1)" in out


def test_multilingual_setting_with_related_pair(tmp_path):
    from conftest import make_corpus, prepare

    raw = make_corpus(str(tmp_path / "raw"), "multilingual", sizes="train=80,hrl=160,unra=30,unrb=30,nsy=30,"
                      "valid=21,test=21,mono_tgt=40,mono_lrl=40")
    bin_dir = prepare(raw, str(tmp_path / "bin"))
    out = run(metabt_args(bin_dir, str(tmp_path / "m"), 2, "--related-lang-pairs", "hrl-tgt",
                          "--mono-sources", "both")).stdout
    assert re.search(r"loaded 160 examples from: .*train\.hrl-tgt\.hrl", out)
    assert "reward=" in [line for line in out.splitlines() if "train_inner" in line][-1]
    bad = run(metabt_args(bin_dir, str(tmp_path / "n"), 2, "--mono-sources", "related"), check=False)
    assert bad.returncode != 0 and "pass --related-lang-pairs too" in bad.stdout
    bad = run(metabt_args(bin_dir, str(tmp_path / "o"), 2, "--related-lang-pairs", "hrl-lrl"), check=False)
    assert bad.returncode != 0 and "--related-lang-pairs 'hrl-lrl'" in bad.stdout
