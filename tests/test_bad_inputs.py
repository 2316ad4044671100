"""The bad-input catalogue (docs/errors.md): malformed inputs to the data tools, the scripts and all five tasks.

Each case asserts exit status 2, the one line ``fairseq-metabt: error: <what> (<fix>)``, and that every file
that existed before is byte-identical after.  Most cases run the tool's ``main`` (or fairseq-train's ``main``)
in this process; a few run the real CLI to check the exit status and that stderr holds exactly one line from
the plugin and no traceback.
"""
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from typing import Dict, List

import pytest
import torch

from conftest import ROOT, USER_DIR, cli_env, fairseq, run, task_train_args, tiny_train_args
from fairseq_metabt import errors
from fairseq_metabt.errors import UserError
from fairseq_metabt.fileio import RECORD_NAME

PREFIX = errors.PREFIX


# ---- helpers ------------------------------------------------------------------------------------
def snapshot(*dirs: str) -> Dict[str, str]:
    """sha256 of every file under ``dirs`` (missing directories hold nothing)."""
    out = {}
    for top in dirs:
        for d, _, names in os.walk(top):
            for n in names:
                path = os.path.join(d, n)
                if os.path.isfile(path):  # a FIFO or device would block or not be a file to keep
                    with open(path, "rb") as f:
                        out[path] = hashlib.sha256(f.read()).hexdigest()
    return out


def assert_untouched(before: Dict[str, str], *dirs: str) -> None:
    after = snapshot(*dirs)
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert not changed, f"changed or deleted: {changed}"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert lines[0].startswith(PREFIX), lines[0]
    return lines[0]


def main_fails(main, argv: List[str], capsys, *watched: str) -> str:
    """Run a CLI ``main`` in-process: exit status 2, one line on stderr, files under ``watched`` untouched."""
    before = snapshot(*watched)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert_untouched(before, *watched)
    return line


def train_fails(argv: List[str], *watched: str) -> str:
    """fairseq-train's ``main`` on these arguments, in-process: it raises a UserError reported as one line."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq_cli import train

    before = snapshot(*watched)
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    with pytest.raises(UserError) as err:
        train.main(convert_namespace_to_omegaconf(args))
    buf = io.StringIO()
    assert errors.report(err.value, buf) == 2
    assert_untouched(before, *watched)
    return one_line(buf.getvalue())


def cli_fails(cmd: List[str], *watched: str, env: dict = None) -> str:
    """A real CLI: exit status 2, exactly one plugin line on stderr, no traceback."""
    before = snapshot(*watched)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or cli_env(),
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    ours = [line for line in proc.stderr.splitlines() if "fairseq-metabt" in line]
    assert len(ours) == 1 and ours[0].startswith(PREFIX), proc.stderr[-3000:]
    assert_untouched(before, *watched)
    return ours[0]


def train_argv(bin_dir: str, save_dir: str, task: str, *extra: str) -> List[str]:
    """fairseq-train arguments (without the program) for a tiny run of ``task``, with ``extra`` last."""
    return task_train_args(task, bin_dir, save_dir, 2, *extra)


# ---- shared inputs --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def raw_dir(quickstart_bin) -> str:
    return os.path.join(os.path.dirname(quickstart_bin), "raw")


@pytest.fixture
def raw_copy(raw_dir, tmp_path) -> str:
    return shutil.copytree(raw_dir, str(tmp_path / "raw"))


@pytest.fixture(scope="module")
def prepare_main():
    return _script("prepare_data").main


@pytest.fixture(scope="session")
def plain_checkpoint(quickstart_bin, tmp_path_factory) -> str:
    """A plain lrl->tgt transformer checkpoint (1 update of fairseq-train --task translation)."""
    save = str(tmp_path_factory.mktemp("plain"))
    run(tiny_train_args(quickstart_bin, save, 1, "--no-epoch-checkpoints", "--disable-validation"))
    return os.path.join(save, "checkpoint_last.pt")


@pytest.fixture(scope="session")
def truncated_checkpoint(plain_checkpoint, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("truncated") / "checkpoint_cut.pt")
    with open(plain_checkpoint, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return path


# ---- raw corpora (scripts/prepare_data.py) ----------------------------------------------------------
def _bytes_append(path: str, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def test_stray_carriage_return_would_misalign(raw_copy, tmp_path, prepare_main, capsys):
    """A lone \\r inside a line on each side: same \\n count, but sentencepiece/fairseq split it."""
    for side in ("lrl", "tgt"):
        path = os.path.join(raw_copy, f"train.lrl-tgt.{side}")
        lines = open(path, "rb").read().split(b"\n")
        lines[6] = lines[6][:3] + b"\r" + lines[6][3:]
        open(path, "wb").write(b"\n".join(lines))
    line = main_fails(prepare_main, [raw_copy, str(tmp_path / "bin")], capsys, raw_copy)
    assert "train.lrl-tgt.lrl, line 7, column 4: carriage return" in line and "tr -d" in line
    assert not os.path.exists(tmp_path / "bin")


def test_non_utf8_byte_is_located(raw_copy, tmp_path, prepare_main, capsys):
    _bytes_append(os.path.join(raw_copy, "mono.lrl"), b"caf\xe9 latin-1\n")
    line = main_fails(prepare_main, [raw_copy, str(tmp_path / "bin")], capsys, raw_copy)
    n = sum(1 for _ in open(os.path.join(raw_copy, "mono.lrl"), "rb"))
    assert f"mono.lrl, line {n}, column 4: byte 0xe9 is not UTF-8" in line and "iconv" in line
    assert not os.path.exists(tmp_path / "bin")


def test_misaligned_bitext(raw_copy, tmp_path, prepare_main, capsys):
    _bytes_append(os.path.join(raw_copy, "valid.lrl-tgt.tgt"), b"one more\n")
    line = main_fails(prepare_main, [raw_copy, str(tmp_path / "bin")], capsys, raw_copy)
    assert "valid.lrl-tgt.lrl has 43 lines but" in line and "line-aligned" in line


def test_missing_side(raw_copy, tmp_path, prepare_main, capsys):
    os.remove(os.path.join(raw_copy, "test.lrl-tgt.lrl"))
    line = main_fails(prepare_main, [raw_copy, str(tmp_path / "bin")], capsys, raw_copy)
    assert "missing file" in line and "test.lrl-tgt.lrl" in line


def test_empty_file(raw_copy, tmp_path, prepare_main, capsys):
    open(os.path.join(raw_copy, "mono.tgt"), "w").close()
    line = main_fails(prepare_main, [raw_copy, str(tmp_path / "bin")], capsys, raw_copy)
    assert "mono.tgt is empty" in line


def test_manifest_not_json(raw_copy, tmp_path, prepare_main, capsys):
    open(os.path.join(raw_copy, "manifest.json"), "w").write("{not json")
    line = main_fails(prepare_main, [raw_copy, str(tmp_path / "bin")], capsys, raw_copy)
    assert "manifest.json is not valid JSON" in line


def test_vocab_size_too_small(raw_dir, tmp_path, prepare_main, capsys):
    line = main_fails(prepare_main, [raw_dir, str(tmp_path / "bin"), "--vocab-size", "4"], capsys, raw_dir)
    assert "--vocab-size must be at least 8" in line


def test_spm_model_without_dict(raw_dir, quickstart_bin, tmp_path, prepare_main, capsys):
    line = main_fails(prepare_main, [raw_dir, str(tmp_path / "bin"), "--spm-model",
                                     os.path.join(quickstart_bin, "spm.model")], capsys, raw_dir, quickstart_bin)
    assert "--spm-model and --dict go together" in line


def test_corrupt_spm_model(raw_dir, quickstart_bin, tmp_path, prepare_main, capsys):
    bad = tmp_path / "spm.model"
    bad.write_bytes(b"not a model")
    line = main_fails(prepare_main, [raw_dir, str(tmp_path / "bin"), "--spm-model", str(bad), "--dict",
                                     os.path.join(quickstart_bin, "dict.txt")], capsys, raw_dir, str(tmp_path))
    assert "is not a sentencepiece model" in line
    assert not os.path.exists(tmp_path / "bin")


@pytest.fixture
def bin_copy(quickstart_bin, tmp_path) -> str:
    return shutil.copytree(quickstart_bin, str(tmp_path / "bin"))


def test_output_not_empty_without_force(raw_dir, bin_copy, prepare_main, capsys):
    line = main_fails(prepare_main, [raw_dir, bin_copy], capsys, bin_copy)
    assert "Nothing was changed" in line and "--force" in line


def test_force_refuses_inputs_inside_the_output(raw_dir, bin_copy, prepare_main, capsys):
    """The issue's case: --force used to delete BIN/spm.model and BIN/dict.txt passed as --spm-model/--dict."""
    line = main_fails(prepare_main, [raw_dir, bin_copy, "--force", "--spm-model", os.path.join(bin_copy, "spm.model"),
                                     "--dict", os.path.join(bin_copy, "dict.txt")], capsys, bin_copy)
    assert "--spm-model" in line and "lies inside the output directory" in line


def test_force_refuses_raw_dir_inside_the_output(raw_dir, bin_copy, prepare_main, capsys):
    inner = shutil.copytree(raw_dir, os.path.join(bin_copy, "raw"))
    line = main_fails(prepare_main, [inner, bin_copy, "--force"], capsys, bin_copy)
    assert "RAW_DIR" in line and "lies inside the output directory" in line


def test_force_keeps_files_it_did_not_write(raw_dir, tmp_path, prepare_main, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "dict.txt").write_text("my own dictionary")
    line = main_fails(prepare_main, [raw_dir, str(out), "--force"], capsys, str(out))
    assert "did not write" in line and RECORD_NAME in line


def test_force_refuses_to_overwrite_an_unrecorded_output(raw_dir, bin_copy, prepare_main, capsys):
    record = os.path.join(bin_copy, RECORD_NAME)
    data = json.load(open(record))
    data["files"].remove("dict.txt")  # e.g. the user put their own dict.txt there
    json.dump(data, open(record, "w"))
    line = main_fails(prepare_main, [raw_dir, bin_copy, "--force"], capsys, bin_copy)
    assert "dict.txt exists but was not written by prepare_data.py" in line


# ---- the synthetic generator -------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic_main():
    from fairseq_metabt.synthetic.__main__ import main

    return main


def test_synthetic_force_keeps_the_users_corpus(tmp_path, synthetic_main, capsys):
    """The issue's case: --force into a folder without a manifest deleted the user's own train.* and mono.*."""
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "train.xx-yy.xx").write_text("my data\n")
    (out / "mono.xx").write_text("my mono\n")
    line = main_fails(synthetic_main, ["--out", str(out), "--force", "--sizes", "train=20"], capsys, str(out))
    assert "did not write" in line


def test_synthetic_existing_corpus_without_force(tmp_path, synthetic_main, capsys):
    out = str(tmp_path / "corpus")
    sizes = "train=20,valid=5,test=5,mono_tgt=5,mono_lrl=5"
    assert synthetic_main(["--out", out, "--sizes", sizes]) == 0
    line = main_fails(synthetic_main, ["--out", out, "--sizes", sizes, "--seed", "2"], capsys, out)
    assert "Nothing was changed" in line and "--force" in line
    # --force replaces what the generator wrote, and only that
    (tmp_path / "corpus" / "notes.txt").write_text("mine")
    assert synthetic_main(["--out", out, "--sizes", sizes, "--seed", "2", "--force"]) == 0
    assert (tmp_path / "corpus" / "notes.txt").read_text() == "mine"


def test_synthetic_unknown_preset(tmp_path, synthetic_main, capsys):
    line = main_fails(synthetic_main, ["--out", str(tmp_path / "c"), "--preset", "nope"], capsys)
    assert "unknown preset 'nope'" in line and not os.path.exists(tmp_path / "c")


def test_synthetic_bad_sizes(tmp_path, synthetic_main, capsys):
    line = main_fails(synthetic_main, ["--out", str(tmp_path / "c"), "--sizes", "train=many"], capsys)
    assert "not an integer" in line and not os.path.exists(tmp_path / "c")


# ---- checkpoints given to the scripts ---------------------------------------------------------------
def test_export_truncated_checkpoint(truncated_checkpoint, tmp_path, capsys):
    """The issue's case: a truncated checkpoint gave `OSError: [Errno 22] Invalid argument`."""
    line = main_fails(_script("export_direction").main, [truncated_checkpoint, str(tmp_path / "out.pt"),
                                                         "--direction", "forward"],
                      capsys, os.path.dirname(truncated_checkpoint))
    assert "cannot be read as a checkpoint" in line and "truncated" in line
    assert not os.path.exists(tmp_path / "out.pt")


def test_export_plain_checkpoint(plain_checkpoint, tmp_path, capsys):
    line = main_fails(_script("export_direction").main, [plain_checkpoint, str(tmp_path / "out.pt"),
                                                         "--direction", "backward"],
                      capsys, os.path.dirname(plain_checkpoint))
    assert "is not a dual_transformer checkpoint" in line


def test_export_existing_output(plain_checkpoint, tmp_path, capsys):
    out = tmp_path / "out.pt"
    out.write_bytes(b"keep me")
    line = main_fails(_script("export_direction").main, [plain_checkpoint, str(out), "--direction", "forward"],
                      capsys, str(tmp_path))
    assert "exists" in line and "--force" in line


def test_evaluate_truncated_checkpoint(quickstart_bin, truncated_checkpoint, tmp_path, capsys):
    line = main_fails(_script("evaluate").main, [quickstart_bin, "--path", truncated_checkpoint, "-s", "lrl",
                                                 "-t", "tgt", "--json", str(tmp_path / "r.json")],
                      capsys, quickstart_bin, os.path.dirname(truncated_checkpoint))
    assert "--path" in line and "cannot be read as a checkpoint" in line
    assert not os.path.exists(tmp_path / "r.json")


def test_prune_non_latent_checkpoint(plain_checkpoint, tmp_path, capsys):
    line = main_fails(_script("prune_latent_depth").main, [plain_checkpoint, "--out-dir", str(tmp_path / "p")],
                      capsys, os.path.dirname(plain_checkpoint))
    assert "is not a latent_depth_transformer checkpoint" in line


# ---- fairseq-train: configuration errors of all five tasks ----------------------------------------------
def test_latent_depth_tau_not_positive_real_cli(quickstart_bin, tmp_path):
    """fairseq-train itself: exit status 2, exactly one line from the plugin on stderr, no traceback."""
    line = cli_fails([fairseq("fairseq-train"), *train_argv(quickstart_bin, str(tmp_path / "s"),
                                                            "latent_depth_translation", "--encoder-latent-layers",
                                                            "--latent-tau", "0")], quickstart_bin)
    assert "--latent-tau must be > 0" in line


def test_latent_depth_k_above_layers(quickstart_bin, tmp_path):
    line = train_fails(train_argv(quickstart_bin, str(tmp_path / "s"), "latent_depth_translation",
                                  "--decoder-latent-layers", "--decoder-target-layers", "9"), quickstart_bin)
    assert "--decoder-target-layers K=9 must be between 1 and the number of decoder layers" in line


def test_dds_unknown_language_real_cli(quickstart_bin, tmp_path):
    line = cli_fails([fairseq("fairseq-train"), *train_argv(quickstart_bin, str(tmp_path / "s"), "dds_translation",
                                                            "--dds-dev-lang-pair", "xx-tgt")], quickstart_bin)
    assert "--dds-dev-lang-pair xx-tgt is not among --lang-pairs" in line


def test_dds_pair_listed_twice(quickstart_bin, tmp_path):
    argv = train_argv(quickstart_bin, str(tmp_path / "s"), "dds_translation")
    argv[argv.index("lrl-tgt")] = "lrl-tgt,lrl-tgt"
    assert "--lang-pairs lists a pair twice" in train_fails(argv, quickstart_bin)


def test_metabt_adam_betas(quickstart_bin, tmp_path):
    """The issue's case: "0.9;0.98" said "could not convert string to float"."""
    line = train_fails(train_argv(quickstart_bin, str(tmp_path / "s"), "meta_backtranslation",
                                  "--backward-adam-betas", "0.9;0.98"), quickstart_bin)
    assert "--backward-adam-betas '0.9;0.98' is not two numbers" in line and '"(0.9, 0.98)"' in line


def test_metabt_baseline_decay(quickstart_bin, tmp_path):
    line = train_fails(train_argv(quickstart_bin, str(tmp_path / "s"), "meta_backtranslation",
                                  "--meta-baseline-decay", "1.5"), quickstart_bin)
    assert "--meta-baseline-decay must be in [0, 1)" in line


def test_metabt_backward_init_with_a_forward_model_real_cli(quickstart_bin, plain_checkpoint, tmp_path):
    """The issue's case: --backward-init accepted a forward (lrl->tgt) checkpoint."""
    line = cli_fails([fairseq("fairseq-train"), *train_argv(quickstart_bin, str(tmp_path / "s"),
                                                            "meta_backtranslation", "--backward-init",
                                                            plain_checkpoint)],
                     quickstart_bin, os.path.dirname(plain_checkpoint))
    assert "translates lrl->tgt, but the backward model of this run translates tgt->lrl" in line
    assert "--direction backward" in line


@pytest.fixture(scope="session")
def other_corpus_checkpoint(plain_checkpoint, quickstart_bin, tmp_path_factory) -> str:
    """The plain checkpoint as if trained on another corpus whose dictionary has the same size."""
    base = tmp_path_factory.mktemp("other")
    symbols = open(os.path.join(quickstart_bin, "dict.txt"), encoding="utf-8").read().splitlines()
    symbols[10], symbols[11] = symbols[11], symbols[10]  # same size, two pieces swapped: other token ids
    other_bin = base / "bin"
    other_bin.mkdir()
    for name in ("dict.txt", "dict.lrl.txt", "dict.tgt.txt"):
        (other_bin / name).write_text("\n".join(symbols) + "\n", encoding="utf-8")
    state = torch.load(plain_checkpoint, map_location="cpu", weights_only=True)
    state["cfg"]["task"]["data"] = str(other_bin)
    path = str(base / "checkpoint_other.pt")
    torch.save(state, path)
    return path


def test_metabt_forward_init_from_another_dictionary(quickstart_bin, other_corpus_checkpoint, tmp_path):
    """The issue's case: a checkpoint of another corpus with a dictionary of the same size ran to the end."""
    line = train_fails(train_argv(quickstart_bin, str(tmp_path / "s"), "meta_backtranslation",
                                  "--forward-init", other_corpus_checkpoint), quickstart_bin)
    assert "was trained with another dictionary than this run's" in line and "--spm-model" in line


def test_metabt_forward_init_truncated(quickstart_bin, truncated_checkpoint, tmp_path):
    line = train_fails(train_argv(quickstart_bin, str(tmp_path / "s"), "meta_backtranslation",
                                  "--forward-init", truncated_checkpoint), quickstart_bin)
    assert "--forward-init" in line and "cannot be read as a checkpoint" in line


@pytest.fixture(scope="session")
def backward_checkpoint(quickstart_bin, tmp_path_factory) -> str:
    """A plain tgt->lrl transformer checkpoint on the same prepared data."""
    save = str(tmp_path_factory.mktemp("backward"))
    run(tiny_train_args(quickstart_bin, save, 1, "--no-epoch-checkpoints", "--disable-validation",
                        "-s", "tgt", "-t", "lrl"))
    return os.path.join(save, "checkpoint_last.pt")


@pytest.mark.parametrize("task", ["meta_backtranslation", "wake_sleep_translation"])
def test_matching_init_checkpoints_are_loaded(task, quickstart_bin, plain_checkpoint, backward_checkpoint, tmp_path):
    """The control case: the right direction and dictionary pass every check and are loaded."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = train_argv(quickstart_bin, str(tmp_path / "s"), task, "--forward-init", plain_checkpoint,
                      "--backward-init", backward_checkpoint)
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    model = tasks.setup_task(cfg.task).build_model(cfg.model)
    for direction, path in (("forward", plain_checkpoint), ("backward", backward_checkpoint)):
        expected = torch.load(path, map_location="cpu", weights_only=True)["model"]
        loaded = model.direction_state_dict(direction)
        assert loaded.keys() == expected.keys()
        assert all(torch.equal(loaded[k], expected[k]) for k in expected), direction


def test_dual_checkpoint_gives_each_direction_its_languages(quickstart_bin, caplog):
    """A dual (lrl->tgt) checkpoint: its backward model may initialise a backward (tgt->lrl) model, and it may
    not initialise the forward model of a tgt->lrl run; a checkpoint without languages is only warned about."""
    from fairseq.data import Dictionary

    from fairseq_metabt.checkpoints import check_init_checkpoint

    d = Dictionary.load(os.path.join(quickstart_bin, "dict.txt"))
    dual = {"cfg": {"task": {"source_lang": "lrl", "target_lang": "tgt", "data": quickstart_bin}},
            "model": {"encoder.w": torch.zeros(1), "backward_model.encoder.w": torch.zeros(1)}}
    check_init_checkpoint(dual, "dual.pt", "--forward-init", "forward", ("lrl", "tgt"), d)
    check_init_checkpoint(dual, "dual.pt", "--backward-init", "backward", ("tgt", "lrl"), d)
    with pytest.raises(UserError, match="translates lrl->tgt, but the forward model of this run translates tgt->lrl"):
        check_init_checkpoint(dual, "dual.pt", "--forward-init", "forward", ("tgt", "lrl"), d)
    anonymous = {"cfg": {"task": {"data": quickstart_bin}}, "model": {"encoder.w": torch.zeros(1)}}
    check_init_checkpoint(anonymous, "old.pt", "--forward-init", "forward", ("lrl", "tgt"), d)
    assert "does not record its languages" in caplog.text


def test_interrupted_write_keeps_the_old_file(tmp_path):
    """Atomic writes: a failure while writing leaves the previous file whole and no temporary file behind."""
    from fairseq_metabt import fileio

    path = str(tmp_path / "prepare.json")
    fileio.write_json(path, {"ok": 1})
    with pytest.raises(TypeError):
        fileio.write_json(path, {"ok": 2, "bad": object()})  # json.dump fails half-way through
    assert json.load(open(path)) == {"ok": 1} and os.listdir(tmp_path) == ["prepare.json"]


def test_wake_sleep_zero_sleep_updates(quickstart_bin, tmp_path):
    line = train_fails(train_argv(quickstart_bin, str(tmp_path / "s"), "wake_sleep_translation",
                                  "--sleep-updates", "0"), quickstart_bin)
    assert "--sleep-updates must be >= 1" in line


def test_wake_sleep_missing_init(quickstart_bin, tmp_path):
    line = train_fails(train_argv(quickstart_bin, str(tmp_path / "s"), "wake_sleep_translation",
                                  "--forward-init", str(tmp_path / "nope.pt")), quickstart_bin)
    assert "--forward-init" in line and "nope.pt does not exist" in line


def test_wake_sleep_exported_init_with_another_dictionary(quickstart_bin, plain_checkpoint, tmp_path):
    """An exported checkpoint carries its dictionary's fingerprint: checked even without its data directory."""
    state = torch.load(plain_checkpoint, map_location="cpu", weights_only=True)
    state["cfg"]["task"]["data"] = str(tmp_path / "gone")
    state["extra_state"] = {"dictionary_fingerprint": "0123456789abcdef"}
    path = str(tmp_path / "exported.pt")
    torch.save(state, path)
    line = train_fails(train_argv(quickstart_bin, str(tmp_path / "s"), "wake_sleep_translation",
                                  "--forward-init", path), quickstart_bin, str(tmp_path))
    assert "another dictionary" in line and "0123456789abcdef" in line


def test_reconstruction_tau_not_positive(quickstart_bin, tmp_path):
    line = train_fails(train_argv(quickstart_bin, str(tmp_path / "s"), "bidirectional_translation",
                                  "--share-all-embeddings", "--criterion", "stgs_reconstruction",
                                  "--stgs-tau", "0"), quickstart_bin)
    assert "--stgs-tau must be > 0" in line


def test_hidden_reconstruction_negative_weight(quickstart_bin, tmp_path):
    argv = [quickstart_bin, "--user-dir", USER_DIR, "--task", "bidirectional_translation", "-s", "lrl", "-t", "tgt",
            "--arch", "transformer_hidden_reconstruction_tiny", "--share-all-embeddings",
            "--criterion", "hidden_reconstruction", "--encoder-reconstruction-weight", "-1", "--optimizer", "adam",
            "--lr", "1e-3", "--max-tokens", "600", "--save-dir", str(tmp_path / "s"), "--cpu", "--num-workers", "0"]
    assert "--encoder-reconstruction-weight must be >= 0" in train_fails(argv, quickstart_bin)


# ---- the error channel itself ----------------------------------------------------------------------
def test_user_error_is_one_line_with_status_2():
    code = "import fairseq_metabt; from fairseq_metabt.errors import UserError; raise UserError('bad value', 'do this')"
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=cli_env(), cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [f"{PREFIX}bad value (do this)"]


def test_real_bugs_keep_their_traceback_and_debug_shows_user_errors(monkeypatch):
    """The hook hands everything but a UserError (and, with FAIRSEQ_METABT_DEBUG=1, that too) to the default."""
    seen = []
    monkeypatch.setattr(errors, "_previous_hook", lambda t, e, tb: seen.append(e))
    bug = KeyError("a bug")
    errors._excepthook(KeyError, bug, None)
    monkeypatch.setenv(errors.DEBUG_VARIABLE, "1")
    user = UserError("bad value", "do this")
    errors._excepthook(UserError, user, None)
    assert seen == [bug, user]
    with pytest.raises(UserError):  # the CLI wrapper lets it through too, for its traceback
        errors.cli(lambda: (_ for _ in ()).throw(user))()


# ---- issue 29: data safety, second round ------------------------------------------------------------
@pytest.fixture
def evaluate_main():
    return _script("evaluate").main


def test_evaluate_hyps_onto_the_reference(quickstart_bin, raw_dir, plain_checkpoint, evaluate_main, capsys):
    """The issue's case: --hyps REF overwrote the reference (the next evaluation scored 100.00)."""
    ref = os.path.join(raw_dir, "test.lrl-tgt.tgt")
    argv = [quickstart_bin, "--path", plain_checkpoint, "-s", "lrl", "-t", "tgt", "--hyps", ref]
    line = main_fails(evaluate_main, argv, capsys, raw_dir, quickstart_bin, os.path.dirname(plain_checkpoint))
    assert f"--hyps {ref} is the reference" in line and "an input of this command" in line


def test_evaluate_output_onto_the_checkpoint(quickstart_bin, plain_checkpoint, evaluate_main, capsys):
    line = main_fails(evaluate_main, [quickstart_bin, "--path", plain_checkpoint, "-s", "lrl", "-t", "tgt",
                                      "--output", plain_checkpoint], capsys, os.path.dirname(plain_checkpoint))
    assert "--output" in line and "is the checkpoint --path" in line


def test_evaluate_json_onto_a_prepared_file(quickstart_bin, plain_checkpoint, evaluate_main, capsys):
    line = main_fails(evaluate_main, [quickstart_bin, "--path", plain_checkpoint, "-s", "lrl", "-t", "tgt",
                                      "--json", os.path.join(quickstart_bin, "dict.txt")], capsys, quickstart_bin)
    assert "is the prepared file" in line


@pytest.mark.parametrize("kind", ["device", "directory", "read-only"])
def test_evaluate_json_not_a_regular_writable_file(kind, quickstart_bin, plain_checkpoint, evaluate_main, capsys,
                                                   tmp_path):
    target = {"device": "/dev/null", "directory": str(tmp_path)}.get(kind, str(tmp_path / "old.json"))
    if kind == "read-only":
        (tmp_path / "old.json").write_text("{}")
        os.chmod(target, 0o444)
    line = main_fails(evaluate_main, [quickstart_bin, "--path", plain_checkpoint, "-s", "lrl", "-t", "tgt",
                                      "--json", target], capsys, str(tmp_path), quickstart_bin)
    assert {"device": "is a device node", "directory": "is a directory", "read-only": "is read-only"}[kind] in line


def test_evaluate_swapped_direction(quickstart_bin, plain_checkpoint, evaluate_main, capsys):
    """The issue's case: -s/-t swapped scored 0.00 with exit 0."""
    line = main_fails(evaluate_main, [quickstart_bin, "--path", plain_checkpoint, "-s", "tgt", "-t", "lrl"],
                      capsys, quickstart_bin)
    assert "translates lrl->tgt, not tgt->lrl" in line


def test_evaluate_checkpoint_of_another_dictionary(quickstart_bin, other_corpus_checkpoint, evaluate_main, capsys):
    """The issue's case: a checkpoint trained on another dictionary of the same size scored 4.66 with exit 0."""
    line = main_fails(evaluate_main, [quickstart_bin, "--path", other_corpus_checkpoint, "-s", "lrl", "-t", "tgt"],
                      capsys, quickstart_bin)
    assert "was trained with another dictionary than" in line and "--spm-model" in line


def test_evaluate_reference_changed_after_prepare(quickstart_bin, raw_copy, plain_checkpoint, evaluate_main, capsys,
                                                  tmp_path):
    """The issue's case: a raw test file edited after prepare (one line shifted) scored 3.72 with exit 0."""
    bin_copy = shutil.copytree(quickstart_bin, str(tmp_path / "bin"))
    info = json.load(open(os.path.join(bin_copy, "prepare.json")))
    info["raw_dir"] = raw_copy
    json.dump(info, open(os.path.join(bin_copy, "prepare.json"), "w"))
    ref = os.path.join(raw_copy, "test.lrl-tgt.tgt")
    lines = open(ref, encoding="utf-8").read().splitlines()
    open(ref, "w", encoding="utf-8").write("\n".join(lines[1:] + lines[:1]) + "\n")
    line = main_fails(evaluate_main, [bin_copy, "--path", plain_checkpoint, "-s", "lrl", "-t", "tgt"], capsys,
                      raw_copy, bin_copy)
    assert f"the reference {ref} has changed since" in line and "sha256" in line


def test_evaluate_torch_file_that_is_not_a_checkpoint(quickstart_bin, evaluate_main, capsys, tmp_path):
    path = str(tmp_path / "weights.pt")
    torch.save({"a": torch.zeros(2)}, path)
    line = main_fails(evaluate_main, [quickstart_bin, "--path", path, "-s", "lrl", "-t", "tgt"], capsys,
                      str(tmp_path))
    assert "is not a fairseq checkpoint" in line


def test_evaluate_beam_zero(quickstart_bin, plain_checkpoint, evaluate_main, capsys):
    line = main_fails(evaluate_main, [quickstart_bin, "--path", plain_checkpoint, "-s", "lrl", "-t", "tgt",
                                      "--beam", "0"], capsys, quickstart_bin)
    assert "--beam must be >= 1, got 0" in line


def test_prepare_reuse_keys_on_content(raw_copy, bin_copy, prepare_main, capsys):
    """A recipe's prepared corpus (prepare_data.py --reuse): reused for the same content even from another path,
    refused once a raw file changed (it used to be reused whatever --raw-dir said)."""
    assert prepare_main([raw_copy, bin_copy, "--vocab-size", "600", "--reuse"]) == 0
    line = main_fails(prepare_main, [raw_copy, bin_copy, "--vocab-size", "500", "--reuse"], capsys, bin_copy)
    assert "with other options (vocab_size 600 -> 500)" in line
    _bytes_append(os.path.join(raw_copy, "mono.tgt"), b"one more sentence\n")
    line = main_fails(prepare_main, [raw_copy, bin_copy, "--vocab-size", "600", "--reuse"], capsys, bin_copy, raw_copy)
    assert "whose content differs from" in line and "1 files differ: mono.tgt" in line and "--work-dir" in line


def test_recipe_prepare_refuses_another_raw_dir(raw_copy, bin_copy, tmp_path):
    """recipe_prepare itself: a different --raw-dir with other content and the same --work-dir is refused."""
    _bytes_append(os.path.join(raw_copy, "train.lrl-tgt.lrl"), b"a\n")
    _bytes_append(os.path.join(raw_copy, "train.lrl-tgt.tgt"), b"b\n")
    script = (f"set -euo pipefail; SRC=lrl; TGT=tgt; RELATED=''; SEEDS=1; WORK_DIR={tmp_path}/w; RECIPE_USAGE=u; "
              f"source {ROOT}/scripts/recipe_lib.sh; recipe_parse; recipe_prepare {raw_copy} {bin_copy} "
              "--vocab-size 600")
    before = snapshot(bin_copy, raw_copy)
    proc = subprocess.run(["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=cli_env(), timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert [l for l in proc.stderr.splitlines() if l.startswith(PREFIX)] and "whose content differs" in proc.stderr
    assert_untouched(before, bin_copy, raw_copy)


@pytest.mark.parametrize("task,extra,expected", [
    ("meta_backtranslation", ["--pseudo-weight", "nan"], "--pseudo-weight must be a finite number, got nan"),
    ("meta_backtranslation", ["--bt-sampling-topk", "100000"], "--bt-sampling-topk must be -1 (all) or 1 .. "),
    ("meta_backtranslation", ["--bt-max-len-a", "-1"], "--bt-max-len-a must be >= 0, got -1.0"),
    ("meta_backtranslation", ["--backward-lr", "inf"], "--backward-lr must be a finite number, got inf"),
    ("dds_translation", ["--dds-scorer-lr", "inf"], "--dds-scorer-lr must be a finite number, got inf"),
    ("latent_depth_translation", ["--latent-tau", "nan"], "--latent-tau must be a finite number, got nan"),
])
def test_numeric_options_at_start_up(task, extra, expected, quickstart_bin, tmp_path):
    """The issue's cases: nan/inf/out-of-range values trained silently wrong or crashed at the first update."""
    line = train_fails(train_argv(quickstart_bin, str(tmp_path / "s"), task, *extra), quickstart_bin)
    assert expected in line, line
    assert not os.path.exists(tmp_path / "s" / "checkpoint_last.pt")


def test_latent_depth_language_without_data(quickstart_bin, tmp_path):
    argv = train_argv(quickstart_bin, str(tmp_path / "s"), "latent_depth_translation")
    argv[argv.index("lrl-tgt")] = "lrl-tgt,xx-tgt"
    line = train_fails(argv, quickstart_bin)
    assert "--lang-pairs lrl-tgt,xx-tgt names xx, but" in line and "no dict.xx.txt" in line
