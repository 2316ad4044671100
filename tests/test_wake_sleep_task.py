"""wake_sleep_translation in-process with fairseq's real Trainer: phase semantics, freezing, pseudo pairs.

Each update runs ``Trainer.train_step`` exactly as fairseq-train does (optimizer, clipping,
lr schedule); a spy around the criterion records which model was trained on which pairs.
"""
import os
import shutil

import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.sequence_generator import SequenceGenerator
from fairseq.trainer import Trainer

from conftest import USER_DIR
from fairseq_metabt.data.batches import strip_padding
from fairseq_metabt.tasks.wake_sleep_translation import WakeSleepTranslationTask, phase_at

MLE, WAKE, SLEEP = 1, 2, 2
MAX_LEN_B = 8


def build(bin_dir, *extra):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        bin_dir, "--user-dir", USER_DIR, "--task", "wake_sleep_translation", "-s", "lrl", "-t", "tgt",
        "--arch", "dual_transformer_tiny", "--optimizer", "adam", "--lr", "1e-3", "--lr-scheduler", "fixed",
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
        "--max-tokens", "500", "--cpu", "--seed", "3", "--num-workers", "0", "--ws-max-len-a", "0",
        "--ws-max-len-b", str(MAX_LEN_B), "--ws-mle-updates", str(MLE), "--wake-updates", str(WAKE),
        "--sleep-updates", str(SLEEP), *extra])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    trainer = Trainer(cfg, task, model, criterion)
    itr = task.get_batch_iterator(dataset=task.dataset("train"), max_tokens=500, seed=3,
                                  required_batch_size_multiple=1).next_epoch_itr(shuffle=False)
    return task, model, criterion, trainer, itr


class Spy:
    """Record (model trained, batch) for every criterion call inside a train step."""

    def __init__(self, criterion):
        self.calls = []
        self._forward = criterion.forward

        def forward(model, sample, *a, **kw):
            self.calls.append((model, sample))
            return self._forward(model, sample, *a, **kw)

        criterion.forward = forward


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before, model, backward: bool):
    """Whether any parameter of the given direction moved."""
    now = model.state_dict()
    keys = [k for k in before if k.startswith("backward_model.") == backward and before[k].is_floating_point()]
    return any(not torch.equal(before[k], now[k]) for k in keys)


def greedy(model, tokens, lengths, d):
    """fairseq's own greedy decoding (what fairseq-generate --beam 1 does) of the given rows."""
    was = model.training
    gen = SequenceGenerator([model], d, beam_size=1, max_len_a=0, max_len_b=MAX_LEN_B)
    with torch.no_grad():
        hyps = gen.generate([model], {"net_input": {"src_tokens": tokens, "src_lengths": lengths}})
    model.train(was)
    return [h[0]["tokens"] for h in hyps]


def as_set(rows):
    return sorted(tuple(r.tolist()) for r in rows)


def test_schedule_is_mle_then_wake_then_sleep():
    names = [phase_at(u, 2, 3, 1)[:2] for u in range(10)]
    assert names == [("mle", 0), ("mle", 0), ("wake", 1), ("wake", 1), ("wake", 1), ("sleep", 1),
                     ("wake", 2), ("wake", 2), ("wake", 2), ("sleep", 2)]
    assert phase_at(7, 2, 3, 1).start == 6 and phase_at(7, 2, 3, 1).position == 1


@pytest.mark.parametrize("pseudo_data", ["online", "phase"])
def test_phases_train_one_direction_on_the_other_directions_output(quickstart_bin, pseudo_data):
    task, model, criterion, trainer, itr = build(quickstart_bin, "--ws-pseudo-data", pseudo_data)
    d = task.src_dict
    pad = d.pad()
    spy = Spy(criterion)
    for update in range(MLE + WAKE + SLEEP):
        phase = task.phase(update)
        sample = next(itr)
        before = snapshot(model)
        spy.calls.clear()
        trainer.train_step([sample])
        assert trainer.get_num_updates() == update + 1
        fwd_moved, bwd_moved = changed(before, model, False), changed(before, model, True)
        models = [m for m, _ in spy.calls]
        if phase.name == "mle":
            # iteration 0: both directions by MLE on the bitext
            assert fwd_moved and bwd_moved
            assert models == [model, model.backward_model]
            continue
        if phase.name == "wake":
            # theta trains on B and (x~ = q_phi(y), y); phi is frozen although Adam has momentum for it
            assert fwd_moved and not bwd_moved
            assert models == [model, model]
            mono, generator = sample["mono_tgt"], model.backward_model
        else:
            # phi trains on reversed B and the dreamt pairs (y~ = p_theta(x~), x~); theta is frozen
            assert bwd_moved and not fwd_moved
            assert models == [model.backward_model, model.backward_model]
            mono, generator = sample["mono_src"], model
        bitext_call, pseudo_call = spy.calls[0][1], spy.calls[1][1]
        if phase.name == "sleep":  # the first call is the reversed bitext
            assert as_set(strip_padding(bitext_call["net_input"]["src_tokens"], pad)) == \
                as_set(strip_padding(sample["bitext"]["target"], pad))
        # pseudo pairs: targets are the monotext rows, sources the frozen model's greedy output for them;
        # the generating model did not move in this update, so decoding it now reproduces its output
        expected = greedy(generator, mono["net_input"]["src_tokens"], mono["net_input"]["src_lengths"], d)
        real = strip_padding(mono["net_input"]["src_tokens"], pad)
        pairs = sorted((tuple(e.tolist()), tuple(r.tolist())) for e, r in zip(expected, real) if e.numel() > 1)
        got = sorted(zip(map(tuple, (r.tolist() for r in strip_padding(pseudo_call["net_input"]["src_tokens"], pad))),
                         map(tuple, (r.tolist() for r in strip_padding(pseudo_call["target"], pad)))))
        assert got == pairs and len(got) > 0


def test_pseudo_pairs_come_on_top_of_the_baselines_bitext_loss(quickstart_bin):
    """A wake update's gradient: the bitext's per-token mean (the translation baseline's, same batch)
    plus --ws-pseudo-weight times the pseudo pairs' own per-token mean, whatever their token counts."""
    task, model, criterion, trainer, itr = build(quickstart_bin, "--ws-pseudo-weight", "0.5", "--dropout", "0")
    spy = Spy(criterion)
    sample = next(itr)
    trainer.zero_grad()
    _, sample_size, _ = task.train_step(sample, model, criterion, trainer.optimizer, MLE)  # a wake update
    (_, bitext), (_, pseudo) = spy.calls
    assert bitext is sample["bitext"] and pseudo["ntokens"] != bitext["ntokens"]
    theta = [p for p in model.parameters() if p.requires_grad]
    got = [p.grad / sample_size for p in theta]
    lb, sb, _ = criterion(model, bitext)
    lp, sp, _ = criterion(model, pseudo)
    want = torch.autograd.grad(lb / sb + 0.5 * lp / sp, theta)
    assert sample_size == sb
    assert all(torch.allclose(g, w, atol=1e-7, rtol=1e-4) for g, w in zip(got, want))


def test_one_iteration_is_back_translation(quickstart_bin):
    """Iteration 1's forward model is back-translation from the iteration-0 backward model: the sleep
    phase after it leaves theta untouched (Sec. 3.4: the dream phase is irrelevant for I = 1)."""
    task, model, _, trainer, itr = build(quickstart_bin, "--ws-pseudo-data", "phase")
    for _ in range(MLE):
        trainer.train_step([next(itr)])
    bwd_mle = snapshot(model.backward_model)
    for _ in range(WAKE):
        trainer.train_step([next(itr)])
    after_wake = snapshot(model)
    # the back-translations came from the MLE backward model, which the wake phase did not change
    assert all(torch.equal(bwd_mle[k], v) for k, v in model.backward_model.state_dict().items())
    assert task._cache["side"] == "tgt" and len(task._cache["rows"]) == len(task._mono["tgt"])
    for _ in range(SLEEP):
        trainer.train_step([next(itr)])
    now = model.state_dict()
    assert all(torch.equal(after_wake[k], now[k]) for k in now if not k.startswith("backward_model."))
    state = task.get_checkpoint_dict()["WakeSleepTranslationTask"]
    assert (state["phase"], state["iteration"], state["updates_done"]) == ("sleep", 1, MLE + WAKE + SLEEP)
    assert state["cache"]["size"] == len(task._mono["src"])


def test_online_and_phase_cache_give_the_same_greedy_training(quickstart_bin):
    """Greedy decoding of a frozen model: generating per batch or once per phase is the same data."""
    results = []
    for mode in ("online", "phase"):
        _, model, _, trainer, itr = build(quickstart_bin, "--ws-pseudo-data", mode)
        for _ in range(MLE + WAKE + SLEEP):
            trainer.train_step([next(itr)])
        results.append(snapshot(model))
    a, b = results
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_bad_schedules_are_named(quickstart_bin):
    with pytest.raises(ValueError, match="--sleep-updates must be >= 1"):
        build(quickstart_bin, "--sleep-updates", "0")
    with pytest.raises(ValueError, match="--wake-updates must be >= 1"):
        build(quickstart_bin, "--wake-updates", "0")
    with pytest.raises(ValueError, match="--ws-iterations must be >= 1"):
        build(quickstart_bin, "--ws-iterations", "0")
    with pytest.raises(ValueError, match=r"set --max-update 9 \(got 0\)"):
        build(quickstart_bin, "--ws-iterations", "2")
    assert isinstance(build(quickstart_bin, "--ws-iterations", "2", "--max-update", "9")[0],
                      WakeSleepTranslationTask)


@pytest.mark.parametrize("lang,needed", [("lrl", "the sleep phase draws source sentences"),
                                         ("tgt", "the wake phase back-translates")])
def test_missing_monotext_is_named(quickstart_bin, tmp_path, lang, needed):
    broken = tmp_path / "bin"
    shutil.copytree(quickstart_bin, broken)
    for ext in ("bin", "idx"):
        os.remove(broken / f"mono.{lang}.{ext}")
    with pytest.raises(FileNotFoundError, match=f"{needed}.*mono.{lang}.bin/.idx does not exist.*prepare_data.py"):
        build(str(broken))


def test_single_model_architecture_is_refused(quickstart_bin):
    with pytest.raises(ValueError, match="use --arch dual_transformer_tiny"):
        build(quickstart_bin, "--arch", "transformer_lowres_tiny")
