"""scripts/gpu_check.sh: usage, refusals, and its --cpu dry run (the same per-method loop, CPU autocast)."""
import os
import re
import subprocess

import pytest

from conftest import ROOT, fails, run

SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """One work directory: the synthetic corpus is generated and prepared once for the module."""
    return str(tmp_path_factory.mktemp("gpu_check"))


def test_help_names_every_method_and_the_cpu_dry_run():
    out = run(["bash", SCRIPT, "--help"]).stdout
    assert "--cpu" in out and "--updates" in out and "--world-sizes" in out and "--backends" in out
    assert "metabt, dds, wake_sleep, stgs, latent_depth" in out


def test_bad_input_is_named():
    import torch

    if not torch.cuda.is_available():
        out = fails(["bash", SCRIPT])
        assert "no CUDA device visible" in out and "pass --cpu for a dry run" in out
    assert "unknown method(s) bogus" in fails(["bash", SCRIPT, "--cpu", "--methods", "bogus"])
    assert "--backends bogus: choose from" in fails(["bash", SCRIPT, "--cpu", "--backends", "bogus"])


def test_cpu_run_two_workers_under_torch_ddp(work):
    """The GPU matrix on the CPU: latent depth trains with 2 gloo workers under pytorch_ddp (bf16 forward,
    identical replicas); STGS refuses pytorch_ddp with its one line on every rank, which counts as ok."""
    out = run(["bash", SCRIPT, "--cpu", "--methods", "stgs,latent_depth", "--world-sizes", "2", "--backends",
               "pytorch_ddp", "--work-dir", work]).stdout
    assert "no GPU figures" in out
    assert re.search(r"gpu_check: latent_depth +2cpu/pytorch_ddp +ok +updates/s=[0-9.]+ peak_mem=\d+MiB\(rss\) "
                     r"loss=[0-9.]+$", out, re.M), out[-3000:]
    assert re.search(r"gpu_check: stgs +2cpu/pytorch_ddp +refused \(as expected: stgs_reconstruction needs "
                     r"--ddp-backend legacy_ddp", out, re.M), out[-3000:]
    assert "gpu_check: all ok" in out


def test_an_fp32_forward_fails_the_check(work):
    """A run whose autocast is off (the silent-fp32 defect, injected) trains fine but fails the check."""
    proc = run(["bash", SCRIPT, "--cpu", "--methods", "latent_depth", "--world-sizes", "1", "--inject-fp32",
                "--work-dir", work], check=False)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert re.search(r"gpu_check: latent_depth +1cpu +FAILED .*fp32 forward under --amp \(saw torch.float32; "
                     r"want torch.bfloat16\)", proc.stdout), proc.stdout[-3000:]
    assert "gpu_check: 1 of 1 failed" in proc.stdout


def test_timeout_kills_every_worker(work):
    """Past --timeout the run fails and its whole process group goes (no worker is left behind)."""
    proc = run(["bash", SCRIPT, "--cpu", "--methods", "dds", "--world-sizes", "2", "--backends", "legacy_ddp",
                "--updates", "500", "--timeout", "3", "--work-dir", work], check=False)  # 500: never done in 3 s
    assert proc.returncode == 1 and re.search(r"gpu_check: dds +2cpu/legacy_ddp +FAILED +exit=timeout", proc.stdout), \
        proc.stdout[-3000:]
    left = subprocess.run(["pgrep", "-f", f"{work}/dds.2cpu"], stdout=subprocess.PIPE, text=True).stdout
    assert not left.strip(), f"workers still running: {left}"
