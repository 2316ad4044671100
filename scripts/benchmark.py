#!/usr/bin/env python
"""Benchmark a method against its plain fairseq baseline, measured in one run.

    python scripts/benchmark.py --method baseline [--updates 60] [--arch transformer_lowres_small] [--repeats 1]
    python scripts/benchmark.py --profile [--data BIN_DIR] [--arch transformer_lowres_tiny] [--repeats 3]

Both systems train with the real ``fairseq-train`` on the same prepared data
(a synthetic corpus of the method's preset unless ``--bin-dir`` is given), the
same model size and the same batches.  For each, the script prints updates/s,
words/s and peak resident memory, and last ``ratio=<method/baseline step
time>`` (with ``--repeats N``: N alternating baseline/method pairs, each
pair's ratio, and last their median).  ``baseline`` compares the plugin's
architecture with the same model on plain fairseq.  Other methods live in
``scripts/benchmark_methods/NAME.py``, each defining
``METHOD = BenchmarkMethod(build, preset=...)`` where
``build(bin_dir, args)`` returns ``{"method": argv, "baseline": argv}`` for
fairseq-train (helpers here: ``common_args``, ``plain_transformer_args``,
``USER_DIR``).

``--profile`` (issue 31) runs three systems in rotation, ``--repeats`` rounds of
baseline (``--task translation``), online BT (``meta_backtranslation
--freeze-backward``) and MetaBT, each a real fairseq-train with one thread
(the quickstart's setting), so a change in the machine's load falls on all
three alike.  It prints each round's step times and ratios (BT/baseline,
MetaBT/BT), their medians, and the phase profile of the BT and MetaBT steps:
milliseconds per update in each phase the task marks with
``fairseq_metabt.modules.phases.phase`` (summed over the rounds, warm-up
updates left out), and the rest of the step (fairseq's own work: batching,
clipping, logging).  ``--data BIN_DIR`` (or ``--bin-dir``) measures a corpus
prepared by ``scripts/prepare_data.py``; the language pair is read from its
``prepare.json``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
USER_DIR = os.path.join(ROOT, "fairseq_metabt")
sys.path.insert(0, ROOT)

_TRAIN_INNER = re.compile(r"\| train_inner \| (\{.*\})\s*$")


@dataclass
class Measurement:
    name: str
    updates_per_s: float
    words_per_s: float
    step_time_s: float
    peak_rss_mib: float
    final_loss: float


def run_fairseq_train(name: str, argv: List[str], log_path: str, env: Optional[Dict[str, str]] = None) -> Measurement:
    """Run fairseq-train in a child process (environment ``env``, default this one's); read speed from its
    JSON train_inner logs."""
    exe = os.path.join(os.path.dirname(sys.executable), "fairseq-train")
    cmd = [exe if os.path.exists(exe) else "fairseq-train"] + argv
    from fairseq_metabt import fileio

    fileio.check_output(log_path)  # a log is never written over an input, a device or a directory
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = open(log_path).read()
    if proc.returncode != 0:
        sys.stderr.write(text[-3000:])
        raise SystemExit(f"benchmark: {name} run failed (exit {proc.returncode}); log {log_path}")
    records = [json.loads(m.group(1)) for m in map(_TRAIN_INNER.search, text.splitlines()) if m]
    if len(records) < 2:
        raise SystemExit(f"benchmark: {name} logged {len(records)} intervals; raise --updates (log {log_path})")
    steady = records[1:]  # the first interval includes start-up and warm-up
    # the step as words per batch over words per second (both per interval): fairseq rounds ups to two
    # decimals (0.1 ups: 10 % steps), wps to one decimal of a number in the hundreds or thousands
    step = statistics.median(float(r["wpb"]) / float(r["wps"]) for r in steady)
    wps = statistics.median(float(r["wps"]) for r in steady)
    return Measurement(name, 1.0 / step, wps, step, usage.ru_maxrss / 1024.0, float(records[-1]["loss"]))


def run_profiled(name: str, argv: List[str], log_path: str, plugin_parent: Optional[str] = None) -> tuple:
    """:func:`run_fairseq_train` with the task's phase timers on, one thread: (measurement, phase report).
    ``plugin_parent``: a folder holding another copy of ``fairseq_metabt`` to import instead of this one."""
    phases_path = log_path + ".phases.json"
    env = dict(os.environ, METABT_PHASES=phases_path, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if plugin_parent:
        env["PYTHONPATH"] = plugin_parent + os.pathsep + env.get("PYTHONPATH", "")
        argv = [os.path.join(plugin_parent, "fairseq_metabt") if a == USER_DIR else a for a in argv]
    if os.path.exists(phases_path):
        os.remove(phases_path)
    m = run_fairseq_train(name, argv, log_path, env)
    report = json.load(open(phases_path)) if os.path.exists(phases_path) else {"updates": 0, "phases": {}}
    return m, report


def pretrained(bin_dir: str, work_dir: str, args) -> List[str]:
    """``--forward-init``/``--backward-init`` from both directions trained ``--init-updates`` updates (once per
    work dir), as the quickstart initialises BT and MetaBT: a trained backward model samples pseudo-sources
    of real length, where a random one runs each to the length limit."""
    if args.init_updates <= 0:
        return []
    out = []
    for flag, (s, t) in (("--forward-init", (args.source_lang, args.target_lang)),
                         ("--backward-init", (args.target_lang, args.source_lang))):
        save = os.path.join(work_dir, f"init.{s}-{t}")
        ckpt = os.path.join(save, "checkpoint_last.pt")
        if not os.path.exists(ckpt):
            sub = argparse.Namespace(**{**vars(args), "source_lang": s, "target_lang": t,
                                        "updates": args.init_updates})
            argv = [a for a in common_args(bin_dir, sub) if a != "--no-save"]
            argv += ["--user-dir", USER_DIR, "--task", "translation", "--arch", args.arch, "--lr", "2e-3",
                     "--save-dir", save, "--no-epoch-checkpoints"]
            run_fairseq_train(f"init {s}-{t}", argv, os.path.join(work_dir, f"init.{s}-{t}.log"),
                              dict(os.environ, OMP_NUM_THREADS="1"))
        out += [flag, ckpt]
    return out


def profile_runs(bin_dir: str, work_dir: str, args) -> Dict[str, List[str]]:
    """The three profiled systems: the translation baseline and, on the same forward model, BT and MetaBT."""
    common = common_args(bin_dir, args) + ["--user-dir", USER_DIR]
    dual = ["--task", "meta_backtranslation", "--arch", args.arch.replace("transformer_lowres_", "dual_transformer_"),
            "--bt-generation", "sample", "--backward-lr", "1e-4", "--meta-reward", "cosine",
            "--meta-dev-max-tokens", str(args.meta_dev_max_tokens)] + pretrained(bin_dir, work_dir, args)
    return {"baseline": common + ["--task", "translation", "--arch", args.arch],
            "bt": common + dual + ["--freeze-backward"],
            "metabt": common + dual}


def phase_table(name: str, reports: List[Dict], step_s: float) -> List[str]:
    """Rows ``phase  ms/update  % of step`` summed over ``reports``; the step is the timers' own wall time per
    update (``step_s`` of the reports, weighted by updates), the rest of it fairseq's."""
    updates = sum(r["updates"] for r in reports)
    timed = [(r["step_s"], r["updates"]) for r in reports if r.get("step_s") == r.get("step_s") and r["updates"]]
    if timed:
        step_s = sum(s * n for s, n in timed) / sum(n for _, n in timed)
    totals: Dict[str, float] = {}
    for r in reports:
        for k, v in r["phases"].items():
            totals[k] = totals.get(k, 0.0) + v["s"]
    if not updates:
        return [f"{name}: no phases recorded (raise --updates)"]
    rows = [f"{name} phases (ms per update over {updates} updates; step {1000 * step_s:.0f} ms):"]
    for k, v in sorted(totals.items(), key=lambda kv: -kv[1]):
        ms = 1000 * v / updates
        rows.append(f"  {k:26s} {ms:8.1f} ms {100 * ms / (1000 * step_s):5.1f}%")
    rest = 1000 * step_s - 1000 * sum(totals.values()) / updates
    rows.append(f"  {'(rest: fairseq, data)':26s} {rest:8.1f} ms {100 * rest / (1000 * step_s):5.1f}%")
    return rows


def profile(bin_dir: str, work_dir: str, args) -> int:
    """``--profile``: baseline, BT and MetaBT in rotation; ratios per round, medians, phase tables."""
    started = time.time()
    runs = profile_runs(bin_dir, work_dir, args)
    parents = {k: None for k in runs}
    if args.compare:  # another copy of the plugin (e.g. an earlier commit): its BT and MetaBT join the rotation
        for role in ("bt", "metabt"):
            runs[f"{role}@before"], parents[f"{role}@before"] = runs[role], os.path.abspath(args.compare)
    for variant in args.variant:  # this plugin with extra flags, e.g. a speed-up switched off
        label, _, flags = variant.partition("=")
        for role in ("bt", "metabt"):
            runs[f"{role}@{label}"], parents[f"{role}@{label}"] = runs[role] + flags.split(), None
    steps: Dict[str, List[float]] = {k: [] for k in runs}
    reports: Dict[str, List[Dict]] = {k: [] for k in runs}
    for rep in range(args.repeats):
        for role in runs:
            log = os.path.join(work_dir, f"profile.{role}.{rep + 1}.log")
            m, report = run_profiled(role, runs[role], log, parents[role])
            steps[role].append(m.step_time_s)
            reports[role].append(report)
            print(f"round {rep + 1} {role:8s} updates/s={m.updates_per_s:.3f} step_time={m.step_time_s:.3f}s "
                  f"peak_rss={m.peak_rss_mib:.0f}MiB loss={m.final_loss:.3f}", flush=True)
        print(f"round {rep + 1}: " + " ".join(f"{name}={value:.3f}" for name, value in
                                               _ratios({k: v[-1:] for k, v in steps.items()}).items()), flush=True)
    med = {k: statistics.median(v) for k, v in steps.items()}
    for role in ("bt", "metabt"):
        print("\n".join(phase_table(role, reports[role], med[role])))
    print(f"data={bin_dir} arch={args.arch} max_tokens={args.max_tokens} updates={args.updates} "
          f"init_updates={args.init_updates} repeats={args.repeats} wall={time.time() - started:.0f}s logs={work_dir}")
    print("steps (median): " + " ".join(f"{k} {v:.3f}s" for k, v in med.items()))
    print("ratio " + " ".join(f"{name}={value:.3f}" for name, value in _ratios(steps).items()))
    return 0


def _ratios(steps: Dict[str, List[float]]) -> Dict[str, float]:
    """Median over rounds of each round's step ratios: bt/baseline, metabt/bt (and the --compare copy's)."""
    out = {}
    for suffix in [k[2:] for k in steps if k.startswith("bt@")] + [""]:
        out[f"bt{suffix}/baseline"] = statistics.median(b / a for a, b in zip(steps["baseline"], steps[f"bt{suffix}"]))
        out[f"metabt{suffix}/bt{suffix}"] = statistics.median(
            b / a for a, b in zip(steps[f"bt{suffix}"], steps[f"metabt{suffix}"]))
    return out


def prepared_pair(bin_dir: str) -> tuple:
    """(source, target) of a directory prepared by scripts/prepare_data.py: its first pair."""
    path = os.path.join(bin_dir, "prepare.json")
    if not os.path.exists(path):
        raise SystemExit(f"benchmark: {path} not found; give -s/-t, or prepare the data with scripts/prepare_data.py")
    src, _, tgt = json.load(open(path))["pairs"][0].partition("-")
    return src, tgt


def common_args(bin_dir: str, args) -> List[str]:
    import torch

    out = [
        bin_dir, "-s", args.source_lang, "-t", args.target_lang,
        "--optimizer", "adam", "--lr", "5e-4", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "50",
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
        "--max-tokens", str(args.max_tokens), "--max-update", str(args.updates), "--seed", str(args.seed),
        "--log-format", "json", "--log-interval", str(args.log_interval),
        "--disable-validation", "--no-save", "--num-workers", "0",
    ]
    if not torch.cuda.is_available():
        out.append("--cpu")
    return out


def plain_transformer_args(arch: str) -> List[str]:
    """The sizes of a plugin architecture spelled out as plain ``--arch transformer`` flags."""
    import fairseq_metabt  # noqa: F401  (registers the plugin architectures)
    from fairseq.models import ARCH_CONFIG_REGISTRY

    ns = argparse.Namespace()
    ARCH_CONFIG_REGISTRY[arch](ns)
    out = ["--arch", "transformer", "--dropout", str(ns.dropout)]
    for side in ("encoder", "decoder"):
        for key in ("embed_dim", "ffn_embed_dim", "attention_heads", "layers"):
            out += [f"--{side}-{key.replace('_', '-')}", str(getattr(ns, f"{side}_{key}"))]
    if ns.share_decoder_input_output_embed:
        out.append("--share-decoder-input-output-embed")
    return out


def baseline_pair(bin_dir: str, args) -> Dict[str, List[str]]:
    """The plugin's registered architecture (via --user-dir) vs. the same model on plain fairseq."""
    common = common_args(bin_dir, args)
    plain = ["--task", "translation"] + plain_transformer_args(args.arch)
    plugin = ["--user-dir", USER_DIR, "--task", "translation", "--arch", args.arch]
    return {"method": common + plugin, "baseline": common + plain}


@dataclass
class BenchmarkMethod:
    """A benchmarked method: how to build both command lines, and the data it needs."""

    build: Callable[[str, argparse.Namespace], Dict[str, List[str]]]
    preset: str = "quickstart"
    sizes: Optional[str] = None  # --sizes of the synthetic generator, None for the preset's defaults
    source_lang: str = "lrl"
    target_lang: str = "tgt"


def load_methods() -> Dict[str, BenchmarkMethod]:
    """``baseline`` plus every ``scripts/benchmark_methods/NAME.py`` that defines ``METHOD``."""
    methods = {"baseline": BenchmarkMethod(baseline_pair)}
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmark_methods")
    for file in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if file.endswith(".py") and not file.startswith("_"):
            spec = importlib.util.spec_from_file_location(f"benchmark_methods.{file[:-3]}", os.path.join(folder, file))
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            methods[file[:-3]] = module.METHOD
    return methods


def ensure_data(work_dir: str, seed: int, preset: str = "quickstart", sizes: Optional[str] = None) -> str:
    """A synthetic corpus of ``preset``, prepared once per work dir."""
    raw, bin_dir = os.path.join(work_dir, f"raw-{preset}"), os.path.join(work_dir, f"bin-{preset}")
    if not os.path.exists(os.path.join(raw, "manifest.json")):
        subprocess.run([sys.executable, "-m", "fairseq_metabt.synthetic", "--preset", preset,
                        "--out", raw, "--seed", str(seed)] + (["--sizes", sizes] if sizes else []),
                       check=True, cwd=ROOT)
    if not os.path.exists(os.path.join(bin_dir, "prepare.json")):
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "prepare_data.py"), raw, bin_dir],
                       check=True, cwd=ROOT)
    return bin_dir


def main(argv: Optional[List[str]] = None) -> int:
    methods = load_methods()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", choices=sorted(methods))
    p.add_argument("--profile", action="store_true",
                   help="baseline, online BT and MetaBT in rotation: step ratios and the phase profile of BT/MetaBT")
    p.add_argument("--bin-dir", "--data", dest="bin_dir",
                   help="prepared data (default: synthetic quickstart corpus in --work-dir)")
    p.add_argument("--work-dir", help="where data and logs go (default: a temporary directory)")
    p.add_argument("-s", "--source-lang", help="default: the method's")
    p.add_argument("-t", "--target-lang", help="default: the method's")
    p.add_argument("--arch", default="transformer_lowres_small")
    p.add_argument("--updates", type=int, default=60, help="updates per system")
    p.add_argument("--log-interval", type=int, default=10)
    p.add_argument("--max-tokens", type=int, default=2048)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--meta-dev-max-tokens", type=int, default=2048,
                   help="--profile: tokens per dev batch of MetaBT's dev gradient (the task's default)")
    p.add_argument("--init-updates", type=int, default=300,
                   help="--profile: train both directions this many updates first and initialise BT and MetaBT "
                        "from them, as the quickstart does (0: random models, whose samples run to the length limit)")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=FLAGS",
                   help="--profile: BT and MetaBT also run with these extra flags, as bt@LABEL/metabt@LABEL "
                        "(repeatable), e.g. nochunk='--pseudo-chunk-tokens 0'")
    p.add_argument("--compare", metavar="DIR",
                   help="--profile: a folder holding another copy of fairseq_metabt (e.g. "
                        "`git archive COMMIT fairseq_metabt | tar -x -C DIR`); its BT and MetaBT join the rotation")
    p.add_argument("--repeats", type=int, default=1,
                   help="baseline/method pairs, run alternately; the printed ratio is the median of the pairs' ratios "
                        "(alternating cancels slow drifts in the machine's load)")
    args = p.parse_args(argv)
    if not args.profile and not args.method:
        p.error("give --method NAME or --profile")
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.updates < 2 * args.log_interval:
        p.error(f"--updates ({args.updates}) must be at least twice --log-interval ({args.log_interval})")

    work_dir = args.work_dir or tempfile.mkdtemp(prefix="benchmark_")
    os.makedirs(work_dir, exist_ok=True)
    if args.profile:
        if args.bin_dir and not (args.source_lang and args.target_lang):
            args.source_lang, args.target_lang = prepared_pair(args.bin_dir)
        args.source_lang, args.target_lang = args.source_lang or "lrl", args.target_lang or "tgt"
        return profile(args.bin_dir or ensure_data(work_dir, args.seed), work_dir, args)
    method = methods[args.method]
    args.source_lang = args.source_lang or method.source_lang
    args.target_lang = args.target_lang or method.target_lang
    bin_dir = args.bin_dir or ensure_data(work_dir, args.seed, method.preset, method.sizes)
    runs = method.build(bin_dir, args)
    started = time.time()
    ratios = []
    for rep in range(args.repeats):
        results = {}
        suffix = f".{rep + 1}" if args.repeats > 1 else ""
        for role in ("baseline", "method"):  # baseline first: it also warms the file cache
            log = os.path.join(work_dir, f"{args.method}.{role}{suffix}.log")
            results[role] = run_fairseq_train(role, runs[role], log)
        for role, m in results.items():
            print(f"{role:8s} {m.name if role == 'method' else 'fairseq'}: updates/s={m.updates_per_s:.3f} "
                  f"words/s={m.words_per_s:.0f} step_time={m.step_time_s:.3f}s peak_rss={m.peak_rss_mib:.0f}MiB "
                  f"loss={m.final_loss:.3f}")
        ratios.append(results["method"].step_time_s / results["baseline"].step_time_s)
        if args.repeats > 1:
            print(f"pair {rep + 1}/{args.repeats}: ratio={ratios[-1]:.3f}")
    print(f"method={args.method} updates={args.updates} repeats={args.repeats} wall={time.time() - started:.0f}s "
          f"logs={work_dir}")
    if args.repeats > 1:
        print(f"ratios: median {statistics.median(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}")
    print(f"ratio={statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
