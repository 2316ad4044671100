"""Data safety, second round (issue 29): no tool writes over its inputs or through a device node, no silently
wrong corpus, no unchecked numeric option.

Fast cases: hand-written corpora of a few lines, the tools' ``main`` in this process, the recipes' shell
functions sourced in bash.  Each case asserts the one line ``fairseq-metabt: error: ...``, exit status 2 and
that no input changed (checksums before and after); warnings are asserted by their text.  The cases that need
a checkpoint or a prepared corpus are in ``tests/test_bad_inputs.py``.
"""
import errno
import io
import json
import logging
import math
import os
import subprocess

import pytest

from conftest import ROOT, cli_env
from test_bad_inputs import _script, main_fails, one_line, snapshot
from fairseq_metabt import errors, fileio, validate
from fairseq_metabt.data import raw_layout
from fairseq_metabt.errors import UserError

PREFIX = errors.PREFIX
pytestmark = pytest.mark.fast  # every case here runs in well under a second (hand-written corpora, in-process)


# ---- helpers (the catalogue's own: exit status 2, one line, inputs untouched) ------------------------------
@pytest.fixture(scope="module")
def prepare_main():
    return _script("prepare_data").main


def user_error(fn, *args, **kwargs) -> str:
    """``fn`` raises a UserError; its one-line report (exit status 2)."""
    with pytest.raises(UserError) as err:
        fn(*args, **kwargs)
    buf = io.StringIO()
    assert errors.report(err.value, buf) == 2
    return one_line(buf.getvalue())


def tiny_corpus(root, pair=("aa", "bb"), n: int = 12) -> str:
    """A corpus in the raw layout written by hand: train/valid/test of one pair, distinct lines everywhere."""
    os.makedirs(root, exist_ok=True)
    s, t = pair
    for split, offset in (("train", 0), ("valid", 100), ("test", 200)):
        for lang in pair:
            lines = [f"{lang} {split} line {offset + i} with words" for i in range(n)]
            with open(os.path.join(root, f"{split}.{s}-{t}.{lang}"), "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
    return str(root)


# ---- fileio.check_output: the one gate of every writer --------------------------------------------------
def test_symlink_is_written_through(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    fileio.write_json(str(link), {"bleu": 1.0})
    assert os.path.islink(link) and json.loads(target.read_text()) == {"bleu": 1.0}


@pytest.mark.parametrize("kind", ["device", "stdout", "fifo", "directory", "read-only", "input",
                                  "parent-is-a-file"])
def test_refused_outputs(kind, tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("mine\n")
    inputs = [("the reference", str(keep))]
    if kind == "device":
        path, expected = "/dev/null", "is a device node, not a regular file"
    elif kind == "stdout":  # whatever stdout is (a terminal, a pipe, a file), it is not replaced by name
        path = "/dev/stdout"
        expected = "lies in /dev, which holds devices" if os.path.isfile(path) else "not a regular file"
    elif kind == "fifo":
        path = str(tmp_path / "fifo")
        os.mkfifo(path)
        expected = "is a FIFO, not a regular file"
    elif kind == "directory":
        path, expected = str(tmp_path), "is a directory"
    elif kind == "read-only":
        path, expected = str(keep), "is read-only"
        os.chmod(keep, 0o444)
        inputs = []
    elif kind == "input":
        link = tmp_path / "alias.txt"
        link.symlink_to(keep)  # the same file under another name
        path, expected = str(link), "is the reference"
    else:
        path, expected = str(keep / "out.json"), "is not a directory"
    before = snapshot(str(tmp_path))
    line = user_error(fileio.write_json, path, {"x": 1}, "--json", inputs)
    assert expected in line and "--json" in line, line
    assert snapshot(str(tmp_path)) == before and os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
    os.chmod(keep, 0o644)


def test_must_be_new(tmp_path):
    out = tmp_path / "out.pt"
    out.write_bytes(b"keep")
    line = user_error(fileio.check_output, str(out), "OUT", must_be_new=True)
    assert "OUT" in line and "exists" in line and "--force" in line and out.read_bytes() == b"keep"


def test_full_disk_names_the_disk(tmp_path, monkeypatch):
    """ENOSPC while writing: the message names the disk (not a flag) and the old file stays whole."""
    path = tmp_path / "result.json"
    path.write_text('{"old": 1}\n')

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio.os, "fsync", full)
    line = user_error(fileio.write_json, str(path), {"new": 1}, "--json")
    assert f"no space left on the disk holding {tmp_path}" in line and "free space" in line
    assert json.loads(path.read_text()) == {"old": 1} and os.listdir(tmp_path) == ["result.json"]


def test_full_disk_while_sentencepiece_trains(tmp_path, monkeypatch, prepare_main, capsys):
    """The issue's case: a full disk during sentencepiece training was reported as a bad --spm-model."""
    import sentencepiece as spm

    raw = tiny_corpus(tmp_path / "raw")

    def full(**kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), kwargs["model_prefix"] + ".model")

    monkeypatch.setattr(spm.SentencePieceTrainer, "train", full)
    line = main_fails(prepare_main, [raw, str(tmp_path / "bin"), "--vocab-size", "40"], capsys, raw)
    assert "no space left on the disk holding" in line and "--spm-model" not in line

    def failed(**kwargs):  # sentencepiece's own error for a failed write carries no errno: the free space decides
        raise RuntimeError("Internal: could not write the model")

    monkeypatch.setattr(spm.SentencePieceTrainer, "train", failed)
    monkeypatch.setattr("shutil.disk_usage", lambda p: type("U", (), {"free": 0})())
    line = main_fails(prepare_main, [raw, str(tmp_path / "bin"), "--vocab-size", "40", "--force"], capsys, raw)
    assert "no space left on the disk holding" in line and "--spm-model" not in line


def test_output_directory_that_is_a_file(tmp_path, prepare_main, capsys):
    raw = tiny_corpus(tmp_path / "raw")
    out = tmp_path / "bin"
    out.write_text("mine")
    line = main_fails(prepare_main, [raw, str(out)], capsys, str(tmp_path))
    assert "exists and is not a directory" in line


def test_prune_out_dir_that_is_a_file(tmp_path, capsys):
    """scripts/prune_latent_depth.py --out-dir FILE: the one-line error before any work, the file kept."""
    out = tmp_path / "exports"
    out.write_text("mine")
    ckpt = tmp_path / "checkpoint_best.pt"
    ckpt.write_bytes(b"not looked at")
    line = main_fails(_script("prune_latent_depth").main, [str(ckpt), "--out-dir", str(out)], capsys, str(tmp_path))
    assert "--out-dir" in line and "exists and is not a directory" in line


@pytest.mark.parametrize("argv,expected", [(["--workers", "0"], "--workers must be >= 1, got 0"),
                                           (["--seed", "-1"], "--seed must be >= 0, got -1")])
def test_prepare_numeric_options(argv, expected, tmp_path, prepare_main, capsys):
    raw = tiny_corpus(tmp_path / "raw")
    line = main_fails(prepare_main, [raw, str(tmp_path / "bin"), *argv], capsys, raw)
    assert expected in line and not os.path.exists(tmp_path / "bin")


# ---- the raw-layout validator ---------------------------------------------------------------------------
def _rewrite(path: str, edit) -> None:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(edit(data))


@pytest.mark.parametrize("case,expected", [
    ("bom", "train.aa-bb.aa, line 1, column 1: the file starts with a UTF-8 byte-order mark"),
    ("bom-inside", "mono.aa, line 3, column 1: byte-order mark (U+FEFF) inside the file"),
    ("nul", "train.aa-bb.bb, line 2, column 4: NUL byte (0x00)"),
    ("blank", "valid.aa-bb.aa, line 3: the line is empty or holds only whitespace"),
    ("both-directions", "the pair aa-bb is stored in both directions"),
])
def test_raw_text_refused(case, expected, tmp_path, prepare_main, capsys):
    raw = tiny_corpus(tmp_path / "raw")
    if case == "bom":
        _rewrite(os.path.join(raw, "train.aa-bb.aa"), lambda d: b"\xef\xbb\xbf" + d)
    elif case == "bom-inside":  # two files concatenated with cat, the second with its BOM
        with open(os.path.join(raw, "mono.aa"), "wb") as f:
            f.write("first file\nstill the first\n\ufeffsecond file\n".encode("utf-8"))
    elif case == "nul":
        _rewrite(os.path.join(raw, "train.aa-bb.bb"), lambda d: d.replace(b"bb train line 1 ", b"bb \x00train line 1 "))
    elif case == "blank":
        _rewrite(os.path.join(raw, "valid.aa-bb.aa"),
                 lambda d: d.replace(b"aa valid line 102 with words", b" \t "))
    else:
        tiny_corpus(tmp_path / "raw", pair=("bb", "aa"))
    line = main_fails(prepare_main, [raw, str(tmp_path / "bin")], capsys, raw)
    assert expected in line, line
    assert not os.path.exists(tmp_path / "bin")


@pytest.mark.parametrize("manifest,expected", [
    ([], "must be a JSON object with a \"languages\" list, but it holds a list"),
    (None, "must be a JSON object with a \"languages\" list, but it holds null"),
    ({"languages": 5}, "\"languages\" must be a list of language codes or of {\"code\": ...} entries, but it holds "
                       "the number 5"),
    ({"languages": [{"code": "aa"}, {"name": "B"}]}, "entry 2 of \"languages\" has no \"code\""),
])
def test_malformed_manifest(manifest, expected, tmp_path, prepare_main, capsys):
    raw = tiny_corpus(tmp_path / "raw")
    with open(os.path.join(raw, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    line = main_fails(prepare_main, [raw, str(tmp_path / "bin")], capsys, raw)
    assert expected in line and "the manifest is optional" in line, line


def test_manifest_without_languages_is_ignored_with_a_warning(tmp_path, caplog):
    raw = tiny_corpus(tmp_path / "raw")
    with open(os.path.join(raw, "manifest.json"), "w") as f:
        json.dump({"author": "me", "license": "CC-BY"}, f)
    with caplog.at_level(logging.WARNING):
        layout = raw_layout.scan_raw_dir(raw)
    assert layout.manifest is None and layout.languages == ["aa", "bb"]
    assert "has no \"languages\" key" in caplog.text and "ignored" in caplog.text


def test_held_out_overlap_warnings(tmp_path, caplog):
    raw = tiny_corpus(tmp_path / "raw")
    for lang in ("aa", "bb"):  # 3 test pairs copied from train, 2 valid pairs copied into test
        train = open(os.path.join(raw, f"train.aa-bb.{lang}")).read().splitlines()
        valid = open(os.path.join(raw, f"valid.aa-bb.{lang}")).read().splitlines()
        test = open(os.path.join(raw, f"test.aa-bb.{lang}")).read().splitlines()
        test[:5] = train[:3] + valid[:2]
        open(os.path.join(raw, f"test.aa-bb.{lang}"), "w").write("\n".join(test) + "\n")
    with caplog.at_level(logging.WARNING):
        layout = raw_layout.scan_raw_dir(raw)
    for n, other in ((3, "train"), (2, "valid")):
        expected = f"{n} of the 12 sentence pairs of test.aa-bb also occur in {other}.aa-bb"
        assert any(w.startswith(expected) for w in layout.warnings), layout.warnings
    assert "3 of the 12 sentence pairs of test.aa-bb" in caplog.text


def test_test_set_identical_to_dev_set(tmp_path):
    raw = tiny_corpus(tmp_path / "raw")
    for lang in ("aa", "bb"):
        with open(os.path.join(raw, f"valid.aa-bb.{lang}"), "rb") as f:
            data = f.read()
        with open(os.path.join(raw, f"test.aa-bb.{lang}"), "wb") as f:
            f.write(data)
    assert any("test.aa-bb is identical to valid.aa-bb" in w for w in raw_layout.scan_raw_dir(raw).warnings)


# ---- numeric options: one table, checked at start-up ----------------------------------------------------
@pytest.mark.parametrize("option,value,expected", [
    ("pseudo_weight", math.nan, "--pseudo-weight must be a finite number, got nan"),
    ("latent_tau", math.nan, "--latent-tau must be a finite number, got nan"),
    ("bt_sampling_topk", 100000, "--bt-sampling-topk must be -1 (all) or 1 .. 608 (the vocabulary size)"),
    ("bt_max_len_a", -1.0, "--bt-max-len-a must be >= 0, got -1.0"),
    ("backward_lr", math.inf, "--backward-lr must be a finite number, got inf"),
    ("dds_scorer_lr", math.inf, "--dds-scorer-lr must be a finite number, got inf"),
    ("meta_baseline_decay", 1.0, "--meta-baseline-decay must be in [0, 1), got 1.0"),
])
def test_numeric_option_table(option, value, expected):
    line = user_error(validate.config, {option: value}, vocab=608)
    assert expected in line, line


def test_every_numeric_plugin_option_has_a_rule():
    """Each float/int option of the plugin's config dataclasses is in validate.RULES (new options too)."""
    import dataclasses

    import fairseq_metabt  # noqa: F401  (registers every component)
    from fairseq_metabt.criterions import (dds_weighted_cross_entropy, hidden_reconstruction, latent_layers_loss,
                                           stgs_reconstruction)
    from fairseq_metabt.lr_schedulers import plateau_updates
    from fairseq_metabt.tasks import dds_translation, meta_backtranslation, wake_sleep_translation

    missing = []
    for module in (meta_backtranslation, wake_sleep_translation, dds_translation, dds_weighted_cross_entropy,
                   hidden_reconstruction, latent_layers_loss, stgs_reconstruction, plateau_updates):
        for cls in vars(module).values():
            if not (isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == module.__name__):
                continue
            own = set(f.name for f in dataclasses.fields(cls))
            for base in cls.__mro__[1:]:
                if dataclasses.is_dataclass(base) and not base.__module__.startswith("fairseq_metabt"):
                    own -= set(f.name for f in dataclasses.fields(base))
            for f in dataclasses.fields(cls):
                interpolated = str(f.default).startswith("${")  # II("common.…"): fairseq's own option
                if f.name in own and f.type in (int, float, "int", "float") and f.name not in validate.RULES \
                        and not interpolated:
                    missing.append(f"{module.__name__}.{f.name}")
    assert not missing, missing


def test_test_subset_as_dev_warns(caplog):
    with caplog.at_level(logging.WARNING):
        validate.config({"meta_dev_subset": "test"})
    assert "--meta-dev-subset test" in caplog.text and "no longer held-out" in caplog.text


def test_dds_log_file_device_node():
    line = user_error(validate.config, {"dds_log_file": "/dev/null"})
    assert "--dds-log-file /dev/null is a device node" in line


# ---- recipes: seeds, languages, work dir, prepared corpus --------------------------------------------------
def recipe(tmp_path, *args: str, body: str = 'echo "SEEDS=$SEEDS"') -> subprocess.CompletedProcess:
    script = ("set -euo pipefail; SRC=lrl; TGT=tgt; RELATED=''; SEEDS='1'; WORK_DIR=\"$W\"; RECIPE_USAGE=usage; "
              f"source {ROOT}/scripts/recipe_lib.sh; recipe_parse \"$@\"; " + body)
    env = cli_env()
    env["W"] = str(tmp_path / "work")
    return subprocess.run(["bash", "-c", script, "recipe", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env, cwd=str(tmp_path), timeout=120)


@pytest.mark.parametrize("args,expected", [
    (["--seeds", "1 1"], "--seeds lists seed 1 twice"),
    (["--seeds", "*"], "--seeds takes non-negative integers, got '*'"),
    (["--seeds", "-1"], "--seeds takes non-negative integers, got '-1'"),
    (["--related", "hrl,lrl"], "--related hrl,lrl contains lrl, which is --src or --tgt"),
    (["--related", "hrl,hrl"], "--related lists hrl twice"),
    (["--work-dir", "afile"], "--work-dir afile exists and is not a directory"),
])
def test_recipe_flags_refused(args, expected, tmp_path):
    (tmp_path / "afile").write_text("mine\n")
    (tmp_path / "1").write_text("a file a glob would find\n")
    before = snapshot(str(tmp_path))
    proc = recipe(tmp_path, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(PREFIX)
    assert expected in proc.stderr, proc.stderr
    assert snapshot(str(tmp_path)) == before


def test_recipe_seeds_accepted(tmp_path):
    proc = recipe(tmp_path, "--seeds", " 3  1 2 ")
    assert proc.returncode == 0 and proc.stdout.strip() == "SEEDS=3 1 2", proc.stderr


def test_full_disk_while_writing_text(tmp_path, monkeypatch):
    """Every text writer (the synthetic generator, sentencepiece-encoded files) names the disk too."""
    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def close(self):
            pass

    path = str(tmp_path / "mono.xx")
    monkeypatch.setattr(fileio, "open", lambda *a, **k: Full(), raising=False)
    with fileio.open_text(path, "w") as f:
        line = user_error(f.write, "a sentence\n")
    assert f"no space left on the disk holding {tmp_path} while writing {path}" in line


def test_set_aside_moves_a_link_target_and_keeps_the_link(tmp_path):
    """An earlier run's log (DDS's dds_log.jsonl) is set aside to PATH.prevK; through a symlink the target moves
    and the link stays, so the new log is written through it; nothing is deleted."""
    target, link = tmp_path / "real.jsonl", tmp_path / "dds_log.jsonl"
    target.write_text("old\n")
    (tmp_path / "real.jsonl.prev0").write_text("older\n")
    link.symlink_to(target.name)
    assert fileio.set_aside(str(link)) == str(tmp_path / "real.jsonl.prev1")
    assert link.is_symlink() and not target.exists() and (tmp_path / "real.jsonl.prev1").read_text() == "old\n"
    fileio.write_text(str(link), "new\n")
    assert link.is_symlink() and target.read_text() == "new\n"
    assert (tmp_path / "real.jsonl.prev0").read_text() == "older\n"
    assert fileio.set_aside(str(tmp_path / "none.jsonl")) is None
