"""STGS round-trip reconstruction: task, free-running decoding, soft inputs, criterion (Niu et al. 2019)."""
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from conftest import make_corpus, prepare

import fairseq_metabt  # noqa: F401  (registers the plugin)
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.sequence_generator import SequenceGenerator

from fairseq_metabt.criterions.stgs_reconstruction import shift_right
from fairseq_metabt.modules.free_running import embedding_output, encode_soft, free_running_decode

SIZES = "train=400,valid=43,test=45,mono_tgt=10,mono_lrl=10"


@pytest.fixture(scope="session")
def bidir_bin(tmp_path_factory) -> str:
    base = tmp_path_factory.mktemp("bidir")
    return prepare(make_corpus(str(base / "raw"), preset="bidirectional", sizes=SIZES), str(base / "bin"))


def build(bin_dir: str, *extra: str):
    """(task, model, criterion) exactly as fairseq-train builds them from these flags."""
    argv = [bin_dir, "--task", "bidirectional_translation", "-s", "lrl", "-t", "tgt",
            "--arch", "transformer_lowres_tiny", "--share-all-embeddings", "--criterion", "stgs_reconstruction",
            "--label-smoothing", "0.1", "--optimizer", "adam", "--cpu", "--max-tokens", "1024", "--seed", "1",
            *extra]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    torch.manual_seed(1)
    task = tasks.setup_task(cfg.task)
    return task, task.build_model(cfg.model), task.build_criterion(cfg.criterion)


def batch(task, split: str, ids):
    ds = task.dataset(split)
    return ds.collater([ds[i] for i in ids])


@pytest.fixture(scope="module")
def trained(bidir_bin):
    """A tiny model trained 40 steps on L_T, so that its greedy translations end with EOS at varied lengths."""
    task, model, crit = build(bidir_bin, "--reconstruction-weight", "0")
    task.load_dataset("train")
    task.load_dataset("test")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    n = len(task.dataset("train"))
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(40):
        loss, _, _ = crit(model, batch(task, "train", torch.randint(0, n, (24,), generator=g).tolist()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return task, model


def test_dataset_is_corpus_plus_tagged_swap(bidir_bin):
    task, _, _ = build(bidir_bin)
    task.load_dataset("train")
    task.load_dataset("test")
    d, tag = task.src_dict, lambda lang: task.src_dict.index(f"__{lang}__")
    train, test = task.dataset("train"), task.dataset("test")
    assert len(train) == 800 and len(test) == 45  # test: one direction, lrl → tgt
    fwd, bwd = train[3], train[403]
    # source carries the tag of the language to translate into, target the tag of its own source's language
    assert fwd["source"][0] == tag("tgt") and fwd["target"][0] == tag("lrl")
    assert bwd["source"][0] == tag("lrl") and bwd["target"][0] == tag("tgt")
    assert torch.equal(fwd["source"], bwd["target"]) and torch.equal(fwd["target"], bwd["source"])
    assert fwd["source"][-1] == d.eos() and fwd["target"][-1] == d.eos()
    b = batch(task, "train", [3, 403])
    # the collater reorders rows; each row's forced output tag is its own target's tag
    assert torch.equal(task.target_tags(b["net_input"]["src_tokens"]).view(-1), b["target"][:, 0])
    assert sorted(b["target"][:, 0].tolist()) == sorted([tag("lrl"), tag("tgt")])


def test_dictionary_without_language_tags_is_refused(bidir_bin, tmp_path):
    bad = str(tmp_path / "bin")
    shutil.copytree(bidir_bin, bad)
    for name in os.listdir(bad):
        if name.startswith("dict."):
            path = os.path.join(bad, name)
            lines = [line for line in open(path) if not line.startswith("__")]
            open(path, "w").writelines(lines)
    with pytest.raises(ValueError, match=r"lacks the language tag\(s\) __lrl__, __tgt__.*prepare_data.py"):
        build(bad)


@pytest.mark.parametrize("flags, message", [
    (["--stgs-tau", "0"], "--stgs-tau must be > 0"),
    (["--stgs-tau", "-1"], "--stgs-tau must be > 0"),
    (["--stgs-beta", "-0.5"], "--stgs-beta must be >= 0"),
])
def test_bad_hyper_parameters_are_refused(bidir_bin, flags, message):
    with pytest.raises(ValueError, match=message):
        build(bidir_bin, *flags)


def test_unshared_embeddings_are_refused(bidir_bin):
    argv = [bidir_bin, "--task", "bidirectional_translation", "-s", "lrl", "-t", "tgt",
            "--arch", "transformer_lowres_tiny", "--criterion", "stgs_reconstruction", "--optimizer", "adam", "--cpu"]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    task = tasks.setup_task(cfg.task)
    task.load_dataset("test")
    model, crit = task.build_model(cfg.model), task.build_criterion(cfg.criterion)
    with pytest.raises(ValueError, match="--share-all-embeddings"):
        crit(model, batch(task, "test", [0, 1]))


def test_one_hot_soft_input_encodes_exactly_like_tokens(trained):
    task, model = trained
    src = batch(task, "test", range(6))["net_input"]["src_tokens"]
    one_hot = F.one_hot(src, len(task.src_dict)).float()
    ref = model.encoder(src, src_lengths=src.ne(1).sum(1))
    soft = encode_soft(model.encoder, src, one_hot @ model.encoder.embed_tokens.weight)
    assert torch.equal(ref["encoder_padding_mask"][0], soft["encoder_padding_mask"][0])
    torch.testing.assert_close(soft["encoder_out"][0], ref["encoder_out"][0], rtol=0, atol=1e-5)
    # the decoder's embedding substitution is just as exact
    prev = batch(task, "test", range(6))["net_input"]["prev_output_tokens"]
    with embedding_output(model.decoder.embed_tokens, F.one_hot(prev, len(task.src_dict)).float()
                          @ model.decoder.embed_tokens.weight):
        out_soft, _ = model.decoder(prev, encoder_out=ref)
    out_ref, _ = model.decoder(prev, encoder_out=ref)
    torch.testing.assert_close(out_soft, out_ref, rtol=0, atol=1e-5)


def _greedy(task, model, sample, max_len_a=1.2, max_len_b=10):
    gen = SequenceGenerator([model], task.tgt_dict, beam_size=1, max_len_a=max_len_a, max_len_b=max_len_b)
    src = sample["net_input"]["src_tokens"]
    with torch.no_grad():
        return gen.generate([model], sample, prefix_tokens=task.target_tags(src))


def test_beta_zero_sample_equals_fairseq_greedy_search(trained):
    task, model = trained
    ds = task.dataset("test")
    sample = batch(task, "test", range(len(ds)))
    src = sample["net_input"]["src_tokens"]
    hypos = _greedy(task, model, sample)
    max_len = min(int(1.2 * src.size(1) + 10), model.decoder.max_positions() - 1)
    with torch.no_grad():
        enc = model.encoder(src, src_lengths=sample["net_input"]["src_lengths"])
        out = free_running_decode(model.decoder, enc, max_len, tau=2.0, beta=0.0,
                                  prefix_tokens=task.target_tags(src))
    for i in range(len(ds)):
        expected = hypos[i][0]["tokens"]
        got = out.tokens[i, : out.lengths[i]]
        assert torch.equal(got, expected), (i, got.tolist(), expected.tolist())
    # not a degenerate comparison: the model chose EOS itself, at many different lengths
    print("ended with EOS:", int(out.ended_with_eos.sum()), "of", len(ds), "lengths", out.lengths.tolist())
    assert len(ds) // 2 < int(out.ended_with_eos.sum()) < len(ds) and out.lengths.unique().numel() > 3


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_incremental_decoding_equals_full_recomputation(trained, beta):
    task, model = trained
    sample = batch(task, "test", range(8))
    src = sample["net_input"]["src_tokens"]
    enc = model.encoder(src, src_lengths=sample["net_input"]["src_lengths"])
    runs = [free_running_decode(model.decoder, enc, 30, tau=2.0, beta=beta, prefix_tokens=task.target_tags(src),
                                incremental=inc, generator=torch.Generator().manual_seed(5)) for inc in (True, False)]
    inc, full = runs
    assert torch.equal(inc.tokens, full.tokens) and torch.equal(inc.lengths, full.lengths)
    torch.testing.assert_close(inc.embeddings, full.embeddings, rtol=0, atol=0)
    # the straight-through gradients agree too (through every step's soft sample and the decoder)
    w = torch.randn_like(inc.embeddings)
    weight = model.decoder.embed_tokens.weight
    g_inc = torch.autograd.grad((inc.embeddings * w).sum(), weight, retain_graph=True)[0]
    g_full = torch.autograd.grad((full.embeddings * w).sum(), weight)[0]
    torch.testing.assert_close(g_inc, g_full, rtol=1e-3, atol=1e-4)


def test_tokens_after_first_eos_are_masked(trained):
    task, model = trained
    sample = batch(task, "test", range(3))
    src = sample["net_input"]["src_tokens"]
    eos, pad = task.src_dict.eos(), task.src_dict.pad()
    tags = task.target_tags(src)
    # force row 0 to stop after its tag; rows 1-2 go on, so row 0 keeps being decoded past its EOS
    prefix = torch.cat([tags, torch.tensor([[eos], [task.src_dict.index("▁.")], [task.src_dict.index("▁.")]])], 1)
    with torch.no_grad():
        enc = model.encoder(src, src_lengths=sample["net_input"]["src_lengths"])
        out = free_running_decode(model.decoder, enc, 25, beta=0.0, prefix_tokens=prefix)
    assert out.tokens.size(1) > 2
    assert out.tokens[0, :2].tolist() == [tags[0, 0].item(), eos] and out.lengths[0] == 2
    assert (out.tokens[0, 2:] == pad).all() and (out.embeddings[0, 2:] == 0).all()
    for i in range(3):  # every row: exactly one EOS, last of its length; nothing after
        row = out.tokens[i]
        assert int(row.eq(eos).sum()) == 1 and row[out.lengths[i] - 1] == eos
        assert (row[out.lengths[i]:] == pad).all()
        assert torch.equal(out.embeddings[i, : out.lengths[i]], model.encoder.embed_tokens(row[: out.lengths[i]]))
    # the masked tail is invisible to the reconstructor: row 0 encodes as if alone and unpadded
    rec = encode_soft(model.encoder, out.tokens, out.embeddings)
    alone = model.encoder(out.tokens[:1, :2], src_lengths=torch.tensor([2]))
    torch.testing.assert_close(rec["encoder_out"][0][:2, 0], alone["encoder_out"][0][:, 0], rtol=0, atol=1e-5)


def test_reconstruction_gradient_reaches_encoder_decoder_embeddings_and_the_sample(bidir_bin):
    task, model, crit = build(bidir_bin, "--stgs-beta", "0.5", "--dropout", "0")
    task.load_dataset("test")
    sample = batch(task, "test", range(4))
    src = sample["net_input"]["src_tokens"]
    enc = model.encoder(src, src_lengths=sample["net_input"]["src_lengths"])
    enc["encoder_out"][0].retain_grad()
    rec_loss, _, stats = crit.reconstruction_loss(model, enc, src)
    rec_loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in ("encoder.embed_tokens.weight", "encoder.layers.0.self_attn.k_proj.weight",
                 "decoder.layers.1.encoder_attn.v_proj.weight", "decoder.layers.0.fc1.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    # L_R reaches the translator's first pass only through the straight-through sample ê
    assert enc["encoder_out"][0].grad.abs().sum() > 0
    assert stats["rec_ntokens"] == int(src.ne(1).sum()) and stats["sample_n"] == 4


def test_criterion_is_l_t_plus_lambda_l_r(bidir_bin):
    task, model, crit = build(bidir_bin, "--reconstruction-weight", "0.5", "--dropout", "0")
    task.load_dataset("test")
    model.eval()
    sample = batch(task, "test", range(5))
    loss, sample_size, log = crit(model, sample)
    torch.testing.assert_close(loss, log["trans_loss"] + 0.5 * log["rec_loss"])
    assert sample_size == sample["ntokens"]
    # L_R by brute force: greedy translation with fairseq's generator, re-encoded as tokens, f teacher forced
    src = sample["net_input"]["src_tokens"]
    hypos = _greedy(task, model, sample)
    pad, eos = task.src_dict.pad(), task.src_dict.eos()
    hyp = torch.nn.utils.rnn.pad_sequence([h[0]["tokens"] for h in hypos], batch_first=True, padding_value=pad)
    from fairseq import utils
    from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

    target = utils.convert_padding_direction(src, pad, left_to_right=True)
    out = model(hyp, hyp.ne(pad).sum(1), shift_right(target, pad, eos))
    lprobs = model.get_normalized_probs(out, log_probs=True)
    ref, _ = label_smoothed_nll_loss(lprobs.view(-1, lprobs.size(-1)), target.view(-1), 0.1, ignore_index=pad)
    torch.testing.assert_close(log["rec_loss"], ref.detach(), rtol=1e-4, atol=1e-3)
