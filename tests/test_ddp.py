"""scripts/train_ddp.sh: two gloo ranks on CPU both train."""
import os
import re
import subprocess

from conftest import ROOT, cli_env, tiny_train_args, two_workers


def _epoch_updates(log: str) -> int:
    m = re.search(r"\| train \| epoch 001 \|.*?num_updates (\d+)", log)
    assert m, log[-3000:]
    return int(m.group(1))


def test_two_workers_split_the_epoch(quickstart_bin, tmp_path):
    args = tiny_train_args(quickstart_bin, str(tmp_path / "one"), 1000, "--max-epoch", "1")
    single = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env())
    assert single.returncode == 0, single.stdout[-3000:]

    ddp_args = tiny_train_args(quickstart_bin, str(tmp_path / "two"), 1000, "--max-epoch", "1")[1:]
    out = two_workers(ddp_args, str(tmp_path / "logs"))
    rank1 = (tmp_path / "logs" / "rank1.log").read_text()
    assert "distributed init (rank 1)" in rank1
    # each rank consumed its own shard: one epoch takes half as many updates
    n1, n2 = _epoch_updates(single.stdout), _epoch_updates(out)
    assert n2 == (n1 + 1) // 2 or n2 == n1 // 2, (n1, n2)
    assert os.path.exists(tmp_path / "two" / "checkpoint_last.pt")


def test_bad_worker_count_is_refused():
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "train_ddp.sh"), "zero"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 2 and "usage" in proc.stdout


# ---- every method with 2 gloo workers, --amp (CPU bf16 autocast), under each DDP backend ----------------
# tests/amp_probe.py runs fairseq-train on each rank: it records the autocast dtype of every training forward,
# saves each rank's parameters and task state at exit, and for pytorch_ddp applies a TEST-ONLY PATCH of
# fairseq's DDP wrapper: torch's DistributedDataParallel built exactly as fairseq's pytorch_ddp builds it on a
# GPU, except device_ids=None (fairseq passes device_ids=[device_id], which torch refuses for a CPU module).
import json  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from conftest import task_train_args  # noqa: E402
from test_amp import PROBE, assert_close  # noqa: E402

UPDATES = 2
# per task: flags that put the interesting events inside UPDATES updates (wake-sleep: MLE, then wake;
# DDS: a scorer update at update 2, which reads the all-reduced rewards and steps psi on every worker)
SHORT = {"wake_sleep_translation": ["--ws-mle-updates", "1"], "dds_translation": ["--dds-grad-source", "ema"]}
# state that is per worker by design, not a replica: DDS's sentence counts since the last scorer update
PER_WORKER = {"usage"}
# (task, backend) -> the one-line refusal at start-up; every other pair must train
REFUSED = {
    ("meta_backtranslation", "pytorch_ddp"): "meta_backtranslation needs --ddp-backend legacy_ddp",
    ("wake_sleep_translation", "pytorch_ddp"): "wake_sleep_translation needs --ddp-backend legacy_ddp",
    ("dds_translation", "pytorch_ddp"): "dds_translation --dds-grad-source ema needs --ddp-backend legacy_ddp",
    ("bidirectional_translation", "pytorch_ddp"): "stgs_reconstruction needs --ddp-backend legacy_ddp",
}


def train_two_workers(task: str, backend: str, data: str, out, *extra: str, expect_ok: bool = True):
    """(rank 0's output, [per-rank state], [per-rank autocast counts]): UPDATES updates, 2 workers, --amp."""
    out.mkdir(exist_ok=True)
    args = task_train_args(task, data, str(out / "save"), UPDATES, "--amp", "--no-save", "--disable-validation",
                           *SHORT.get(task, []), *extra)
    env = {"PROBE_STATE_DIR": str(out), "AMP_PROBE_OUT": str(out / "probe{rank}.json"),
           "PROBE_DDP_BACKEND": backend}
    text = two_workers(args, str(out / "logs"), env=env, train_bin=PROBE, expect_ok=expect_ok)
    if not expect_ok:
        return text + (out / "logs" / "rank1.log").read_text(), [], []
    states = [torch.load(str(out / f"rank{r}.pt"), weights_only=False) for r in (0, 1)]
    counts = [json.load(open(out / f"probe{r}.json")) for r in (0, 1)]
    return text, states, counts


def assert_replicas(a: dict, b: dict) -> None:
    """theta (and psi, the scorer, EMAs, gate optimizers: the task's state) identical on both workers."""
    assert a["num_updates"] == b["num_updates"] == UPDATES, (a["num_updates"], b["num_updates"])
    assert_close(a["model"], b["model"], "model")
    assert_close(a["criterion"], b["criterion"], "criterion")
    strip = {k: {kk: vv for kk, vv in v.items() if kk not in PER_WORKER} for k, v in a["extra"].items()}
    strip_b = {k: {kk: vv for kk, vv in v.items() if kk not in PER_WORKER} for k, v in b["extra"].items()}
    assert_close(strip, strip_b, "task state")


def one_line_refusal(text: str, refusal: str) -> None:
    """Every rank that got as far as printing printed the one line and no traceback (train_ddp.sh stops the
    other rank when the first exits, so rank 0 may be stopped before it prints)."""
    lines = [line for line in text.splitlines() if line.startswith("fairseq-metabt: error:")]
    assert lines and all(refusal in line for line in lines), text[-3000:]
    assert "Traceback" not in text, text[-3000:]


CASES = [(t, "legacy_ddp") for t in ("meta_backtranslation", "dds_translation", "wake_sleep_translation",
                                      "bidirectional_translation", "latent_depth_translation")]
# pytorch_ddp: DDS with fresh gradients (the other refusals in process, below; latent depth training and STGS's
# refusal end to end under pytorch_ddp in tests/test_gpu_check.py's CPU run of the same checks)
CASES += [("dds_translation", "pytorch_ddp")]


@pytest.mark.parametrize("task,backend", CASES)
def test_two_workers_amp_end_identical(task, backend, quickstart_bin, tmp_path):
    """Each method: 2 gloo workers, --amp (bf16 autocast in every training forward on both), identical
    replicas at the end; under pytorch_ddp the methods that cannot use it stop with their one line."""
    extra = ["--dds-grad-source", "fresh"] if (task, backend) == ("dds_translation", "pytorch_ddp") else []
    refusal = None if extra else REFUSED.get((task, backend))
    text, states, counts = train_two_workers(task, backend, quickstart_bin, tmp_path, *extra,
                                             expect_ok=refusal is None)
    if refusal:
        one_line_refusal(text, refusal)
        return
    assert "training on 2 devices" in text
    assert_replicas(*states)
    for c in counts:
        assert c["autocast_on"] > 0 and c["autocast_off"] == 0 and c["dtypes"] == ["torch.bfloat16"], c


@pytest.mark.parametrize("task", ["meta_backtranslation", "wake_sleep_translation", "dds_translation",
                                  "bidirectional_translation"])
@pytest.mark.parametrize("backend", ["pytorch_ddp", "no_c10d"])
def test_backend_refusals_at_setup(task, backend, quickstart_bin, tmp_path):
    """In process, without workers: the same checks on the configuration fairseq-train builds (DDS with
    --dds-grad-source ema, its one path torch's DDP breaks)."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from fairseq_metabt.errors import UserError, format_error

    argv = task_train_args(task, quickstart_bin, str(tmp_path), 1, "--amp", *SHORT.get(task, []))
    argv[argv.index("--ddp-backend") + 1] = backend
    argv += ["--distributed-world-size", "2"]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    refusal = REFUSED.get((task, "pytorch_ddp")) if backend in ("pytorch_ddp", "c10d") else None
    try:
        task_obj = tasks.setup_task(cfg.task)
        task_obj.build_model(cfg.model)
        task_obj.build_criterion(cfg.criterion)
    except UserError as e:
        assert refusal and refusal in format_error(e) and "\n" not in format_error(e), format_error(e)
        return
    assert refusal is None, f"{task} under {backend} was not refused"


@pytest.mark.fast
def test_refuse_pytorch_ddp_only_with_workers():
    from fairseq_metabt.errors import UserError, format_error
    from fairseq_metabt.modules.ddp import refuse_pytorch_ddp

    for backend, world in (("pytorch_ddp", 1), ("legacy_ddp", 4), ("no_c10d", 2), (None, 8)):
        refuse_pytorch_ddp({"ddp_backend": backend, "distributed_world_size": world}, "x", "why")
    for backend in ("pytorch_ddp", "c10d"):
        with pytest.raises(UserError) as e:
            refuse_pytorch_ddp({"ddp_backend": backend, "distributed_world_size": 2}, "comp", "a reason")
        line = format_error(e.value)
        assert line.startswith("fairseq-metabt: error: comp needs --ddp-backend legacy_ddp (or no_c10d) with 2 "
                               f"workers, got --ddp-backend {backend}: a reason") and "\n" not in line
    unresolved = type("Cfg", (), {"ddp_backend": property(lambda self: 1 / 0)})()
    refuse_pytorch_ddp(unresolved, "x", "why")  # a config outside fairseq-train: nothing to check
