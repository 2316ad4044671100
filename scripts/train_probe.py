#!/usr/bin/env python
"""``train_probe.py FAIRSEQ-TRAIN-ARGS``: fairseq-train with the observations scripts/gpu_check.sh judges.

One process per rank (``--distributed-no-spawn``, as scripts/train_ddp.sh and gpu_check launch them).  At exit
each rank writes ``$TRAIN_PROBE_OUT/rank<r>.json``:

* ``forward_dtypes`` / ``forward_calls``: the output dtype of every training forward (grad on) of one linear
  layer, the forward model's output projection, which every method trains through: under ``--amp`` it
  must be fp16 on CUDA and bf16 on the CPU (fp32 means autocast was off -- a silent-fp32 defect);
* ``fingerprint``: per tensor of the model, the criterion and the task's checkpoint state, its sum and sum
  of absolute values in fp64 -- equal on every rank when the replicas (theta, psi, scorer, EMAs) are;
* ``num_updates``.

``$TRAIN_PROBE_DDP_BACKEND=pytorch_ddp`` on the CPU: fairseq's pytorch_ddp builds
``DistributedDataParallel(model, device_ids=[device_id])``, which torch refuses for a CPU module; the probe
builds it exactly so but with ``device_ids=None`` (torch's form for CPU modules), so gloo workers run the
GPU code path.  The backend replaces any ``--ddp-backend`` on the command line.  Not used on CUDA.

``$TRAIN_PROBE_INJECT_FP32=1`` turns every autocast region off (the defect gpu_check must catch).
"""
import atexit
import functools
import json
import os
import sys
from typing import Dict, List

import torch

TRAINERS: List = []
_SEEN: Dict = {"forward_dtypes": [], "forward_calls": 0}


def rank() -> int:
    """This worker's ``--distributed-rank`` (0 without one)."""
    argv = sys.argv
    return int(argv[argv.index("--distributed-rank") + 1]) if "--distributed-rank" in argv else 0


def keep_trainers() -> None:
    """Remember every fairseq Trainer built in this process (the last one is the run's)."""
    from fairseq.trainer import Trainer

    original = Trainer.__init__

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        TRAINERS.append(self)

    Trainer.__init__ = __init__


def cpu_pytorch_ddp(backend: str) -> None:
    """fairseq's pytorch_ddp wrapping with ``device_ids=None``, and ``--ddp-backend`` set to ``backend``."""
    from fairseq.models import distributed_fairseq_model as wrapper

    ddp = wrapper.DistributedDataParallel

    @functools.wraps(ddp)
    def cpu_ddp(*args, **kwargs):
        kwargs.update(device_ids=None, output_device=None)  # the only change to fairseq's pytorch_ddp wrapping
        return ddp(*args, **kwargs)

    wrapper.DistributedDataParallel = cpu_ddp
    argv = sys.argv
    for i, a in enumerate(argv[:-1]):
        if a == "--ddp-backend":
            argv[i + 1] = backend


def inject_fp32() -> None:
    """Every ``torch.autocast`` (the plugin's and fairseq's) constructed disabled."""
    from torch.amp import autocast_mode

    original = autocast_mode.autocast.__init__

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self._enabled = False

    autocast_mode.autocast.__init__ = __init__


def _record(module, inputs, output) -> None:
    if module.training and torch.is_grad_enabled() and isinstance(output, torch.Tensor):
        _SEEN["forward_calls"] += 1
        if str(output.dtype) not in _SEEN["forward_dtypes"]:
            _SEEN["forward_dtypes"].append(str(output.dtype))


def watched_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The forward model's output projection (every method's translation loss runs through it)."""
    layer = getattr(getattr(model, "decoder", None), "output_projection", None)
    if isinstance(layer, torch.nn.Linear):
        return layer
    return next(m for m in model.modules() if isinstance(m, torch.nn.Linear))


def _tensors(obj, prefix: str = ""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]")


def fingerprint(trainer) -> Dict[str, List[float]]:
    """Per tensor of model, criterion and task state: ``[sum, sum |x|]`` in fp64."""
    state = {"model": trainer._model.state_dict(), "criterion": trainer._criterion.state_dict()}
    if hasattr(trainer.task, "get_checkpoint_dict"):
        state["task"] = trainer.task.get_checkpoint_dict()
    out = {}
    for name, t in _tensors(state):
        if name.endswith(".usage"):  # DDS's sentence counts since the last scorer update: per worker by design
            continue
        t = t.detach().double()
        out[name] = [float(t.sum()), float(t.abs().sum())]
    return out


def _write(out_dir: str) -> None:
    report = dict(_SEEN)
    if TRAINERS:
        trainer = TRAINERS[-1]
        report.update(fingerprint=fingerprint(trainer), num_updates=trainer.get_num_updates())
    with open(os.path.join(out_dir, f"rank{rank()}.json"), "w") as f:
        json.dump(report, f)


def install() -> None:
    """Everything the environment asks for, before fairseq-train starts."""
    keep_trainers()
    from fairseq.trainer import Trainer

    original = Trainer.__init__

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        watched_layer(self._model).register_forward_hook(_record)

    Trainer.__init__ = __init__
    if os.environ.get("TRAIN_PROBE_DDP_BACKEND"):
        cpu_pytorch_ddp(os.environ["TRAIN_PROBE_DDP_BACKEND"])
    if os.environ.get("TRAIN_PROBE_INJECT_FP32"):
        inject_fp32()
    if os.environ.get("TRAIN_PROBE_OUT"):
        atexit.register(_write, os.environ["TRAIN_PROBE_OUT"])


def main() -> None:
    sys.argv = ["fairseq-train"] + sys.argv[1:]
    install()
    from fairseq_cli.train import cli_main

    cli_main()


if __name__ == "__main__":
    main()
