"""Mixed precision in the plugin's own training steps, and state that survives skipped updates.

Every task with its own ``train_step`` trains with ``fairseq-train --amp --cpu`` (CPU bf16 autocast
through the same code path as fp16 autocast on CUDA, fairseq's loss scaler on the CPU; tests/amp_probe.py)
with finite losses and autocast on in every training forward; a forced AMP overflow, which fairseq answers
by skipping the step and retrying the batch, leaves every task's final state exactly as without it.
"""
import json
import math
import os
import re
import sys
import types

import pytest
import torch

from conftest import ROOT, USER_DIR, assert_same_weights, fails, fairseq, prepare, run

PROBE = os.path.join(ROOT, "tests", "amp_probe.py")
COMMON = ["--optimizer", "adam", "--lr", "1e-3", "--label-smoothing", "0.1", "--max-tokens", "600", "--cpu", "--seed", "2", "--log-format", "simple", "--log-interval", "1",
          "--num-workers", "0", "--no-progress-bar", "--disable-validation", "--no-epoch-checkpoints", "--amp"]
PAIR = ["-s", "lrl", "-t", "tgt", "--criterion", "label_smoothed_cross_entropy"]
DUAL = ["--arch", "dual_transformer_tiny"]


def task_args(name):
    """(corpus fixture, fairseq-train arguments after the data dir, task state key) of each custom step."""
    return {
        "meta_backtranslation": ("quickstart_bin", PAIR + DUAL + [
            "--task", "meta_backtranslation", "--meta-dev-max-tokens", "300", "--bt-max-len-a", "0",
            "--bt-max-len-b", "8"], "MetaBacktranslationTask"),
        "wake_sleep_translation": ("quickstart_bin", PAIR + DUAL + [
            "--task", "wake_sleep_translation", "--ws-max-len-a", "0", "--ws-max-len-b", "8",
            "--ws-mle-updates", "1", "--wake-updates", "2", "--sleep-updates", "2"], "WakeSleepTranslationTask"),
        "dds_translation": ("multiway_bin", [
            "--task", "dds_translation", "--lang-pairs", "lrl-tgt,hrl-tgt,nsy-tgt", "--dds-dev-lang-pair",
            "lrl-tgt", "--dds-update-interval", "2", "--dds-scorer-iters", "2", "--dds-scorer-batch", "16",
            "--dds-dev-max-tokens", "300", "--arch", "transformer_lowres_tiny", "--criterion",
            "label_smoothed_cross_entropy"], "DDSTranslationTask"),
        "latent_depth_translation": ("multiway_bin", [
            "--task", "latent_depth_translation", "--lang-pairs", "tgt-lrl,tgt-hrl", "--decoder-langtok",
            "--arch", "latent_depth_transformer_tiny", "--decoder-latent-layers", "--decoder-target-layers", "1",
            "--latent-inner-steps", "2", "--criterion", "latent_layers_loss", "--latent-kl-weight", "0.1",
            "--ddp-backend", "legacy_ddp"], "LatentDepthTranslationTask"),
        # fairseq's own train_step (autocast on CUDA only) with the per-example DDS criterion's state
        "dds_weighted_cross_entropy": ("quickstart_bin", [
            "-s", "lrl", "-t", "tgt", "--task", "translation", "--arch", "transformer_lowres_tiny",
            "--criterion", "dds_weighted_cross_entropy", "--dds-dev-max-tokens", "300", "--dds-scorer-lr", "0.01"],
            "criterion"),
    }[name]


@pytest.fixture(scope="module")
def multiway_bin(tmp_path_factory):
    base = tmp_path_factory.mktemp("amp_multiway")
    raw = str(base / "raw")
    run([sys.executable, "-m", "fairseq_metabt.synthetic", "--preset", "multilingual", "--multiway", "--out", raw,
         "--seed", "1", "--sizes", "train=60,hrl=100,unra=20,unrb=20,nsy=40,valid=21,test=21,mono_tgt=20,"
                                   "mono_lrl=20,pool=120"])
    return prepare(raw, str(base / "bin"))


def probe_train(argv, out_dir, overflow_at=None):
    """fairseq-train ARGV under tests/amp_probe.py: (output, probe counts)."""
    counts = os.path.join(out_dir, "probe.json")
    os.environ["AMP_PROBE_OUT"] = counts
    if overflow_at is None:
        os.environ.pop("AMP_PROBE_OVERFLOW_AT", None)
    else:
        os.environ["AMP_PROBE_OVERFLOW_AT"] = str(overflow_at)
    try:
        out = run([sys.executable, PROBE, *argv]).stdout
    finally:
        os.environ.pop("AMP_PROBE_OUT", None)
        os.environ.pop("AMP_PROBE_OVERFLOW_AT", None)
    with open(counts) as f:
        return out, json.load(f)


def assert_close(a, b, where="state"):
    """Nested checkpoint state equal (tensors to 1e-6)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, where
        assert torch.allclose(a.double(), b.double(), atol=1e-6, equal_nan=True), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9), (where, a, b)
    else:
        assert a == b, (where, a, b)


@pytest.mark.parametrize("task", ["meta_backtranslation", "wake_sleep_translation", "dds_translation",
                                  "latent_depth_translation", "dds_weighted_cross_entropy"])
def test_amp_trains_with_autocast_and_a_skipped_update_changes_nothing(task, request, tmp_path):
    fixture, args, key = task_args(task)
    data = request.getfixturevalue(fixture)
    updates = 4
    runs = {}
    for name, overflow_at in (("clean", None), ("overflow", 2)):
        save = tmp_path / name
        save.mkdir()
        argv = [data, "--user-dir", USER_DIR, *args, *COMMON, "--max-update", str(updates), "--save-dir", str(save)]
        out, counts = probe_train(argv, str(save), overflow_at)
        losses = [float(x) for x in re.findall(r"train_inner\W.*?\bloss=([^,\s]+)", out)]
        assert len(losses) == updates and all(math.isfinite(x) for x in losses), (losses, out[-2000:])
        if key == "criterion":  # fairseq's base step autocasts on CUDA only
            assert counts["autocast_on"] == 0 and counts["autocast_off"] > 0, counts
        else:  # every training forward of a model or criterion ran under autocast, in bf16 on the CPU
            assert counts["autocast_on"] > 0 and counts["autocast_off"] == 0, counts
            assert counts["dtypes"] == ["torch.bfloat16"], counts
        runs[name] = (out, counts, torch.load(str(save / "checkpoint_last.pt"), weights_only=False))

    out, counts, state = runs["overflow"]
    assert counts["overflows_forced"] == 1 and "AMP: overflow detected" in out, out[-3000:]
    clean = runs["clean"][2]
    assert clean["optimizer_history"][-1]["num_updates"] == state["optimizer_history"][-1]["num_updates"] == updates
    # the retried update took the same step as in the clean run: models and the task's own state are unchanged
    assert_same_weights(clean, state)
    if key == "criterion":
        assert_close(clean["criterion"], state["criterion"], key)
    else:
        assert_close(clean["extra_state"][key], state["extra_state"][key], key)


def test_without_amp_no_autocast(quickstart_bin, tmp_path):
    """The probe tells the difference: the same step without --amp runs in fp32."""
    _, args, _ = task_args("meta_backtranslation")
    common = [a for a in COMMON if a != "--amp"]
    _, counts = probe_train([quickstart_bin, "--user-dir", USER_DIR, *args, *common, "--max-update", "1",
                             "--save-dir", str(tmp_path), "--no-save"], str(tmp_path))
    assert counts["autocast_on"] == 0 and counts["autocast_off"] > 0, counts


def test_every_custom_train_step_is_wrapped_in_autocast():
    import fairseq_metabt  # noqa: F401
    from fairseq.tasks import TASK_REGISTRY

    custom = {name: cls for name, cls in TASK_REGISTRY.items()
              if cls.__module__.startswith("fairseq_metabt") and "train_step" in vars(cls)}
    assert {"meta_backtranslation", "wake_sleep_translation", "dds_translation",
            "latent_depth_translation"} <= set(custom)
    for name, cls in custom.items():
        assert getattr(cls.train_step, "__amp_train_step__", False), f"{name}.train_step lacks @amp.amp_train_step"


def _amp_optimizer(params):
    """fairseq's AMPOptimizer around a torch optimizer, without a fairseq config."""
    from fairseq.optim.amp_optimizer import AMPOptimizer

    opt = AMPOptimizer.__new__(AMPOptimizer)
    opt.fp32_optimizer = types.SimpleNamespace(optimizer=torch.optim.SGD(params, lr=0.1))
    return opt


def test_autocast_follows_fairseqs_choice():
    from fairseq_metabt.modules import amp

    seen = []

    class Task:
        @amp.amp_train_step
        def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            return update_num

    model = torch.nn.Linear(2, 2)
    assert Task().train_step(None, model, None, _amp_optimizer(list(model.parameters())), 3) == 3
    Task().train_step(None, model, None, object(), 4)  # fp32 / --fp16 optimizers: no autocast
    assert seen[0] == (True, torch.bfloat16) and seen[1][0] is False
    assert amp.autocast_dtype(torch.device("cuda", 0)) is torch.float16  # fairseq's torch.cuda.amp.autocast


def test_update_start_and_skip_detection():
    from fairseq_metabt.modules import amp

    p = torch.nn.Parameter(torch.ones(3))
    opt = _amp_optimizer([p])
    assert amp.starts_update([p])
    p.grad = torch.ones(3)
    assert not amp.starts_update([p]) and not amp.update_skipped(opt)
    p.grad[1] = float("nan")
    assert amp.update_skipped(opt)
    assert not amp.update_skipped(object()), "only --amp reaches optimizer_step with a non-finite gradient"


def test_backward_model_loss_scaler_unscales_and_skips_overflow():
    """MetaBT's psi step with its own enabled loss scaler: the same step as unscaled fp32, and an overflow
    skips psi's step and halves its scale."""
    from fairseq_metabt.tasks.meta_backtranslation import MetaBacktranslationTask

    torch.manual_seed(0)
    ref = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    psi = [torch.nn.Parameter(t.detach().clone()) for t in ref]
    grads = [torch.randn_like(t) for t in ref]
    fake = types.SimpleNamespace(cfg=types.SimpleNamespace(backward_clip_norm=1.0))
    fake.backward_optimizer = torch.optim.Adam(psi, lr=0.1)
    ref_opt = torch.optim.Adam(ref, lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    for p, q, g in zip(psi, ref, grads):
        p.grad, q.grad = g * scaler.get_scale(), g.clone()
    MetaBacktranslationTask._step_backward(fake, psi, scaler)
    torch.nn.utils.clip_grad_norm_(ref, 1.0)
    ref_opt.step()
    for p, q in zip(psi, ref):
        assert torch.allclose(p, q, atol=1e-6) and p.grad is None
    before = [p.detach().clone() for p in psi]
    psi[0].grad = torch.full_like(psi[0], float("inf"))
    MetaBacktranslationTask._step_backward(fake, psi, scaler)
    assert all(torch.equal(p, b) for p, b in zip(psi, before)), "an overflow must not move psi"
    assert scaler.get_scale() == 2.0 ** 9


def test_half_precision_refused_at_setup_with_one_line(quickstart_bin, tmp_path):
    _, args, _ = task_args("meta_backtranslation")
    common = [a for a in COMMON if a != "--amp"]
    out = fails([fairseq("fairseq-train"), quickstart_bin, "--user-dir", USER_DIR, *args, *common, "--fp16",
                 "--max-update", "1", "--save-dir", str(tmp_path)])
    assert "meta_backtranslation does not support --fp16" in out and "use --amp" in out, out[-2000:]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gumbel_noise_of_autocast_logits_is_finite(monkeypatch, dtype):
    """Under autocast STGS perturbs fp16/bf16 logits: noise from a uniform next to 1 must not round to inf."""
    from fairseq_metabt.modules import gumbel

    top = 1.0 - 2.0 ** -24  # the largest value torch.rand draws in fp32
    monkeypatch.setattr(gumbel.torch, "rand", lambda shape, **kw: torch.full(shape, top, dtype=kw["dtype"]))
    logits = torch.zeros(2, 5, dtype=dtype)
    noise = gumbel.gumbel_noise(logits)
    assert noise.dtype == dtype and torch.isfinite(noise).all()
    st, soft = gumbel.straight_through_gumbel_softmax(logits, tau=1.0, beta=1.0)
    assert torch.isfinite(soft).all() and torch.equal(st.sum(-1), torch.ones(2, dtype=dtype))
    assert torch.isfinite(gumbel.gumbel_sigmoid(logits)).all()


@pytest.mark.parametrize("flags,refused", [(["--bf16"], True), (["--fp16"], True), (["--amp"], False),
                                           (["--bf16", "--memory-efficient-bf16"], False)])
def test_latent_inner_steps_under_half_precision(flags, refused, quickstart_bin, tmp_path):
    """--fp16/--bf16 step a flat fp32 copy of every parameter, so the gates cannot skip updates: refused at
    set-up instead of silently training with --latent-inner-steps 1."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from fairseq_metabt.errors import UserError, format_error
    from conftest import task_train_args

    argv = task_train_args("latent_depth_translation", quickstart_bin, str(tmp_path), 1, "--latent-inner-steps",
                           "2", *flags)
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    if not refused:
        tasks.setup_task(cfg.task)
        return
    with pytest.raises(UserError) as e:
        tasks.setup_task(cfg.task)
    assert "--latent-inner-steps 2 cannot hold the gate logits still" in format_error(e.value)
    assert "use --amp or --memory-efficient-" in format_error(e.value)
