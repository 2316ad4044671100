"""STGS reconstruction through the real fairseq CLIs: train, pre-train → fine-tune, resume, 2 workers, generate."""
import os
import re
import struct

import pytest
import torch

from conftest import USER_DIR, fairseq, run, two_workers
from test_stgs_reconstruction import bidir_bin  # noqa: F401  (session fixture: tiny bidirectional corpus)

REC_METRICS = ("trans_loss", "rec_loss", "rec_acc", "sample_len", "sample_eos")


def train_args(bin_dir: str, save_dir: str, max_update: int, *extra: str, criterion: str = "stgs_reconstruction"):
    args = [
        bin_dir, "--user-dir", USER_DIR, "--task", "bidirectional_translation", "-s", "lrl", "-t", "tgt",
        "--arch", "transformer_lowres_tiny", "--share-all-embeddings",
        "--optimizer", "adam", "--lr", "1e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "10",
        "--criterion", criterion, "--label-smoothing", "0.1",
        "--max-tokens", "1024", "--max-update", str(max_update), "--save-dir", save_dir,
        "--cpu", "--seed", "1", "--log-format", "simple", "--log-interval", "4", "--num-workers", "0",
        "--no-progress-bar", "--ddp-backend", "legacy_ddp", "--no-epoch-checkpoints",
    ]
    if criterion == "stgs_reconstruction":
        args += ["--stgs-beta", "0.5", "--stgs-max-len-a", "1.0", "--stgs-max-len-b", "5"]
    return args + list(extra)


def finetune_args(bin_dir: str, pretrained: str, save_dir: str, max_update: int):
    """§4.2: from the L_T model, L_T + L_R with the learning rate re-initialised to 1e-4, all else inherited.

    ``--finetune-from-model`` resets optimizer, scheduler, meters and data loader, and is ignored once
    ``save_dir`` has a checkpoint_last.pt, so the same command resumes an interrupted fine-tuning.
    """
    return train_args(bin_dir, save_dir, max_update, "--finetune-from-model", pretrained, "--lr", "1e-4")


@pytest.fixture(scope="module")
def pretrained_and_finetuned(bidir_bin, tmp_path_factory):  # noqa: F811
    """The recipe: pre-train with L_T, then fine-tune with L_T + L_R."""
    pre, fine = str(tmp_path_factory.mktemp("pre")), str(tmp_path_factory.mktemp("fine"))
    pre_out = run([fairseq("fairseq-train")] + train_args(bidir_bin, pre, 6,
                                                          criterion="label_smoothed_cross_entropy")).stdout
    # every update logged, to the progress bar and to TensorBoard (logging only: the weights are unaffected)
    fine_out = run([fairseq("fairseq-train")] + finetune_args(
        bidir_bin, os.path.join(pre, "checkpoint_last.pt"), fine, 8)
        + ["--log-interval", "1", "--tensorboard-logdir", os.path.join(fine, "tb")]).stdout
    return pre, fine, pre_out, fine_out


def test_fine_tuning_starts_from_the_pretrained_model_and_logs_reconstruction(pretrained_and_finetuned):
    pre, fine, pre_out, fine_out = pretrained_and_finetuned
    assert f"Loaded checkpoint {os.path.join(pre, 'checkpoint_last.pt')}" in fine_out
    train_lines = [line for line in fine_out.splitlines() if "| train |" in line or "| train_inner |" in line]
    valid_lines = [line for line in fine_out.splitlines() if "| valid |" in line]
    assert train_lines and valid_lines
    for line in (train_lines[-1], valid_lines[-1]):
        for key in REC_METRICS:
            assert re.search(rf"\b{key}[ =]", line), (key, line)
    assert "num_updates 8" in train_lines[-1]  # counted from 0 again
    # the fine-tuning learning rate was re-initialised to 1e-4 (inverse_sqrt warm-up: ≤ 1e-4)
    lrs = [float(m) for m in re.findall(r"\| lr ([0-9.e-]+)", fine_out)]
    assert lrs and max(lrs) <= 1e-4 + 1e-12
    # fine-tuning changed the weights; pre-training logged no reconstruction
    a = torch.load(os.path.join(pre, "checkpoint_last.pt"))["model"]
    b = torch.load(os.path.join(fine, "checkpoint_last.pt"))["model"]
    assert not torch.equal(a["encoder.embed_tokens.weight"], b["encoder.embed_tokens.weight"])
    assert "rec_loss" not in pre_out


def tensorboard_scalars(logdir: str) -> dict:
    """{tag: {step: value}} from the event files fairseq's TensorBoard wrapper (tensorboardX) wrote."""
    from tensorboardX.proto import event_pb2

    scalars = {}
    for name in sorted(os.listdir(logdir)):
        data, pos = open(os.path.join(logdir, name), "rb").read(), 0
        while pos < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def test_every_update_logs_reconstruction_accuracy_and_sample_statistics(pretrained_and_finetuned):
    """rec_acc, sample_len, sample_eos per update (--log-interval 1) in the log and in TensorBoard's train_inner."""
    _, fine, _, fine_out = pretrained_and_finetuned
    inner = {}
    for line in fine_out.splitlines():
        if "| train_inner |" in line:
            fields = dict(re.findall(r"(\w+)=([-0-9.e]+)", line))  # simple format: key=value, ...
            inner[int(fields["num_updates"])] = fields
    assert sorted(inner) == list(range(1, 9))
    scalars = tensorboard_scalars(os.path.join(fine, "tb", "train_inner"))
    for step, fields in inner.items():
        acc, length, eos = float(fields["rec_acc"]), float(fields["sample_len"]), float(fields["sample_eos"])
        assert 0 <= acc <= 100 and 0 <= eos <= 1
        assert length >= 2  # at least the forced tag and EOS
        for key, value in (("rec_acc", acc), ("sample_len", length), ("sample_eos", eos)):
            assert abs(scalars[key][step] - value) <= 0.01, (key, step, scalars[key][step], value)


def test_resumed_fine_tuning_equals_an_uninterrupted_one(pretrained_and_finetuned, bidir_bin, tmp_path):  # noqa: F811
    pre, straight, _, _ = pretrained_and_finetuned
    split = str(tmp_path / "split")
    pretrained = os.path.join(pre, "checkpoint_last.pt")
    run([fairseq("fairseq-train")] + finetune_args(bidir_bin, pretrained, split, 4))  # stops mid-epoch
    out = run([fairseq("fairseq-train")] + finetune_args(bidir_bin, pretrained, split, 8)).stdout
    assert f"Loaded checkpoint {os.path.join(split, 'checkpoint_last.pt')}" in out and "@ 4 updates" in out
    a = torch.load(os.path.join(straight, "checkpoint_last.pt"))["model"]
    b = torch.load(os.path.join(split, "checkpoint_last.pt"))["model"]
    assert a.keys() == b.keys()
    for k in a:  # the Gumbel noise comes from fairseq's per-update seeded RNG: identical runs
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.parametrize("src, tgt", [("lrl", "tgt"), ("tgt", "lrl")])
def test_generate_each_direction(pretrained_and_finetuned, bidir_bin, src, tgt):  # noqa: F811
    _, fine, _, _ = pretrained_and_finetuned
    out = run([fairseq("fairseq-generate"), bidir_bin, "--user-dir", USER_DIR, "--task", "bidirectional_translation",
               "--path", os.path.join(fine, "checkpoint_last.pt"), "-s", src, "-t", tgt, "--gen-subset", "test",
               "--beam", "2", "--max-len-b", "10", "--batch-size", "16", "--required-batch-size-multiple", "1",
               "--cpu"]).stdout
    src_lines = [line for line in out.splitlines() if line.startswith("S-")]
    hyp_lines = [line for line in out.splitlines() if line.startswith("H-")]
    ref_lines = [line for line in out.splitlines() if line.startswith("T-")]
    assert len(hyp_lines) == len(ref_lines) == 45
    # sources carry the tag of the language translated into; the forced output tag is stripped
    assert all(line.split("\t")[1].startswith(f"__{tgt}__ ") for line in src_lines)
    assert not any("__lrl__" in line or "__tgt__" in line for line in hyp_lines + ref_lines)
    # the references are the -t side of the raw test file
    raw = open(os.path.join(bidir_bin, "spm", f"test.lrl-tgt.{tgt}")).read().splitlines()
    refs = {int(line.split("\t")[0][2:]): line.split("\t")[1] for line in ref_lines}
    assert refs[0] == raw[0].strip()


def test_two_workers(bidir_bin, tmp_path):  # noqa: F811
    out = two_workers(train_args(bidir_bin, str(tmp_path / "two"), 4), str(tmp_path / "logs"))
    assert "distributed init (rank 1)" in (tmp_path / "logs" / "rank1.log").read_text()
    last = [line for line in out.splitlines() if "| train |" in line][-1]
    assert "num_updates 4" in last and "rec_loss" in last and "sample_eos" in last
    assert os.path.exists(tmp_path / "two" / "checkpoint_last.pt")
