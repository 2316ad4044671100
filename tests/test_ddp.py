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
