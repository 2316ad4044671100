"""Mixed precision inside the plugin's own training steps, and updates fairseq skips.

fairseq turns autocast on only inside the base ``FairseqTask.train_step``
(``torch.cuda.amp.autocast(enabled=isinstance(optimizer, AMPOptimizer))``
around the criterion's forward).  A task that replaces ``train_step`` must do
the same or ``--amp`` silently trains in fp32: :func:`amp_train_step` wraps a
task's ``train_step`` in :func:`autocast`, which is fairseq's context on CUDA
(fp16) and bf16 autocast on CPU, so the same code path runs in the CPU tests.

fairseq retries or drops an update on an AMP overflow (``optimizer_step`` is
called with a non-finite gradient, the scaler skips the step, the trainer
re-runs ``train_step`` on the same batch), on ``--fp16`` overflow
(``OverflowError`` before ``optimizer_step``) and on an out-of-memory error in
a micro-batch; in every case it clears the gradients with ``zero_grad``.  A
task's per-update state must therefore be reset when an update *starts*
(:func:`starts_update`) and must not be committed when fairseq skips the step
(:func:`update_skipped`).

A second optimizer the plugin owns (MetaBT's backward model) gets its own
loss scaler (:func:`grad_scaler`) when its losses come from fp16 autocast.
"""
from __future__ import annotations

import functools
from typing import Callable, Iterable, Optional

import torch

from fairseq_metabt.errors import UserError


def _amp_optimizer_type():
    from fairseq.optim.amp_optimizer import AMPOptimizer

    return AMPOptimizer


def is_amp(optimizer) -> bool:
    """Whether fairseq trains with ``--amp`` (its ``AMPOptimizer``), the only case it autocasts."""
    return isinstance(optimizer, _amp_optimizer_type())


def _device_of(params_or_module) -> torch.device:
    if isinstance(params_or_module, torch.nn.Module):
        params_or_module = params_or_module.parameters()
    if isinstance(params_or_module, torch.Tensor):
        return params_or_module.device
    for p in params_or_module:
        return p.device
    return torch.device("cpu")


def autocast_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA (what ``torch.cuda.amp.autocast`` in fairseq's base step uses), bf16 elsewhere."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def autocast(optimizer, params_or_module, enabled: Optional[bool] = None):
    """fairseq's autocast for a custom training step: on exactly when ``optimizer`` is fairseq's
    ``AMPOptimizer`` (or ``enabled`` says so), on the device of the given parameters."""
    device = _device_of(params_or_module)
    on = is_amp(optimizer) if enabled is None else enabled
    return torch.autocast(device.type, dtype=autocast_dtype(device), enabled=on)


def full_precision(params_or_module):
    """Autocast off on the parameters' device: for computations that must stay in fp32 inside an
    autocast region (finite-difference rewards, a scorer's REINFORCE loss)."""
    return torch.autocast(_device_of(params_or_module).type, enabled=False)


def amp_train_step(fn: Callable) -> Callable:
    """Decorator for a task's ``train_step(self, sample, model, criterion, optimizer, ...)``: run it under
    :func:`autocast`, as fairseq's base step runs the criterion.

    Backward passes inside the step run in the precision autocast chose for the matching forward ops
    (torch's documented behaviour), so the numerics equal fairseq's forward-only autocast region."""

    @functools.wraps(fn)
    def wrapper(self, sample, model, criterion, optimizer, *args, **kwargs):
        with autocast(optimizer, model):
            return fn(self, sample, model, criterion, optimizer, *args, **kwargs)

    wrapper.__amp_train_step__ = True
    return wrapper


def starts_update(params: Iterable[torch.Tensor]) -> bool:
    """True at the first micro-batch of an update attempt: fairseq's ``zero_grad`` (called when an
    update starts, and after an overflow or out-of-memory error) left none of ``params`` with a gradient.

    ``params``: parameters fairseq's optimizer owns (the model's trainable parameters)."""
    return all(p.grad is None for p in params)


def update_skipped(optimizer) -> bool:
    """Inside ``task.optimizer_step``: will fairseq's optimizer skip this step?

    Only ``--amp`` reaches ``optimizer_step`` with a non-finite gradient (its scaler then skips the step
    and fairseq retries the batch or drops it); fp32 raises ``FloatingPointError`` and ``--fp16``
    ``OverflowError`` before.  The test is fairseq's own: the total gradient norm is not finite.
    Gradients are all-reduced by then, so every worker gets the same answer."""
    if not is_amp(optimizer):
        return False
    grads = [p.grad.detach() for p in optimizer.params if p.grad is not None]
    if not grads:
        return False
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    return not bool(torch.isfinite(norm))


def grad_scaler(optimizer, params_or_module, enabled: Optional[bool] = None) -> torch.amp.GradScaler:
    """A loss scaler for an optimizer the plugin owns, next to fairseq's.

    Enabled exactly when fairseq's ``AMPOptimizer`` scales, i.e. ``--amp`` on CUDA (fp16 autocast, whose
    small gradients underflow without scaling); bf16 on CPU needs none.  It starts from fairseq's
    current scale.  ``enabled`` overrides the choice (tests use it on CPU)."""
    device = _device_of(params_or_module)
    on = (is_amp(optimizer) and device.type == "cuda") if enabled is None else enabled
    init = float(optimizer.scaler.get_scale()) if is_amp(optimizer) and on and device.type == "cuda" else 2.0 ** 7
    return torch.amp.GradScaler(device.type, init_scale=init, enabled=on)


def refuse_half_precision(cfg, component: str, why: str) -> None:
    """Raise at setup when fairseq's ``--fp16``/``--bf16`` (model cast to half precision) is on.

    ``cfg`` (a config or a dict) holds ``fp16``/``bf16`` interpolated from ``common`` (``II("common.fp16")``)."""
    for flag in ("fp16", "bf16"):
        value = cfg.get(flag, False) if isinstance(cfg, dict) else getattr(cfg, flag, False)
        if value is True:  # an unresolved "${common.fp16}" (a config built by hand) is not
            raise UserError(f"{component} does not support --{flag} (or --memory-efficient-{flag}): {why}",
                            "use --amp (mixed precision with fp32 weights) or fp32")


def moment_scale(optimizer) -> float:
    """How many times smaller than the true gradient the gradients in fairseq's Adam moments are, for the
    step just taken (call it after a step that was not skipped): the loss scale under fairseq's ``--amp``,
    else 1.

    fairseq's ``AMPOptimizer`` unscales the gradients twice: ``clip_grad_norm`` unscales the torch
    optimizer (``scaler.unscale_(self.optimizer)``), then ``step`` hands its FairseqOptimizer wrapper to
    ``scaler.step``, which torch has not seen unscaled and so unscales again.  Adam then averages
    ``g / s``: ``exp_avg`` is ``1/s`` and ``exp_avg_sq`` ``1/s^2`` of the unscaled run's (its step is
    nearly scale-free, ``m / sqrt(v)``, but a reward that reads the moments is not).  ``s`` is the scale
    of the step just taken: the scaler's current one, halved back when this step's ``update()`` grew it
    (its growth tracker restarts at 0 only then, for a step that was not skipped).

    Exact while the scale was constant over Adam's averaging window (``1 / (1 - beta2)`` updates); for
    that many updates after the scale changes (an overflow halves it, ``growth_interval`` clean updates
    double it) the older terms are off by the change squared.  1 when the scaler is disabled (fairseq's
    CUDA scaler on a CPU) or steps the torch optimizer itself (no second unscale)."""
    if not is_amp(optimizer):
        return 1.0
    scaler = optimizer.scaler
    if not scaler.is_enabled() or type(optimizer).step is not _amp_optimizer_type().step \
            or type(scaler).step is not torch.amp.GradScaler.step:
        return 1.0
    scale = float(scaler.get_scale())
    if int(scaler._get_growth_tracker()) == 0:  # this step's update() just multiplied the scale
        scale /= float(scaler.get_growth_factor())
    return scale
