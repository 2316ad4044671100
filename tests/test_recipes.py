"""One recipe interface: scripts/quickstart.sh and every examples/*/run_miniature.sh take the shared flags
and run on a corpus that is not the synthetic one (hand-written, language codes de/en/nl/fr)."""
import glob
import itertools
import json
import os
import re
import shlex

import pytest

from conftest import ROOT, run
from fairseq_metabt.evidence import provenance

RECIPES = {
    "quickstart": "scripts/quickstart.sh",
    "metabt": "examples/metabt/run_miniature.sh",
    "dds": "examples/dds/run_miniature.sh",
    "latent_depth": "examples/latent_depth/run_miniature.sh",
    "reconstruction": "examples/reconstruction/run_miniature.sh",
    "wake_sleep": "examples/wake_sleep/run_miniature.sh",
}
SHARED = ["--raw-dir", "--src", "--tgt", "--related", "--seeds", "--work-dir", "--patience", "--validate-every",
          "--max-update"]

# A hand-written toy grammar: subject + verb + object, word by word, in four languages.
WORDS = {
    "subj": [("der mann", "the man", "de man", "l'homme"), ("die frau", "the woman", "de vrouw", "la femme"),
             ("das kind", "the child", "het kind", "l'enfant"), ("der hund", "the dog", "de hond", "le chien"),
             ("die katze", "the cat", "de kat", "le chat"), ("mein vater", "my father", "mijn vader", "mon père")],
    "verb": [("sieht", "sees", "ziet", "voit"), ("hat", "has", "heeft", "a"), ("liebt", "loves", "houdt van", "aime"),
             ("sucht", "looks for", "zoekt", "cherche"), ("kauft", "buys", "koopt", "achète"),
             ("malt", "paints", "schildert", "peint")],
    "obj": [("ein haus", "a house", "een huis", "une maison"), ("einen ball", "a ball", "een bal", "un ballon"),
            ("das buch", "the book", "het boek", "le livre"), ("einen apfel", "an apple", "een appel", "une pomme"),
            ("die blume", "the flower", "de bloem", "la fleur"), ("ein auto", "a car", "een auto", "une voiture"),
            ("den stuhl", "the chair", "de stoel", "la chaise")],
}
LANGS = ("de", "en", "nl", "fr")


def _sentences():
    out = []
    for s, v, o in itertools.product(WORDS["subj"], WORDS["verb"], WORDS["obj"]):
        out.append(tuple(f"{s[i]} {v[i]} {o[i]} ." for i in range(4)))
    return out  # 252 parallel sentences


@pytest.fixture(scope="module")
def handwritten(tmp_path_factory):
    """de-en, nl-en, fr-en bitexts with dev and test sets, and monolingual de and en: the raw layout."""
    raw = tmp_path_factory.mktemp("handwritten")
    sents = _sentences()
    splits = {"train": sents[:180], "valid": sents[180:216], "test": sents[216:]}
    for src in ("de", "nl", "fr"):
        for split, rows in splits.items():
            for lang in (src, "en"):
                with open(raw / f"{split}.{src}-en.{lang}", "w", encoding="utf-8") as f:
                    f.writelines(r[LANGS.index(lang)] + "\n" for r in rows)
    for lang in ("de", "en"):
        with open(raw / f"mono.{lang}", "w", encoding="utf-8") as f:
            f.writelines(r[LANGS.index(lang)] + "\n" for r in sents[::2])
    return str(raw)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_help_shows_the_shared_flags(name):
    out = run(["bash", os.path.join(ROOT, RECIPES[name]), "--help"]).stdout
    for flag in SHARED:
        assert flag in out, (name, flag)


RECIPE_SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "examples", "*", "run_*.sh")))


@pytest.mark.fast
@pytest.mark.parametrize("script", RECIPE_SCRIPTS, ids=lambda p: os.path.relpath(p, ROOT))
def test_usage_defaults_are_the_script_defaults(script):
    """Every `[--flag VALUE]` a recipe's usage shows is the value the script really starts from (latent depth's
    usage once said --warmup 300 while the script used 200)."""
    text = open(script).read()
    shown = re.findall(r"\[(--[a-z-]+) ([0-9][0-9.e-]*)\]", text)
    for flag, value in shown:
        var = re.search(re.escape(flag) + r'\) ([A-Z_]+)="\$2"', text)  # --deep) DEEP="$2"
        if var is None:  # recipe_options --deep DEEP
            var = re.search(r"recipe_options\b(?:[^\n]|\\\n)*?" + re.escape(flag) + r" ([A-Z_]+)", text)
        assert var, f"{script}: usage shows {flag} but the script does not parse it"
        default = re.search(r"(?:^|[;\s])" + var.group(1) + r"=\"?([^\s;\"]*)", text, re.M)
        assert default, f"{script}: no default assignment of {var.group(1)} ({flag})"
        assert default.group(1) == value, f"{script}: usage says {flag} {value}, the script starts from {default.group(1)}"


def test_bad_shared_flags_are_one_line_errors(handwritten, tmp_path):
    proc = run(["bash", os.path.join(ROOT, RECIPES["dds"]), "--raw-dir", handwritten, "--src", "xx", "--tgt", "en",
                "--work-dir", str(tmp_path)], check=False)
    assert proc.returncode == 2
    assert proc.stdout.strip().splitlines() == [
        f"fairseq-metabt: error: {handwritten} has no train.xx-en.xx nor train.en-xx.xx "
        "(check --src/--tgt against the file names, docs/data.md)"]
    proc = run(["bash", os.path.join(ROOT, RECIPES["quickstart"]), "--seeds", "", "--work-dir", str(tmp_path)],
               check=False)
    assert proc.returncode == 2 and "--seeds needs at least one seed" in proc.stdout
    # a table without its control was refused only after every system had trained (2026-12-06)
    work = tmp_path / "no_control"
    proc = run(["bash", os.path.join(ROOT, RECIPES["quickstart"]), "--systems", "bt metabt", "--work-dir", str(work)],
               check=False)
    assert proc.returncode == 2 and "lacks the control baseline (" in proc.stdout
    proc = run(["bash", "-c", 'BT_FORWARD=finetune bash "$0" "$@"', os.path.join(ROOT, RECIPES["quickstart"]),
                "--systems", "baseline metabt", "--work-dir", str(work)], check=False)
    assert proc.returncode == 2 and "lacks the control baseline_ft" in proc.stdout
    proc = run(["bash", "-c", 'BT_FORWARD=fine bash "$0" "$@"', os.path.join(ROOT, RECIPES["quickstart"]),
                "--work-dir", str(work)], check=False)
    assert proc.returncode == 2 and "BT_FORWARD=fine: use scratch" in proc.stdout
    assert not work.exists() or not os.listdir(work)  # nothing trained, nothing written


# tiny settings: one seed, a few updates, the smallest model; the point is the interface, not the scores
TINY = ["--seeds", "1", "--patience", "1", "--validate-every", "4", "--max-update", "8"]
TINY_ENV = {"ARCH": "transformer_lowres_tiny", "WARMUP": "1", "FT_WARMUP": "1", "MAX_TOKENS": "1024",
            "WARMUP_ITER": "1", "BEAM": "1", "EVAL_SUBSETS": "test", "PROGRESS_POLL": "1"}

CASES = {
    "quickstart": ["--src", "de", "--tgt", "en", "--systems", "baseline baseline_ft bt"],
    "dds": ["--src", "de", "--tgt", "en", "--related", "nl,fr", "--systems", "uniform related dds tcs_dds fixed_order",
            "--interval", "2",
            "--arch", "transformer_lowres_tiny"],
    "latent_depth": ["--src", "de", "--tgt", "en", "--related", "nl", "--directions", "m2o", "--shallow", "1",
                     "--deep", "2", "--dim", "32", "--warmup", "1",
                     "--systems", "static_shallow static_k static_deep latent_deep latent_lang"],
    "reconstruction": ["--src", "de", "--tgt", "en", "--systems", "baseline stgs-beta0.5"],
    "wake_sleep": ["--src", "de", "--tgt", "en", "--iterations", "1"],
}


# the pair-level recipes' default regularisation for 2,000 pairs (scripts/recipe_lib.sh, recipe_lowres)
LOWRES = ("quickstart", "reconstruction", "wake_sleep")
LOWRES_FLAGS = ("--dropout 0.3", "--attention-dropout 0.1", "--activation-dropout 0.1", "--label-smoothing 0.2")
LOWRES_KNOBS = {"DROPOUT": "0.3", "ATTENTION_DROPOUT": "0.1", "ACTIVATION_DROPOUT": "0.1", "LABEL_SMOOTHING": "0.2",
                "VOCAB_SIZE": "2000"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_recipe_runs_on_a_handwritten_corpus(name, handwritten, tmp_path):
    work = str(tmp_path / "work")
    env = " ".join(f"{k}='{v}'" for k, v in TINY_ENV.items())
    # a recipe never writes into the checkout: every later run's provenance would say "uncommitted changes"
    changed = run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"]).stdout
    out = run(["bash", "-c", f'{env} bash "$0" "$@"', os.path.join(ROOT, RECIPES[name]), "--raw-dir", handwritten,
               "--work-dir", work, *TINY, *CASES[name]], timeout=1200).stdout
    assert run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"]).stdout == changed
    with open(os.path.join(work, "results", "summary.json"), encoding="utf-8") as f:
        s = json.load(f)
    entries = s.get("pairs") or {s["pair"]: s}
    assert all(set(p.split("-")) <= set(LANGS) for p in entries), entries.keys()
    for pair, entry in entries.items():
        for system, row in entry["systems"].items():
            assert len(row["bleu"]) == 1 and row["converged"] in (True, False), (pair, system)
            if system != entry["control"]:
                assert row["delta"] is not None and 0 < row["p"] <= 1, (pair, system, row)
                assert row["verdict"] == "level", (pair, system, row)  # one seed: no seed-level interval
            # provenance by construction: each seed's fairseq-train command, update counts, commit
            run_rec = row["runs"][0]
            assert run_rec["seed"] == 1 and "fairseq-train" in run_rec["command"], (pair, system, run_rec)
            assert isinstance(run_rec["num_updates"], int) and len(run_rec["commit"]) == 40, run_rec
    # the recipe's command line as launched, the environment knobs the user set included, and their values
    launched, _, argv = s["command"].partition(" bash ")
    assert {f"{k}={v}" for k, v in TINY_ENV.items() if k in s["provenance"]["knobs"]} <= set(launched.split())
    assert argv.startswith(f"{RECIPES[name]} --raw-dir {handwritten} --work-dir {work} --seeds 1"), s["command"]
    assert s["provenance"]["knobs"]["ARCH"] == "transformer_lowres_tiny" and s["provenance"]["commit"]
    assert {"torch", "fairseq", "sacrebleu", "sentencepiece"} <= set(s["provenance"]["versions"])
    # the user's corpus is named by its content, so a kept table says which text it was measured on
    assert s["corpus_record"] == provenance.corpus_record(handwritten), s.get("corpus_record")
    assert "| verdict | p (pooled) |" in out
    # the progress monitor ran beside the jobs and is gone with the recipe
    with open(os.path.join(work, "logs", ".progress.pid"), encoding="utf-8") as f:
        monitor = int(f.read())
    try:  # (the pid may since belong to another process: look for the monitor's own command line)
        with open(f"/proc/{monitor}/cmdline", encoding="utf-8", errors="replace") as f:
            cmdline = f.read()
    except FileNotFoundError:
        cmdline = ""
    assert not ("fairseq_metabt.evidence" in cmdline and work in cmdline), cmdline
    assert "en" in " ".join(entries)
    if name in LOWRES:  # the low-resource regularisation reaches every fairseq-train run (recipe_lowres)
        for pair, entry in entries.items():
            for system, row in entry["systems"].items():
                cmd = row["runs"][0]["command"]
                assert all(flag in cmd for flag in LOWRES_FLAGS), (pair, system, cmd)
        assert {k: s["provenance"]["knobs"][k] for k in LOWRES_KNOBS} == LOWRES_KNOBS, s["provenance"]["knobs"]
        with open(os.path.join(work, "bin", "prepare.json"), encoding="utf-8") as f:
            assert json.load(f)["options"]["vocab_size"] == 2000
    if name == "quickstart":  # BT_FORWARD=scratch: BT's forward model from random initialisation, as the baseline's
        entry = next(iter(entries.values()))
        assert entry["control"] == "baseline" and s["provenance"]["knobs"]["BT_FORWARD"] == "scratch"
        commands = {system: shlex.split(row["runs"][0]["command"]) for system, row in entry["systems"].items()}
        lr = {system: c[c.index("--lr") + 1] for system, c in commands.items()}
        assert "--forward-init" not in commands["bt"] and "--backward-init" in commands["bt"], commands["bt"]
        assert lr["bt"] == lr["baseline"] != lr["baseline_ft"], lr  # the schedule of its control
        assert entry["schedule"]["same"] and entry["schedule"]["systems"] == ["baseline", "bt"], entry["schedule"]
    if name == "wake_sleep":  # every later stage restarts iteration 0's lr; B repeated beside the pseudo pairs
        assert s["provenance"]["knobs"]["UPSAMPLE"] == "auto", s["provenance"]["knobs"]
        for entry in entries.values():
            commands = {system: shlex.split(row["runs"][0]["command"]) for system, row in entry["systems"].items()}
            lr = {system: c[c.index("--lr") + 1] for system, c in commands.items()}
            assert lr["iter1"] == lr["control1"] == lr["iter0"], lr
            assert all("--upsample-primary" in c for c in commands.values()), commands
    if name == "dds":  # DDS and TCS+DDS against the rules that could explain a gain, among the systems that ran
        also = {(a["system"], a["control"]) for entry in entries.values() for a in entry["also"]}
        assert also == {("dds", "related"), ("dds", "fixed_order"), ("tcs_dds", "related"),
                        ("tcs_dds", "fixed_order")}, also
        # the reading of the learned scorers (scripts/dds_report.py) over the seeds, beside the table
        with open(os.path.join(work, "results", "scorer.json"), encoding="utf-8") as f:
            scorer = json.load(f)
        assert sorted(os.path.basename(d) for d in scorer) == ["dds", "tcs_dds"], list(scorer)
        assert "**dds** (1 run;" in out and "**tcs_dds** (1 run;" in out
    if name == "latent_depth":  # the pruned plain Transformers compute what the gated model computes
        for pair, entry in entries.items():
            rows = entry["systems"]
            assert rows["latent_pruned"]["bleu"] == rows["latent_deep"]["bleu"], (pair, rows)
            assert {"static_shallow", "static_k", "static_deep", "latent_lang"} <= set(rows), rows.keys()
        # static_k has the pruned model's shape: m2o gates the encoder, so K = 1 encoder and 2 decoder layers
        from fairseq import checkpoint_utils

        state = checkpoint_utils.load_checkpoint_to_cpu(os.path.join(work, "seed1", "m2o", "static_k",
                                                                     "checkpoint_best.pt"))
        layers = {side: len({k.split(".")[4] for k in state["model"] if k.startswith(f"models.de-en.{side}.layers.")})
                  for side in ("encoder", "decoder")}
        assert layers == {"encoder": 1, "decoder": 2}, layers
        # every seed's gate selection, per language, next to the first seed's heatmap
        with open(os.path.join(work, "heatmap.m2o.seed1.json"), encoding="utf-8") as f:
            gates = json.load(f)
        assert sorted(gates["langs"]) == ["de", "nl"] and len(gates["encoder"]["selected"]) == 2, gates
        assert all(v in (0.0, 1.0) for row in gates["encoder"]["selected"] for v in row), gates
        assert os.path.exists(os.path.join(work, "heatmap.m2o.png"))
        # latent_lang: L_K on each language's own utilisation, in the checkpoint's config and compared
        lang_state = checkpoint_utils.load_checkpoint_to_cpu(os.path.join(work, "seed1", "m2o", "latent_lang",
                                                                          "checkpoint_best.pt"))
        assert lang_state["cfg"]["criterion"]["latent_lk_utilisation"] == "language"
        assert os.path.exists(os.path.join(work, "heatmap.m2o.latent_lang.seed1.json"))
        for entry in entries.values():
            also = {(a["system"], a["control"]) for a in entry["also"]}
            assert {("latent_lang", "latent_deep"), ("latent_lang", "static_k")} <= also, also
