"""scripts/benchmark.py runs both systems in one run and prints the ratio last."""
import os
import re
import sys

from conftest import ROOT, run


def test_baseline_benchmark_prints_ratio_last(quickstart_bin, tmp_path):
    out = run([sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"), "--method", "baseline",
               "--bin-dir", quickstart_bin, "--work-dir", str(tmp_path), "--arch", "transformer_lowres_tiny",
               "--updates", "12", "--log-interval", "4", "--max-tokens", "1024"]).stdout
    lines = [line for line in out.strip().splitlines() if line.strip()]
    assert re.fullmatch(r"ratio=\d+\.\d+", lines[-1]), lines[-3:]
    ratio = float(lines[-1].split("=")[1])
    assert 0.1 < ratio < 10.0
    for role in ("baseline", "method"):
        row = next(line for line in lines if line.startswith(role))
        assert re.search(r"updates/s=\d+\.\d+ words/s=\d+ step_time=\d+\.\d+s peak_rss=\d+MiB", row), row
    # the same model on both sides: identical parameter counts in the two logs
    counts = [re.search(r"num. shared model params: ([\d,]+)", open(tmp_path / f"baseline.{r}.log").read()).group(1)
              for r in ("baseline", "method")]
    assert counts[0] == counts[1]


def test_sampling_benchmark_prints_both_samplers_and_the_ratio_last():
    out = run([sys.executable, os.path.join(ROOT, "scripts", "benchmark_sampling.py"), "--vocab", "60",
               "--batch", "8", "--repeats", "2"]).stdout
    lines = [line for line in out.strip().splitlines() if line.strip()]
    assert re.fullmatch(r"ratio=\d+\.\d+", lines[-1]), lines[-3:]
    for name in ("fairseq", "plugin"):
        assert re.match(rf"{name}\s+median\s+\d+\.\d+ ms per batch of 8", next(x for x in lines if x.startswith(name)))
