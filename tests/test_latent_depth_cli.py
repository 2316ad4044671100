"""Latent depth through the real fairseq CLIs: O2M/M2O with encoder AND decoder latent layers (the
configurations that crash in fairseq's examples/latent_depth), bilingual, resume, inner loop with
--update-freq, reproducible fairseq-generate, pruning, the heatmap, a 2-worker run, bad input."""
import os
import re
import sys

import pytest
import torch

from conftest import ROOT, USER_DIR, fairseq, make_corpus, prepare, run, two_workers

SIZES = "train=100,hrl=150,unra=150,unrb=150,nsy=150,valid=20,test=20,mono_tgt=60,mono_lrl=60"


@pytest.fixture(scope="module")
def multi_bin(tmp_path_factory) -> str:
    base = tmp_path_factory.mktemp("latent_multi")
    raw = make_corpus(str(base / "raw"), preset="multilingual", seed=3, sizes=SIZES)
    return prepare(raw, str(base / "bin"))


def _task_args(bin_dir: str, lang_pairs: str, *extra: str):
    return [bin_dir, "--user-dir", USER_DIR, "--task", "latent_depth_translation", "--lang-pairs", lang_pairs,
            "--cpu", "--num-workers", "0", *extra]


def _train_args(bin_dir: str, save_dir: str, lang_pairs: str, max_update: int, *extra: str):
    return _task_args(bin_dir, lang_pairs, *extra) + [
        "--arch", "latent_depth_transformer_tiny", "--criterion", "latent_layers_loss", "--label-smoothing", "0.1",
        "--latent-kl-weight", "0.1", "--latent-kl-anneal-updates", "4", "--latent-lk-weight", "0.1",
        "--optimizer", "adam", "--lr", "3e-3", "--max-tokens", "400", "--max-update", str(max_update),
        "--save-dir", save_dir, "--seed", "1", "--log-format", "simple", "--log-interval", "1",
        "--no-progress-bar", "--ddp-backend", "legacy_ddp", "--no-epoch-checkpoints"]


def _load(path: str) -> dict:
    import fairseq_metabt  # noqa: F401  (checkpoint allow-list)

    return torch.load(path, map_location="cpu", weights_only=True)


def _hypotheses(bin_dir: str, ckpt: str, lang_pairs: str, src: str, tgt: str, *extra: str) -> list:
    out = run([fairseq("fairseq-generate"), *_task_args(bin_dir, lang_pairs, *extra), "-s", src, "-t", tgt,
               "--path", ckpt, "--gen-subset", "test", "--beam", "2", "--max-len-b", "20",
               "--required-batch-size-multiple", "1"]).stdout
    return sorted(line for line in out.splitlines() if line.startswith("H-"))


O2M = "tgt-lrl,tgt-hrl"
O2M_FLAGS = ("--decoder-langtok", "--encoder-latent-layers", "--decoder-latent-layers",
             "--decoder-target-layers", "2")


@pytest.fixture(scope="module")
def o2m_run(multi_bin, tmp_path_factory):
    """O2M, encoder + decoder latent layers, inner loop I=2 with --update-freq 2: 4 updates, then resumed to 8.

    Theta in a long inverse-sqrt warm-up (lr <= 3e-3 * 8 / 1000), the gates with their own constant lr 0.05;
    relaxed gates for 3 updates, straight-through hard gates afterwards."""
    save = str(tmp_path_factory.mktemp("latent_o2m") / "ck")
    args = _train_args(multi_bin, save, O2M, 4, *O2M_FLAGS, "--latent-inner-steps", "2", "--update-freq", "2",
                       "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "1000", "--latent-gate-lr", "0.05",
                       "--latent-soft-updates", "3")
    first = run([fairseq("fairseq-train"), *args]).stdout
    state4 = _load(os.path.join(save, "checkpoint_last.pt"))
    args[args.index("--max-update") + 1] = "8"
    second = run([fairseq("fairseq-train"), *args]).stdout
    return save, first, state4, second


def test_o2m_with_encoder_and_decoder_latent_layers_trains_and_resumes(o2m_run):
    save, first, state4, second = o2m_run
    # gate probabilities per language and layer, KL and L_K are logged
    assert re.search(r"q_enc_hrl_0 [\d.]+ .*q_enc_lrl_3", first) and "q_dec_lrl_3" in first
    for key in ("latent_kl", "latent_lk", "latent_beta", "latent_lambda", "latent_kl_gnorm", "latent_lk_gnorm",
                "latent_gate_gnorm", "latent_q_margin"):
        assert re.search(rf"{key} [\d.]+", first), key
    # soft for updates 0-2 (logged 1-3), straight-through hard from update 3 on (logged 4-8)
    hard = [float(h) for h in re.findall(r"latent_hard=([\d.]+)", first + second)]  # train_inner lines
    assert hard == [0, 0, 0, 1, 1, 1, 1, 1]
    # inner loop I=2: q_phi stepped on updates 2 and 4, then 6 and 8 after the resume
    task4 = state4["extra_state"]["LatentDepthTranslationTask"]
    assert task4["phi_updates"] == 2
    assert "Loaded checkpoint" in second and "@ 4 updates" in second and "num_updates 8" in second
    task8 = _load(os.path.join(save, "checkpoint_last.pt"))["extra_state"]["LatentDepthTranslationTask"]
    assert task8["phi_updates"] == 4
    # the gates' own Adam: saved, restored on resume (4 steps in all, not 2), its lr constant (no warm-up)
    steps = lambda t: {int(v["step"]) for v in t["gate_optimizer"]["state"].values()}  # noqa: E731
    assert steps(task4) == {2} and steps(task8) == {4}
    assert [g["lr"] for g in task8["gate_optimizer"]["param_groups"]] == [0.05]
    state8 = _load(os.path.join(save, "checkpoint_last.pt"))
    logits = state8["model"]["decoder_latent.logits"]
    assert logits.shape == (2, 4) and torch.isfinite(logits).all()
    # 2 gate steps of lr 0.05 moved the logits by ~0.1, while Theta's warm-up lr could move them by < 1e-4
    moved = (logits - state4["model"]["decoder_latent.logits"]).abs().max()
    assert 0.05 < moved <= 0.1 + 1e-4
    # while Theta moved only by its warm-up lr (4 Adam steps of <= 2.4e-5)
    fc1 = "decoder.layers.0.fc1.weight"
    assert 0 < (state8["model"][fc1] - state4["model"][fc1]).abs().max() < 1.5e-4
    # beta rose from 0 over 4 updates, never negative
    betas = [float(b) for b in re.findall(r"latent_beta ([\d.]+)", first)]
    assert betas and min(betas) >= 0 and max(betas) <= 0.1 + 1e-9


def _with_sparse_gates(save: str, out: str) -> str:
    """The trained checkpoint with language-specific gates that skip layers (so pruning is not trivial)."""
    state = _load(os.path.join(save, "checkpoint_last.pt"))
    state["model"]["encoder_latent.logits"] = torch.tensor([[2.0, -2.0, 2.0, 2.0], [2.0, 2.0, -2.0, -2.0]])
    state["model"]["decoder_latent.logits"] = torch.tensor([[-2.0, 2.0, 2.0, -2.0], [2.0, -2.0, 2.0, 2.0]])
    torch.save(state, out)
    return out


def test_generation_is_reproducible_and_pruned_model_matches(o2m_run, multi_bin, tmp_path):
    save = o2m_run[0]
    ckpt = _with_sparse_gates(save, str(tmp_path / "sparse.pt"))
    flags = ("--decoder-langtok",)
    h1 = _hypotheses(multi_bin, ckpt, O2M, "tgt", "lrl", *flags, "--seed", "1")
    h2 = _hypotheses(multi_bin, ckpt, O2M, "tgt", "lrl", *flags, "--seed", "7")
    assert len(h1) == 20 and h1 == h2

    out_dir = str(tmp_path / "pruned")
    log = run([sys.executable, os.path.join(ROOT, "scripts", "prune_latent_depth.py"), ckpt,
               "--out-dir", out_dir]).stdout
    assert "lrl: encoder layers [0, 1] decoder layers [0, 2, 3]" in log  # lrl is row 1 (hrl, lrl)
    assert "hrl: encoder layers [0, 2, 3] decoder layers [1, 2]" in log
    pruned = _load(os.path.join(out_dir, "checkpoint.hrl.pt"))
    assert not any("latent" in k for k in pruned["model"])
    assert "decoder.layers.2.fc1.weight" not in pruned["model"]
    # the plain Transformer of lrl's sub-network (layers skipped) generates exactly what the gated model does
    plain = _hypotheses(multi_bin, os.path.join(out_dir, "checkpoint.lrl.pt"), O2M, "tgt", "lrl", *flags)
    assert len(plain) == 20 and plain == h1
    # the gated model refuses a pair it was not trained on
    unknown = run([fairseq("fairseq-generate"), *_task_args(multi_bin, "tgt-unra", *flags), "-s", "tgt",
                   "-t", "unra", "--path", ckpt, "--gen-subset", "test"], check=False)
    assert unknown.returncode != 0
    assert "language pair tgt-unra is not in this latent-depth model; it was trained on tgt-lrl, tgt-hrl" \
        in unknown.stdout

    png = str(tmp_path / "layers.png")
    run([sys.executable, os.path.join(ROOT, "scripts", "plot_latent_layers.py"), ckpt, "--out", png,
         "--json", str(tmp_path / "layers.json")])
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(png) > 5000


def test_m2o_with_encoder_and_decoder_latent_layers(multi_bin, tmp_path):
    save = str(tmp_path / "ck")
    out = run([fairseq("fairseq-train"), *_train_args(
        multi_bin, save, "lrl-tgt,hrl-tgt,nsy-tgt", 3, "--encoder-latent-layers", "--decoder-latent-layers",
        "--encoder-target-layers", "2", "--latent-prior", "aggregated")]).stdout
    assert "q_enc_nsy_3" in out and "q_dec_hrl_0" in out and "num_updates 3" in out
    state = _load(os.path.join(save, "checkpoint_last.pt"))
    assert state["model"]["encoder_latent.logits"].shape == (3, 4)
    assert state["cfg"]["model"].latent_langs == "hrl,lrl,nsy"
    hyps = _hypotheses(multi_bin, os.path.join(save, "checkpoint_last.pt"), "lrl-tgt,hrl-tgt,nsy-tgt", "nsy", "tgt")
    assert len(hyps) == 20


def test_bilingual_one_row_of_gates(multi_bin, tmp_path):
    save = str(tmp_path / "ck")
    out = run([fairseq("fairseq-train"), *_train_args(
        multi_bin, save, "lrl-tgt", 3, "--decoder-latent-layers", "--latent-hard", "--latent-tau", "0.5",
        "--latent-tau-anneal-rate", "0.1")]).stdout
    assert "q_dec_lrl-tgt_0" in out and "q_enc" not in out
    assert _load(os.path.join(save, "checkpoint_last.pt"))["model"]["decoder_latent.logits"].shape == (1, 4)


def test_bad_input_from_the_command_line(multi_bin, tmp_path):
    too_deep = run([fairseq("fairseq-train"), *_train_args(
        multi_bin, str(tmp_path / "a"), O2M, 1, *O2M_FLAGS[:-1], "9")], check=False)
    assert too_deep.returncode != 0 and "--decoder-target-layers K=9 must be between 1 and" in too_deep.stdout
    no_tok = run([fairseq("fairseq-train"), *_train_args(
        multi_bin, str(tmp_path / "c"), O2M, 1, *O2M_FLAGS[1:])], check=False)
    assert no_tok.returncode != 0 and "one-to-many latent depth needs --decoder-langtok" in no_tok.stdout


def test_two_workers(multi_bin, tmp_path):
    args = _train_args(multi_bin, str(tmp_path / "ck"), O2M, 3, *O2M_FLAGS, "--latent-inner-steps", "3",
                       "--latent-gate-lr", "0.05", "--latent-soft-updates", "1")
    args.remove("--ddp-backend")
    args.remove("legacy_ddp")
    args.remove("--cpu")
    out = two_workers(args, str(tmp_path / "logs"))
    assert "num_updates 3" in out
    assert "distributed init (rank 1)" in (tmp_path / "logs" / "rank1.log").read_text()
    state = _load(str(tmp_path / "ck" / "checkpoint_last.pt"))
    task_state = state["extra_state"]["LatentDepthTranslationTask"]
    assert task_state["phi_updates"] == 1
    assert {int(v["step"]) for v in task_state["gate_optimizer"]["state"].values()} == {1}
