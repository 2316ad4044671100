"""Which of fairseq's DDP backends a component can train under, checked once at start-up.

fairseq wraps the model for data parallelism only with two or more workers:

* ``legacy_ddp`` / ``no_c10d`` (``LegacyDistributedDataParallel``): gradients are all-reduced once per
  update, when the trainer asks, every parameter's (a missing gradient counts as zeros).  Every method
  of the plugin is built on this contract.
* ``pytorch_ddp`` / ``c10d`` (torch's ``DistributedDataParallel``): the all-reduce happens *inside*
  ``backward()``, hooked on the parameters that required a gradient when the wrapper was built, and only
  after a forward pass *through the wrapper*.  A component breaks it when it freezes parameters after
  the wrapper exists (wake-sleep), calls the wrapped model's sub-modules directly (STGS's free-running
  round trip: no gradient is all-reduced at all, the workers drift apart silently), or reads the
  gradient between backward passes expecting the local value (DDS's EMA of per-language shares: the
  last share is read after DDP has averaged it across workers).

A component with such a reason calls :func:`refuse_pytorch_ddp` from its constructor: the run stops
with one line naming the backend and the fix before any data is read.
"""
from typing import Optional, Tuple

from fairseq_metabt.errors import UserError

PER_BACKWARD_BACKENDS = ("pytorch_ddp", "c10d")  # torch's DistributedDataParallel


def backend_and_world(cfg) -> Tuple[Optional[str], int]:
    """``(--ddp-backend, --distributed-world-size)`` from a config whose fields interpolate fairseq's
    (``ddp_backend = II("distributed_training.ddp_backend")``), a dict or a Namespace; ``(None, 1)`` when
    they cannot be read (a config built outside fairseq-train: nothing to check)."""
    try:
        if isinstance(cfg, dict):
            backend, world = cfg.get("ddp_backend"), cfg.get("distributed_world_size", 1)
        else:
            backend, world = getattr(cfg, "ddp_backend", None), getattr(cfg, "distributed_world_size", 1)
        return (None if backend is None else str(backend)), int(world if world is not None else 1)
    except Exception:  # an unresolved interpolation
        return None, 1


def refuse_pytorch_ddp(cfg, component: str, why: str) -> None:
    """Raise the one-line :class:`UserError` when ``cfg`` asks for torch's DDP with several workers."""
    backend, world = backend_and_world(cfg)
    if backend in PER_BACKWARD_BACKENDS and world > 1:
        raise UserError(f"{component} needs --ddp-backend legacy_ddp (or no_c10d) with {world} workers, got "
                        f"--ddp-backend {backend}: {why}", "scripts/train_ddp.sh passes legacy_ddp")
