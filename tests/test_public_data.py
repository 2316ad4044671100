"""scripts/prepare_public.py on tiny files in each distributed format, and one update of every run_paper.sh.

The fixtures imitate the formats as distributed: the TED tables of Qi et al. (2018) (a talk_name column, TED's
language codes, ``__NULL__`` / ``_ _ NULL _ _`` for a missing translation), the IWSLT'14 XML/TAGS release
(train.tags.* with metadata lines, IWSLT14.TED*.xml with <seg id=...>), WMT plain text and SGM files.  The
converter tests are marked fast; the recipe tests run each examples/*/run_paper.sh with --dry-run (one update
of every system on the CPU, scored, compared, the paper's figures printed).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from types import SimpleNamespace
from typing import Dict, List

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import prepare_public  # noqa: E402

from fairseq_metabt.data import paper_figures, public_corpora  # noqa: E402
from fairseq_metabt.data.raw_layout import scan_raw_dir  # noqa: E402


# TED columns of the fixture: English, the eight ted8-related languages, and one more (pt-br) to be ignored
TED_COLUMNS = ["en", "az", "be", "gl", "sk", "tr", "ru", "pt", "cs", "pt-br"]
WORDS = ["talk", "idea", "world", "people", "water", "music", "city", "brain", "story", "light", "child", "time"]


def _sentence(i: int, lang: str) -> str:
    """A short sentence, different per row and language (a shared vocabulary so that one update learns)."""
    w = [WORDS[(i * 3 + k + len(lang)) % len(WORDS)] for k in range(3 + i % 3)]
    return f"{lang} " + " ".join(w) + " ."


def write_ted(directory: str, rows: Dict[str, int]) -> None:
    """all_talks_{train,dev,test}.tsv with ``rows[split]`` rows; some cells are the two NULL markers."""
    os.makedirs(directory, exist_ok=True)
    for split, n in rows.items():
        with open(os.path.join(directory, f"all_talks_{split}.tsv"), "w", encoding="utf-8") as f:
            f.write("\t".join(["talk_name"] + TED_COLUMNS) + "\n")
            for i in range(n):
                cells = [f"talk{i // 4}"]
                for c in TED_COLUMNS:
                    if c != "en" and (i + len(c)) % 7 == 0:
                        cells.append("__NULL__" if i % 2 else "_ _ NULL _ _")
                    else:
                        cells.append(_sentence(i, c))
                if i == 5:
                    cells[1] = "__NULL__"  # no English: the row enters no pair
                f.write("\t".join(cells) + "\n")


def write_iwslt(directory: str, n_train: int = 60, n_seg: int = 3) -> None:
    """The IWSLT'14 de-en release: train.tags.de-en.{de,en} with metadata lines, five dev/test XML sets."""
    os.makedirs(directory, exist_ok=True)
    for lang in ("de", "en"):
        lines = ['<url>http://www.ted.com/talks/x.html</url>', "<keywords>talks, music</keywords>",
                 "<speaker>Someone</speaker>", "<talkid>1</talkid>", f"<title>{lang} the title</title>",
                 f"<description>{lang} what it is about</description>"]
        lines += [_sentence(i, lang) for i in range(n_train)]
        lines.insert(20, "<reviewer href=\"x\">R</reviewer>")
        with open(os.path.join(directory, f"train.tags.de-en.{lang}"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        for name in public_corpora.IWSLT_TEST_SETS:
            segs = "\n".join(f'<seg id="{k + 1}"> {_sentence(100 + k, lang)} &amp; more </seg>' for k in range(n_seg))
            with open(os.path.join(directory, f"{name}.de-en.{lang}.xml"), "w", encoding="utf-8") as f:
                f.write(f'<?xml version="1.0" encoding="UTF-8"?>\n<mteval>\n<srcset setid="{name}" srclang="de">\n'
                        f'<doc docid="1" genre="lectures">\n<talkid>1</talkid>\n{segs}\n</doc>\n</srcset>\n</mteval>\n')


def write_wmt(directory: str, src: str, tgt: str, n_train: int = 40, n_seg: int = 4, dev: str = "newsdev2016.tc",
              test: str = "newstest2017.tc") -> None:
    """WMT-style files under the wmt18-tr-en preset's prefixes: plain-text training pairs (corpus.tc.LANG), a plain
    dev set, an SGM test set (PREFIX-SRCTGT-{src,ref}.LANG.sgm), monolingual text."""
    os.makedirs(directory, exist_ok=True)
    for lang in (src, tgt):
        with open(os.path.join(directory, f"corpus.tc.{lang}"), "w", encoding="utf-8") as f:
            f.write("".join(_sentence(i, lang) + "\n" for i in range(n_train)))
        with open(os.path.join(directory, f"{dev}.{lang}"), "w", encoding="utf-8") as f:
            f.write("".join(_sentence(200 + i, lang) + "\n" for i in range(n_seg)))
        role = "src" if lang == src else "ref"
        segs = "".join(f'<seg id="{k + 1}">{_sentence(300 + k, lang)}</seg>\n' for k in range(n_seg))
        with open(os.path.join(directory, f"{test}-{src}{tgt}-{role}.{lang}.sgm"), "w", encoding="utf-8") as f:
            f.write(f'<{role}set setid="newstest" srclang="{src}">\n<doc docid="a">\n{segs}</doc>\n</{role}set>\n')
        with open(os.path.join(directory, f"news.{lang}"), "w", encoding="utf-8") as f:
            f.write("".join(_sentence(400 + i, lang) + "\n" for i in range(n_train)))


def convert(*args: str) -> SimpleNamespace:
    """scripts/prepare_public.py in process (a subprocess would import torch and fairseq again): exit status,
    stdout and stderr as a CLI run gives them."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = prepare_public.main(list(args))
        except SystemExit as e:
            code = e.code
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def lines(path: str) -> List[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """One fixture of each format for the whole module."""
    base = tmp_path_factory.mktemp("public")
    d = SimpleNamespace(base=str(base), ted=str(base / "ted"), iwslt=str(base / "de-en"), wmt=str(base / "wmt"))
    write_ted(d.ted, {"train": 40, "dev": 8, "test": 8})
    write_iwslt(d.iwslt)
    write_wmt(d.wmt, "tr", "en")
    return d


# -- the converter ---------------------------------------------------------------------------------------
@pytest.mark.fast
def test_ted_preset_pairs_every_language_with_english_and_skips_null_markers(data, tmp_path):
    out = str(tmp_path / "raw")
    r = convert("--dataset", "ted", "--ted-dir", data.ted, "--preset", "ted8-related", "--out", out)
    assert r.returncode == 0, r.stderr
    layout = scan_raw_dir(out)
    assert layout.pairs == sorted((lang, "eng") for lang in public_corpora.PRESETS["ted8-related"])
    assert not any("pt_br" in name for name in os.listdir(out))  # a column outside the preset is not read
    # a row enters a language's pair when both its cell and English are present, in table order
    rows = [line.split("\t") for line in lines(os.path.join(data.ted, "all_talks_train.tsv"))]
    col = rows[0].index("az")
    expected = [(r[col], r[1]) for r in rows[1:] if "NULL" not in r[col] and "NULL" not in r[1]]
    got = list(zip(lines(os.path.join(out, "train.aze-eng.aze")), lines(os.path.join(out, "train.aze-eng.eng"))))
    assert got == expected and 0 < len(got) < len(rows) - 1
    assert not any("NULL" in line for name in os.listdir(out) if "." in name and not name.endswith(".json")
                   for line in lines(os.path.join(out, name)))
    record = json.load(open(os.path.join(out, "prepare_public.json")))
    assert record["runs"][0]["files"]["valid.aze-eng.aze"] == len(lines(os.path.join(out, "valid.aze-eng.aze")))
    # --reuse keeps the same conversion; a different one without --force is refused, nothing changed
    again = convert("--dataset", "ted", "--ted-dir", data.ted, "--preset", "ted8-related", "--out", out, "--reuse")
    assert again.returncode == 0 and "reused" in again.stdout
    other = convert("--dataset", "ted", "--ted-dir", data.ted, "--langs", "aze,tur", "--out", out)
    assert other.returncode == 2 and "not empty" in other.stderr and os.path.exists(os.path.join(out, "train.slk-eng.slk"))


@pytest.mark.fast
@pytest.mark.parametrize("args, message", [
    (["--ted-dir", "MISSING", "--preset", "lrl4"], "is not a directory"),
    (["--ted-dir", "TED", "--langs", "aze,xyz"], "has no column 'xyz' for language xyz"),
    (["--ted-dir", "TED", "--preset", "nope"], "unknown TED preset 'nope'"),
    (["--ted-dir", "TED"], "needs one of --preset and --langs"),
    (["--ted-dir", "EMPTY", "--preset", "lrl4"], "all_talks_train.tsv does not exist"),
])
def test_ted_mistakes_are_one_line_errors(data, tmp_path, args, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [a.replace("TED", data.ted).replace("EMPTY", str(empty)).replace("MISSING", str(tmp_path / "no"))
            for a in args]
    r = convert("--dataset", "ted", *args, "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert r.stderr.startswith("fairseq-metabt: error: ") and r.stderr.count("\n") == 1
    assert not os.path.exists(tmp_path / "out")  # checked before anything is written


@pytest.mark.fast
def test_ted_table_without_talk_name_is_refused(tmp_path):
    d = tmp_path / "ted"
    d.mkdir()
    for split in ("train", "dev", "test"):
        (d / f"all_talks_{split}.tsv").write_text("en\taz\nHello .\tSalam .\n", encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        prepare_public.main(["--dataset", "ted", "--ted-dir", str(d), "--langs", "aze", "--out", str(tmp_path / "o")])
    assert e.value.code == 2


@pytest.mark.fast
def test_iwslt14_follows_fairseqs_split(data, tmp_path):
    out = str(tmp_path / "raw")
    r = convert("--dataset", "iwslt14", "--iwslt-dir", data.iwslt, "--out", out)
    assert r.returncode == 0, r.stderr
    de, en = lines(os.path.join(out, "train.de-en.de")), lines(os.path.join(out, "train.de-en.en"))
    valid = lines(os.path.join(out, "valid.de-en.de"))
    # 60 sentences + title + description (tags stripped) = 62 pairs; every 23rd is dev; metadata lines dropped
    assert len(de) + len(valid) == 62 and len(valid) == 62 // 23 and len(de) == len(en)
    assert de[0] == "de the title" and de[1] == "de what it is about"
    assert not any(line.lstrip().startswith("<") for line in de + en + valid)
    assert valid[0] == public_corpora.clean(_sentence(23 - 3, "de"))  # the 23rd pair: title, description, 21 more
    test = lines(os.path.join(out, "test.de-en.en"))
    assert len(test) == 3 * len(public_corpora.IWSLT_TEST_SETS) and test[0].endswith("& more")  # entity decoded
    mono = str(tmp_path / "mono")
    r = convert("--dataset", "iwslt14", "--iwslt-dir", data.iwslt, "--train-as", "mono", "--out", mono)
    assert r.returncode == 0, r.stderr
    assert lines(os.path.join(mono, "mono.de")) == de and not os.path.exists(os.path.join(mono, "train.de-en.de"))


@pytest.mark.fast
def test_iwslt14_misaligned_tags_and_missing_test_set(data, tmp_path):
    bad = tmp_path / "de-en"
    write_iwslt(str(bad), n_train=30)
    path = bad / "train.tags.de-en.en"
    text = path.read_text(encoding="utf-8").splitlines()
    text[10] = "<speaker>Someone</speaker>"
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    r = convert("--dataset", "iwslt14", "--iwslt-dir", str(bad), "--out", str(tmp_path / "o1"))
    assert r.returncode == 2 and "misaligned at line 11" in r.stderr
    write_iwslt(str(bad), n_train=30)
    os.remove(bad / "IWSLT14.TED.tst2012.de-en.de.xml")
    r = convert("--dataset", "iwslt14", "--iwslt-dir", str(bad), "--out", str(tmp_path / "o2"))
    assert r.returncode == 2 and "IWSLT14.TED.tst2012.de-en.de.xml does not exist" in r.stderr


@pytest.mark.fast
def test_wmt_plain_sgm_and_sampled_mono(data, tmp_path):
    out = str(tmp_path / "raw")
    r = convert("--dataset", "wmt", "--wmt-dir", data.wmt, "--preset", "wmt18-tr-en", "--mono", f"en={data.wmt}/news.en",
                "--mono-lines", "7", "--out", out)
    assert r.returncode == 0, r.stderr
    assert lines(os.path.join(out, "train.tr-en.tr")) == lines(os.path.join(data.wmt, "corpus.tc.tr"))
    assert lines(os.path.join(out, "test.tr-en.en")) == [_sentence(300 + k, "en") for k in range(4)]  # from SGM
    mono = lines(os.path.join(out, "mono.en"))
    assert len(mono) == 7 and set(mono) <= set(lines(os.path.join(data.wmt, "news.en")))
    # the draw is reproducible: the same seed keeps the same lines
    assert public_corpora.sample_lines(os.path.join(data.wmt, "news.en"), 7, 1) == mono
    missing = convert("--dataset", "wmt", "--wmt-dir", data.wmt, "--src", "tr", "--tgt", "en", "--train", "nope",
                      "--out", str(tmp_path / "o"))
    assert missing.returncode == 2 and "no file for tr of 'nope'" in missing.stderr
    bad = convert("--dataset", "wmt", "--wmt-dir", data.wmt, "--src", "tr", "--tgt", "en", "--train", "corpus.tc",
                  "--mono", "en", "--out", str(tmp_path / "o"))
    assert bad.returncode == 2 and "is not LANG=FILE" in bad.stderr


@pytest.mark.fast
def test_append_adds_a_second_dataset_without_replacing_files(data, tmp_path):
    out = str(tmp_path / "raw")
    assert convert("--dataset", "iwslt14", "--iwslt-dir", data.iwslt, "--train-as", "mono", "--out", out).returncode == 0
    wmt = tmp_path / "wmt"
    write_wmt(str(wmt), "de", "en")
    r = convert("--dataset", "wmt", "--wmt-dir", str(wmt), "--src", "de", "--tgt", "en", "--train", "corpus.tc",
                "--append", "--out", out)
    assert r.returncode == 0, r.stderr
    layout = scan_raw_dir(out)
    assert set(layout.bitext[("de", "en")]) == {"train", "valid", "test"} and set(layout.mono) == {"de", "en"}
    assert len(json.load(open(os.path.join(out, "prepare_public.json")))["runs"]) == 2
    again = convert("--dataset", "wmt", "--wmt-dir", str(wmt), "--src", "de", "--tgt", "en", "--train", "corpus.tc",
                    "--valid", "newsdev2016.tc", "--append", "--out", out)
    assert again.returncode == 2 and "is never replaced" in again.stderr


@pytest.mark.fast
def test_clean_removes_what_the_raw_layout_refuses():
    assert public_corpora.clean("\ufeffa\rb\x00c\td\n") == "a b c d"


@pytest.mark.fast
def test_paper_figures_beside_ours():
    summary = {"pair": "aze-eng", "systems": {"uniform": {"bleu": [9.0, 11.0]}, "dds": {"bleu": [12.0]}}}
    text = paper_figures.render(summary, "dds", "ted8-related")
    row = next(line for line in text.splitlines() if line.startswith("aze-eng") and " dds " in line)
    assert row.split()[-2:] == ["12.00", "10.74"]
    assert "10.00" in next(line for line in text.splitlines() if " uniform " in line)
    assert "bel-eng" not in text  # only the pairs this run scored
    assert "no paper figure" in paper_figures.render(summary, "metabt", "any")
    with pytest.raises(ValueError, match="no figures of wake_sleep for setting 'x'"):
        paper_figures.render(summary, "wake_sleep", "x")


@pytest.mark.fast
def test_latent_soft_updates_default_is_a_warm_up():
    from fairseq_metabt.models.latent_depth_transformer import DEFAULT_SOFT_UPDATES, latent_depth_base
    from fairseq_metabt.modules.latent_layers import gates_are_hard

    anneal = SimpleNamespace(latent_kl_anneal_updates=300)
    latent_depth_base(anneal)
    assert anneal.latent_soft_updates == 300  # relaxed while beta anneals, hard from when L_K starts
    plain = SimpleNamespace()
    latent_depth_base(plain)
    assert plain.latent_soft_updates == DEFAULT_SOFT_UPDATES == 500
    assert not gates_are_hard(499, plain.latent_soft_updates) and gates_are_hard(500, plain.latent_soft_updates)
    given = SimpleNamespace(latent_soft_updates=7, latent_kl_anneal_updates=300)
    latent_depth_base(given)
    assert given.latent_soft_updates == 7


# -- one dry run of every paper recipe ---------------------------------------------------------------------
def run_recipe(recipe: str, work: str, *args: str, **knobs: str) -> subprocess.CompletedProcess:
    """bash examples/RECIPE/run_paper.sh --dry-run ... with two lanes, one thread each (and the knobs given)."""
    env = dict(os.environ, JOBS="2", OMP_NUM_THREADS="1", PROGRESS_POLL="60", **knobs)
    r = subprocess.run(["bash", os.path.join(ROOT, "examples", recipe, "run_paper.sh"), "--dry-run", "--work-dir", work,
                        *args], capture_output=True, text=True, cwd=ROOT, env=env)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    return r


def trained(work: str, save: str) -> dict:
    """The training record of one system: two updates (the dry run), on the CPU."""
    record = json.load(open(os.path.join(work, save, "convergence.json")))
    assert record["num_updates"] == 2 and " --cpu " in record["command"]
    return record


def summary(work: str) -> dict:
    return json.load(open(os.path.join(work, "results", "summary.json")))


def test_dds_run_paper_dry_run(data, tmp_path):
    work = str(tmp_path / "dds")
    r = run_recipe("dds", work, "--ted-dir", data.ted, "--preset", "aze-tur", "--lrls", "aze",
                   "--systems", "uniform dds")
    command = trained(work, "seed1/aze/dds")["command"]
    assert "--arch lstm --encoder-layers 1" in command  # the paper's model (A.2), small in a dry run
    assert "--lang-pairs aze-eng,tur-eng" in command and "--dds-dev-lang-pair aze-eng" in command
    assert "--dds-update-scorer" not in command  # DDS learns its scorer, with the task's default objective
    assert set(summary(work)["systems"]) == {"uniform", "dds"}
    assert "Table 1" in r.stdout and "10.74" in r.stdout  # the paper's DDS figure for aze, beside ours


def test_latent_depth_run_paper_dry_run(data, tmp_path):
    work = str(tmp_path / "ld")
    r = run_recipe("latent_depth", work, "--ted-dir", data.ted, "--preset", "aze-tur", "--directions", "o2m",
                   "--systems", "static_deep latent_deep")
    command = trained(work, "seed1/o2m/latent_deep")["command"]
    # the language-specific side is gated and evaluated at the depth it trains (threshold, not top-K)
    assert "--decoder-latent-layers" in command and "--decoder-latent-select threshold" in command
    assert "--encoder-latent-layers" not in command and "--latent-soft-updates" not in command
    assert set(summary(work)["pairs"]) == {"eng-aze", "eng-tur"}
    assert "Table 10" in r.stdout


def test_metabt_run_paper_dry_run(data, tmp_path):
    work = str(tmp_path / "metabt")
    # the former set-up, on request: every BT system's forward model fine-tuned from the baseline, against baseline_ft
    r = run_recipe("metabt", work, "--iwslt-dir", data.iwslt, "--mono", os.path.join(data.wmt, "news.en"),
                   "--systems", "baseline baseline_ft metabt", BT_FORWARD="finetune")
    command = trained(work, "seed1/metabt")["command"]
    assert "--meta-dev-subset metadev" in command
    assert f"--forward-init {os.path.join(work, 'seed1', 'baseline', 'checkpoint_best.pt')}" in command
    assert "--lr 1e-4" in command  # the fine-tuning lr (A.2's pre-training lr is 7e-4)
    trained(work, "seed1/backward")
    s = summary(work)
    assert set(s["systems"]) == {"baseline", "baseline_ft", "metabt"} and s["control"] == "baseline_ft"
    assert s["provenance"]["knobs"]["BT_FORWARD"] == "finetune"
    assert "no paper figure" in r.stdout


def test_reconstruction_run_paper_dry_run(data, tmp_path):
    work = str(tmp_path / "rec")
    r = run_recipe("reconstruction", work, "--wmt-dir", data.wmt, "--systems", "baseline stgs-beta0.5")
    assert "--stgs-beta 0.5" in trained(work, "seed1/stgs-beta0.5")["command"]
    assert set(summary(work)["pairs"]) == {"tr-en", "en-tr"}
    assert "15.52" in r.stdout  # Table 2, TR->EN, beta = 0.5


def test_wake_sleep_run_paper_dry_run(data, tmp_path):
    work = str(tmp_path / "ws")
    wmt = str(tmp_path / "wmt_de_en")
    write_wmt(wmt, "de", "en")
    r = run_recipe("wake_sleep", work, "--setting", "ted", "--wmt-dir", wmt, "--iwslt-dir", data.iwslt,
                   "--src", "de", "--tgt", "en", "--iterations", "1")
    for save in ("seed1/iter0/forward", "seed1/iter1/backward", "seed1/control1/forward"):
        trained(work, save)
    raw = scan_raw_dir(os.path.join(work, "raw"))
    assert set(raw.mono) == {"de", "en"} and set(raw.bitext[("de", "en")]) == {"train", "valid", "test"}
    assert {"iter0", "iter1", "control1"} <= set(next(iter(summary(work)["pairs"].values()))["systems"])
    assert "27.29" in r.stdout  # Table 1, TED de-en, iteration 0


@pytest.mark.fast
@pytest.mark.parametrize("recipe", ["dds", "latent_depth", "metabt", "reconstruction", "wake_sleep"])
def test_paper_flags_are_checked_before_any_work(recipe, tmp_path):
    for flags, message in ((["--gpus", "0"], "--gpus takes a positive integer, got '0'"),
                           (["--update-freq", "x"], "--update-freq takes a positive integer, got 'x'")):
        r = subprocess.run(["bash", os.path.join(ROOT, "examples", recipe, "run_paper.sh"), *flags,
                            "--work-dir", str(tmp_path / "w")], capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 2 and r.stderr == f"fairseq-metabt: error: {message}\n", r.stderr
    help_text = subprocess.run(["bash", os.path.join(ROOT, "examples", recipe, "run_paper.sh"), "--help"],
                               capture_output=True, text=True, cwd=ROOT).stdout
    assert "--dry-run" in help_text and "--distributed-world-size" in help_text
