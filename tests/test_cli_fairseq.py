"""Real fairseq CLIs on real checkpoints through --user-dir, weights_only kept on."""
import json
import os
import sys

import pytest
import torch

from conftest import ROOT, USER_DIR, fairseq, run, tiny_train_args

EVAL_BLEU = ["--eval-bleu", "--eval-bleu-args", '{"beam": 1, "max_len_a": 1.2, "max_len_b": 10}',
             "--eval-bleu-remove-bpe", "sentencepiece", "--best-checkpoint-metric", "bleu",
             "--maximize-best-checkpoint-metric"]


@pytest.fixture(scope="module")
def trained(quickstart_bin, tmp_path_factory):
    """A tiny model trained 20 updates with --eval-bleu (numpy arrays in extra_state)."""
    save = str(tmp_path_factory.mktemp("ckpt"))
    out = run(tiny_train_args(quickstart_bin, save, 20, *EVAL_BLEU)).stdout
    assert "num_updates 20" in out
    return save


def test_checkpoint_holds_numpy_metrics_and_loads_with_weights_only(trained):
    from fairseq import checkpoint_utils

    path = os.path.join(trained, "checkpoint_last.pt")
    with pytest.raises(Exception):
        # without the plugin's allow-list the same file is refused: the allow-list is what makes it load
        torch.serialization.clear_safe_globals()
        torch.load(path)
    import importlib

    import fairseq_metabt.compat as compat

    importlib.reload(compat).apply()
    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    assert state["extra_state"]["train_iterator"]["epoch"] >= 1
    assert _contains_ndarray(state["extra_state"]), "--eval-bleu should store numpy BLEU statistics"


def _contains_ndarray(obj) -> bool:
    import numpy as np

    if isinstance(obj, np.ndarray):
        return True
    if isinstance(obj, dict):
        return any(_contains_ndarray(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_contains_ndarray(v) for v in obj)
    return False


def test_resume_continues_like_an_uninterrupted_run(quickstart_bin, tmp_path):
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    run(tiny_train_args(quickstart_bin, straight, 16))
    run(tiny_train_args(quickstart_bin, split, 7))  # stops mid-epoch
    out = run(tiny_train_args(quickstart_bin, split, 16)).stdout
    assert "Loaded checkpoint" in out and "@ 7 updates" in out
    a = torch.load(os.path.join(straight, "checkpoint_last.pt"))["model"]
    b = torch.load(os.path.join(split, "checkpoint_last.pt"))["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_fairseq_generate_validate_interactive(trained, quickstart_bin):
    ckpt = os.path.join(trained, "checkpoint_best.pt")
    common = ["--user-dir", USER_DIR, "--path", ckpt, "-s", "lrl", "-t", "tgt", "--cpu"]
    gen = run([fairseq("fairseq-generate"), quickstart_bin, *common, "--gen-subset", "test", "--beam", "2",
               "--max-len-b", "10", "--batch-size", "16", "--required-batch-size-multiple", "1"]).stdout
    n_hyp = sum(1 for line in gen.splitlines() if line.startswith("H-"))
    assert n_hyp == 45
    val = run([fairseq("fairseq-validate"), quickstart_bin, *common, "--valid-subset", "valid",
               "--task", "translation", "--max-tokens", "1024"]).stdout
    assert "valid on 'valid' subset" in val and "loss" in val
    inter = run([fairseq("fairseq-interactive"), quickstart_bin, *common, "--beam", "2", "--max-len-b", "5"],
                input="▁a ▁b\n").stdout
    assert any(line.startswith("H-0") for line in inter.splitlines())


def test_evaluate_script_scores_with_sacrebleu(trained, quickstart_bin, tmp_path):
    out_json = tmp_path / "r.json"
    out = run([sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"), quickstart_bin,
               "--path", os.path.join(trained, "checkpoint_best.pt"), "-s", "lrl", "-t", "tgt",
               "--beam", "2", "--json", str(out_json), "--", "--max-len-b", "10"]).stdout
    assert "BLEU = " in out and "nrefs:1" in out and "chrF = " in out
    r = json.loads(out_json.read_text())
    assert r["n"] == 45 and 0.0 <= r["bleu"] <= 100.0 and r["chrf"] > 0.0


def test_evaluate_reports_missing_checkpoint(quickstart_bin, tmp_path):
    proc = run([sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"), quickstart_bin,
                "--path", str(tmp_path / "nope.pt"), "-s", "lrl", "-t", "tgt"], check=False)
    assert proc.returncode != 0 and "does not exist" in proc.stdout
