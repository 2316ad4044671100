"""scripts/benchmark.py runs both systems in one run and prints the ratio last."""
import os
import re
import sys

from conftest import ROOT, fails, run


def test_baseline_benchmark_prints_ratio_last(quickstart_bin, tmp_path):
    """Two alternating pairs: each pair's ratio is its step times' quotient, the last line their median."""
    out = run([sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"), "--method", "baseline",
               "--bin-dir", quickstart_bin, "--work-dir", str(tmp_path), "--arch", "transformer_lowres_tiny",
               "--updates", "12", "--log-interval", "4", "--max-tokens", "1024", "--repeats", "2"]).stdout
    lines = [line for line in out.strip().splitlines() if line.strip()]
    assert re.fullmatch(r"ratio=\d+\.\d+", lines[-1]), lines[-3:]
    ratio = float(lines[-1].split("=")[1])
    assert 0.1 < ratio < 10.0
    # updates/s, not the 3-decimal step_time: tiny steps (~0.05 s) would round the quotient by up to 2 %
    ups = {role: [float(re.search(r"updates/s=(\d+\.\d+)", line).group(1))
                  for line in lines if line.startswith(role + " ")] for role in ("baseline", "method")}
    assert len(ups["baseline"]) == len(ups["method"]) == 2
    for role in ("baseline", "method"):
        row = next(line for line in lines if line.startswith(role))
        assert re.search(r"updates/s=\d+\.\d+ words/s=\d+ step_time=\d+\.\d+s peak_rss=\d+MiB", row), row
    pairs = [float(re.search(r"pair \d/2: ratio=(\d+\.\d+)", line).group(1)) for line in lines if line.startswith("pair")]
    assert len(pairs) == 2
    for pair, b, m in zip(pairs, ups["baseline"], ups["method"]):
        assert abs(pair - b / m) < 2e-3 * pair + 1e-3  # step time = 1 / updates per second
    assert abs(ratio - (pairs[0] + pairs[1]) / 2) < 2e-3
    # the same model on both sides: identical parameter counts in the logs
    counts = [re.search(r"num. shared model params: ([\d,]+)", open(tmp_path / f"baseline.{r}.{i}.log").read()).group(1)
              for r in ("baseline", "method") for i in (1, 2)]
    assert len(set(counts)) == 1


def test_benchmark_rejects_zero_repeats(tmp_path):
    out = fails([sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"), "--method", "baseline",
                 "--work-dir", str(tmp_path), "--repeats", "0"])
    assert "--repeats must be >= 1" in out


def test_sampling_benchmark_prints_both_samplers_and_the_ratio_last():
    out = run([sys.executable, os.path.join(ROOT, "scripts", "benchmark_sampling.py"), "--vocab", "60",
               "--batch", "8", "--repeats", "2"]).stdout
    lines = [line for line in out.strip().splitlines() if line.strip()]
    assert re.fullmatch(r"ratio=\d+\.\d+", lines[-1]), lines[-3:]
    for name in ("fairseq", "plugin", "loop"):
        assert re.match(rf"{name}\s+median\s+\d+\.\d+ ms per batch of 8", next(x for x in lines if x.startswith(name)))
    assert re.fullmatch(r"loop/plugin=\d+\.\d+", lines[-2]), lines[-3:]


def test_latent_skip_benchmark_prints_both_passes_and_the_ratio_last():
    out = run([sys.executable, os.path.join(ROOT, "scripts", "benchmark_latent_skip.py"), "--dim", "16",
               "--vocab", "60", "--tokens", "64", "--steps", "2", "--repeats", "1"]).stdout
    lines = [line for line in out.strip().splitlines() if line.strip()]
    assert re.fullmatch(r"ratio=\d+\.\d+", lines[-1]), lines[-3:]
    for name in ("full", "skip"):
        assert re.match(rf"{name}\s+median\s+\d+\.\d+ ms per step", next(x for x in lines if x.startswith(name)))
    assert "2 of 4 decoder layers kept" in out
    bad = fails([sys.executable, os.path.join(ROOT, "scripts", "benchmark_latent_skip.py"), "--keep", "5"])
    assert "--keep must be between 1 and --layers (4), got 5" in bad


def test_profile_ratios_and_phase_table_from_reports():
    """--profile's figures: each round's step ratios (medians over rounds), and a phase table whose rows
    and the rest add up to the timers' own step."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import benchmark

    steps = {"baseline": [1.0, 2.0, 1.0], "bt": [2.0, 3.0, 2.5], "metabt": [3.0, 6.0, 3.0],
             "bt@before": [3.0, 4.0, 3.0], "metabt@before": [6.0, 8.0, 6.0]}
    assert benchmark._ratios(steps) == {"bt@before/baseline": 3.0, "metabt@before/bt@before": 2.0,
                                        "bt/baseline": 2.0, "metabt/bt": 1.5}
    reports = [{"updates": 4, "step_s": 1.0, "phases": {"generation": {"s": 2.0, "n": 4}, "x": {"s": 1.0, "n": 4}}},
               {"updates": 6, "step_s": 2.0, "phases": {"generation": {"s": 6.0, "n": 6}}}]
    rows = benchmark.phase_table("bt", reports, 99.0)
    assert rows[0] == "bt phases (ms per update over 10 updates; step 1600 ms):"  # (4 * 1 + 6 * 2) / 10
    ms = {r.split()[0]: float(r.split()[-3]) for r in rows[1:]}
    assert ms["generation"] == 800.0 and ms["x"] == 100.0 and ms["(rest:"] == 700.0
    assert "give --method NAME or --profile" in fails([sys.executable, os.path.join(ROOT, "scripts", "benchmark.py")])
