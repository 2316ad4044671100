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
from typing import Callable, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from fairseq_metabt.errors import UserError

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


# ---- collectives: every torch.distributed collective of the package goes through _collective -----------
def world_size(group=None) -> int:
    """Number of data-parallel workers (1 when not distributed)."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def collective_device(t: torch.Tensor, device=None, group=None) -> torch.device:
    """Where a collective on ``t`` runs: ``device`` (the parameters' device) when given, else the current
    CUDA device under NCCL (fairseq sets it to the rank's GPU; NCCL rejects CPU tensors), else ``t``'s."""
    if device is not None:
        return torch.device(device)
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


_REDUCE_OPS = {"sum": "SUM", "mean": "SUM", "max": "MAX", "min": "MIN"}


def _collective(kind: str, payload, op: str = "mean", device=None, group=None):
    """The one place that calls ``torch.distributed`` collectives (tests/test_collectives.py checks it).

    ``all_reduce``: reduce tensor ``payload`` in place, on :func:`collective_device` (copied there and
    back when it lives elsewhere), ``op`` one of sum/mean/max/min.  ``all_gather_object``: the list of
    every worker's picklable ``payload``.  No-op (resp. ``[payload]``) without workers."""
    n = world_size(group)
    if kind == "all_gather_object":
        if n <= 1:
            return [payload]
        out = [None] * n
        dist.all_gather_object(out, payload, group=group)
        return out
    if kind != "all_reduce":
        raise ValueError(f"unknown collective {kind!r}")
    if op not in _REDUCE_OPS:
        raise ValueError(f"unknown reduction {op!r}: use one of {', '.join(_REDUCE_OPS)}")
    if n <= 1:
        return payload
    target = collective_device(payload, device, group)
    buf = payload if payload.device == target else payload.to(target)
    dist.all_reduce(buf, op=getattr(dist.ReduceOp, _REDUCE_OPS[op]), group=group)
    if op == "mean":
        buf.div_(n)
    if buf is not payload:
        payload.copy_(buf)
    return payload


def all_reduce_(t: torch.Tensor, op: str = "mean", device=None, group=None) -> torch.Tensor:
    """Reduce ``t`` in place over the data-parallel workers (sum/mean/max/min) on the parameters'
    device (``device``, or see :func:`collective_device`); no-op when not distributed."""
    return _collective("all_reduce", t, op=op, device=device, group=group)


def all_reduce_mean_(t: torch.Tensor, group=None, device=None) -> torch.Tensor:
    """Average ``t`` in place over the data-parallel workers (no-op when not distributed)."""
    return all_reduce_(t, "mean", device=device, group=group)


def average_grads_(params: Sequence[torch.Tensor], group=None) -> torch.Tensor:
    """Average the ``.grad`` of ``params`` over the workers in place (a missing grad counts as zeros, so every
    parameter steps, as on every worker alike); returns them as one fp32 vector. With one worker the
    ``.grad`` tensors are already the result: only missing ones are filled, no copy back."""
    grads = flat_grad(params)
    if world_size(group) > 1:
        all_reduce_(grads, "mean", device=params[0].device if params else None, group=group)
        for p, g in zip(params, unflatten_like(grads, params)):
            p.grad = g.clone()
    else:
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
    return grads


def all_gather_objects(obj, group=None) -> list:
    """Every worker's ``obj`` (picklable), in rank order; ``[obj]`` when not distributed."""
    return _collective("all_gather_object", obj, group=group)


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
                           eps: float = 1e-3, base_losses: Optional[torch.Tensor] = None,
                           central: bool = False) -> torch.Tensor:
    """``g_i · d`` for every example by the first-order Taylor trick (DDS Eq. 7).

    ``(l_i(theta + e d) - l_i(theta)) / e`` with ``e = eps / ||d||``, so the
    step has length ``eps`` whatever the scale of ``d``; ``central=True`` takes
    ``(l_i(theta + e d) - l_i(theta - e d)) / 2e`` instead (error O(e^2) rather
    than O(e), for the same two forwards; ``base_losses`` is then unused).
    ``loss_fn`` must be deterministic (eval mode), return per-example losses and
    read ``params``.
    """
    norm = float(direction.norm())
    if norm == 0.0 or not torch.isfinite(direction).all():
        raise ValueError("per-example Taylor rewards need a finite, non-zero direction d")
    step = eps / norm
    d_parts = unflatten_like(direction, params)
    with torch.no_grad():
        if central:
            with shifted_params(params, d_parts, -step):
                base = loss_fn().float()
        else:
            base = loss_fn().float() if base_losses is None else base_losses.float()
        with shifted_params(params, d_parts, step):
            shifted = loss_fn().float()
    return (shifted - base) / (2 * step if central else step)


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


# ---- DDS: per-language gradient EMAs (Alg. 2 line 7) in bounded memory ------------------------------
def select_named_params(named_params: Iterable[Tuple[str, torch.Tensor]], pattern: Optional[str] = None
                        ) -> List[Tuple[str, torch.Tensor]]:
    """The trainable parameters whose name matches the regular expression ``pattern`` (all when None).

    Raises ``ValueError`` naming the pattern when nothing matches, so a typo is not a silent no-op.
    """
    import re

    params = [(n, p) for n, p in named_params if p.requires_grad]
    if not pattern:
        return params
    regex = re.compile(pattern)
    chosen = [(n, p) for n, p in params if regex.search(n)]
    if not chosen:
        names = ", ".join(n for n, _ in params[:8])
        raise UserError(f"no trainable parameter name matches {pattern!r} (names look like: {names}, ...); "
                         "fix the regular expression")
    return chosen


def ema_update_(buffer: torch.Tensor, g: torch.Tensor, alpha1: float, alpha2: float) -> torch.Tensor:
    """``buffer <- alpha1 * buffer + alpha2 * g`` in place (DDS Alg. 2 line 7)."""
    return buffer.mul_(alpha1).add_(g.to(buffer.dtype), alpha=alpha2)


class CountSketch:
    """A fixed random projection R^d -> R^k (count sketch): coordinate j goes to bucket h(j) with sign s(j).

    It is linear and preserves inner products in expectation, ``E[<Sa, Sb>] = <a, b>``, so dot and cosine
    rewards can be taken between sketches; memory is O(d) for the hash and O(k) per sketched vector.
    The hash is a function of (d, k, seed) only, so every worker and a resumed run build the same one.
    """

    def __init__(self, dim_in: int, dim_out: int, seed: int = 0, device=None):
        if dim_out < 1:
            raise ValueError(f"sketch dimension must be >= 1, got {dim_out}")
        g = torch.Generator().manual_seed(int(seed))
        self.dim_in, self.dim_out = int(dim_in), int(dim_out)
        # int32 buckets (index_add_ takes them): half the memory of int64 for the O(d) hash
        self.bucket = torch.randint(0, dim_out, (dim_in,), generator=g, dtype=torch.int32).to(device)
        self.sign = (torch.randint(0, 2, (dim_in,), generator=g, dtype=torch.int8) * 2 - 1).to(device)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if v.numel() != self.dim_in:
            raise ValueError(f"sketch expects {self.dim_in} elements, got {v.numel()}")
        out = torch.zeros(self.dim_out, device=v.device, dtype=torch.float32)
        return out.index_add_(0, self.bucket.to(v.device), v.float() * self.sign.to(v.device, torch.float32))

    def nbytes(self) -> int:
        return self.bucket.numel() * self.bucket.element_size() + self.sign.numel() * self.sign.element_size()

    def add_slice_(self, out: torch.Tensor, v: torch.Tensor, offset: int, alpha: float = 1.0) -> torch.Tensor:
        """``out += alpha * S(x)`` where ``x`` is zero except ``v`` at coordinates ``offset:offset+len(v)``."""
        n = v.numel()
        sign = self.sign[offset:offset + n].to(v.device, torch.float32)
        return out.index_add_(0, self.bucket[offset:offset + n].to(v.device), v.reshape(-1).float() * sign,
                              alpha=alpha)


class GradientShares:
    """Split the gradient that accumulates in ``.grad`` into per-group shares, in place.

    Call :meth:`mark` before a group's backward pass and :meth:`capture` after it: the group's share,
    ``grad_after - grad_before``, is added to row ``group`` of :attr:`shares` (projected by ``sketch``
    when given).  Per-parameter in-place arithmetic, no flattened copies: ``groups x dim`` for the shares
    plus the mark, one fp32 copy of the parameters' size (of the sketch's size with a sketch: the sketch
    is linear, so ``S(after) - S(before)`` is the share's sketch).
    """

    def __init__(self, params: Sequence[torch.Tensor], groups: int, sketch: Optional[CountSketch] = None):
        self.params, self.sketch = list(params), sketch
        total = sum(p.numel() for p in self.params)
        device = self.params[0].device if self.params else None
        self.shares = torch.zeros(groups, sketch.dim_out if sketch is not None else total, device=device)
        if sketch is None:
            self._before = [torch.zeros(p.numel(), device=p.device) for p in self.params]
        else:
            self._before = [torch.zeros(sketch.dim_out, device=device)]
        self._offsets = [0]
        for p in self.params:
            self._offsets.append(self._offsets[-1] + p.numel())

    def nbytes(self) -> int:
        """Bytes held: the shares and the mark (the sketch's hash is counted by the sketch)."""
        return sum(t.numel() * t.element_size() for t in [self.shares, *self._before])

    def reset(self) -> None:
        self.shares.zero_()

    def _sketched_grad(self) -> torch.Tensor:
        out = torch.zeros(self.sketch.dim_out, device=self.shares.device)
        for i, p in enumerate(self.params):
            if p.grad is not None:
                self.sketch.add_slice_(out, p.grad.reshape(-1), self._offsets[i])
        return out

    @torch.no_grad()
    def mark(self) -> None:
        """Remember the current ``.grad`` (the state before the next group's backward pass)."""
        if self.sketch is not None:
            self._before[0].copy_(self._sketched_grad())
            return
        for p, before in zip(self.params, self._before):
            if p.grad is None:
                before.zero_()
            else:
                before.copy_(p.grad.reshape(-1))

    @torch.no_grad()
    def capture(self, group: int, scale: float = 1.0) -> None:
        """Add ``(grad - grad_at_mark) / scale`` to row ``group`` and move the mark to the current ``.grad``."""
        row = self.shares[group]
        if self.sketch is not None:
            now = self._sketched_grad()
            row.add_(now, alpha=1.0 / scale).sub_(self._before[0], alpha=1.0 / scale)
            self._before[0].copy_(now)
            return
        for i, (p, before) in enumerate(zip(self.params, self._before)):
            if p.grad is None:
                continue
            g = p.grad.reshape(-1)
            lo, hi = self._offsets[i], self._offsets[i + 1]
            row[lo:hi].add_(g, alpha=1.0 / scale).sub_(before, alpha=1.0 / scale)
            before.copy_(g)


def loss_scale(optimizer) -> float:
    """The loss scale fairseq's fp16/AMP optimizers multiply gradients by (1 in fp32): divide it out of a
    gradient read from ``.grad`` before comparing it with anything else."""
    scaler = getattr(optimizer, "scaler", None)
    if scaler is not None and hasattr(scaler, "loss_scale"):
        return float(scaler.loss_scale)
    grad_scaler = getattr(optimizer, "_grad_scaler", None)
    if grad_scaler is not None:
        return float(grad_scaler.get_scale())
    return 1.0


class AdamMoments(NamedTuple):
    """One parameter's Adam state as an unscaled fp32 run would hold it (see :func:`adam_moments`)."""

    exp_avg: torch.Tensor  # m_t, fp32, the parameter's shape
    exp_avg_sq: torch.Tensor  # v_t
    step: float  # t
    beta1: float
    beta2: float
    eps: float


def adam_moments(optimizer, params: Sequence[torch.Tensor]) -> List[Optional[AdamMoments]]:
    """Adam's moments of ``params`` in fairseq's optimizer (``None`` for a parameter without Adam state),
    corrected for fairseq's ``--amp`` double unscale (:func:`amp.moment_scale`): the one place the plugin
    reads optimizer moments (DDS's ``--dds-reward adam``, Eq. 17; MetaBT's Adam preconditioner, Eq. 18).

    ``optimizer``: fairseq's (its ``.optimizer`` is the torch optimizer, state keyed by the parameters:
    fp32, ``--amp`` or ``--memory-efficient-fp16``) or a torch optimizer."""
    from fairseq_metabt.modules import amp

    torch_opt = getattr(optimizer, "optimizer", optimizer)
    s = amp.moment_scale(optimizer)
    groups = {id(p): g for g in torch_opt.param_groups for p in g["params"]}
    out: List[Optional[AdamMoments]] = []
    for p in params:
        state, group = torch_opt.state.get(p, {}), groups.get(id(p))
        if "exp_avg_sq" not in state or group is None:
            out.append(None)
            continue
        beta1, beta2 = group["betas"]
        m, v = state["exp_avg"].detach().float(), state["exp_avg_sq"].detach().float()
        if s != 1.0:  # built from g / s: m scales with 1/s, v with 1/s^2
            m, v = m * s, v * (s * s)
        step = float(state["step"]) if "step" in state else 1.0
        out.append(AdamMoments(m, v, step, float(beta1), float(beta2), float(group["eps"])))
    return out


def log_due(update_num: int, cfg) -> bool:
    """Whether fairseq logs the training metrics after update ``update_num`` (0-based): ``num_updates =
    update_num + 1`` is a multiple of ``cfg.log_interval`` (``--log-interval``; 1 when ``cfg`` has none or it
    cannot be resolved).  Diagnostics that need a host synchronisation (checksums, norms, per-language
    figures) are computed only then: each costs a GPU round trip, and only the logged update's value is
    seen (fairseq resets its train_inner meters at every log)."""
    try:
        interval = int(cfg.get("log_interval", 1) if isinstance(cfg, dict) else getattr(cfg, "log_interval", 1))
    except Exception:  # an unresolved interpolation (a config built outside fairseq-train)
        interval = 1
    return interval <= 1 or (int(update_num) + 1) % interval == 0


def checksum(tensors: Iterable[torch.Tensor]) -> float:
    """Sum of all entries in fp64: a cheap fingerprint of a set of parameters or buffers."""
    return float(sum(t.detach().double().sum() for t in tensors))


def check_replicas(checksums: Sequence[float], rel_tol: float, what: str) -> float:
    """Largest spread across data-parallel workers of any of ``checksums`` (0 without workers).

    State a task keeps beside fairseq's model (a second model, a scorer, EMAs) must stay identical on
    every rank; a spread above ``rel_tol * (1 + max |checksum|)`` raises, naming ``what``."""
    if world_size() <= 1:
        return 0.0
    s = torch.tensor(list(checksums), dtype=torch.float64)
    hi, lo = s.clone(), -s.clone()
    all_reduce_(hi, "max")
    all_reduce_(lo, "max")
    spread = float((hi + lo).max())
    if spread > rel_tol * (1.0 + float(s.abs().max())):
        raise RuntimeError(f"{what} diverged across workers (checksum spread {spread}); "
                           "use --ddp-backend legacy_ddp")
    return spread
