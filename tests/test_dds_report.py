"""scripts/dds_report.py: the figures of a DDS scorer's log, checked against a log written by hand."""
import json
import os
import sys

import pytest

from conftest import ROOT, run

REPORT = os.path.join(ROOT, "scripts", "dds_report.py")


def _rec(update, p, reward, valid, learned, entropy, kl):
    return {"update": update, "langs": ["a", "b", "c"], "p": p, "reward": reward, "valid": valid,
            "learned": learned, "entropy": entropy, "kl_prior": kl}


def _write(path, records):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "dds_log.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


@pytest.mark.fast
def test_report_figures_match_the_log(tmp_path):
    records = [
        _rec(50, [0.2, 0.3, 0.5], [0.0, 0.0, 0.0], [False, False, False], False, 1.0, 0.0),  # before the scorer
        _rec(100, [0.3, 0.3, 0.4], [0.5, 0.1, 0.2], [True, True, True], True, 0.9, 0.1),
        _rec(150, [0.4, 0.3, 0.3], [0.3, 0.4, 0.9], [True, True, False], True, 0.8, 0.3),  # c's reward not valid
        _rec(200, [0.5, 0.2, 0.3], [0.6, 0.2, -0.1], [True, True, True], True, 0.7, 0.2),
    ]
    seed1, seed2 = str(tmp_path / "seed1" / "dds"), str(tmp_path / "seed2" / "dds")
    _write(seed1, records)
    _write(seed2, records[:2])
    out_json = str(tmp_path / "report.json")
    out = run([sys.executable, REPORT, seed1, seed2, "--json", out_json]).stdout
    with open(out_json, encoding="utf-8") as f:
        rep = json.load(f)
    one = rep[seed1]
    assert one["scorer_updates"] == 3 and one["ranked_records"] == 3 and one["updates"] == 200
    a, b, c = (one["languages"][k] for k in "abc")
    # a is top at 100 and 200; at 150 b beats a (c is not valid there)
    assert a["top_share"] == pytest.approx(2 / 3) and b["top_share"] == pytest.approx(1 / 3) and c["top_share"] == 0
    # lowest: b at 100, a at 150, c at 200
    assert a["bottom_share"] == b["bottom_share"] == c["bottom_share"] == pytest.approx(1 / 3)
    assert a["reward_mean"] == pytest.approx((0.5 + 0.3 + 0.6) / 3) and c["reward_mean"] == pytest.approx(0.05)
    # p averaged from the first scorer update on (updates 100-200), start and end as logged
    assert a["p_mean"] == pytest.approx(0.4) and a["p_start"] == 0.2 and a["p_end"] == 0.5
    assert one["entropy_mean"] == pytest.approx(0.8) and one["entropy_min"] == 0.7 and one["entropy_end"] == 0.7
    assert one["kl_mean"] == pytest.approx(0.2) and one["kl_max"] == 0.3 and one["kl_end"] == 0.2
    # the two seeds are one group ("dds"), its cells the range over them
    assert "**dds** (2 runs; updates 100–200, scorer updates 1–3;" in out
    assert "| a | 0.47–0.50 | 67%–100% | 0%–33% | 0.200 | 0.300–0.400 | 0.300–0.500 |" in out


@pytest.mark.fast
def test_report_names_a_missing_run(tmp_path):
    proc = run([sys.executable, REPORT, str(tmp_path / "nope")], check=False)
    assert proc.returncode == 2 and "no such run directory" in proc.stdout
