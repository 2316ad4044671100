"""kill -9 of a real fairseq-train run of each task after a mid-run checkpoint, then resume.

SIGKILL gives the process no chance to clean up (no atexit, no flush): the resumed run must still finish from
the mid-run checkpoint, and for MetaBT and DDS end with exactly the weights of an uninterrupted run.
"""
import os
import re
import signal
import subprocess

import pytest
import torch

from conftest import ROOT, assert_same_weights, cli_env, fairseq, run, task_train_args

MAX_UPDATE = 4
SAVE_AT = 2
EXACT = {"meta_backtranslation", "dds_translation"}


def kill_after_checkpoint(cmd, timeout: int = 300) -> str:
    """Start ``cmd``; SIGKILL it as soon as it logs its first saved checkpoint; return its output so far."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env(),
                            cwd=ROOT)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "Saved checkpoint" in line:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    out = "".join(lines)
    assert proc.returncode == -signal.SIGKILL, out[-3000:]
    return out


def _updates(path: str) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["optimizer_history"][-1]["num_updates"]


@pytest.mark.parametrize("task", ["meta_backtranslation", "dds_translation", "wake_sleep_translation",
                                  "latent_depth_translation", "bidirectional_translation"])
def test_sigkill_then_resume(task, quickstart_bin, tmp_path):
    save = str(tmp_path / "killed")
    cmd = [fairseq("fairseq-train"), *task_train_args(task, quickstart_bin, save, MAX_UPDATE,
                                                      "--save-interval-updates", str(SAVE_AT),
                                                      "--keep-interval-updates", "1", "--no-epoch-checkpoints")]
    out = kill_after_checkpoint(cmd)
    saved = re.search(r"Saved checkpoint \S+ \(epoch \d+ @ (\d+) updates", out)
    assert saved and int(saved.group(1)) == SAVE_AT, out[-3000:]
    assert "done training" not in out
    last = os.path.join(save, "checkpoint_last.pt")
    assert _updates(last) == SAVE_AT

    resumed = run(cmd).stdout
    assert re.search(rf"Loaded checkpoint \S+checkpoint_last\.pt \(epoch \d+ @ {SAVE_AT} updates\)", resumed), \
        resumed[-3000:]
    assert "done training" in resumed and _updates(last) == MAX_UPDATE

    if task in EXACT:  # resume is exact: same weights as a run that was never interrupted
        ref = str(tmp_path / "uninterrupted")
        run([fairseq("fairseq-train"), *task_train_args(task, quickstart_bin, ref, MAX_UPDATE,
                                                        "--save-interval-updates", str(SAVE_AT),
                                                        "--keep-interval-updates", "1", "--no-epoch-checkpoints")])
        assert_same_weights(torch.load(os.path.join(ref, "checkpoint_last.pt"), weights_only=True),
                            torch.load(last, weights_only=True))
