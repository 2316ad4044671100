"""scripts/gpu_check.sh: usage, refusals, and its --cpu dry run (the same per-method loop, CPU autocast)."""
import os
import re

from conftest import ROOT, fails, run

SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")


def test_help_names_every_method_and_the_cpu_dry_run():
    out = run(["bash", SCRIPT, "--help"]).stdout
    assert "--cpu" in out and "--updates" in out and "--world-sizes" in out
    assert "metabt, dds, wake_sleep, stgs, latent_depth" in out


def test_bad_input_is_named():
    import torch

    if not torch.cuda.is_available():
        out = fails(["bash", SCRIPT])
        assert "no CUDA device visible" in out and "pass --cpu for a dry run" in out
    assert "unknown method(s) bogus" in fails(["bash", SCRIPT, "--cpu", "--methods", "bogus"])
    assert "--cpu checks one worker" in fails(["bash", SCRIPT, "--cpu", "--world-sizes", "1,2"])


def test_cpu_dry_run_prints_one_ok_line_per_method(tmp_path):
    out = run(["bash", SCRIPT, "--cpu", "--methods", "stgs,latent_depth", "--updates", "2",
               "--work-dir", str(tmp_path)]).stdout
    assert "no GPU figures" in out
    lines = [line for line in out.splitlines() if re.match(r"gpu_check: (stgs|latent_depth) ", line)]
    assert len(lines) == 2, out[-3000:]
    for line in lines:
        assert re.search(r" cpu +ok +updates/s=[0-9.]+ peak_mem=\d+MiB\(rss\) loss=[0-9.]+$", line), line
    assert "gpu_check: all ok" in out
