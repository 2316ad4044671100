"""Checkpoint loading on torch >= 2.6 keeps weights_only on and accepts fairseq's types."""
import argparse
import io
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import fairseq_metabt  # noqa: F401  (applies compat)
from fairseq_metabt import compat
from conftest import ROOT


class NotAllowListed:
    """A class no fairseq checkpoint contains; loading it must still be refused."""

    def __init__(self):
        self.x = 1


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf)  # default weights_only (True on torch >= 2.6)


def test_fairseq_checkpoint_types_load_with_default_weights_only():
    state = {
        "args": argparse.Namespace(arch="transformer", lr=[0.001]),
        "extra_state": {"metrics": {"bleu": np.array([3, 4, 5], dtype=np.int64), "best": np.float64(1.5)}},
        "model": {"w": torch.ones(2)},
    }
    loaded = _roundtrip(state)
    assert loaded["args"].arch == "transformer"
    assert loaded["extra_state"]["metrics"]["bleu"].tolist() == [3, 4, 5]
    assert float(loaded["extra_state"]["metrics"]["best"]) == 1.5
    assert torch.equal(loaded["model"]["w"], torch.ones(2))


def test_weights_only_still_refuses_other_types():
    buf = io.BytesIO()
    torch.save({"evil": NotAllowListed()}, buf)
    buf.seek(0)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(buf)


def test_allow_list_is_exact():
    names = {getattr(t, "__name__", str(t)) for t in compat._checkpoint_safe_globals()}
    assert "Namespace" in names and "ndarray" in names and "_reconstruct" in names
    # nothing broad such as builtins.object or a module-level eval slipped in
    assert not names & {"object", "eval", "exec", "getattr", "type"}


def test_process_group_is_destroyed_at_exit(tmp_path):
    """fairseq leaves its gloo group alive at exit (a SIGABRT risk); the plugin's exit hook destroys it."""
    script = f"""
import atexit, torch.distributed as dist
# registered first, so it runs last (atexit is LIFO): after the plugin's hook
atexit.register(lambda: print("initialized at exit:", dist.is_initialized(), flush=True))
import fairseq_metabt  # noqa: F401
dist.init_process_group("gloo", init_method="file://{tmp_path / 'store'}", rank=0, world_size=1)
print("initialized:", dist.is_initialized(), flush=True)
"""
    proc = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout
    assert "initialized: True" in proc.stdout
    assert "initialized at exit: False" in proc.stdout, proc.stdout
