"""The evidence protocol (fairseq_metabt/evidence): convergence records from real fairseq-train runs,
Δ and p from real sacrebleu output, summaries, generated docs."""
import json
import os
import random
import statistics
import sys

import pytest

from conftest import ROOT, run
from fairseq_metabt.evidence import convergence, summary
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


def _record(work, system, seed, refs, hyps, converged=True):
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
                             metric="loss", protocol={}, schedule={})
    from dataclasses import asdict

    from fairseq_metabt.evidence.io import atomic_write_json
    atomic_write_json(os.path.join(save, convergence.RECORD), asdict(rec))
    summary.add_eval(work, system, seed, "xx-yy", scores, hyp_path, ref_path, save)
    return scores


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
    proc = run(EVIDENCE + ["compare", "--work-dir", work, "--control", "control", "--systems", "control", "better",
                           "same", "--command", "cmd", "--corpus", "toy", "--out", out])
    with open(out, encoding="utf-8") as f:
        s = json.load(f)
    assert s["control"] == "control" and s["command"] == "cmd" and s["corpus"] == "toy"
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
    assert "| ΔBLEU vs control | p |" in table and f"{expected_delta:+.2f}" in table and "**no**" in table


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


def test_results_md_is_generated_from_the_json_summaries(tmp_path):
    """docs/results.md is exactly what `python -m fairseq_metabt.evidence docs` makes of docs/results/*.json."""
    results_dir = os.path.join(ROOT, "docs", "results")
    out = str(tmp_path / "results.md")
    run(EVIDENCE + ["docs", "--results-dir", results_dir, "--out", out])
    with open(out, encoding="utf-8") as f, open(os.path.join(ROOT, "docs", "results.md"), encoding="utf-8") as g:
        assert f.read() == g.read(), "docs/results.md was edited by hand: regenerate it with " \
                                     "`python -m fairseq_metabt.evidence docs`"
    methods = {f[:-5] for f in os.listdir(results_dir) if f.endswith(".json")}
    assert "metabt" in methods
    for m in methods:
        with open(os.path.join(results_dir, m + ".json"), encoding="utf-8") as f:
            s = json.load(f)
        for entry in (s.get("pairs") or {"": s}).values():
            assert entry["control"] in entry["systems"]
            for name, row in entry["systems"].items():
                assert {"bleu", "chrf", "delta", "p", "converged"} <= set(row), (m, name)
                assert len(row["bleu"]) == len(row["chrf"])
                # a kept comparison is one of converged systems (earlier runs: docs/results_legacy.md)
                assert row["converged"] is True, (m, name)
