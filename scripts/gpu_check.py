#!/usr/bin/env python
"""GPU readiness check: every method trains a few dozen updates with ``--amp``, one line per run.

    scripts/gpu_check.sh [--updates 40] [--methods metabt,dds,...] [--work-dir DIR]
    scripts/gpu_check.sh --cpu [--updates 2]        # the same matrix on the CPU: gloo, bf16 autocast

Each method of the plugin (MetaBT, DDS, wake-sleep, STGS reconstruction,
latent depth) trains with the real ``fairseq-train --amp`` (through
``scripts/train_probe.py``) on one GPU and, where two or more GPUs are
visible, with two workers over NCCL under each DDP backend (``legacy_ddp``,
``pytorch_ddp``); with one GPU it prints ``NCCL not tested (1 GPU)``.  A run
is ``ok`` only when

* fairseq-train exits 0 having logged training records;
* the forward pass ran in half precision: a hook on the forward model's
  output projection saw only fp16 outputs (bf16 on the CPU) in training, on
  every worker (a run whose autocast is off fails: ``fp32 forward``);
* with two workers, both end with identical parameters and task state
  (theta, psi, scorer, EMAs, gate optimizers; fp64 sums per tensor).

A method that cannot use a backend must refuse it at start-up with its one
line (``fairseq-metabt: error: ...``): that run is ``refused`` as expected;
a refusal where training was expected, or training where a refusal was, fails.
Each line also gives updates/s and peak memory.  A run past ``--timeout`` is
killed with its whole process group (every worker).  The exit status is 1
when any run failed.

``--cpu`` runs the same matrix on the CPU (gloo, bf16 autocast; torch's DDP
wrapped as fairseq's pytorch_ddp wraps it but with ``device_ids=None``, which
a CPU module needs): a check of the script and of the code paths, not a GPU
measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
from benchmark import USER_DIR, ensure_data  # noqa: E402

_TRAIN_INNER = re.compile(r"train_inner\W+(\{.*\})\s*$")  # fairseq's format, or logging's default
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
           "--num-workers", "0", "--save-dir", save_dir]
    return out + (["--cpu"] if args.cpu else [])


# methods that cannot train under a backend: the start of their one-line refusal
REFUSALS = {("metabt", "pytorch_ddp"): "meta_backtranslation needs --ddp-backend legacy_ddp",
            ("wake_sleep", "pytorch_ddp"): "wake_sleep_translation needs --ddp-backend legacy_ddp",
            ("stgs", "pytorch_ddp"): "stgs_reconstruction needs --ddp-backend legacy_ddp"}
PROBE = os.path.join(_HERE, "train_probe.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_commands(argv: List[str], world: int, backend: str, cpu: bool) -> List[List[str]]:
    """One fairseq-train (through the probe) per worker: ``--distributed-no-spawn`` ranks on one machine."""
    base = [sys.executable, PROBE] + argv + ["--ddp-backend", backend]
    if world == 1:
        return [base]
    port = _free_port()
    out = []
    for r in range(world):
        cmd = base + ["--distributed-world-size", str(world), "--distributed-rank", str(r), "--distributed-no-spawn",
                      "--distributed-init-method", f"tcp://127.0.0.1:{port}",
                      "--distributed-backend", "gloo" if cpu else "nccl"]
        out.append(cmd + ([] if cpu else ["--device-id", str(r)]))
    return out


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_all(procs: List[subprocess.Popen], timeout: int):
    """Exit statuses and resource usage of every worker.  On timeout, or when a worker failed and the others
    would wait for it in a collective, the whole process group is killed."""
    deadline = time.time() + timeout if timeout > 0 else None
    codes: Dict[int, object] = {}
    usage = []
    failed_at = None
    while len(codes) < len(procs):
        for k, proc in enumerate(procs):
            if k in codes:
                continue
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = codes[k] = os.waitstatus_to_exitcode(status)
                usage.append(ru)
        if failed_at is None and any(c != 0 for c in codes.values()):
            failed_at = time.time()
        late = deadline is not None and time.time() > deadline
        # a refusal happens on every rank: give the others 5 s to print their own line
        stuck = failed_at is not None and time.time() > failed_at + 5
        if len(codes) < len(procs) and (late or stuck):
            _kill_group(procs[0].pid)
            for k, proc in enumerate(procs):
                if k not in codes:
                    proc.wait()
                    codes[k] = "timeout" if late else proc.returncode
            break
        time.sleep(0.2)
    return [codes[k] for k in range(len(procs))], usage


def run_one(name: str, argv: List[str], log_path: str, timeout: int, world: int = 1, backend: str = "legacy_ddp",
            cpu: bool = False, inject_fp32: bool = False) -> Dict:
    """One run of ``world`` workers: status, dtype of the forward, replicas, updates/s, peak memory."""
    from fairseq_metabt import fileio

    started = time.time()
    probe_dir = log_path + ".probe"
    os.makedirs(probe_dir, exist_ok=True)
    for f in os.listdir(probe_dir):
        os.remove(os.path.join(probe_dir, f))
    env = dict(os.environ, TRAIN_PROBE_OUT=probe_dir, PYTHONUNBUFFERED="1")
    if cpu and backend == "pytorch_ddp":
        env["TRAIN_PROBE_DDP_BACKEND"] = backend
    if inject_fp32:
        env["TRAIN_PROBE_INJECT_FP32"] = "1"
    logs = [log_path] + [f"{log_path}.rank{r}" for r in range(1, world)]
    procs, handles = [], []
    try:
        for r, cmd in enumerate(rank_commands(argv, world, backend, cpu)):
            fileio.check_output(logs[r])  # a log is never written over an input, a device or a directory
            handles.append(open(logs[r], "w"))
            # every worker (and whatever it spawns) in one process group, the first worker's: killed together
            group = procs[0].pid if procs else 0  # 0: a new group led by the first worker
            procs.append(subprocess.Popen(cmd, stdout=handles[-1], stderr=subprocess.STDOUT, env=env,
                                          process_group=group))
        codes, usages = _wait_all(procs, timeout)
    finally:
        for h in handles:
            h.close()
    texts = [open(path, errors="replace").read() for path in logs]
    records = [json.loads(m.group(1)) for m in map(_TRAIN_INNER.search, texts[0].splitlines()) if m]
    result = {"name": name, "exit": codes[0] if len(set(map(str, codes))) == 1 else codes, "log": log_path,
              "wall_s": time.time() - started, "status": "ok"}
    refusals = [line for t in texts for line in t.splitlines() if line.startswith("fairseq-metabt: error:")]
    expected = REFUSALS.get((name, backend)) if world > 1 else None
    if expected:
        if refusals and all(expected in line for line in refusals) and "Traceback" not in "".join(texts):
            result.update(status="refused", detail=refusals[0][len("fairseq-metabt: error: "):][:100])
        else:
            result.update(status="FAILED", error=f"expected the one-line refusal '{expected}'")
        return result
    if any(c != 0 for c in codes) or not records:
        errors = refusals or [line for t in texts for line in t.splitlines() if "Error" in line or "error" in line]
        last = texts[0].strip().splitlines()[-1] if texts[0].strip() else "no output"
        result.update(status="FAILED", error=(errors[-1] if errors else last)[:300])
        return result
    problem = judge_probes(probe_dir, world, "torch.bfloat16" if cpu else "torch.float16")
    if problem:
        result.update(status="FAILED", error=problem)
    steady = records[1:] or records
    result["updates_per_s"] = statistics.median(float(r["ups"]) for r in steady)
    result["loss"] = float(records[-1]["loss"])
    free = [float(r["gb_free"]) for r in records if "gb_free" in r]
    if free and _total_gpu_gib() is not None:
        result["peak_mem"] = f"{_total_gpu_gib() - min(free):.1f}GiB"
    if "peak_mem" not in result and usages:
        result["peak_mem"] = f"{max(u.ru_maxrss for u in usages) / 1024:.0f}MiB(rss)"
    return result


def judge_probes(probe_dir: str, world: int, half: str) -> Optional[str]:
    """What is wrong in the workers' probe reports (None: nothing): a forward not in ``half``, replicas apart."""
    reports = []
    for r in range(world):
        path = os.path.join(probe_dir, f"rank{r}.json")
        if not os.path.exists(path):
            return f"worker {r} wrote no probe report"
        with open(path) as f:
            reports.append(json.load(f))
    for r, rep in enumerate(reports):
        if not rep["forward_calls"]:
            return f"worker {r}: the watched layer ran no training forward"
        if rep["forward_dtypes"] != [half]:
            return f"worker {r}: fp32 forward under --amp (saw {', '.join(rep['forward_dtypes'])}; want {half})"
    if world > 1:
        a = reports[0].get("fingerprint", {})
        for r, rep in enumerate(reports[1:], 1):
            b = rep.get("fingerprint", {})
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            if diff or not a:
                return f"workers 0 and {r} differ in {len(diff)} tensor(s), e.g. {diff[:1]}"
    return None


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
    head = f"gpu_check: {r['name']:<13s} {setting:<18s}"
    if r["status"] == "ok":
        return (f"{head} ok      updates/s={r['updates_per_s']:.2f} peak_mem={r.get('peak_mem', '?')} "
                f"loss={r['loss']:.3f}")
    if r["status"] == "refused":
        return f"{head} refused (as expected: {r['detail']})"
    return f"{head} FAILED  exit={r['exit']} log={r['log']}: {r.get('error', '')}"


def main(argv: Optional[List[str]] = None) -> int:
    methods = list(method_args("tiny", 2, 2).keys())
    p = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.split("\n\n")[0],
                                epilog="Methods: " + ", ".join(methods))
    p.add_argument("--cpu", action="store_true", help="the same matrix on the CPU (gloo, bf16 autocast); no GPU")
    p.add_argument("--updates", type=int, default=None, help="updates per run (default 40; 2 with --cpu)")
    p.add_argument("--methods", default=",".join(methods), help="comma-separated subset (default: all five)")
    p.add_argument("--size", choices=("tiny", "small", "base"), default=None,
                   help="model size of every method (default small; tiny with --cpu)")
    p.add_argument("--max-tokens", type=int, default=None, help="tokens per batch (default 4096; 600 with --cpu)")
    p.add_argument("--sizes", default=None, help="--sizes of the synthetic multilingual corpus")
    p.add_argument("--world-sizes", default="auto",
                   help="'auto' (1, and 2 where two GPUs are visible; 1 and 2 with --cpu) or a list such as 1,2")
    p.add_argument("--backends", default="legacy_ddp,pytorch_ddp",
                   help="DDP backends of the multi-worker runs (default: both)")
    p.add_argument("--inject-fp32", action="store_true",
                   help="a check of the check: every autocast region off, so every trained run must FAIL")
    p.add_argument("--work-dir", default=None, help="data and logs (default: a temporary directory)")
    p.add_argument("--timeout", type=int, default=900,
                   help="seconds per run, after which its whole process group is killed (0: none)")
    args = p.parse_args(argv)
    import torch

    if not args.cpu and not torch.cuda.is_available():
        p.error("no CUDA device visible: run on a GPU machine, or pass --cpu for a dry run")
    chosen = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(methods))
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(methods)}")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or set(backends) - {"legacy_ddp", "pytorch_ddp"}:
        p.error(f"--backends {args.backends}: choose from legacy_ddp, pytorch_ddp")
    args.updates = args.updates or (2 if args.cpu else 40)
    args.max_tokens = args.max_tokens or (600 if args.cpu else 4096)
    size = args.size or ("tiny" if args.cpu else "small")
    gpus = 0 if args.cpu else torch.cuda.device_count()
    if args.world_sizes == "auto":
        worlds = [1] + ([2] if args.cpu or gpus >= 2 else [])
    else:
        worlds = [int(w) for w in args.world_sizes.split(",")]
    if any(w not in (1, 2) for w in worlds):
        p.error(f"--world-sizes {args.world_sizes}: 1 and/or 2")
    if not args.cpu and max(worlds) > gpus:
        p.error(f"--world-sizes {args.world_sizes}: only {gpus} GPU(s) visible")

    work = args.work_dir or tempfile.mkdtemp(prefix="gpu_check_")
    os.makedirs(work, exist_ok=True)
    print(describe_device(args.cpu), flush=True)
    if not args.cpu and 2 not in worlds:
        print(f"gpu_check: NCCL not tested ({gpus} GPU{'s' if gpus != 1 else ''})", flush=True)
    bin_dir = ensure_data(work, 1, "multilingual", args.sizes or (CPU_SIZES if args.cpu else GPU_SIZES))
    failed = runs = 0
    all_args = method_args(size, args.updates, args.max_tokens)
    device = "cpu" if args.cpu else "gpu"
    for world in worlds:
        for backend in (backends if world > 1 else ["legacy_ddp"]):  # one worker: fairseq wraps nothing
            setting = f"{world}{device}" + (f"/{backend}" if world > 1 else "")
            for name in chosen:
                tag = f"{name}.{world}{device}.{backend}"
                r = run_one(name, common_args(bin_dir, args, os.path.join(work, tag)) + all_args[name],
                            os.path.join(work, f"{tag}.log"), args.timeout, world, backend, args.cpu,
                            args.inject_fp32)
                failed += r["status"] == "FAILED"
                runs += 1
                print(format_line(setting, r), flush=True)
    print(f"gpu_check: {'all ok' if not failed else f'{failed} of {runs} failed'} (updates={args.updates}, "
          f"size={size}, logs in {work})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
