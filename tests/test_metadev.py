"""Issue 28: MetaBT's reward reads a meta-dev split that no system selects on, and bt_mle_dev trains on it.

* scripts/split_meta_dev.py cuts the dev set by line parity; prepare_data.py binarises both halves; the
  binarised ``valid`` (selection) and ``metadev`` subsets are disjoint and together are the dev set.
* the quickstart: every system validates, stops and selects its checkpoint on ``valid`` only; only metabt's
  reward reads ``metadev``, and bt_mle_dev trains on it.
* the task: ``--extra-bitext-subsets metadev`` puts the meta-dev pairs into theta's batches and psi's MLE.
* the meta term with non-sampling generation is refused in one line.
* metabt_dev (on request): metabt with the meta-dev pairs also in both models' bitext, against bt_mle_dev.
* metabt_sent (on request): metabt with one reward per pseudo-sentence, against metabt and bt_mle.
"""
import json
import os
import re
import shlex
import shutil
import sys

import pytest

from conftest import ROOT, TINY_SIZES, USER_DIR, fairseq, in_process_trainer, make_corpus, run

SPLIT = os.path.join(ROOT, "scripts", "split_meta_dev.py")


def _lines(path):
    with open(path, encoding="utf-8", newline="\n") as f:
        return [line.rstrip("\n") for line in f]


def _binarised(bin_dir, subset, pair, lang):
    """The token rows of a binarised subset, as tuples."""
    from fairseq.data import Dictionary, data_utils

    d = Dictionary.load(os.path.join(bin_dir, f"dict.{lang}.txt"))
    ds = data_utils.load_indexed_dataset(os.path.join(bin_dir, f"{subset}.{pair}.{lang}"), d)
    return [tuple(ds[i].tolist()) for i in range(len(ds))]


def _encoded(bin_dir, lines, lang):
    """The rows prepare_data.py binarises for raw ``lines`` (its sentencepiece model and dictionary)."""
    import sentencepiece as spm
    from fairseq.data import Dictionary

    sp = spm.SentencePieceProcessor(model_file=os.path.join(bin_dir, "spm.model"))
    d = Dictionary.load(os.path.join(bin_dir, f"dict.{lang}.txt"))
    return [tuple(d.encode_line(" ".join(sp.encode(x, out_type=str)), add_if_not_exist=False).tolist())
            for x in lines]


TINY = ["--seeds", "1", "--patience", "1", "--validate-every", "4", "--max-update", "8"]
TINY_ENV = {"ARCH": "transformer_lowres_tiny", "WARMUP": "1", "FT_WARMUP": "1", "MAX_TOKENS": "1024",
            "BEAM": "1", "EVAL_SUBSETS": "test", "JOBS": "3"}


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The quickstart, default systems, on a tiny corpus for a few updates: (raw, work dir, its output)."""
    base = tmp_path_factory.mktemp("split")
    raw, work = make_corpus(str(base / "raw")), str(base / "work")
    env = " ".join(f"{k}='{v}'" for k, v in TINY_ENV.items())
    out = run(["bash", "-c", f'{env} bash "$0" "$@"', os.path.join(ROOT, "scripts", "quickstart.sh"),
               "--raw-dir", raw, "--work-dir", work, *TINY], timeout=900).stdout
    return raw, work, out


@pytest.fixture(scope="module")
def split_bin(quickstart):
    """The quickstart's split corpus and its preparation: (raw, split raw, bin)."""
    raw, work, out = quickstart
    assert "meta-dev split: dev set valid.lrl-tgt (43 pairs) split by line parity" in out
    return raw, os.path.join(work, "raw_split"), os.path.join(work, "bin")


def test_selection_and_meta_dev_are_disjoint_halves_of_the_dev_set(split_bin):
    raw, split_raw, bin_dir = split_bin
    n_dev = int(dict(x.split("=") for x in TINY_SIZES.split(","))["valid"])
    for lang in ("lrl", "tgt"):
        dev = _lines(os.path.join(raw, f"valid.lrl-tgt.{lang}"))
        assert len(dev) == n_dev
        # raw: odd lines (1, 3, ...) select, even lines (2, 4, ...) are the meta-dev set
        assert _lines(os.path.join(split_raw, f"valid.lrl-tgt.{lang}")) == dev[0::2]
        assert _lines(os.path.join(split_raw, f"metadev.lrl-tgt.{lang}")) == dev[1::2]
        # binarised: the two subsets are exactly the encoded halves, and together the whole dev set
        valid, meta = _binarised(bin_dir, "valid", "lrl-tgt", lang), _binarised(bin_dir, "metadev", "lrl-tgt", lang)
        assert valid == _encoded(bin_dir, dev[0::2], lang) and meta == _encoded(bin_dir, dev[1::2], lang)
        assert sorted(valid + meta) == sorted(_encoded(bin_dir, dev, lang))
        assert len(valid) + len(meta) == n_dev and abs(len(valid) - len(meta)) <= 1
    pairs = lambda sub: set(zip(*(_binarised(bin_dir, sub, "lrl-tgt", lang) for lang in ("lrl", "tgt"))))  # noqa
    assert not pairs("valid") & pairs("metadev"), "a dev pair is in both the selection and the meta-dev set"
    # the rest of the corpus is the user's, untouched (links), and the split is recorded
    assert os.path.realpath(os.path.join(split_raw, "test.lrl-tgt.tgt")) == os.path.join(raw, "test.lrl-tgt.tgt")
    with open(os.path.join(bin_dir, "prepare.json"), encoding="utf-8") as f:
        info = json.load(f)
    rec = info["meta_dev_split"]
    assert rec["rule"] == "parity" and rec["selection_pairs"] + rec["meta_dev_pairs"] == n_dev
    assert {"metadev.lrl-tgt.lrl", "metadev.lrl-tgt.tgt"} <= set(info["raw_files"])
    assert "metadev" in info["splits"]["lrl-tgt"]
    # the same inputs give the same files: the prepared directory is reused, not refused
    run([sys.executable, SPLIT, raw, split_raw, "--src", "lrl", "--tgt", "tgt"])
    out = run([sys.executable, os.path.join(ROOT, "scripts", "prepare_data.py"), split_raw, bin_dir, "--reuse",
               "--vocab-size", str(info["options"]["vocab_size"])]).stdout
    assert "reused" in out


def test_meta_dev_file_is_refused_when_it_shares_pairs_with_the_dev_set(split_bin, tmp_path):
    raw = split_bin[0]
    proc = run([sys.executable, SPLIT, raw, str(tmp_path / "out"), "--src", "lrl", "--tgt", "tgt",
                "--meta-dev", os.path.join(raw, "valid.lrl-tgt")], check=False)
    assert proc.returncode == 2
    assert proc.stdout.strip().splitlines() == [
        f"fairseq-metabt: error: --meta-dev {raw}/valid.lrl-tgt: 43 of its 43 pairs also occur in the dev or test "
        "set of lrl-tgt, which MetaBT must not learn from (remove them from the meta-dev files)"]


def test_bt_mle_dev_trains_both_models_on_the_meta_dev_pairs(split_bin):
    _, _, bin_dir = split_bin
    argv = [bin_dir, "--user-dir", USER_DIR, "--task", "meta_backtranslation", "-s", "lrl", "-t", "tgt",
            "--arch", "dual_transformer_tiny", "--optimizer", "adam", "--lr", "1e-3",
            "--criterion", "label_smoothed_cross_entropy", "--max-tokens", "600", "--cpu", "--seed", "1",
            "--meta-weight", "0", "--extra-bitext-subsets", "metadev"]
    task, model, criterion, trainer = in_process_trainer(argv)
    itr = trainer.get_train_iterator(epoch=1).next_epoch_itr(shuffle=False)
    n_train = len(_binarised(bin_dir, "train", "lrl-tgt", "lrl"))
    meta = list(zip(*(_binarised(bin_dir, "metadev", "lrl-tgt", lang) for lang in ("lrl", "tgt"))))
    assert len(task.datasets["train"].bitext) == n_train + len(meta)
    pad = task.src_dict.pad()

    def rows(t):
        return [tuple(x for x in r.tolist() if x != pad) for r in t]

    theta, psi_pairs = {}, set()
    for sample in itr:  # one epoch: what theta trains on and what psi's MLE trains on (reversed)
        b = sample["bitext"]
        theta.update(zip(b["id"].tolist(), zip(rows(b["net_input"]["src_tokens"]), rows(b["target"]))))
        rev = task.psi_reversed_batch(b)
        psi_pairs |= set(zip(rows(rev["target"]), rows(rev["net_input"]["src_tokens"])))
    meta_seen = {pair for i, pair in theta.items() if i >= n_train}
    # fairseq's batch_by_size with --required-batch-size-multiple 8 leaves out a tail (< 8) of the longest
    # pairs, training and meta-dev pairs alike; every other meta-dev pair is trained on
    assert meta_seen <= set(meta) and len(meta_seen) > len(meta) - 8, "theta does not train on the meta-dev pairs"
    assert meta_seen <= psi_pairs, "the backward model's MLE never sees the meta-dev pairs"
    assert len(theta) > n_train - 8  # and the training bitext is still there


def test_meta_reward_with_beam_or_greedy_generation_is_refused(split_bin, tmp_path):
    _, _, bin_dir = split_bin
    for mode in ("beam", "greedy"):
        proc = run([fairseq("fairseq-train"), bin_dir, "--user-dir", USER_DIR, "--task", "meta_backtranslation",
                    "-s", "lrl", "-t", "tgt", "--arch", "dual_transformer_tiny", "--optimizer", "adam", "--lr", "1e-3",
                    "--max-tokens", "600", "--cpu", "--save-dir", str(tmp_path / mode), "--bt-generation", mode,
                    "--meta-dev-subset", "metadev"], check=False)
        assert proc.returncode == 2, proc.stdout[-2000:]
        errors = [x for x in proc.stdout.splitlines() if x.startswith("fairseq-metabt: error:")]
        assert errors == [f"fairseq-metabt: error: --bt-generation {mode} with the meta reward on: REINFORCE needs "
                          "pseudo-sources sampled from the backward model (on-policy) (use --bt-generation sample, "
                          "or --meta-weight 0 / --freeze-backward for the BT controls)"], proc.stdout[-2000:]
        assert not os.path.exists(tmp_path / mode / "checkpoint_last.pt")


def test_quickstart_selects_every_system_on_valid_and_only_metabt_learns_from_metadev(quickstart):
    raw, work, out = quickstart
    with open(os.path.join(work, "results", "summary.json"), encoding="utf-8") as f:
        s = json.load(f)
    # the default systems: MetaBT against the control that sees the same labelled data
    assert set(s["systems"]) == {"baseline", "bt_mle_dev", "metabt"}, s["systems"].keys()
    assert s["control"] == "baseline"
    assert "split by line parity" in s["corpus"]
    assert "- metabt vs bt_mle_dev (paired by seed)" in out  # the table names the control of each Δ
    bin_dir = os.path.join(work, "bin")
    for system in ("baseline", "backward", "bt_mle_dev", "metabt"):
        save = os.path.join(work, "seed1", system)
        with open(os.path.join(save, "convergence.json"), encoding="utf-8") as f:
            command = json.load(f)["command"]
        assert "--valid-subset" not in command and bin_dir in command  # fairseq's default: valid
        with open(os.path.join(save, "train.log"), encoding="utf-8") as f:
            log = f.read()
        validated = set(re.findall(r"valid on '([^']+)' subset", log))
        assert validated == {"valid"}, (system, validated)  # early stopping, lr plateau, checkpoint choice
        assert ("--meta-dev-subset metadev" in command) == (system == "metabt"), (system, command)
        assert ("--extra-bitext-subsets metadev" in command) == (system == "bt_mle_dev"), (system, command)
        assert ("metadev" in shlex.split(command)) == (system in ("metabt", "bt_mle_dev")), (system, command)
    with open(os.path.join(work, "seed1", "bt_mle_dev", "train.log"), encoding="utf-8") as f:
        assert re.search(r"pairs of train \+ \d+ pairs of --extra-bitext-subsets metadev", f.read())


def test_metabt_variants_on_request_train_what_they_say_and_are_compared_with_their_controls(quickstart, tmp_path):
    """metabt_dev (on request) = metabt + the meta-dev pairs in both models' bitext, the data bt_mle_dev has: the
    table puts it against bt_mle_dev (the meta reward alone) and metabt. metabt_sent = metabt with per-sentence
    rewards, against metabt and bt_mle. The systems that converged before are reused."""
    raw, work, _ = quickstart
    copy = str(tmp_path / "work")
    shutil.copytree(work, copy)
    env = " ".join(f"{k}='{v}'" for k, v in TINY_ENV.items())
    out = run(["bash", "-c", f'{env} bash "$0" "$@"', os.path.join(ROOT, "scripts", "quickstart.sh"),
               "--raw-dir", raw, "--work-dir", copy, *TINY,
               "--systems", "baseline bt_mle bt_mle_dev metabt metabt_dev metabt_sent"],
              timeout=900).stdout
    for pair in ("metabt_dev vs bt_mle_dev", "metabt_dev vs metabt", "metabt_sent vs metabt",
                 "metabt_sent vs bt_mle"):
        assert f"- {pair} (paired by seed)" in out, pair
    for system in ("baseline", "bt_mle_dev", "metabt"):  # converged before: reused, not retrained
        assert f"reusing {os.path.join(copy, 'seed1', system)}" in out, system
    with open(os.path.join(copy, "results", "summary.json"), encoding="utf-8") as f:
        assert {"metabt_dev", "metabt_sent"} <= set(json.load(f)["systems"])
    save = os.path.join(copy, "seed1", "metabt_dev")
    with open(os.path.join(save, "convergence.json"), encoding="utf-8") as f:
        command = shlex.split(json.load(f)["command"])
    for flag in ("--meta-dev-subset", "--extra-bitext-subsets"):
        assert command[command.index(flag) + 1] == "metadev", (flag, command)
    assert "--meta-weight" not in command and "--freeze-backward" not in command  # the meta reward is on
    with open(os.path.join(save, "train.log"), encoding="utf-8") as f:
        log = f.read()
    assert re.search(r"pairs of train \+ \d+ pairs of --extra-bitext-subsets metadev", log)
    assert set(re.findall(r"valid on '([^']+)' subset", log)) == {"valid"}

    # metabt_sent: metabt's data and reward read, one reward per pseudo-sentence (its log has their spread)
    save = os.path.join(copy, "seed1", "metabt_sent")
    with open(os.path.join(save, "convergence.json"), encoding="utf-8") as f:
        command = shlex.split(json.load(f)["command"])
    assert command[command.index("--meta-dev-subset") + 1] == "metadev"
    assert command[command.index("--meta-reward-granularity") + 1] == "sentence"
    assert "--extra-bitext-subsets" not in command and "--meta-weight" not in command
    with open(os.path.join(save, "train.log"), encoding="utf-8") as f:
        log = f.read()
    assert re.search(r"reward_std[ =]\d", log) and set(re.findall(r"valid on '([^']+)' subset", log)) == {"valid"}
