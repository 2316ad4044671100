"""The one place where fairseq-metabt bends to fairseq / torch versions.

Everything that exists only because of a particular combination of library
versions lives here, so that it can be found and removed in one place.

* torch >= 2.6 loads checkpoints with ``weights_only=True``.  fairseq
  checkpoints pickle a few non-tensor types (``argparse.Namespace`` for the
  legacy config, numpy scalars/arrays for ``--eval-bleu`` statistics in
  ``extra_state``).  We allow-list exactly those types instead of turning
  ``weights_only`` off, so loading an untrusted pickle is still refused.
* fairseq never calls ``torch.distributed.destroy_process_group()``.  With
  gloo, a rank that reaches interpreter shutdown with the process group alive
  can abort ("terminate called without an active exception", SIGABRT) after
  training has finished (pytorch/pytorch#190489; seen here in 2-worker CPU
  runs).  We destroy the group at exit, while the interpreter is still whole.
"""
from __future__ import annotations

import argparse
import atexit
import logging
from typing import List

logger = logging.getLogger(__name__)


def _checkpoint_safe_globals() -> List[object]:
    """The exact non-tensor types found in fairseq checkpoints.

    Measured on fairseq-fixed 0.12.3.1: ``argparse.Namespace`` (legacy args);
    with ``--eval-bleu`` numpy arrays of BLEU statistics in
    ``extra_state['metrics']`` pickle ``ndarray``, ``dtype``, the int64 dtype
    class and numpy's array reconstructor.
    """
    import numpy as np

    types: List[object] = [argparse.Namespace, np.ndarray, np.dtype]
    # numpy >= 1.25 exposes concrete dtype classes; checkpoints reference the
    # ones of the arrays they hold (int64 for BLEU counts, float for scores).
    dtypes_mod = getattr(np, "dtypes", None)
    if dtypes_mod is not None:
        for name in ("Int64DType", "Int32DType", "Float64DType", "Float32DType", "BoolDType"):
            if hasattr(dtypes_mod, name):
                types.append(getattr(dtypes_mod, name))
    # The reconstructor moved from numpy.core to numpy._core in numpy 2.
    try:
        from numpy._core.multiarray import _reconstruct  # type: ignore
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore
    types.append(_reconstruct)
    # numpy scalars (e.g. a float64 best-BLEU) pickle through ``scalar``.
    try:
        from numpy._core.multiarray import scalar  # type: ignore
    except ImportError:
        try:
            from numpy.core.multiarray import scalar  # type: ignore
        except ImportError:
            scalar = None
    if scalar is not None:
        types.append(scalar)
    return types


def allow_fairseq_checkpoint_types() -> bool:
    """Allow-list the types of :func:`_checkpoint_safe_globals` for ``torch.load``.

    Returns True when the allow-list was installed, False on torch versions
    without ``weights_only`` safe globals (where nothing needs to be done).
    ``weights_only`` itself is never changed.
    """
    import torch

    add = getattr(getattr(torch, "serialization", None), "add_safe_globals", None)
    if add is None:
        return False
    add(_checkpoint_safe_globals())
    return True


def destroy_process_group_at_exit() -> None:
    """Destroy the default process group if fairseq left one (a local operation: no collective, no wait)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


_EXIT_HOOK_INSTALLED = False


def apply() -> None:
    """Install every accommodation; called once when the plugin is imported."""
    global _EXIT_HOOK_INSTALLED
    allow_fairseq_checkpoint_types()
    if not _EXIT_HOOK_INSTALLED:
        atexit.register(destroy_process_group_at_exit)
        _EXIT_HOOK_INSTALLED = True
