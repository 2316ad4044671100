"""examples/wake_sleep/run.sh (Alg. 1 offline): iteration 1 is back-translation, resume, bad input."""
import json
import os
import shutil

import pytest
import torch
from fairseq import checkpoint_utils, options, tasks
from fairseq.data import Dictionary, data_utils
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.sequence_generator import SequenceGenerator

from conftest import ROOT, run

SCRIPT = os.path.join(ROOT, "examples", "wake_sleep", "run.sh")
KNOBS = {"ARCH": "transformer_lowres_tiny", "MLE_UPDATES": "4", "ITER_UPDATES": "4", "VALID_EVERY": "2",
         "PATIENCE": "1", "WARMUP": "1", "WARMUP_ITER": "1",
         "BEAM": "1", "EVAL_SUBSETS": "", "MAX_TOKENS": "1024"}


def recipe(raw, out, *extra, check=True):
    env = " ".join(f"{k}='{v}'" for k, v in KNOBS.items())
    return run(["bash", "-c", f'{env} bash "$0" "$@"', SCRIPT, "--raw-dir", raw, "--out", out, *extra], check=check)


@pytest.fixture(scope="module")
def offline(quickstart_bin, tmp_path_factory):
    raw = os.path.join(os.path.dirname(quickstart_bin), "raw")
    out = str(tmp_path_factory.mktemp("offline"))
    shutil.copytree(quickstart_bin, os.path.join(out, "bin"))  # already prepared from raw: the recipe reuses it
    log = recipe(raw, out, "--iterations", "1").stdout
    return raw, out, log


def _rows(bin_prefix, d):
    ds = data_utils.load_indexed_dataset(bin_prefix, d, "mmap")
    return [ds[i].tolist() for i in range(len(ds))]


def test_iteration_one_is_back_translation(offline):
    """The forward model of iteration 1 trains on B + (q_phi0(y) greedy, y) for every y in mono.tgt."""
    _, out, log = offline
    run_dir = os.path.join(out, "seed1")
    wake = os.path.join(run_dir, "iter1", "wake-data")
    d = Dictionary.load(os.path.join(out, "bin", "dict.txt"))
    mono = _rows(os.path.join(out, "bin", "mono.tgt"), d)
    targets = _rows(os.path.join(wake, "train1.lrl-tgt.tgt"), d)
    sources = _rows(os.path.join(wake, "train1.lrl-tgt.lrl"), d)
    assert targets == mono  # nothing dropped on this corpus: the whole target monotext, in order
    # the sources are fairseq's greedy decoding by the iteration-0 (MLE) backward model, batched as
    # fairseq-generate batches the monotext (the length limit a*len+b uses each batch's longest source)
    parser = options.get_generation_parser()
    args = options.parse_args_and_arch(parser, [os.path.join(wake, "gen"), "-s", "tgt", "-t", "lrl", "--cpu"])
    task = tasks.setup_task(convert_namespace_to_omegaconf(args).task)
    task.load_dataset("test")
    models, _ = checkpoint_utils.load_model_ensemble([os.path.join(run_dir, "iter0", "backward", "checkpoint_best.pt")])
    model = models[0].eval()
    gen = SequenceGenerator([model], d, beam_size=1, max_len_a=1.2, max_len_b=10)
    itr = task.get_batch_iterator(dataset=task.dataset("test"), max_tokens=8192, required_batch_size_multiple=1,
                                  seed=1).next_epoch_itr(shuffle=False)
    expected = {}
    for batch in itr:
        with torch.no_grad():
            hyps = gen.generate([model], batch)
        expected.update({int(i): h[0]["tokens"].tolist() for i, h in zip(batch["id"], hyps)})
    assert [expected[i] for i in range(len(mono))] == sources
    # the sleep phase used the *new* forward model on the source monotext, targets = mono.lrl
    assert _rows(os.path.join(run_dir, "iter1", "sleep-data", "train1.lrl-tgt.lrl"), d) == \
        _rows(os.path.join(out, "bin", "mono.lrl"), d)
    table = open(os.path.join(run_dir, "results.tsv")).read().splitlines()
    assert table[0].startswith("iteration\tdirection") and len(table) == 5
    assert [r.split("\t")[:2] for r in table[1:]] == [["0", "forward"], ["0", "backward"], ["1", "forward"],
                                                      ["1", "backward"]]
    assert "iteration 1 wake pseudo bitext" in log


def test_rerun_resumes_without_retraining(offline):
    raw, out, _ = offline
    before = os.path.getmtime(os.path.join(out, "seed1", "iter1", "forward", "checkpoint_best.pt"))
    log = recipe(raw, out, "--iterations", "1").stdout
    assert "training " not in log
    assert os.path.getmtime(os.path.join(out, "seed1", "iter1", "forward", "checkpoint_best.pt")) == before


def test_bad_input_is_named(offline, tmp_path):
    raw, out, _ = offline
    proc = recipe(raw, str(tmp_path / "a"), "--iterations", "0", check=False)
    assert proc.returncode != 0 and "--iterations must be an integer >= 1" in proc.stdout
    broken = tmp_path / "raw"
    shutil.copytree(raw, broken)
    os.remove(broken / "mono.lrl")
    proc = recipe(str(broken), str(tmp_path / "b"), "--iterations", "1", check=False)
    assert proc.returncode != 0 and "source monotext M_S" in proc.stdout and "mono.lrl is missing" in proc.stdout


def _upsample_flag(stage_dir):
    command = json.load(open(os.path.join(stage_dir, "convergence.json")))["command"].split()
    return int(command[command.index("--upsample-primary") + 1])


def test_real_pairs_are_repeated_to_match_the_pseudo_pairs(offline, tmp_path):
    """UPSAMPLE=auto: a stage on B ∪ pseudo repeats B round(|pseudo| / |B|) times (at least once); B-only stages and
    UPSAMPLE=1 keep plain concatenation. The tiny corpus's target monotext, tripled, gives 600 pseudo pairs for 400
    real ones (factor 2, rounded from 1.5); its 200 source lines give the sleep phase factor 1 (0.5, at least 1)."""
    raw, _, _ = offline
    big = tmp_path / "raw"
    shutil.copytree(raw, big)
    lines = open(big / "mono.tgt", encoding="utf-8").readlines()
    open(big / "mono.tgt", "w", encoding="utf-8").writelines(lines * 3)
    real = sum(1 for _ in open(big / "train.lrl-tgt.lrl", encoding="utf-8"))
    out = str(tmp_path / "out")
    recipe(str(big), out, "--iterations", "1")
    run_dir = os.path.join(out, "seed1")
    wake = json.load(open(os.path.join(run_dir, "iter1", "wake-data", "pseudo.json")))["pairs"]
    sleep = json.load(open(os.path.join(run_dir, "iter1", "sleep-data", "pseudo.json")))["pairs"]
    assert (real, wake, sleep) == (400, 600, 200)
    assert _upsample_flag(os.path.join(run_dir, "iter1", "forward")) == 2
    assert _upsample_flag(os.path.join(run_dir, "iter1", "backward")) == 1
    assert _upsample_flag(os.path.join(run_dir, "iter0", "forward")) == 1
    # an explicit factor is used as given
    KNOBS["UPSAMPLE"] = "3"
    try:
        recipe(str(big), str(tmp_path / "out3"), "--iterations", "1")
    finally:
        del KNOBS["UPSAMPLE"]
    assert _upsample_flag(os.path.join(tmp_path, "out3", "seed1", "iter1", "forward")) == 3
    assert _upsample_flag(os.path.join(tmp_path, "out3", "seed1", "iter1", "backward")) == 3


def test_bad_upsample_is_named(offline, tmp_path):
    raw, _, _ = offline
    KNOBS["UPSAMPLE"] = "0"
    try:
        proc = recipe(raw, str(tmp_path / "a"), "--iterations", "1", check=False)
    finally:
        del KNOBS["UPSAMPLE"]
    assert proc.returncode == 2 and "UPSAMPLE must be 'auto' or a positive integer" in proc.stdout
    assert not os.path.exists(tmp_path / "a" / "seed1")  # refused before anything trained
