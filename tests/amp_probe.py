#!/usr/bin/env python
"""``python tests/amp_probe.py FAIRSEQ-TRAIN-ARGS``: fairseq-train, observed (tests/test_amp.py, tests/test_ddp.py).

* Every forward call of a fairseq model or criterion in training mode with gradients on is recorded:
  whether CPU autocast was on and its dtype.  The counts go to ``$AMP_PROBE_OUT`` (JSON) at exit.
* fairseq's ``AMPOptimizer`` builds ``torch.cuda.amp.GradScaler``, which disables itself without CUDA (and
  then steps even on an overflow); here it gets torch's CPU scaler, so ``--amp --cpu`` takes fairseq's real
  AMP path: loss scaling, overflow detection, skipped step, retried batch.
* ``$AMP_PROBE_OVERFLOW_AT=K``: once, at update K, one gradient entry is set to inf just before fairseq
  clips (where its AMP overflow check runs): a forced overflow.
* ``$AMP_PROBE_OUT`` may contain ``{rank}`` (the ``--distributed-rank``): one file per worker.
* ``$PROBE_STATE_DIR``: at exit each worker saves what must be identical on every rank -- the model's and
  the criterion's parameters and the task's checkpoint state -- to ``rank<r>.pt`` there.
* ``$PROBE_DDP_BACKEND=pytorch_ddp``: **test-only patch of fairseq's DDP wrapper**
  (``train_probe.cpu_pytorch_ddp``, shared with scripts/gpu_check.sh --cpu).  fairseq's ``pytorch_ddp``
  builds ``DistributedDataParallel(model, device_ids=[args.device_id], ...)``, which torch refuses for a CPU
  module; here it is built exactly as fairseq builds it except ``device_ids=None, output_device=None`` (torch's
  documented form for CPU modules), so gloo workers on the CPU run the GPU code path of ``pytorch_ddp``.  The
  backend replaces the ``--ddp-backend legacy_ddp`` that scripts/train_ddp.sh passes.
"""
import atexit
import json
import os
import sys

import torch
from torch.nn.modules.module import register_module_forward_pre_hook

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
import train_probe  # noqa: E402  (scripts/train_probe.py: rank, trainers, the CPU pytorch_ddp patch)

COUNTS = {"autocast_on": 0, "autocast_off": 0, "dtypes": [], "overflows_forced": 0}


def _record(module, args):
    from fairseq.criterions import FairseqCriterion
    from fairseq.models import BaseFairseqModel

    if isinstance(module, (FairseqCriterion, BaseFairseqModel)) and module.training and torch.is_grad_enabled():
        if torch.is_autocast_enabled("cpu"):
            COUNTS["autocast_on"] += 1
            dtype = str(torch.get_autocast_dtype("cpu"))
            if dtype not in COUNTS["dtypes"]:
                COUNTS["dtypes"].append(dtype)
        else:
            COUNTS["autocast_off"] += 1


class _CPUGradScaler(torch.amp.GradScaler):
    """torch's loss scaler on the CPU.

    fairseq's AMPOptimizer unscales the torch optimizer in ``clip_grad_norm`` but steps its FairseqOptimizer
    wrapper, which torch then unscales a second time (Adam sees gradients / scale**2, so the run depends on
    the loss scale through Adam's eps).  Stepping the torch optimizer itself keeps the run independent of
    the scale, so that a run with a retried update can be compared with one without."""

    def __init__(self, *args, **kwargs):
        super().__init__("cpu", *args, **kwargs)

    def step(self, optimizer, *args, **kwargs):
        return super().step(getattr(optimizer, "optimizer", optimizer), *args, **kwargs)


def _force_overflow_at(update: int) -> None:
    from fairseq.trainer import Trainer

    original = Trainer.clip_grad_norm

    def clip_grad_norm(self, clip_norm):
        if not COUNTS["overflows_forced"] and self.get_num_updates() == update:
            COUNTS["overflows_forced"] += 1
            grad = next(p.grad for p in self.model.parameters() if p.grad is not None)
            grad.view(-1)[0] = float("inf")
        return original(self, clip_norm)

    Trainer.clip_grad_norm = clip_grad_norm


def _write() -> None:
    with open(os.environ["AMP_PROBE_OUT"].replace("{rank}", str(train_probe.rank())), "w") as f:
        json.dump(COUNTS, f)


def _save_state() -> None:
    if not train_probe.TRAINERS:  # refused at start-up: nothing trained
        return
    t = train_probe.TRAINERS[-1]
    state = {"model": t._model.state_dict(), "criterion": t._criterion.state_dict(),
             "extra": t.task.get_checkpoint_dict() if hasattr(t.task, "get_checkpoint_dict") else {},
             "num_updates": t.get_num_updates()}
    torch.save(state, os.path.join(os.environ["PROBE_STATE_DIR"], f"rank{train_probe.rank()}.pt"))


def main() -> None:
    register_module_forward_pre_hook(_record)
    torch.cuda.amp.GradScaler = _CPUGradScaler
    if os.environ.get("AMP_PROBE_OVERFLOW_AT"):
        _force_overflow_at(int(os.environ["AMP_PROBE_OVERFLOW_AT"]))
    sys.argv = ["fairseq-train"] + sys.argv[1:]
    if os.environ.get("AMP_PROBE_OUT"):
        atexit.register(_write)
    if os.environ.get("PROBE_STATE_DIR"):
        train_probe.keep_trainers()
        atexit.register(_save_state)
    if os.environ.get("PROBE_DDP_BACKEND"):
        train_probe.cpu_pytorch_ddp(os.environ["PROBE_DDP_BACKEND"])
    from fairseq_cli.train import cli_main

    cli_main()


if __name__ == "__main__":
    main()
