"""``--lr-scheduler plateau_updates``: the learning rate halves after each dev plateau, validating every N updates."""
import re
import pytest
import torch

from conftest import fails, run, tiny_train_args


@pytest.fixture
def stall_counter():
    """fairseq's own count of validations without a new best (``should_stop_early.num_runs``), restored after."""
    import fairseq_cli.train as train

    had = hasattr(train.should_stop_early, "num_runs")
    old = getattr(train.should_stop_early, "num_runs", None)
    yield train.should_stop_early
    if had:
        train.should_stop_early.num_runs = old
    elif hasattr(train.should_stop_early, "num_runs"):
        del train.should_stop_early.num_runs


def _schedule(**overrides):
    from fairseq_metabt.lr_schedulers.plateau_updates import PlateauUpdatesConfig, PlateauUpdatesSchedule

    from fairseq.optim import FairseqOptimizer

    class Opt(FairseqOptimizer):  # a real fairseq optimizer wrapper around one parameter
        def __init__(self):
            super().__init__(None)
            self._optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)

    cfg = PlateauUpdatesConfig(**{"warmup_updates": 4, "lr_shrink": 0.5, "lr_patience": 2, "min_lr_ratio": 0.1,
                                  "lr": [1.0], "patience": 10, **overrides})
    return PlateauUpdatesSchedule(cfg, Opt())


def test_lr_follows_the_stall_count(stall_counter):
    """Brute force: lr = peak * shrink ** (number of completed plateaus), where a stall of r validations
    without improvement completes floor(r / lr_patience) plateaus, counted again after every new best."""
    s = _schedule()
    assert [s.step_update(u) for u in range(4)] == [0.0, 0.25, 0.5, 0.75]  # linear warm-up
    # validations without improvement seen by successive updates (0 = a new best)
    runs = [0, 1, 2, 2, 3, 4, 5, 0, 1, 2, 0, 2, 4, 6, 8, 10]
    plateaus, stall_done, got, want = 0, 0, [], []
    for i, r in enumerate(runs):
        stall_counter.num_runs = r
        got.append(s.step_update(4 + i))
        if r == 0:
            stall_done = 0
        if r // 2 > stall_done:
            stall_done += 1
            plateaus += 1
        want.append(max(0.5 ** plateaus, 0.1))
    assert got == pytest.approx(want)
    assert min(got) == pytest.approx(0.1)  # floored at min_lr_ratio * lr
    # the state survives a checkpoint
    t = _schedule()
    t.load_state_dict(s.state_dict())
    stall_counter.num_runs = 10
    assert t.step_update(100) == pytest.approx(s.step_update(100))


def test_refuses_impossible_settings(quickstart_bin, tmp_path):
    base = tiny_train_args(quickstart_bin, str(tmp_path / "ck"), 10)
    i = base.index("inverse_sqrt")
    args = base[:i] + ["plateau_updates"] + base[i + 1:]
    assert "--patience" in fails(args)  # no early stopping: nothing counts the stalls
    assert "--lr-shrink" in fails(args + ["--patience", "3", "--lr-shrink", "1.5"])


def test_fairseq_train_halves_lr_after_each_stalled_validation(quickstart_bin, tmp_path):
    """A real fairseq-train run: the lr it logs at each update equals the brute-force value computed from
    the dev losses it logged (with --lr-patience 1 every validation without a new best halves the lr)."""
    base = tiny_train_args(quickstart_bin, str(tmp_path / "ck"), 150, "--no-save", "--patience", "30",
                           "--lr-patience", "1", "--validate-interval-updates", "10", "--log-interval", "10",
                           "--validate-interval", "1000000")
    i = base.index("inverse_sqrt")
    args = base[:i] + ["plateau_updates"] + base[i + 1:]
    args[args.index("--lr") + 1] = "3e-2"  # high enough to stall on the tiny corpus
    log = run(args).stdout
    valid = [(int(u), float(l)) for l, u in re.findall(r"\| valid \| .*?\| loss ([0-9.]+) .*?\| num_updates (\d+)", log)]
    logged = {int(u): float(lr) for u, lr in re.findall(r"num_updates=(\d+), lr=([0-9.e-]+)", log)}
    assert len(valid) == 15 and len(logged) == 15, log[-3000:]
    best, stalls, expected = float("inf"), 0, {}
    for u in sorted(logged):
        for vu, loss in valid:  # validations that happened before update u was taken
            if vu == u - 10:
                if loss < best:
                    best = loss
                else:
                    stalls += 1
        expected[u] = 3e-2 * 0.5 ** stalls if u >= 10 else None
    assert stalls >= 1, f"the run never stalled, so the test shows nothing: {valid}"
    for u in sorted(logged):
        if u > 10:
            assert logged[u] == pytest.approx(expected[u], rel=1e-6), (u, valid, logged)


@pytest.fixture
def early_stopping_state():
    """fairseq's early-stopping attributes and checkpoint_utils' best, restored after the test."""
    import fairseq_cli.train as train
    from fairseq import checkpoint_utils

    saved = {(obj, k): getattr(obj, k) for obj in (train.should_stop_early, checkpoint_utils.save_checkpoint)
             for k in ("best", "num_runs") if hasattr(obj, k)}
    yield train.should_stop_early, checkpoint_utils.save_checkpoint
    for obj in (train.should_stop_early, checkpoint_utils.save_checkpoint):
        for k in ("best", "num_runs"):
            if hasattr(obj, k):
                delattr(obj, k)
    for (obj, k), v in saved.items():
        setattr(obj, k, v)


def test_resume_restores_the_patience_count(early_stopping_state):
    """fairseq keeps --patience's best and count in function attributes that no checkpoint holds; the
    schedule saves them and gives them back, so a resumed run stops where an uninterrupted one would."""
    stop_fn, save_fn = early_stopping_state
    s = _schedule()
    stop_fn.best, stop_fn.num_runs = 2.433, 4
    state = s.state_dict()
    del stop_fn.best, stop_fn.num_runs  # a fresh process
    t = _schedule()
    t.load_state_dict(state)
    t.step_update(200)
    assert (stop_fn.best, stop_fn.num_runs) == (2.433, 4)
    # a dev score no better than the restored best is the 5th stall, not a new best
    import fairseq_cli.train as train
    from omegaconf import OmegaConf
    cfg = OmegaConf.create({"checkpoint": {"patience": 5, "maximize_best_checkpoint_metric": False}})
    assert train.should_stop_early(cfg, 2.434) is True


def test_resume_of_an_older_checkpoint_waits_for_fairseqs_best(early_stopping_state):
    """A checkpoint saved without the count: fairseq's own best (restored by checkpoint_utils only after the
    trainer's first lr step) and the stall count the schedule last saw."""
    stop_fn, save_fn = early_stopping_state
    s = _schedule()
    s._last_runs = 3
    state = {k: v for k, v in s.state_dict().items() if not k.startswith("patience_")}
    for k in ("best", "num_runs"):
        if hasattr(stop_fn, k):
            delattr(stop_fn, k)
        if hasattr(save_fn, k):
            delattr(save_fn, k)
    t = _schedule()
    t.load_state_dict(state)
    t.step_update(200)  # inside trainer.load_checkpoint: fairseq's best not known yet
    assert not hasattr(stop_fn, "best")
    save_fn.best = 2.39
    t.step_update(201)
    assert (stop_fn.best, stop_fn.num_runs) == (2.39, 3)
    stop_fn.best = 2.0  # a validation after the resume owns the count from then on
    t.step_update(202)
    assert stop_fn.best == 2.0


def test_fairseq_train_resumed_run_stops_where_an_uninterrupted_one_does(quickstart_bin, tmp_path):
    """Real fairseq-train: a run stopped by its update cap one validation before its patience ran out and
    then resumed (fairseq's checkpoint_last.pt) stops at the same update as the uninterrupted run. Without the
    restored count the resumed run would take its first dev score as a new best and run --patience more."""
    def args(save, cap):
        base = tiny_train_args(quickstart_bin, str(save), cap, "--patience", "3", "--lr-patience", "1",
                               "--validate-interval-updates", "10", "--save-interval-updates", "10",
                               "--validate-interval", "1000000", "--save-interval", "1000000",
                               "--no-epoch-checkpoints", "--keep-interval-updates", "1")
        i = base.index("inverse_sqrt")
        out = base[:i] + ["plateau_updates"] + base[i + 1:]
        out[out.index("--lr") + 1] = "3e-2"  # stalls early on the tiny corpus
        return out

    def valid(log):
        return [(int(u), float(l)) for l, u in
                re.findall(r"\| valid \| .*?\| loss ([0-9.]+) .*?\| num_updates (\d+)", log)]

    whole = valid(run(args(tmp_path / "a", 400)).stdout)
    stop = whole[-1][0]
    assert stop < 400, f"the uninterrupted run never stopped early, so the test shows nothing: {whole}"
    best = min(range(len(whole)), key=lambda i: whole[i][1])
    assert len(whole) - 1 - best == 3, whole  # stopped by --patience 3
    cap = stop - 10  # the cap ends the first part with 2 stalls counted
    first = valid(run(args(tmp_path / "b", cap)).stdout)
    assert first[-1][0] == cap
    resumed = valid(run(args(tmp_path / "b", 400)).stdout)
    assert resumed and resumed[-1][0] == stop, (whole, first, resumed)
