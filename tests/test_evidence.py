"""The evidence protocol (fairseq_metabt/evidence): convergence records from real fairseq-train runs,
Δ and p from real sacrebleu output, summaries, generated docs."""
import json
import os
import random
import statistics
import sys

import pytest

from conftest import ROOT, run
from fairseq_metabt.evidence import convergence, provenance, summary
from fairseq_metabt.evidence.convergence import Protocol, ProtocolError

EVIDENCE = [sys.executable, "-m", "fairseq_metabt.evidence"]


def _train_args(bin_dir, *extra):
    return [bin_dir, "--user-dir", os.path.join(ROOT, "fairseq_metabt"), "--task", "translation", "-s", "lrl",
            "-t", "tgt", "--arch", "transformer_lowres_tiny", "--optimizer", "adam", "--criterion",
            "label_smoothed_cross_entropy", "--max-tokens", "1024", "--cpu", "--num-workers", "0", "--seed", "1",
            "--log-format", "simple", *extra]


def test_capped_run_is_flagged_and_early_stop_is_converged(quickstart_bin, tmp_path):
    """A real fairseq-train that hits the update cap is 'capped, not converged'; one whose dev loss stops
    improving (lr 0: the dev loss is constant) stops by patience and counts as converged."""
    capped = str(tmp_path / "capped")
    run(EVIDENCE + ["train", "--save-dir", capped, "--patience", "2", "--validate-every", "4", "--max-update", "12",
                    "--"] + _train_args(quickstart_bin, "--lr", "5e-3"))
    rec = convergence.load(capped)
    assert not rec.converged and rec.status == "capped, not converged"
    assert rec.num_updates == 12 and "capped at 12" in rec.reason
    assert [u for u, _ in rec.validations] == [4, 8, 12]
    assert rec.best_update == min(rec.validations, key=lambda v: v[1])[0]
    assert os.path.exists(os.path.join(capped, "checkpoint_best.pt"))

    flat = str(tmp_path / "flat")
    run(EVIDENCE + ["train", "--save-dir", flat, "--patience", "2", "--validate-every", "4", "--max-update", "400",
                    "--"] + _train_args(quickstart_bin, "--lr", "0", "--lr-scheduler", "fixed"))
    rec = convergence.load(flat)
    assert rec.converged, rec.reason
    assert rec.num_updates == 12  # validations at 4, 8, 12: no improvement after the first, patience 2
    assert rec.best_update == 4 and rec.schedule["--lr"] == "0"
    # a finished run is reused, not retrained
    out = run(EVIDENCE + ["train", "--save-dir", flat, "--patience", "2", "--validate-every", "4", "--max-update",
                          "400", "--"] + _train_args(quickstart_bin, "--lr", "0", "--lr-scheduler", "fixed")).stdout
    assert "reusing" in out

    # provenance written by the tool: the commit, versions, one start, no reset early-stopping state to keep
    import subprocess

    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert rec.commit == head and isinstance(rec.dirty, bool) and rec.starts == 1
    assert rec.versions["fairseq"] and rec.versions["torch"] and rec.early_stop_state_kept is False
    assert "fairseq-train" in rec.command and "--patience 2" in rec.command
    # and the dictionaries it trained with, so runs trained in other sessions can be checked against each other
    assert rec.vocab_sha256 == convergence.vocab_fingerprint([quickstart_bin]) and len(rec.vocab_sha256) == 64
    # an interrupted run resumed from checkpoint_last.pt counts its starts (fairseq resets its stall count)
    os.remove(os.path.join(capped, convergence.RECORD))
    run(EVIDENCE + ["train", "--save-dir", capped, "--patience", "2", "--validate-every", "4", "--max-update", "16",
                    "--"] + _train_args(quickstart_bin, "--lr", "5e-3"))
    resumed = convergence.load(capped)
    assert resumed.starts == 2 and resumed.num_updates == 16
    # its wall time counts both starts (the first one's span is read from fairseq's log timestamps)
    with open(os.path.join(capped, convergence.LOG), encoding="utf-8") as f:
        exe = f.readline()[2:].split(" ")[0]
        first_span = convergence.earlier_starts_wall(f.read() + f"\n# {exe} again\n", exe)
    assert first_span >= 0 and resumed.wall_s >= first_span
    # a run started from another model's checkpoint records that model's convergence
    ft = str(tmp_path / "ft")
    run(EVIDENCE + ["train", "--save-dir", ft, "--patience", "1", "--validate-every", "4", "--max-update", "8",
                    "--"] + _train_args(quickstart_bin, "--lr", "1e-3", "--finetune-from-model",
                                        os.path.join(flat, "checkpoint_best.pt")))
    dep = convergence.load(ft).depends_on
    assert [(d["flag"], d["converged"], d["num_updates"], d["best_update"]) for d in dep] == [
        ("--finetune-from-model", True, 12, 4)]


@pytest.mark.fast
def test_a_resumed_runs_wall_time_adds_its_earlier_starts():
    exe = "/venv/bin/fairseq-train"
    log = "\n".join([
        f"# {exe} data --seed 1",
        "2026-12-05 11:18:43 | INFO | fairseq_cli.train | start",
        "2026-12-05 11:20:13 | INFO | train_inner | epoch 001:     50 / 60 loss=9.1",  # then killed
        f"# {exe} data --seed 1",
        "2026-12-05 12:15:00 | INFO | fairseq_cli.train | start",
        "2026-12-05 12:16:02 | INFO | fairseq_cli.train | done training",
        "", ])
    assert convergence.earlier_starts_wall(log, exe) == 90.0  # only the first start; the caller times the last
    assert convergence.earlier_starts_wall(log.split(f"# {exe}", 2)[0] + f"# {exe} x\nno stamps\n", exe) == 0.0
    three = log + f"# {exe} data --seed 1\n2026-12-05 13:00:00 | INFO | x\n"
    assert convergence.earlier_starts_wall(three, exe) == 90.0 + 62.0


@pytest.mark.fast
def test_classify_log_lines():
    proto = Protocol(patience=3, validate_interval_updates=10, max_update=100)
    stopped = "x | INFO | fairseq_cli.train | early stop since valid performance hasn't improved for last 3 runs\n"
    assert convergence.classify(stopped, proto, 70) == (True, "early stop: no dev improvement in 3 validations")
    assert convergence.classify("done training", proto, 100)[0] is False
    assert "capped" in convergence.classify("done training", proto, 100)[1]
    log = ("2026 | INFO | valid | epoch 003 | valid on 'valid' subset | loss 8.494 | nll_loss 8.072 | num_updates 50\n"
           "2026 | INFO | valid | epoch 005 | valid on 'valid' subset | loss 7.5 | nll_loss 7.1 | num_updates 100 "
           "| best_loss 7.5\n")
    assert convergence.validations(log, "loss") == [(50, 8.494), (100, 7.5)]
    assert convergence.validations(log, "nll_loss") == [(50, 8.072), (100, 7.1)]


def test_protocol_refuses_unfair_or_impossible_settings(tmp_path):
    with pytest.raises(ProtocolError, match="shorter than the shortest early stop"):
        Protocol(patience=5, validate_interval_updates=50, max_update=100).check()
    with pytest.raises(ProtocolError, match="belong to the protocol"):
        convergence.train(str(tmp_path / "x"), ["data", "--patience", "3"], Protocol(max_update=1000))
    with pytest.raises(ProtocolError, match="inside its warm-up"):
        convergence.train(str(tmp_path / "x"), ["data", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "300"],
                          Protocol(patience=2, validate_interval_updates=50, max_update=1000))
    assert not os.path.exists(tmp_path / "x")  # refused before anything was written
    proc = run(EVIDENCE + ["train", "--save-dir", str(tmp_path / "y"), "--patience", "0", "--", "data"], check=False)
    assert proc.returncode == 2
    assert proc.stdout.strip().splitlines()[-1].startswith("fairseq-metabt: error: patience 0 < 1")


# --- Δ and p from real sacrebleu output -------------------------------------------------------------------

def _corpus(seed, n=300):
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(60)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 14))) for _ in range(n)]


def _noisy(refs, keep, seed):
    rng = random.Random(seed)
    return [" ".join(w if rng.random() < keep else "zz" for w in r.split()) for r in refs]


def _record(work, system, seed, refs, hyps, converged=True, **prov):
    import sacrebleu

    d = os.path.join(work, f"seed{seed}")
    os.makedirs(d, exist_ok=True)
    ref_path, hyp_path = os.path.join(d, "ref.txt"), os.path.join(d, f"{system}.hyp")
    for path, lines in ((ref_path, refs), (hyp_path, hyps)):
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)
    scores = {"bleu": sacrebleu.corpus_bleu(hyps, [refs]).score, "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
              "n": len(refs)}
    save = os.path.join(d, system)
    os.makedirs(save, exist_ok=True)
    rec = convergence.Record(converged=converged, reason="test", num_updates=10, best_update=5, best=1.0,
                             metric="loss", protocol={}, schedule={}, **prov)
    from dataclasses import asdict

    from fairseq_metabt.evidence.io import atomic_write_json
    atomic_write_json(os.path.join(save, convergence.RECORD), asdict(rec))
    summary.add_eval(work, system, seed, "xx-yy", scores, hyp_path, ref_path, save)
    return scores


def _raw_corpus(path, preset="toy", languages=(("xx", "lrl"), ("yy", "target")), text="a b c\n"):
    """A raw-layout corpus directory with a manifest (the synthetic generator's and the catalog kit's fields)."""
    os.makedirs(path, exist_ok=True)
    for name in ("train.xx-yy.xx", "train.xx-yy.yy", "test.xx-yy.xx"):
        with open(os.path.join(path, name), "w", encoding="utf-8") as f:
            f.write(text)
    with open(os.path.join(path, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump({"generator": "gen", "preset": preset, "seed": 1, "description": "d",
                   "languages": [{"code": c, "role": r} for c, r in languages]}, f)
    return str(path)


@pytest.mark.fast
def test_corpus_record_names_the_corpus_by_its_content(tmp_path):
    """A summary of a user's corpus keeps its manifest and a hash of its files: the same text gives the same
    hash, one changed byte another; the kit's packages are read from its catalog.json."""
    a = _raw_corpus(tmp_path / "a")
    rec = provenance.corpus_record(a)
    assert rec["preset"] == "toy" and rec["languages"] == {"xx": "lrl", "yy": "target"} and rec["files"] == 3
    assert provenance.corpus_record(_raw_corpus(tmp_path / "b"))["sha256"] == rec["sha256"]
    assert provenance.corpus_record(_raw_corpus(tmp_path / "c", text="a b d\n"))["sha256"] != rec["sha256"]
    with open(os.path.join(a, "catalog.json"), "w", encoding="utf-8") as f:
        json.dump({"commit": "f" * 40, "source": {"distribution": "Debian 12 (bookworm)",
                                                 "packages": [{"package": "gimp-data", "version": "2.10"}]}}, f)
    kit = provenance.corpus_record(a)
    assert kit["sha256"] == rec["sha256"]  # the JSON descriptions are not corpus text
    assert kit["packages"] == {"gimp-data": "2.10"} and kit["kit_commit"] == "f" * 40
    line = summary._corpus_line({"corpus_record": kit})
    assert "preset `toy`" in line and "catalogs of 1 pinned Debian 12 (bookworm) packages" in line
    assert f"sha256 `{rec['sha256'][:16]}`" in line
    with pytest.raises(Exception, match="no such directory"):
        provenance.corpus_record(str(tmp_path / "missing"))


def _verdict_row(delta, verdict, n=5, **extra):
    return dict({"bleu": [1.0] * n, "chrf": [1.0] * n, "delta": delta, "p": 0.01, "converged": True,
                 "verdict": verdict, "paired_seeds": list(range(1, n + 1)),
                 "interval": {"n_seeds": n, "lo": delta - 1, "hi": delta + 1, "method": "t"}}, **extra)


@pytest.mark.fast
def test_synthetic_and_real_text_verdicts_side_by_side(tmp_path):
    """results.md puts a method's real-text verdicts (METHOD_catalog.json) beside its synthetic ones, matched by
    comparison and by the low-resource pair's direction whatever its languages are called."""
    control = {"bleu": [1.0] * 5, "chrf": [1.0] * 5, "delta": None, "p": None, "converged": True}
    synth = {"title": "M", "pairs": {
        "lrl-tgt": {"control": "base", "systems": {"base": control, "m": _verdict_row(2.0, "better")},
                    "also": [dict(_verdict_row(0.5, "level"), system="m", control="rel")]},
        "tgt-lrl": {"control": "base", "systems": {"base": control, "m": _verdict_row(-2.0, "worse")}}}}
    three = dict(control, bleu=[1.0] * 3, chrf=[1.0] * 3)
    real = {"title": "M real", "corpus_record": {"languages": {"gl": "low-resource source", "en": "target",
                                                               "pt": "related source"}},
            "pairs": {"gl-en": {"control": "base", "systems": {"base": three, "m": _verdict_row(-0.3, "level", 3),
                                                               "extra": _verdict_row(1.5, "better", 3)}},
                      "pt-en": {"control": "base", "systems": {"base": three, "m": _verdict_row(9.0, "better", 3)}}}}
    results = tmp_path / "results"
    os.makedirs(results / summary.INDICATIVE_DIR)
    for path, s in ((results / summary.INDICATIVE_DIR / "meth.json", synth), (results / "meth_catalog.json", real)):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(s, f)
    rows = [r for r in summary.render_side_by_side(str(results)).splitlines() if r.startswith("| meth |")]
    assert rows == [
        "| meth | LRL→TGT (lrl-tgt / gl-en) | m vs base | +2.00 [+1.00, +3.00] **better** (5 seeds) "
        "| -0.30 [-1.30, +0.70] **level*** (3 seeds) |",
        "| meth | LRL→TGT (lrl-tgt) | m vs rel | +0.50 [-0.50, +1.50] **level** (5 seeds) | – |",
        "| meth | TGT→LRL (tgt-lrl) | m vs base | -2.00 [-3.00, -1.00] **worse** (5 seeds) | – |",
        "| meth | LRL→TGT (gl-en) | extra vs base | – | +1.50 [+0.50, +2.50] **better*** (3 seeds) |"]
    assert summary.render_results_md(str(results)).startswith("# Synthetic and real text side by side")
    os.remove(results / "meth_catalog.json")  # without a real-text table there is nothing to put beside
    assert summary.render_side_by_side(str(results)) == ""


def test_compare_delta_and_p_are_sacrebleus_paired_by_seed(tmp_path):
    from sacrebleu.metrics import BLEU, CHRF
    from sacrebleu.significance import PairedTest

    work = str(tmp_path)
    seeds = [1, 2, 3]
    refs = {s: _corpus(s) for s in seeds}
    hyps = {s: {"control": _noisy(refs[s], 0.55, 10 + s), "better": _noisy(refs[s], 0.75, 20 + s),
                "same": _noisy(refs[s], 0.55, 10 + s)} for s in seeds}
    bleu = {}
    for s in seeds:
        for name in ("control", "better", "same"):
            bleu[(name, s)] = _record(work, name, s, refs[s], hyps[s][name], converged=(name != "same" or s != 2))
    out = str(tmp_path / "summary.json")
    raw = _raw_corpus(tmp_path / "raw")
    proc = run(EVIDENCE + ["compare", "--work-dir", work, "--control", "control", "--systems", "control", "better",
                           "same", "--command", "cmd", "--corpus", "toy", "--raw-dir", raw, "--out", out])
    with open(out, encoding="utf-8") as f:
        s = json.load(f)
    assert s["control"] == "control" and s["command"] == "cmd" and s["corpus"] == "toy"
    assert s["corpus_record"] == provenance.corpus_record(raw) and s["corpus_record"]["preset"] == "toy"
    better = s["systems"]["better"]
    assert better["bleu"] == pytest.approx([bleu[("better", k)]["bleu"] for k in seeds])
    expected_delta = statistics.mean(bleu[("better", k)]["bleu"] - bleu[("control", k)]["bleu"] for k in seeds)
    assert better["delta"] == pytest.approx(expected_delta, abs=1e-3)
    # p: sacrebleu's paired approximate randomisation on the seeds' test sets pooled, run here by hand
    pooled_c = sum((hyps[k]["control"] for k in seeds), [])
    pooled_b = sum((hyps[k]["better"] for k in seeds), [])
    pooled_r = sum((refs[k] for k in seeds), [])
    _, res = PairedTest([("c", pooled_c), ("b", pooled_b)], {"bleu": BLEU(), "chrf": CHRF()}, [pooled_r],
                        test_type="ar", n_samples=2000)()
    assert better["p"] == pytest.approx(res["BLEU"][1].p_value)
    assert better["p"] < 0.05 and better["converged"] is True
    same = s["systems"]["same"]
    assert same["delta"] == 0 and same["p"] == 1.0  # identical outputs: no difference, whatever sacrebleu's +1 says
    assert same["converged"] is False  # one seed's training did not converge
    assert s["systems"]["control"]["p"] is None
    table = proc.stdout
    assert "| ΔBLEU vs control [95 % CI] | verdict | p (pooled) |" in table and f"{expected_delta:+.2f} [" in table
    assert "**no**" in table and "Caveat: not converged: same seed 2" in table
    # the seed-level verdict: a clear gain on three seeds of 300 sentences, a mark for fewer than 5 seeds
    assert better["verdict"] == "better" and better["interval"]["lo"] > 0 and "| better* |" in table
    assert same["verdict"] == "level" and same["interval"]["lo"] == same["interval"]["hi"] == 0
    # provenance: every run's training record, and the machine's
    assert [r["seed"] for r in better["runs"]] == seeds and all(r["num_updates"] == 10 for r in better["runs"])
    assert s["provenance"]["versions"]["sacrebleu"] and s["provenance"]["cores"] >= 1


def test_precondition_says_when_the_baseline_had_not_converged(tmp_path):
    work = str(tmp_path)
    for seed in (1, 2):
        refs = _corpus(seed)
        _record(work, "baseline", seed, refs, _noisy(refs, 0.4, seed))
        _record(work, "baseline_ft", seed, refs, _noisy(refs, 0.7, seed + 5))
    s = summary.compare(work, "baseline_ft", ["baseline", "baseline_ft"], preconditions=[("baseline_ft", "baseline")])
    cond = s["preconditions"][0]
    assert cond["holds"] is False and cond["delta"] > 0 and cond["p"] < 0.05
    assert "NOT MET" in summary.render_summary(s)
    # and it holds when continuing gains nothing
    work2 = str(tmp_path / "b")
    for seed in (1, 2):
        refs = _corpus(seed)
        h = _noisy(refs, 0.6, seed)
        _record(work2, "baseline", seed, refs, h)
        _record(work2, "baseline_ft", seed, refs, h)
    s2 = summary.compare(work2, "baseline_ft", ["baseline", "baseline_ft"], preconditions=[("baseline_ft", "baseline")])
    assert s2["preconditions"][0]["holds"] is True


@pytest.mark.fast
def test_tables_report_each_systems_output_length_against_the_reference(tmp_path):
    """A system that drops words from every line is as short as a count of its words says, in the summary
    and in the table's note; a summary kept before the ratio was recorded prints no such note."""
    work = str(tmp_path)
    expected = {}
    for seed in (1, 2):
        refs = _corpus(seed)
        short = [" ".join(r.split()[: max(1, len(r.split()) * 2 // 3)]) for r in refs]
        _record(work, "control", seed, refs, _noisy(refs, 0.6, seed))
        _record(work, "short", seed, refs, short)
        expected[seed] = sum(len(h.split()) for h in short) / sum(len(r.split()) for r in refs)
    s = summary.compare(work, "control", ["control", "short"])
    assert s["systems"]["control"]["length_ratio"] == [1.0, 1.0]
    assert s["systems"]["short"]["length_ratio"] == pytest.approx([expected[1], expected[2]], abs=1e-3)
    assert 0.6 < expected[1] < 0.7
    table = summary.render_summary(s)
    mean = statistics.mean(expected.values())
    assert "output/reference length" in table and f"control 1.00, short {mean:.2f}" in table
    for entry in s["systems"].values():
        del entry["length_ratio"]
    assert "output/reference length" not in summary.render_summary(s)


@pytest.mark.fast
def test_results_md_is_generated_from_the_json_summaries(tmp_path):
    """docs/results.md is exactly what `python -m fairseq_metabt.evidence docs` makes of docs/results/*.json."""
    results_dir = os.path.join(ROOT, "docs", "results")
    out = str(tmp_path / "results.md")
    run(EVIDENCE + ["docs", "--results-dir", results_dir, "--out", out])
    with open(out, encoding="utf-8") as f, open(os.path.join(ROOT, "docs", "results.md"), encoding="utf-8") as g:
        assert f.read() == g.read(), "docs/results.md was edited by hand: regenerate it with " \
                                     "`python -m fairseq_metabt.evidence docs`"
    indicative = os.path.join(results_dir, summary.INDICATIVE_DIR)
    kept = [os.path.join(results_dir, f) for f in summary.kept_tables(results_dir)]
    earlier = ([os.path.join(indicative, f) for f in summary.kept_tables(indicative)]
               if os.path.isdir(indicative) else [])
    assert any(p.endswith("metabt.json") for p in kept)
    for path in kept + earlier:
        m = os.path.basename(path)[:-5]
        with open(path, encoding="utf-8") as f:
            s = json.load(f)
        if path in kept:
            # a table shown as kept has the provenance the tools write: commit, and per run its exact command,
            # update counts and convergence record (tables kept before that live in docs/results/indicative/)
            assert s["provenance"]["commit"], m
            runs = provenance.runs(s)
            assert runs, m
            for r in runs:
                assert r["command"].split()[0].endswith("fairseq-train") and r["commit"], (m, r["system"])
                assert r["num_updates"] >= r["best_update"] > 0 and r["converged"] is True, (m, r["system"])
        else:
            assert provenance.caveats(s)[0].startswith("provenance not recorded"), m
        for entry in (s.get("pairs") or {"": s}).values():
            assert entry["control"] in entry["systems"]
            for name, row in entry["systems"].items():
                assert {"bleu", "chrf", "delta", "p", "converged"} <= set(row), (m, name)
                assert len(row["bleu"]) == len(row["chrf"])
                # a kept comparison is one of converged systems (earlier runs: docs/results_legacy.md)
                assert row["converged"] is True, (m, name)
                # ... and every Δ has its seed-level verdict
                if name != entry["control"]:
                    assert row["verdict"] in ("better", "worse", "level") and row["interval"]["n_seeds"] >= 1
            for row in entry.get("also", []):
                assert row["verdict"] in ("better", "worse", "level"), (m, row)
        assert "notes" not in s, f"{m}: human readings live in docs/results/{m}.notes.md, not in the tool's JSON"


# --- seed-level interval and verdict (fairseq_metabt/evidence/seeds.py) ----------------------------------

@pytest.mark.fast
def test_seed_level_verdicts_on_hypotheses_whose_answer_is_known():
    """A system that wins on one seed only is `level` (the pooled sentence test calls it significant);
    identical outputs give Δ 0 and `level`; a win on every seed and sentence is `better`, a loss `worse`."""
    from fairseq_metabt.evidence import seeds, significance

    refs = _corpus(7, n=200)
    control = {s: _noisy(refs, 0.6, 30 + s) for s in (1, 2, 3)}
    one_seed = [(control[s], _noisy(refs, 0.9, 40) if s == 1 else control[s], refs) for s in (1, 2, 3)]
    out = seeds.seed_level(one_seed, "bleu", n_resamples=200)
    assert out["verdict"] == "level" and out["lo"] < 0 < out["hi"] and out["per_seed"][1:] == [0, 0]
    assert out["per_seed"][0] > 10 and out["shared_test_set"] is True
    pooled = significance.pooled(one_seed)  # what the table's p alone would have said
    assert pooled["bleu"]["p"] < 0.01

    same = seeds.seed_level([(control[s], control[s], refs) for s in (1, 2, 3)], "chrf", n_resamples=50)
    assert same["mean"] == 0 and (same["lo"], same["hi"], same["verdict"]) == (0, 0, "level")

    def everywhere_better(s):  # every sentence of every seed: the control's word errors, the system none
        return (control[s], refs, refs)
    win = seeds.seed_level([everywhere_better(s) for s in (1, 2, 3)], "bleu", n_resamples=200)
    assert win["verdict"] == "better" and win["lo"] > 0
    lose = seeds.seed_level([(refs, control[s], refs) for s in (1, 2, 3)], "bleu", n_resamples=200)
    assert lose["verdict"] == "worse" and lose["hi"] < 0
    # one seed has no seed-level interval, however large the gain
    assert seeds.seed_level([everywhere_better(1)], "bleu", n_resamples=20)["verdict"] == "level"


@pytest.mark.fast
def test_seed_level_interval_matches_a_brute_force_computation():
    """Per-seed Δ are sacrebleu's corpus scores; the sentence component is the variance of the seed-mean Δ over
    resampled test sets scored by sacrebleu.corpus_bleu itself; the interval is mean ± t(n−1)·SE."""
    import numpy as np
    import sacrebleu
    from scipy.stats import t

    from fairseq_metabt.evidence import seeds

    refs = _corpus(3, n=60)
    triples = [(_noisy(refs, 0.5, 50 + s), _noisy(refs, 0.5 + 0.08 * s, 60 + s), refs) for s in (1, 2, 3, 4)]
    out = seeds.seed_level(triples, "bleu", n_resamples=40, seed=5)
    deltas = [sacrebleu.corpus_bleu(sh, [r]).score - sacrebleu.corpus_bleu(ch, [r]).score for ch, sh, r in triples]
    assert out["per_seed"] == pytest.approx([round(d, 3) for d in deltas], abs=1e-3)
    rng = np.random.default_rng(5)
    means = []
    for _ in range(40):  # the same draws as the module: one index vector per resample, shared by the seeds
        idx = rng.integers(0, len(refs), len(refs))
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        means.append(statistics.mean(sacrebleu.corpus_bleu(pick(sh), [pick(r)]).score
                                     - sacrebleu.corpus_bleu(pick(ch), [pick(r)]).score for ch, sh, r in triples))
    var_sent = statistics.variance(means)
    se = (statistics.variance(deltas) / 4 + var_sent) ** 0.5
    mean = statistics.mean(deltas)
    assert out["se"] == pytest.approx(se, abs=1e-3)
    assert out["lo"] == pytest.approx(mean - t.ppf(0.975, 3) * se, abs=2e-3)
    assert out["hi"] == pytest.approx(mean + t.ppf(0.975, 3) * se, abs=2e-3)


@pytest.mark.fast
def test_kept_summaries_get_seed_level_verdicts_from_their_per_seed_scores(tmp_path):
    """`verdicts` adds intervals to a summary kept without hypotheses, and says their sentence part is missing."""
    kept = {"title": "t", "control": "c", "pair": "x-y", "systems": {
        "c": {"seeds": [1, 2, 3], "bleu": [10.0, 12.0, 11.0], "chrf": [30.0, 31.0, 32.0], "converged": True},
        "one": {"seeds": [1, 2, 3], "bleu": [16.0, 12.0, 11.0], "chrf": [33.0, 31.0, 32.0], "converged": True},
        "all": {"seeds": [1, 2, 3], "bleu": [12.0, 14.1, 12.9], "chrf": [32.0, 33.0, 34.0], "converged": True}},
        "also": [{"system": "all", "control": "one"}]}
    path = str(tmp_path / "kept.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(kept, f)
    out = run(EVIDENCE + ["verdicts", path]).stdout
    with open(path, encoding="utf-8") as f:
        s = json.load(f)
    assert s["systems"]["one"]["verdict"] == "level" and s["systems"]["all"]["verdict"] == "better"
    assert s["systems"]["all"]["interval"]["lo"] > 0 and "sentence component is missing" in \
        s["systems"]["all"]["interval"]["method"]
    assert s["also"][0]["delta_per_seed"] == [-4.0, 2.1, 1.9] and s["also"][0]["verdict"] == "level"
    assert "provenance not recorded by the tools" in out and "| level* |" in out


@pytest.mark.fast
def test_caveats_name_mixed_commits_dirty_trees_and_reset_resumes(tmp_path):
    work = str(tmp_path)
    refs = _corpus(1, n=80)
    _record(work, "c", 1, refs, _noisy(refs, 0.5, 1), commit="a" * 40, dirty=False, starts=1)
    _record(work, "s", 1, refs, _noisy(refs, 0.6, 2), commit="b" * 40, dirty=True, starts=2,
            early_stop_state_kept=False)
    _record(work, "c", 2, refs, _noisy(refs, 0.5, 3), commit="a" * 40, dirty=False, starts=3,
            early_stop_state_kept=True)  # resumed with plateau_updates: the early-stopping state was kept
    _record(work, "s", 2, refs, _noisy(refs, 0.6, 4), commit="a" * 40, dirty=False)
    s = summary.compare(work, "c", ["c", "s"], same_schedule=["c", "s"], n_samples=100)
    text = summary.render_summary(s)
    assert "different commits: aaaaaaaaaa (3 runs); bbbbbbbbbb (1 runs)" in text
    assert "uncommitted changes: s seed 1" in text
    assert "early-stopping state reset" in text and "s seed 1" in text.split("early-stopping state reset")[1]
    assert "c seed 2" not in text.split("early-stopping state reset")[1].split("\n")[0]
    # the schedule check no longer says "same" for a run resumed with its stall count reset
    assert s["schedule"]["same"] is False and "s seed 1 was resumed 1 time(s)" in " ".join(s["schedule"]["problems"])


@pytest.mark.fast
def test_systems_paired_on_a_seed_with_other_dictionaries_are_named(tmp_path):
    """A run trained in another session on a re-made binarisation: if its dictionaries differ from those of
    the systems it is paired with, the table's caveats say which (the vocabulary fingerprint of each run)."""
    data = tmp_path / "bin"
    data.mkdir()
    (data / "dict.xx.txt").write_text("a 3\nb 2\n")
    (data / "dict.yy.txt").write_text("c 1\n")
    (data / "train.xx-yy.xx.bin").write_text("not a dictionary")
    first = convergence.vocab_fingerprint([str(data), "--arch", "x"])
    assert first == convergence.vocab_fingerprint([f"{data}:{tmp_path / 'shard1'}"])  # fairseq's data shards
    copied = tmp_path / "stage"  # a later stage's data directory: the same dictionaries under fewer names
    copied.mkdir()
    (copied / "dict.xx.txt").write_text("a 3\nb 2\n")
    (copied / "dict.yy.txt").write_text("c 1\n")
    (data / "dict.zz.txt").write_text("c 1\n")
    assert convergence.vocab_fingerprint([str(copied)]) == first == convergence.vocab_fingerprint([str(data)])
    (data / "train.xx-yy.xx.bin").write_text("other data, same dictionaries")
    assert convergence.vocab_fingerprint([str(data)]) == first
    (data / "dict.yy.txt").write_text("c 1\nd 1\n")
    assert convergence.vocab_fingerprint([str(data)]) != first
    assert convergence.vocab_fingerprint([str(tmp_path / "nowhere")]) is None
    assert convergence.vocab_fingerprint(["--arch", "x"]) is None
    work = str(tmp_path / "work")
    refs = _corpus(1, n=40)
    for name, seed, vocab in (("c", 1, "a" * 64), ("s", 1, "a" * 64), ("c", 2, "a" * 64), ("s", 2, "b" * 64)):
        _record(work, name, seed, refs, _noisy(refs, 0.6, seed), vocab_sha256=vocab)
    s = summary.compare(work, "c", ["c", "s"], n_samples=50)
    notes = [n for n in provenance.caveats(s) if "different dictionaries" in n]
    assert len(notes) == 1 and "xx-yy seed 2: c / s" in notes[0] and "seed 1" not in notes[0], notes


@pytest.mark.fast
def test_every_training_scores_the_whole_dev_set():
    """fairseq's default --required-batch-size-multiple 8 drops the last n % 8 items of a dataset; the protocol
    asks for whole batches unless a recipe chose the multiple itself."""
    import numpy as np
    from fairseq.data import data_utils

    from fairseq_metabt.evidence.convergence import whole_batches

    sizes = np.full(150, 20)  # a 150-pair selection dev set
    for multiple, kept in ((8, 144), (1, 150)):
        batches = data_utils.batch_by_size(np.arange(150), lambda i: sizes[i], max_tokens=2048,
                                           required_batch_size_multiple=multiple, num_tokens_vec=sizes)
        assert sum(len(b) for b in batches) == kept, multiple
    assert whole_batches(["data", "--max-tokens", "2048"]) == ["--required-batch-size-multiple", "1"]
    assert whole_batches(["data", "--required-batch-size-multiple", "8"]) == []
    assert whole_batches(["data", "--required-batch-size-multiple=8"]) == []


@pytest.mark.fast
def test_provenance_line_names_the_commit_the_runs_were_trained_at():
    """A summary that reuses runs trained at an earlier commit says so beside the commit that summarised them."""
    def summary_at(prov_commit, run_commits):
        runs = [{"seed": i + 1, "commit": c} for i, c in enumerate(run_commits)]
        return {"provenance": {"commit": prov_commit, "dirty": False, "versions": {}, "python": "3.11", "cores": 2},
                "control": "a", "systems": {"a": {"runs": runs}}}

    line = summary._provenance_line(summary_at("b" * 40, ["a" * 40, "a" * 40]))
    assert line.startswith(f"Summarised at commit `{'b' * 10}` (every run trained at `{'a' * 10}`);"), line
    assert "trained at" not in summary._provenance_line(summary_at("a" * 40, ["a" * 40]))
    # runs from several commits are the caveat's business (provenance.caveats), not this line's
    mixed = summary_at("b" * 40, ["a" * 40, "c" * 40])
    assert "trained at" not in summary._provenance_line(mixed)
    assert provenance.caveats(mixed)[0].startswith("seeds or systems trained from different commits")


@pytest.mark.fast
def test_shards_of_other_seeds_merge_into_the_table_one_work_directory_gives(tmp_path):
    """A comparison trained over several sessions: seed 1 in one work directory, seeds 2-3 in another, each
    archived without checkpoints into a shard; merging the shards gives the very table that `compare` gives
    on one work directory holding all three seeds, with every shard's command and the corpus record."""
    from conftest import fails

    seeds = [1, 2, 3]
    refs = {s: _corpus(s) for s in seeds}
    raw = _raw_corpus(tmp_path / "raw")
    works = {"a": str(tmp_path / "a"), "b": str(tmp_path / "b"), "all": str(tmp_path / "all")}
    for s in seeds:
        hyps = {"control": _noisy(refs[s], 0.55, 10 + s), "better": _noisy(refs[s], 0.7, 20 + s)}
        for name, h in hyps.items():
            _record(works["a" if s == 1 else "b"], name, s, refs[s], h, commit=f"c{s}")
            _record(works["all"], name, s, refs[s], h, commit=f"c{s}")
    what = ["--control", "control", "--systems", "control", "better", "--same-schedule", "control", "better",
            "--title", "T", "--corpus", "toy"]

    def compare(work, command, out=None, knobs=()):
        out = out or os.path.join(work, "results", "summary.json")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        run(EVIDENCE + ["compare", "--work-dir", work, "--out", out, "--command", command, "--raw-dir", raw,
                        "--knob", "LR=1e-3"] + [a for k in knobs for a in ("--knob", k)] + what)
        return out

    whole = summary.read_json(compare(works["all"], "recipe --seeds '1 2 3'"))
    assert whole["compare_args"] == what  # where and by which command it ran is not part of what is compared
    compare(works["a"], "recipe --seeds 1")
    # the second session ran one training at a time: JOBS is how a session ran, not what it compared
    compare(works["b"], "JOBS=1 recipe --seeds '2 3'", knobs=["JOBS=1"])
    shard_a, shard_b = str(tmp_path / "shards" / "seed1"), str(tmp_path / "shards" / "seed2-3")
    run(EVIDENCE + ["archive", works["a"], shard_a])
    run(EVIDENCE + ["archive", works["b"], shard_b])
    # a shard holds no checkpoint and no absolute path; the runs moved away, it still merges
    kept = json.load(open(os.path.join(shard_a, "evals.json"), encoding="utf-8"))["records"]
    assert all(not os.path.isabs(r["hyps"]) and r["save_dir"].startswith("runs/") for r in kept.values())
    assert os.path.exists(os.path.join(shard_a, kept["better|1|xx-yy"]["save_dir"], convergence.RECORD))
    changed = str(tmp_path / "changed")
    for name, keep in (("control", 0.5), ("better", 0.7)):
        _record(changed, name, 1, refs[1], _noisy(refs[1], keep, 99))
    compare(changed, "recipe --seeds 1")
    run(EVIDENCE + ["archive", changed, str(tmp_path / "shards" / "seed1-other")])
    import shutil
    shutil.rmtree(works["a"]), shutil.rmtree(works["b"])
    out = str(tmp_path / "merged.json")
    proc = run(EVIDENCE + ["merge", shard_a, shard_b, "--out", out])
    merged = summary.read_json(out)
    for key in ("bleu", "chrf", "seeds", "delta", "p", "p_per_seed", "interval", "verdict", "converged"):
        assert merged["systems"]["better"][key] == whole["systems"]["better"][key], key
    assert [r["commit"] for r in merged["systems"]["better"]["runs"]] == ["c1", "c2", "c3"]
    assert merged["schedule"]["same"] is True and merged["schedule"]["systems"] == ["control", "better"]
    assert merged["corpus_record"] == whole["corpus_record"] and merged["provenance"]["knobs"] == {"LR": "1e-3"}
    assert merged["command"] == "recipe --seeds 1\nJOBS=1 recipe --seeds '2 3'"
    assert [(sh["path"], sh["seeds"]) for sh in merged["shards"]] == [("shards/seed1", [1]), ("shards/seed2-3", [2, 3])]
    assert "| better* |" in proc.stdout
    # a comparison the recipe did not pair can be added at the merge, between systems the shards hold
    paired = summary.read_json(run(EVIDENCE + ["merge", shard_a, shard_b, "--out", out, "--also", "control:better"])
                               and out)
    assert [(a["system"], a["control"]) for a in paired["also"]] == [("control", "better")]
    assert paired["also"][0]["delta"] == -merged["systems"]["better"]["delta"]
    assert paired["compare_args"][-2:] == ["--also", "control:better"]
    assert "hold no system nope" in fails(EVIDENCE + ["merge", shard_a, shard_b, "--out", out, "--also", "nope:control"])
    line = summary._commands_phrase(merged, "docs/results")
    assert "`recipe --seeds 1` (seeds 1: `docs/results/shards/seed1`)" in line and "seeds 2, 3" in line
    # what would make the merge wrong is refused, naming the shards
    assert "not empty" in fails(EVIDENCE + ["archive", works["all"], shard_a])
    assert "in both" in fails(EVIDENCE + ["merge", shard_a, str(tmp_path / "shards" / "seed1-other"), "--out", out])
    # seeds 2-3 in two sessions: the control first; then the other system, its control's scores imported from
    # the first shard (not retrained), so the recipe's table is made and the shards merge to the same table
    def part(name, systems, seed_list, imported=None):
        work = str(tmp_path / name)
        if imported:
            run(EVIDENCE + ["import", imported, work, "--systems", "control"])
        for k in seed_list:
            for sys_name in systems:
                keep, off = {"control": (0.55, 10), "better": (0.7, 20)}[sys_name]
                _record(work, sys_name, k, refs[k], _noisy(refs[k], keep, off + k), commit=f"c{k}")
        os.makedirs(os.path.join(work, "results"))
        run(EVIDENCE + ["compare", "--work-dir", work, "--out", os.path.join(work, "results", "summary.json"),
                        "--raw-dir", raw, "--knob", "LR=1e-3", "--control", "control", "--systems", *systems,
                        "--same-schedule", *systems, "--title", "T", "--corpus", "toy"])
        run(EVIDENCE + ["archive", work, str(tmp_path / "shards" / name)])
        return str(tmp_path / "shards" / name), work
    ctrl, _ = part("ctrl23", ["control"], [2, 3])
    rest, rest_work = part("rest23", ["better"], [2, 3], imported=ctrl)
    assert {r["system"] for r in summary.load_evals(rest_work).values()} == {"control", "better"}
    again = summary.read_json(run(EVIDENCE + ["merge", shard_a, ctrl, rest, "--out", out]) and out)
    for key in ("bleu", "delta", "interval", "verdict"):
        assert again["systems"]["better"][key] == whole["systems"]["better"][key], key
    # no shard holds every system (each session trained a part): the table is the union's
    parts = summary.read_json(run(EVIDENCE + ["merge", rest, ctrl, "--out", out]) and out)
    assert parts["systems"]["better"]["bleu"] == whole["systems"]["better"]["bleu"][1:]
    assert parts["systems"]["better"]["seeds"] == [2, 3] and parts["schedule"]["systems"] == ["better", "control"]
    assert parts["compare_args"][parts["compare_args"].index("--systems"):] == \
        ["--systems", "better", "control", "--same-schedule", "better", "control"]
    assert "already scored" in fails(EVIDENCE + ["import", ctrl, rest_work, "--systems", "control"])
    assert "holds no scored run" in fails(EVIDENCE + ["import", ctrl, str(tmp_path / "x"), "--systems", "nope"])
    other = str(tmp_path / "other")
    _record(other, "control", 4, refs[1], refs[1])
    _record(other, "better", 4, refs[1], refs[1])
    os.makedirs(os.path.join(other, "results"))
    run(EVIDENCE + ["compare", "--work-dir", other, "--out", os.path.join(other, "results", "summary.json"),
                    "--raw-dir", raw, "--knob", "LR=1e-3", "--control", "control", "--title", "T"])
    run(EVIDENCE + ["archive", other, str(tmp_path / "shards" / "other")])
    assert "differ in compare arguments" in fails(EVIDENCE + ["merge", shard_a, str(tmp_path / "shards" / "other"),
                                                              "--out", out])
    assert "not a shard" in fails(EVIDENCE + ["merge", str(tmp_path / "raw"), "--out", out])
    # a knob that changes how a system trains (here the lr) makes another comparison: refused
    lr = str(tmp_path / "lr")
    for name in ("control", "better"):
        _record(lr, name, 4, refs[1], _noisy(refs[1], 0.6, 40))
    os.makedirs(os.path.join(lr, "results"))
    run(EVIDENCE + ["compare", "--work-dir", lr, "--out", os.path.join(lr, "results", "summary.json"),
                    "--raw-dir", raw, "--knob", "LR=2e-3"] + what)
    run(EVIDENCE + ["archive", lr, str(tmp_path / "shards" / "lr")])
    assert "differ in knobs" in fails(EVIDENCE + ["merge", shard_a, str(tmp_path / "shards" / "lr"), "--out", out])
