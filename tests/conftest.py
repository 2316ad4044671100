"""Shared fixtures: tiny synthetic corpora, prepared once per session, and CLI runners."""
from __future__ import annotations

import os
import subprocess
import sys
from typing import List, Optional

import pytest

import fairseq_metabt  # noqa: F401,E402  (checkpoint allow-list for torch.load in tests)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
USER_DIR = os.path.join(ROOT, "fairseq_metabt")
BIN_PATH = os.path.dirname(sys.executable)
sys.path.insert(0, ROOT)

# Sizes that keep every CLI test to seconds on 2 CPU cores; valid/test sizes are deliberately
# not multiples of 8, so a dropped last batch (fairseq issue #5036) would show.
TINY_SIZES = "train=400,valid=43,test=45,mono_tgt=200,mono_lrl=200"


def cli_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = BIN_PATH + os.pathsep + env.get("PATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(cmd: List[str], check: bool = True, input: Optional[str] = None, timeout: int = 600,
        cwd: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run a command with the venv's tools first on PATH; on failure show its output."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, input=input,
                          timeout=timeout, env=cli_env(), cwd=cwd or ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-6000:]}")
    return proc


def fails(cmd: List[str]) -> str:
    """Run a command that must fail; its output (which should name the problem and the fix)."""
    proc = run(cmd, check=False)
    assert proc.returncode != 0, f"expected a failure: {' '.join(cmd)}\n{proc.stdout[-3000:]}"
    return proc.stdout


def two_workers(train_args: List[str], log_dir: str, timeout: int = 900, env: Optional[dict] = None,
                train_bin: Optional[str] = None, expect_ok: bool = True) -> str:
    """``scripts/train_ddp.sh 2 ARGS`` (fairseq-train's arguments, without the program): both gloo ranks
    must train; rank 0's output is returned, the other rank's log is ``log_dir/rank1.log``.

    ``env``: extra environment; ``train_bin``: the program instead of fairseq-train (``$FAIRSEQ_TRAIN``,
    e.g. tests/amp_probe.py); ``expect_ok=False``: the run must fail, its output is returned."""
    full_env = cli_env()
    full_env.update(env or {})
    full_env["DDP_LOG_DIR"] = log_dir
    if train_bin:
        full_env["FAIRSEQ_TRAIN"] = train_bin
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "train_ddp.sh"), "2", *train_args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env, timeout=timeout)
    if not expect_ok:
        assert proc.returncode != 0, proc.stdout[-4000:]
        return proc.stdout
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "training on 2 devices" in proc.stdout, proc.stdout[-4000:]
    return proc.stdout


def assert_same_weights(a: dict, b: dict, atol: float = 1e-6) -> None:
    """Two checkpoints' model weights agree (e.g. an interrupted-and-resumed run and an uninterrupted one)."""
    import torch

    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=atol), k


def fairseq(name: str) -> str:
    return os.path.join(BIN_PATH, name)


def make_corpus(out_dir: str, preset: str = "quickstart", seed: int = 1, sizes: str = TINY_SIZES) -> str:
    run([sys.executable, "-m", "fairseq_metabt.synthetic", "--preset", preset, "--out", out_dir,
         "--seed", str(seed), "--sizes", sizes])
    return out_dir


def prepare(raw_dir: str, bin_dir: str, *extra: str) -> str:
    run([sys.executable, os.path.join(ROOT, "scripts", "prepare_data.py"), raw_dir, bin_dir,
         "--vocab-size", "600", *extra])
    return bin_dir


def tiny_train_args(bin_dir: str, save_dir: str, max_update: int = 20, *extra: str) -> List[str]:
    """fairseq-train arguments for a seconds-long run of the tiny plugin architecture."""
    return [
        fairseq("fairseq-train"), bin_dir, "--user-dir", USER_DIR, "--task", "translation",
        "-s", "lrl", "-t", "tgt", "--arch", "transformer_lowres_tiny",
        "--optimizer", "adam", "--lr", "1e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "10",
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
        "--max-tokens", "1024", "--max-update", str(max_update), "--save-dir", save_dir,
        "--cpu", "--seed", "1", "--log-format", "simple", "--log-interval", "5", "--num-workers", "0",
        "--no-progress-bar", *extra,
    ]


@pytest.fixture(scope="session")
def quickstart_bin(tmp_path_factory) -> str:
    """A tiny quickstart corpus, prepared; shared read-only by the tests."""
    base = tmp_path_factory.mktemp("quickstart")
    raw = make_corpus(str(base / "raw"))
    return prepare(raw, str(base / "bin"))


def in_process_trainer(train_args: List[str]):
    """fairseq's real ``Trainer`` in this process for ``fairseq-train`` arguments (no program name):
    ``(task, model, criterion, trainer)``; the train split is loaded by ``trainer.get_train_iterator``."""
    import numpy as np
    from fairseq import options, tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    args = options.parse_args_and_arch(options.get_training_parser(), list(train_args))
    cfg = convert_namespace_to_omegaconf(args)
    np.random.seed(cfg.common.seed)  # as fairseq_cli.train does: the same arguments build the same model
    utils.set_torch_seed(cfg.common.seed)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    return task, model, criterion, Trainer(cfg, task, model, criterion)


# Per task: architecture, criterion and the flags that keep a run of each of the five tasks to seconds.
TASK_FLAGS = {
    "meta_backtranslation": ["-s", "lrl", "-t", "tgt", "--arch", "dual_transformer_tiny",
                             "--criterion", "label_smoothed_cross_entropy", "--meta-dev-max-tokens", "300",
                             "--bt-max-len-a", "0", "--bt-max-len-b", "8"],
    "wake_sleep_translation": ["-s", "lrl", "-t", "tgt", "--arch", "dual_transformer_tiny",
                               "--criterion", "label_smoothed_cross_entropy", "--ws-max-len-a", "0",
                               "--ws-max-len-b", "8", "--ws-mle-updates", "2", "--wake-updates", "3",
                               "--sleep-updates", "3"],
    "dds_translation": ["--lang-pairs", "lrl-tgt", "--arch", "transformer_lowres_tiny",
                        "--criterion", "label_smoothed_cross_entropy", "--dds-update-interval", "2",
                        "--dds-scorer-iters", "2", "--dds-scorer-batch", "16", "--dds-scorer-lr", "0.01",
                        "--dds-dev-max-tokens", "300"],
    "latent_depth_translation": ["--lang-pairs", "lrl-tgt", "--arch", "latent_depth_transformer_tiny",
                                 "--criterion", "latent_layers_loss", "--encoder-latent-layers",
                                 "--decoder-latent-layers", "--latent-kl-weight", "0.1"],
    "bidirectional_translation": ["-s", "lrl", "-t", "tgt", "--arch", "transformer_lowres_tiny",
                                  "--share-all-embeddings", "--criterion", "stgs_reconstruction", "--stgs-beta",
                                  "0.5", "--stgs-max-len-a", "1.0", "--stgs-max-len-b", "5"],
}


def task_train_args(task: str, bin_dir: str, save_dir: str, max_update: int, *extra: str) -> List[str]:
    """fairseq-train arguments (without the program) for a seconds-long run of one of the plugin's tasks."""
    return [bin_dir, "--user-dir", USER_DIR, "--task", task, *TASK_FLAGS[task], "--label-smoothing", "0.1",
            "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "600", "--max-update", str(max_update),
            "--save-dir", save_dir, "--cpu", "--seed", "2", "--log-format", "simple", "--log-interval", "1",
            "--num-workers", "0", "--no-progress-bar", "--ddp-backend", "legacy_ddp", *extra]


def central_differences(params, objective, eps: float = 1e-6):
    """Brute-force gradient of ``objective()`` (a float) w.r.t. every element of ``params``, by central
    differences; yields ``(param, flat index, numerical derivative)`` (parameters restored afterwards)."""
    for p in params:
        flat = p.data.view(-1)
        for k in range(flat.numel()):
            old = float(flat[k])
            flat[k] = old + eps
            up = objective()
            flat[k] = old - eps
            down = objective()
            flat[k] = old
            yield p, k, (up - down) / (2 * eps)


# The fast subset, for iteration (`bash scripts/test.sh -m fast`: about 2-3 minutes on 2 cores): the unit
# modules that check the math against brute force and run no fairseq CLI, plus single tests marked
# `@pytest.mark.fast` in the slower modules. The whole suite (what CI runs) stays the reference.
FAST_MODULES = {"test_latent_depth_unit", "test_modules_gradients", "test_modules_gumbel", "test_modules_reinforce",
                "test_modules_sampling", "test_dds_unit", "test_dds_rewards", "test_stgs_reconstruction",
                "test_catalog_corpus", "test_synthetic", "test_registration", "test_compat", "test_recipe_pool"}


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "fast: the quick subset for iteration (bash scripts/test.sh -m fast)")


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in FAST_MODULES:
            item.add_marker(pytest.mark.fast)
