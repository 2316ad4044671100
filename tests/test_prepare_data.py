"""scripts/prepare_data.py on every preset, and its errors on bad input."""
import json
import os
import shutil
import sys

import pytest

from conftest import ROOT, make_corpus, prepare, run

PREPARE = [sys.executable, os.path.join(ROOT, "scripts", "prepare_data.py")]
PRESET_SIZES = {
    "quickstart": "train=150,valid=20,test=20,mono_tgt=60,mono_lrl=60",
    "multilingual": "train=100,hrl=150,unra=150,unrb=150,nsy=150,valid=20,test=20,mono_tgt=60,mono_lrl=60",
    "bidirectional": "train=150,valid=20,test=20,mono_tgt=60,mono_lrl=60",
    "domain": "train=150,valid=20,test=20,mono_tgt=60,mono_lrl=60",
}


def _lines(path):
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


@pytest.mark.parametrize("preset", sorted(PRESET_SIZES))
def test_every_preset_prepares_with_one_joint_dictionary(preset, tmp_path):
    from fairseq.data import Dictionary, data_utils

    raw = make_corpus(str(tmp_path / "raw"), preset, sizes=PRESET_SIZES[preset])
    bin_dir = prepare(raw, str(tmp_path / "bin"))
    info = json.load(open(os.path.join(bin_dir, "prepare.json")))
    manifest = json.load(open(os.path.join(raw, "manifest.json")))
    assert set(info["languages"]) == {l["code"] for l in manifest["languages"] if l["code"] in info["languages"]}
    joint = open(os.path.join(bin_dir, "dict.txt")).read()
    d = Dictionary.load(os.path.join(bin_dir, "dict.txt"))
    for lang in info["languages"]:
        assert open(os.path.join(bin_dir, f"dict.{lang}.txt")).read() == joint
        assert d.index(f"__{lang}__") != d.unk(), "every language gets a tag in the joint dictionary"
    for pair in info["pairs"]:
        s, t = pair.split("-")
        for split in info["splits"][pair]:
            for lang in (s, t):
                ds = data_utils.load_indexed_dataset(os.path.join(bin_dir, f"{split}.{pair}.{lang}"), d)
                assert len(ds) == _lines(os.path.join(raw, f"{split}.{pair}.{lang}"))
    for lang in info["mono"]:
        ds = data_utils.load_indexed_dataset(os.path.join(bin_dir, f"mono.{lang}"), d)
        assert len(ds) == _lines(os.path.join(raw, f"mono.{lang}")) and len(ds) > 0
        assert all(d.unk() not in ds[i].tolist() for i in range(len(ds)))


@pytest.fixture
def small_raw(tmp_path):
    return make_corpus(str(tmp_path / "raw"), "quickstart", sizes=PRESET_SIZES["quickstart"])


def _fails(raw, bin_dir, *extra):
    proc = run(PREPARE + [raw, bin_dir, "--vocab-size", "300", *extra], check=False)
    assert proc.returncode != 0, proc.stdout
    return proc.stdout


def test_missing_side_is_named(small_raw, tmp_path):
    os.remove(os.path.join(small_raw, "valid.lrl-tgt.tgt"))
    out = _fails(small_raw, str(tmp_path / "bin"))
    assert "missing file" in out and "valid.lrl-tgt.tgt" in out
    assert not os.path.exists(tmp_path / "bin"), "nothing is written on bad input"


def test_missing_train_split_is_named(small_raw, tmp_path):
    for side in ("lrl", "tgt"):
        os.remove(os.path.join(small_raw, f"train.lrl-tgt.{side}"))
    out = _fails(small_raw, str(tmp_path / "bin"))
    assert "missing split" in out and "train.lrl-tgt" in out


def test_empty_file_is_named(small_raw, tmp_path):
    open(os.path.join(small_raw, "mono.lrl"), "w").close()
    out = _fails(small_raw, str(tmp_path / "bin"))
    assert "mono.lrl is empty" in out


def test_misaligned_bitext_is_named(small_raw, tmp_path):
    with open(os.path.join(small_raw, "test.lrl-tgt.lrl"), "a") as f:
        f.write("extra line\n")
    out = _fails(small_raw, str(tmp_path / "bin"))
    assert "test.lrl-tgt.lrl has 21 lines" in out and "line-aligned" in out


def test_language_absent_from_manifest(small_raw, tmp_path):
    shutil.copy(os.path.join(small_raw, "mono.lrl"), os.path.join(small_raw, "mono.xyz"))
    out = _fails(small_raw, str(tmp_path / "bin"))
    assert "'xyz'" in out and "manifest" in out


def test_mismatched_dictionary_is_refused(small_raw, tmp_path):
    first = prepare(small_raw, str(tmp_path / "first"))
    other_raw = make_corpus(str(tmp_path / "other"), "quickstart", seed=7, sizes=PRESET_SIZES["quickstart"])
    other = prepare(other_raw, str(tmp_path / "other_bin"))
    out = _fails(small_raw, str(tmp_path / "mixed"), "--spm-model", os.path.join(first, "spm.model"),
                 "--dict", os.path.join(other, "dict.txt"))
    assert "does not match the sentencepiece model" in out and "dict.txt" in out
    # the matching pair is accepted and reproduces the same dictionary
    again = prepare(small_raw, str(tmp_path / "again"), "--spm-model", os.path.join(first, "spm.model"),
                    "--dict", os.path.join(first, "dict.txt"))
    assert open(os.path.join(again, "dict.txt")).read() == open(os.path.join(first, "dict.txt")).read()


def test_existing_output_is_kept_unless_forced(small_raw, tmp_path):
    bin_dir = prepare(small_raw, str(tmp_path / "bin"))
    ckpt = os.path.join(bin_dir, "checkpoint_keep.pt")
    open(ckpt, "w").write("precious")
    before = open(os.path.join(bin_dir, "dict.txt")).read()
    out = _fails(small_raw, bin_dir)
    assert "--force" in out and "Nothing was changed" in out
    assert open(os.path.join(bin_dir, "dict.txt")).read() == before
    prepare(small_raw, bin_dir, "--force")
    assert open(ckpt).read() == "precious"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    out = _fails(small_raw, str(foreign), "--force")
    assert "did not write" in out and (foreign / "notes.txt").read_text() == "mine"
