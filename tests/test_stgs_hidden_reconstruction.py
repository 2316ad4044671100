"""HIDDEN baseline (Niu et al. 2019, §4.3): two hidden-state reconstructors, weights (0.5, 0.5, 1)."""
import os

import pytest
import torch

from conftest import USER_DIR, fairseq, run
from test_stgs_reconstruction import batch, bidir_bin, build  # noqa: F401  (bidir_bin: session fixture)


def build_hidden(bin_dir, *extra):
    return build(bin_dir, "--arch", "transformer_hidden_reconstruction_tiny", "--criterion", "hidden_reconstruction",
                 "--dropout", "0", *extra)


def test_loss_is_translation_plus_weighted_reconstructions(bidir_bin):  # noqa: F811
    task, model, crit = build_hidden(bidir_bin)
    task.load_dataset("test")
    sample = batch(task, "test", range(6))
    loss, sample_size, log = crit(model, sample)
    torch.testing.assert_close(loss, log["trans_loss"] + 0.5 * log["rec_enc_loss"] + 0.5 * log["rec_dec_loss"])
    # L_T is fairseq's own label-smoothed cross-entropy of the plain translation forward pass
    from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion

    ref = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)
    ref_loss, ref_size, _ = ref(model, sample)
    torch.testing.assert_close(log["trans_loss"], ref_loss.detach())
    assert sample_size == ref_size
    # the reconstructors add parameters (unlike STGS), the encoder-states one is not the decoder-states one
    names = [n for n, _ in model.named_parameters()]
    assert any(n.startswith("encoder_reconstructor.layers.0") for n in names)
    assert any(n.startswith("decoder_reconstructor.layers.0") for n in names)


def test_each_reconstructor_reads_its_own_hidden_states(bidir_bin):  # noqa: F811
    task, model, crit = build_hidden(bidir_bin, "--decoder-reconstruction-weight", "0")
    task.load_dataset("test")
    loss, _, _ = crit(model, batch(task, "test", range(4)))
    loss.backward()
    g = {n: p.grad for n, p in model.named_parameters()}
    assert g["encoder_reconstructor.layers.0.encoder_attn.k_proj.weight"].abs().sum() > 0
    # with w_dec = 0 the decoder-states reconstructor gets no gradient at all
    assert g["decoder_reconstructor.layers.0.encoder_attn.k_proj.weight"] is None or \
        g["decoder_reconstructor.layers.0.encoder_attn.k_proj.weight"].abs().sum() == 0
    model.zero_grad()
    task, model, crit = build_hidden(bidir_bin, "--encoder-reconstruction-weight", "0")
    task.load_dataset("test")
    sample = batch(task, "test", range(4))
    src = sample["net_input"]["src_tokens"]
    _, _, log = crit(model, sample)
    # L_dec alone reaches the translation decoder's layers through the decoder states it attends to
    from fairseq import utils
    from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

    from fairseq_metabt.criterions.stgs_reconstruction import shift_right

    enc = model.encoder(src, src_lengths=sample["net_input"]["src_lengths"])
    states, _ = model.decoder(sample["net_input"]["prev_output_tokens"], encoder_out=enc, features_only=True)
    target = utils.convert_padding_direction(src, 1, left_to_right=True)
    out = model.decoder_reconstructor(shift_right(target, 1, 2), encoder_out=model.states_as_memory(
        states, sample["net_input"]["prev_output_tokens"].eq(1)))
    lprobs = model.decoder_reconstructor.get_normalized_probs(out, log_probs=True)
    rec, _ = label_smoothed_nll_loss(lprobs.view(-1, lprobs.size(-1)), target.view(-1), 0.1, ignore_index=1)
    torch.testing.assert_close(rec.detach(), log["rec_dec_loss"])
    rec.backward()
    assert model.decoder.layers[0].fc1.weight.grad.abs().sum() > 0


def test_plain_transformer_is_refused(bidir_bin):  # noqa: F811
    task, model, crit = build(bidir_bin, "--criterion", "hidden_reconstruction")
    task.load_dataset("test")
    with pytest.raises(ValueError, match="--arch transformer_hidden_reconstruction"):
        crit(model, batch(task, "test", [0, 1]))


def test_fairseq_train_and_generate(bidir_bin, tmp_path):  # noqa: F811
    save = str(tmp_path / "ckpt")
    out = run([fairseq("fairseq-train"), bidir_bin, "--user-dir", USER_DIR, "--task", "bidirectional_translation",
               "-s", "lrl", "-t", "tgt", "--arch", "transformer_hidden_reconstruction_tiny", "--share-all-embeddings",
               "--criterion", "hidden_reconstruction", "--label-smoothing", "0.1", "--optimizer", "adam",
               "--lr", "1e-3", "--max-tokens", "1024", "--max-update", "4", "--save-dir", save, "--cpu",
               "--log-format", "simple", "--no-progress-bar", "--num-workers", "0", "--ddp-backend", "legacy_ddp",
               "--no-epoch-checkpoints"]).stdout
    last = [line for line in out.splitlines() if "| train |" in line or "| valid |" in line][-1]
    for key in ("trans_loss", "rec_enc_loss", "rec_dec_loss", "rec_enc_acc", "rec_dec_acc"):
        assert key in last, (key, last)
    gen = run([fairseq("fairseq-generate"), bidir_bin, "--user-dir", USER_DIR, "--task", "bidirectional_translation",
               "--path", os.path.join(save, "checkpoint_last.pt"), "-s", "tgt", "-t", "lrl", "--beam", "1",
               "--max-len-b", "5", "--batch-size", "16", "--required-batch-size-multiple", "1", "--cpu"]).stdout
    assert sum(line.startswith("H-") for line in gen.splitlines()) == 45


def test_fine_tunes_from_a_plain_transformer_checkpoint(bidir_bin):  # noqa: F811
    """The recipe pre-trains a plain Transformer; HIDDEN's reconstructors are new and keep their initialisation."""
    _, plain, _ = build(bidir_bin)
    _, hidden, _ = build_hidden(bidir_bin)
    before = {k: v.clone() for k, v in hidden.state_dict().items() if "reconstructor" in k}
    hidden.load_state_dict(plain.state_dict(), strict=True)
    for k, v in plain.state_dict().items():
        assert torch.equal(hidden.state_dict()[k], v), k
    for k, v in before.items():
        assert torch.equal(hidden.state_dict()[k], v), k


def test_frozen_translator_trains_only_the_reconstructors_with_the_same_loss(bidir_bin):  # noqa: F811
    task, model, joint = build_hidden(bidir_bin)
    task.load_dataset("test")
    sample = batch(task, "test", range(6))
    loss, _, log = joint(model, sample)
    loss.backward()
    joint_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    _, _, crit = build_hidden(bidir_bin, "--freeze-translator")
    frozen_loss, _, frozen_log = crit(model, sample)
    torch.testing.assert_close(frozen_loss.detach(), loss.detach())  # the loss reported is unchanged
    frozen_loss.backward()
    for name, p in model.named_parameters():
        if name.startswith(("encoder.", "decoder.")):  # the translator, its shared embeddings included
            assert p.grad is None, name
        else:  # the reconstructors' own layers learn exactly as in joint training
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            torch.testing.assert_close(p.grad, joint_grads[name], rtol=1e-5, atol=1e-7)


def test_freeze_translator_without_reconstruction_weights_is_refused(bidir_bin):  # noqa: F811
    with pytest.raises(ValueError, match="--freeze-translator.*both reconstruction weights are 0"):
        build_hidden(bidir_bin, "--freeze-translator", "--encoder-reconstruction-weight", "0",
                     "--decoder-reconstruction-weight", "0")


def hidden_train(bin_dir: str, save: str, updates: int, *extra: str, arch="transformer_hidden_reconstruction_tiny",
                 criterion="hidden_reconstruction") -> str:
    return run([fairseq("fairseq-train"), bin_dir, "--user-dir", USER_DIR, "--task", "bidirectional_translation",
                "-s", "lrl", "-t", "tgt", "--arch", arch, "--share-all-embeddings", "--criterion", criterion,
                "--label-smoothing", "0.1", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "1024",
                "--max-update", str(updates), "--save-dir", save, "--cpu", "--log-format", "simple",
                "--no-progress-bar", "--num-workers", "0", "--ddp-backend", "legacy_ddp", "--no-epoch-checkpoints",
                "--seed", "1", *extra]).stdout


def test_reconstructor_warm_up_stage_then_joint_fine_tuning(bidir_bin, tmp_path):  # noqa: F811
    """L_T pre-training → reconstructors alone on the frozen translator → joint fine-tuning (docs recipe)."""
    pre, warm, joint = (str(tmp_path / d) for d in ("pre", "warm", "joint"))
    hidden_train(bidir_bin, pre, 3, arch="transformer_lowres_tiny", criterion="label_smoothed_cross_entropy")
    out = hidden_train(bidir_bin, warm, 3, "--freeze-translator",
                       "--finetune-from-model", os.path.join(pre, "checkpoint_last.pt"))
    assert "keep their initialisation" in out  # fresh reconstructors, as in the paper
    a = torch.load(os.path.join(pre, "checkpoint_last.pt"))["model"]
    b = torch.load(os.path.join(warm, "checkpoint_last.pt"))["model"]
    for k, v in a.items():  # the translator did not move, bit for bit
        assert torch.equal(v, b[k]), k
    out = hidden_train(bidir_bin, joint, 2, "--lr", "1e-4",
                       "--finetune-from-model", os.path.join(warm, "checkpoint_last.pt"))
    assert "keep their initialisation" not in out  # the warmed-up reconstructors were loaded
    c = torch.load(os.path.join(joint, "checkpoint_last.pt"))["model"]
    assert not torch.equal(b["encoder.embed_tokens.weight"], c["encoder.embed_tokens.weight"])
