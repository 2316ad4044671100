"""Gradient alignment: flat views, dot/cosine similarity, all-reduce, per-example dot products.

Shared by meta back-translation (reward = alignment of the pseudo pair's
gradient with the dev gradient, Pham et al. 2021 Eq. 17) and DDS (Wang et
al. 2020, Eq. 5–7).  Per-example dot products ``g_i · d`` avoid one backward
pass per example:

* :func:`per_example_dot_taylor` — DDS Eq. 7's first-order trick,
  ``(l_i(theta + eps d) - l_i(theta)) / eps``: two forward passes.
* :func:`per_example_dot_double_backward` — exact, via the gradient of
  ``d · grad_theta(sum_i v_i l_i)`` with respect to ``v``.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

LossFn = Callable[[], torch.Tensor]  # returns per-example losses, shape (n,)


def flatten(tensors: Iterable[Optional[torch.Tensor]], like: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate ``tensors`` (``None`` → zeros shaped like the matching ``like``) into one fp32 vector."""
    out = []
    for t, p in zip(tensors, like):
        out.append(torch.zeros(p.numel(), device=p.device) if t is None else t.detach().reshape(-1).float())
    return torch.cat(out) if out else torch.zeros(0)


def flat_grad(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The current ``.grad`` of ``params`` as one fp32 vector (zeros where a grad is missing)."""
    return flatten([p.grad for p in params], params)


def unflatten_like(vec: torch.Tensor, params: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Split a flat vector into tensors shaped and typed like ``params``."""
    total = sum(p.numel() for p in params)
    if total != vec.numel():
        raise ValueError(f"flat vector has {vec.numel()} elements, parameters have {total}")
    out, offset = [], 0
    for p in params:
        n = p.numel()
        out.append(vec[offset: offset + n].view_as(p).to(p.dtype))
        offset += n
    return out


def similarity(a: torch.Tensor, b: torch.Tensor, kind: str = "cosine", eps: float = 1e-12) -> Tuple[torch.Tensor, bool]:
    """``a · b`` (``kind="dot"``) or ``cos(a, b)``; the flag is False when a norm is (near) zero
    or the result is not finite, so the caller can skip rather than propagate a NaN."""
    dot = torch.dot(a.float(), b.float())
    if kind == "dot":
        return dot, bool(torch.isfinite(dot))
    if kind != "cosine":
        raise ValueError(f"unknown similarity {kind!r}: use 'dot' or 'cosine'")
    norm = a.float().norm() * b.float().norm()
    if not torch.isfinite(norm) or norm <= eps:
        return torch.zeros((), device=a.device), False
    cos = dot / norm
    return cos, bool(torch.isfinite(cos))


def all_reduce_mean_(t: torch.Tensor, group=None) -> torch.Tensor:
    """Average ``t`` in place over the data-parallel workers (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(t, group=group)
        t.div_(dist.get_world_size(group))
    return t


@contextlib.contextmanager
def shifted_params(params: Sequence[torch.Tensor], direction: Sequence[torch.Tensor], scale: float):
    """Temporarily move ``params`` by ``scale * direction`` (in place; restored bit for bit on exit,
    which subtracting the step again would not guarantee in floating point)."""
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(d, alpha=scale)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, old in zip(params, saved):
                p.copy_(old)


def per_example_dot_taylor(loss_fn: LossFn, params: Sequence[torch.Tensor], direction: torch.Tensor,
                           eps: float = 1e-3, base_losses: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``g_i · d`` for every example by the first-order Taylor trick (DDS Eq. 7).

    ``(l_i(theta + e d) - l_i(theta)) / e`` with ``e = eps / ||d||``, so the
    step has length ``eps`` whatever the scale of ``d``.  ``loss_fn`` must be
    deterministic (eval mode), return per-example losses and read ``params``.
    """
    norm = float(direction.norm())
    if norm == 0.0 or not torch.isfinite(direction).all():
        raise ValueError("per-example Taylor rewards need a finite, non-zero direction d")
    step = eps / norm
    d_parts = unflatten_like(direction, params)
    with torch.no_grad():
        base = loss_fn().float() if base_losses is None else base_losses.float()
        with shifted_params(params, d_parts, step):
            shifted = loss_fn().float()
    return (shifted - base) / step


def _math_attention():
    """Double backward through attention needs the math kernel on CPU (no derivative for flash)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    except ImportError:  # older torch
        return contextlib.nullcontext()


def per_example_dot_double_backward(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor],
                                    direction: torch.Tensor) -> torch.Tensor:
    """Exact ``g_i · d`` for every example, ``g_i = grad l_i``, by double backward.

    With ``L(v) = sum_i v_i l_i`` at ``v = 1``: ``d/dv_i [d · grad L(v)] = d · g_i``.
    """
    d_parts = unflatten_like(direction, params)
    with _math_attention():
        losses = loss_fn()
        v = torch.ones_like(losses, requires_grad=True)
        grads = torch.autograd.grad((v * losses).sum(), params, create_graph=True, allow_unused=True)
        s = sum((g * d).sum() for g, d in zip(grads, d_parts) if g is not None)
        (dots,) = torch.autograd.grad(s, v)
    return dots.detach().float()
