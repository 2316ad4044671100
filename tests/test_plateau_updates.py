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
