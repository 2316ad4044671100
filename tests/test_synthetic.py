"""Tests of the embedded synthetic corpus generator (fairseq_metabt.synthetic)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict, List

import pytest

from fairseq_metabt.synthetic import (
    OutputExistsError, SyntheticError, build_corpus, generate_corpus, list_presets, parse_sizes,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMALL: Dict[str, Dict[str, int]] = {
    "quickstart": {"train": 200, "valid": 20, "test": 20, "mono_tgt": 100, "mono_lrl": 50},
    "bidirectional": {"train": 200, "valid": 20, "test": 20, "mono_tgt": 100, "mono_lrl": 100},
    "domain": {"train": 200, "valid": 40, "test": 40, "mono_tgt": 200, "mono_lrl": 50},
    "multilingual": {"train": 100, "hrl": 300, "unra": 300, "unrb": 300, "nsy": 300, "valid": 20, "test": 20,
                     "mono_tgt": 50, "mono_lrl": 50, "pool": 400},
}
SOURCES = {"quickstart": ["lrl"], "bidirectional": ["lrl"], "domain": ["lrl"],
           "multilingual": ["lrl", "hrl", "unra", "unrb", "nsy"]}


def read_lines(path: str) -> List[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def read_dir_bytes(root: str) -> Dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def types(lines: List[str]) -> set:
    return {tok for line in lines for tok in line.split()}


def jaccard(a: List[str], b: List[str]) -> float:
    ta, tb = types(a), types(b)
    return len(ta & tb) / len(ta | tb)


@pytest.fixture(scope="module")
def multilingual_corpus():
    return build_corpus("multilingual", seed=7, sizes=SMALL["multilingual"])


@pytest.fixture(scope="module")
def multiway_corpus():
    return build_corpus("multilingual", seed=7, sizes=SMALL["multilingual"], multiway=True)


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    generate_corpus("multilingual", tmp_path / "a", seed=3, sizes=SMALL["multilingual"], multiway=True)
    generate_corpus("multilingual", tmp_path / "b", seed=3, sizes=SMALL["multilingual"], multiway=True)
    generate_corpus("multilingual", tmp_path / "c", seed=4, sizes=SMALL["multilingual"], multiway=True)
    a, b, c = (read_dir_bytes(str(tmp_path / x)) for x in "abc")
    assert a == b
    assert set(a) == set(c)
    for name in a:
        if name.endswith((".lrl", ".tgt", ".hrl")) or name == os.path.join("meta", "lexicon.tsv"):
            assert a[name] != c[name], name


@pytest.mark.parametrize("preset", sorted(SMALL))
def test_preset_layout(tmp_path, preset):
    out = str(tmp_path / preset)
    manifest = generate_corpus(preset, out, seed=1, sizes=SMALL[preset])
    sizes = SMALL[preset]
    expected = []
    for src in SOURCES[preset]:
        for split in ("train", "valid", "test"):
            expected += [f"{split}.{src}-tgt.{src}", f"{split}.{src}-tgt.tgt"]
    expected += ["mono.tgt", "mono.lrl"]
    assert sorted(manifest["files"]) == sorted(expected)
    assert sorted(n for n in os.listdir(out) if n not in ("manifest.json", "meta") and not n.startswith(".")) == sorted(expected)
    assert json.loads(open(os.path.join(out, "manifest.json"), encoding="utf-8").read()) == manifest
    assert manifest["preset"] == preset and manifest["seed"] == 1
    codes = [lang["code"] for lang in manifest["languages"]]
    assert codes == ["tgt"] + SOURCES[preset]

    for name in expected:
        lines = read_lines(os.path.join(out, name))
        assert len(lines) == manifest["sizes"][name]
        for line in lines:
            n = len(line.split(" "))
            assert 4 <= n <= 40, (name, line)
            assert line == line.lower() and line.isascii() and "  " not in line
    for src in SOURCES[preset]:
        key = "train" if src == "lrl" else src
        for split, n in (("train", sizes[key]), ("valid", sizes["valid"]), ("test", sizes["test"])):
            s = read_lines(os.path.join(out, f"{split}.{src}-tgt.{src}"))
            t = read_lines(os.path.join(out, f"{split}.{src}-tgt.tgt"))
            assert len(s) == len(t) == n
    # Held-out targets are unseen in training; monolingual text is new text, not the bitext again.
    train_t = set(read_lines(os.path.join(out, "train.lrl-tgt.tgt")))
    held = read_lines(os.path.join(out, "valid.lrl-tgt.tgt")) + read_lines(os.path.join(out, "test.lrl-tgt.tgt"))
    assert not train_t & set(held) and len(set(held)) == len(held)
    mono_t = read_lines(os.path.join(out, "mono.tgt"))
    assert len(mono_t) == sizes["mono_tgt"] and not set(mono_t) & set(held)
    assert sum(line in train_t for line in mono_t) < 0.1 * len(mono_t)
    mono_s = read_lines(os.path.join(out, "mono.lrl"))
    assert sum(line in set(read_lines(os.path.join(out, "train.lrl-tgt.lrl"))) for line in mono_s) < 0.1 * len(mono_s)


def test_layout_accepted_by_raw_layout_scanner(tmp_path):
    raw_layout = pytest.importorskip("fairseq_metabt.data.raw_layout")
    generate_corpus("multilingual", tmp_path, seed=2, sizes=SMALL["multilingual"], multiway=True)
    layout = raw_layout.scan_raw_dir(str(tmp_path))
    assert sorted(layout.pairs) == sorted((s, "tgt") for s in SOURCES["multilingual"])
    assert sorted(layout.mono) == ["lrl", "tgt"]


def test_translations_are_deterministic_given_the_derivation(multiway_corpus):
    """The same target sentence always comes with the same translation in each language."""
    for src in ("lrl", "hrl", "unra"):
        seen: Dict[str, str] = {}
        for s, t in zip(multiway_corpus.files[f"train.{src}-tgt.{src}"], multiway_corpus.files[f"train.{src}-tgt.tgt"]):
            assert seen.setdefault(t, s) == s


def test_relatedness_is_measurable(multilingual_corpus):
    files, n = multilingual_corpus.files, 100
    lrl = files["train.lrl-tgt.lrl"][:n]
    related = jaccard(lrl, files["train.hrl-tgt.hrl"][:n])
    unrelated = max(jaccard(lrl, files[f"train.{u}-tgt.{u}"][:n]) for u in ("unra", "unrb"))
    assert related > 0.15
    assert related > 5 * unrelated + 0.05

    langs = {lang["code"]: lang for lang in multilingual_corpus.manifest["languages"]}
    assert langs["lrl"]["parent"] == "hrl" and langs["hrl"]["related_to"] == ["lrl"]
    assert len(langs["lrl"]["flipped_parameters"]) == 1
    flipped = langs["lrl"]["flipped_parameters"][0]
    assert langs["lrl"]["order"][flipped] != langs["hrl"]["order"][flipped]
    assert all(langs["lrl"]["order"][k] == langs["hrl"]["order"][k] for k in langs["lrl"]["order"] if k != flipped)
    assert 0.2 <= langs["lrl"]["cognate_edit_rate"] <= 0.3
    assert langs["unra"]["related_to"] == [] and langs["unra"]["role"] == "unrelated"
    assert multilingual_corpus.manifest["relatedness"][0]["languages"] == ["hrl", "lrl"]


def test_multiway_availability(multiway_corpus):
    m = multiway_corpus.manifest
    info = m["multiway_info"]
    assert m["multiway"] is True and info["pool_size"] == SMALL["multilingual"]["pool"]
    assert sum(info["targets_by_number_of_sources"].values()) == info["pool_size"]
    target_of: Dict[int, str] = {}
    langs_of: Dict[int, int] = {}
    for src, ids_file in info["index_files"].items():
        ids = [int(x) for x in multiway_corpus.aux[ids_file]]
        targets = multiway_corpus.files[f"train.{src}-tgt.tgt"]
        assert len(ids) == len(targets) == m["sizes"][f"train.{src}-tgt.{src}"]
        for i, t in zip(ids, targets):
            assert target_of.setdefault(i, t) == t  # an id names one target sentence everywhere
            langs_of[i] = langs_of.get(i, 0) + 1
    counts = set(langs_of.values())
    assert len(counts) >= 3 and max(counts) >= 3  # availability varies per target sentence
    # Without --multiway each language has its own target sentences.
    assert m["sizes"]["train.hrl-tgt.tgt"] == SMALL["multilingual"]["hrl"]


def test_noisy_language(multilingual_corpus):
    noise = multilingual_corpus.manifest["noise"]["nsy"]
    n = SMALL["multilingual"]["nsy"]
    assert noise["rate"] == pytest.approx(0.3)
    assert noise["corrupted_lines"] == round(noise["rate"] * n)
    labels = multilingual_corpus.aux[noise["labels_file"]]
    assert len(labels) == n and labels.count("clean") == n - noise["corrupted_lines"]
    assert labels.count("mismatch") == noise["mismatched_lines"] > 0
    assert labels.count("tokens") == noise["token_noised_lines"] > 0
    # Only nsy is noisy; other languages record no noise.
    assert set(multilingual_corpus.manifest["noise"]) == {"nsy"}


def test_domain_preset_shifts_distribution():
    c = build_corpus("domain", seed=1, sizes=SMALL["domain"])
    d = c.manifest["domains"]
    assert d["train"] != d["valid"] and d["valid"] == d["test"] == d["mono"]
    mono = c.files["mono.tgt"][:200]
    in_domain = c.files["valid.lrl-tgt.tgt"] + c.files["test.lrl-tgt.tgt"]
    out_domain = c.files["train.lrl-tgt.tgt"][: len(in_domain)]
    assert jaccard(in_domain, mono) > jaccard(out_domain, mono) + 0.05


def test_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "corpus"
    generate_corpus("multilingual", out, seed=1, sizes=SMALL["multilingual"])
    before = read_dir_bytes(str(out))
    with pytest.raises(OutputExistsError) as err:
        generate_corpus("quickstart", out, seed=2, sizes=SMALL["quickstart"])
    assert str(out) in str(err.value) and "--force" in str(err.value)
    assert read_dir_bytes(str(out)) == before
    # --force replaces the whole earlier corpus: no stale files of the other preset remain.
    manifest = generate_corpus("quickstart", out, seed=2, sizes=SMALL["quickstart"], force=True)
    left = sorted(n for n in os.listdir(out) if n not in ("manifest.json", "meta") and not n.startswith("."))
    assert left == sorted(manifest["files"])
    assert not any("hrl" in name for name in os.listdir(out / "meta"))


def test_refuses_dir_with_raw_files_only(tmp_path):
    (tmp_path / "train.xx-yy.xx").write_text("hello\n")
    with pytest.raises(OutputExistsError):
        generate_corpus("quickstart", tmp_path, seed=1, sizes=SMALL["quickstart"])


def test_bad_arguments():
    with pytest.raises(SyntheticError, match="valid keys: train, valid, test"):
        build_corpus("quickstart", 1, {"hrl": 10})
    for bad in (0, -5, 2.5, True):
        with pytest.raises(SyntheticError, match="positive integer"):
            build_corpus("quickstart", 1, {"train": bad})
    with pytest.raises(SyntheticError, match="KEY=N"):
        parse_sizes("train")
    with pytest.raises(SyntheticError, match="not an integer"):
        parse_sizes("train=abc")
    assert parse_sizes("train=5, valid=2,") == {"train": 5, "valid": 2}
    with pytest.raises(SyntheticError, match="quickstart, multilingual"):
        build_corpus("nope", 1)
    with pytest.raises(SyntheticError, match="multiway"):
        build_corpus("quickstart", 1, SMALL["quickstart"], multiway=True)
    assert set(list_presets()) >= {"quickstart", "multilingual", "bidirectional", "domain"}


def test_cli(tmp_path, capsys):
    # One real subprocess run (each start imports the whole plugin); error paths run in-process.
    from fairseq_metabt.synthetic.__main__ import main

    out = str(tmp_path / "cli")
    sizes = ",".join(f"{k}={v}" for k, v in SMALL["quickstart"].items())
    ok = subprocess.run(
        [sys.executable, "-m", "fairseq_metabt.synthetic", "--preset", "quickstart", "--out", out,
         "--seed", "5", "--sizes", sizes],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    api = build_corpus("quickstart", 5, SMALL["quickstart"])
    assert read_lines(os.path.join(out, "train.lrl-tgt.tgt")) == api.files["train.lrl-tgt.tgt"]
    assert json.loads(open(os.path.join(out, "manifest.json"), encoding="utf-8").read()) == api.manifest

    with pytest.raises(SystemExit) as exit_:
        main(["--preset", "quickstart", "--out", out, "--seed", "6", "--sizes", "train=30"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--force" in err and out in err

    with pytest.raises(SystemExit) as exit_:
        main(["--preset", "quickstart", "--out", str(tmp_path / "x"), "--sizes", "train=300,bogus=1"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "bogus" in err and "mono_tgt" in err
    assert not os.path.exists(tmp_path / "x")

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "mono_lrl=10000" in capsys.readouterr().out
