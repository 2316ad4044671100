#!/usr/bin/env python
"""GPU readiness check: every method trains a few dozen updates with ``--amp``, one line per method.

    scripts/gpu_check.sh [--updates 40] [--methods metabt,dds,...] [--work-dir DIR]
    scripts/gpu_check.sh --cpu [--updates 3]        # dry run of the same loop, CPU bf16 autocast

On a machine with CUDA each method of the plugin (MetaBT, DDS, wake-sleep,
STGS reconstruction, latent depth) trains with the real ``fairseq-train
--amp`` on one GPU and, where two or more GPUs are visible, again with
``--distributed-world-size 2`` (NCCL, ``--ddp-backend legacy_ddp``).  Each run
prints ``ok`` or ``FAILED`` (with its log), updates/s (median over the logged
intervals after the first) and peak memory (GPU: the largest
``torch.cuda.max_memory_allocated`` fairseq reports through ``gb_free``; CPU:
peak resident memory).  All methods share one synthetic ``multilingual``
corpus, generated and prepared once in the work directory.  The exit status
is 1 when any run failed.

``--cpu`` runs the same loop on the CPU (``--amp --cpu``: the plugin's
training steps autocast to bf16; no loss scaling), for a few updates: a check
of the script and of the AMP code paths, not a GPU measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
from benchmark import USER_DIR, ensure_data  # noqa: E402

_TRAIN_INNER = re.compile(r"\| train_inner \| (\{.*\})\s*$")
PAIRS = "lrl-tgt,hrl-tgt,unra-tgt,unrb-tgt,nsy-tgt"
GPU_SIZES = "train=2000,hrl=4000,unra=1000,unrb=1000,nsy=1000,valid=100,test=100,mono_tgt=2000,mono_lrl=2000,pool=8000"
CPU_SIZES = "train=60,hrl=100,unra=20,unrb=20,nsy=40,valid=21,test=21,mono_tgt=40,mono_lrl=40,pool=120"


def method_args(size: str, updates: int, max_tokens: int) -> Dict[str, List[str]]:
    """fairseq-train arguments (after the data and the common ones) of each method at model ``size``."""
    half = str(max(updates // 2, 1))
    pair = ["-s", "lrl", "-t", "tgt"]
    return {
        "metabt": pair + ["--task", "meta_backtranslation", "--arch", f"dual_transformer_{size}",
                          "--meta-dev-max-tokens", str(max_tokens // 2), "--bt-max-len-b", "20"],
        "dds": ["--task", "dds_translation", "--lang-pairs", PAIRS, "--dds-dev-lang-pair", "lrl-tgt",
                "--dds-update-interval", "5", "--dds-dev-max-tokens", str(max_tokens // 2),
                "--arch", f"transformer_lowres_{size}"],
        "wake_sleep": pair + ["--task", "wake_sleep_translation", "--arch", f"dual_transformer_{size}",
                              "--ws-mle-updates", "0", "--wake-updates", half, "--sleep-updates", half,
                              "--ws-max-len-b", "20"],
        "stgs": pair + ["--task", "bidirectional_translation", "--arch", f"transformer_lowres_{size}",
                        "--share-all-embeddings", "--criterion", "stgs_reconstruction", "--stgs-tau", "2",
                        "--stgs-beta", "0.5", "--stgs-max-len-b", "20"],
        "latent_depth": ["--task", "latent_depth_translation", "--lang-pairs", "tgt-lrl,tgt-hrl", "--decoder-langtok",
                         "--arch", f"latent_depth_transformer_{size}", "--decoder-latent-layers",
                         "--decoder-target-layers", "1", "--criterion", "latent_layers_loss",
                         "--latent-kl-weight", "0.1"],
    }


def common_args(bin_dir: str, args, save_dir: str) -> List[str]:
    interval = max(1, args.updates // 10)
    out = [bin_dir, "--user-dir", USER_DIR, "--amp", "--optimizer", "adam", "--lr", "5e-4",
           "--lr-scheduler", "inverse_sqrt", "--warmup-updates", str(max(1, args.updates // 4)),
           "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
           "--max-tokens", str(args.max_tokens), "--max-update", str(args.updates), "--seed", "1",
           "--log-format", "json", "--log-interval", str(interval), "--disable-validation", "--no-save",
           "--num-workers", "0", "--ddp-backend", "legacy_ddp", "--save-dir", save_dir]
    return out + (["--cpu"] if args.cpu else [])


def run_one(name: str, argv: List[str], log_path: str, timeout: int) -> Dict:
    """One fairseq-train run: status, updates/s, peak memory, last loss."""
    exe = os.path.join(os.path.dirname(sys.executable), "fairseq-train")
    cmd = [exe if os.path.exists(exe) else "fairseq-train"] + argv
    started = time.time()
    from fairseq_metabt import fileio

    fileio.check_output(log_path)  # a log is never written over an input, a device or a directory
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(proc.pid, 0) if timeout <= 0 else _wait(proc, timeout)
            code = os.waitstatus_to_exitcode(status)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code, usage = "timeout", None
    wall = time.time() - started
    text = open(log_path, errors="replace").read()
    records = [json.loads(m.group(1)) for m in map(_TRAIN_INNER.search, text.splitlines()) if m]
    result = {"name": name, "ok": code == 0 and bool(records), "exit": code, "log": log_path, "wall_s": wall}
    if records:
        steady = records[1:] or records
        result["updates_per_s"] = statistics.median(float(r["ups"]) for r in steady)
        result["loss"] = float(records[-1]["loss"])
        free = [float(r["gb_free"]) for r in records if "gb_free" in r]
        if free and _total_gpu_gib() is not None:
            result["peak_mem"] = f"{_total_gpu_gib() - min(free):.1f}GiB"
    if "peak_mem" not in result and usage is not None:
        result["peak_mem"] = f"{usage.ru_maxrss / 1024:.0f}MiB(rss)"
    if not result["ok"]:
        errors = [line for line in text.splitlines() if "Error" in line or "error" in line]
        result["error"] = (errors[-1] if errors else text.strip().splitlines()[-1] if text.strip() else "no output")[:300]
    return result


def _wait(proc: subprocess.Popen, timeout: int):
    deadline = time.time() + timeout
    while time.time() < deadline:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return pid, status, usage
        time.sleep(0.5)
    raise subprocess.TimeoutExpired(proc.args, timeout)


def _total_gpu_gib() -> Optional[float]:
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / 2 ** 30


def describe_device(cpu: bool) -> str:
    import torch

    if cpu or not torch.cuda.is_available():
        return f"device: CPU (torch {torch.__version__}); --amp autocasts the plugin's steps to bf16 -- no GPU figures"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"device: {len(names)} x {names[0]} (torch {torch.__version__}, CUDA {torch.version.cuda})"


def format_line(setting: str, r: Dict) -> str:
    if r["ok"]:
        return (f"gpu_check: {r['name']:<13s} {setting:<5s} ok      updates/s={r['updates_per_s']:.2f} "
                f"peak_mem={r.get('peak_mem', '?')} loss={r['loss']:.3f}")
    return f"gpu_check: {r['name']:<13s} {setting:<5s} FAILED  exit={r['exit']} log={r['log']}: {r.get('error', '')}"


def main(argv: Optional[List[str]] = None) -> int:
    methods = list(method_args("tiny", 2, 2).keys())
    p = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.split("\n\n")[0],
                                epilog="Methods: " + ", ".join(methods))
    p.add_argument("--cpu", action="store_true", help="dry run on the CPU (bf16 autocast); no GPU needed")
    p.add_argument("--updates", type=int, default=None, help="updates per run (default 40; 3 with --cpu)")
    p.add_argument("--methods", default=",".join(methods), help="comma-separated subset (default: all five)")
    p.add_argument("--size", choices=("tiny", "small", "base"), default=None,
                   help="model size of every method (default small; tiny with --cpu)")
    p.add_argument("--max-tokens", type=int, default=None, help="tokens per batch (default 4096; 600 with --cpu)")
    p.add_argument("--sizes", default=None, help="--sizes of the synthetic multilingual corpus")
    p.add_argument("--world-sizes", default="auto",
                   help="'auto' (1, and 2 where two GPUs are visible) or a list such as 1,2")
    p.add_argument("--work-dir", default=None, help="data and logs (default: a temporary directory)")
    p.add_argument("--timeout", type=int, default=900, help="seconds per run (0: none)")
    args = p.parse_args(argv)
    import torch

    if not args.cpu and not torch.cuda.is_available():
        p.error("no CUDA device visible: run on a GPU machine, or pass --cpu for a dry run")
    chosen = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(methods))
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(methods)}")
    args.updates = args.updates or (3 if args.cpu else 40)
    args.max_tokens = args.max_tokens or (600 if args.cpu else 4096)
    size = args.size or ("tiny" if args.cpu else "small")
    if args.world_sizes == "auto":
        worlds = [1] + ([2] if not args.cpu and torch.cuda.device_count() >= 2 else [])
    else:
        worlds = [int(w) for w in args.world_sizes.split(",")]
    if args.cpu and worlds != [1]:
        p.error("--cpu checks one worker (multi-worker CPU runs: scripts/train_ddp.sh)")
    if not args.cpu and max(worlds) > torch.cuda.device_count():
        p.error(f"--world-sizes {args.world_sizes}: only {torch.cuda.device_count()} GPU(s) visible")

    work = args.work_dir or tempfile.mkdtemp(prefix="gpu_check_")
    os.makedirs(work, exist_ok=True)
    print(describe_device(args.cpu), flush=True)
    bin_dir = ensure_data(work, 1, "multilingual", args.sizes or (CPU_SIZES if args.cpu else GPU_SIZES))
    failed = 0
    all_args = method_args(size, args.updates, args.max_tokens)
    for world in worlds:
        setting = "cpu" if args.cpu else f"{world}gpu"
        for name in chosen:
            save = os.path.join(work, f"{name}.{setting}")
            extra = ["--distributed-world-size", str(world)] if world > 1 else []
            r = run_one(name, common_args(bin_dir, args, save) + all_args[name] + extra,
                        os.path.join(work, f"{name}.{setting}.log"), args.timeout)
            failed += not r["ok"]
            print(format_line(setting, r), flush=True)
    print(f"gpu_check: {'all ok' if not failed else f'{failed} failed'} (updates={args.updates}, size={size}, "
          f"logs in {work})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
