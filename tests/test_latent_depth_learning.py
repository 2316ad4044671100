"""Latent depth learns its depth: a two-language toy where one language needs no layers and the gates find it,
and the gate logits' own optimizer (constant learning rate, no warm-up, saved and restored with the task)."""
from argparse import Namespace
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

import fairseq_metabt  # noqa: F401  (registers the task and criterion)
from fairseq.data import Dictionary

from fairseq_metabt.criterions.latent_layers_loss import LatentLayersLossCriterion
from fairseq_metabt.modules.latent_layers import LatentLayerGates, gates_are_hard
from fairseq_metabt.tasks.latent_depth_translation import LatentDepthTranslationTask, check_gate_lr

LAYERS, DIM, HIDDEN = 4, 8, 16


def _blocks() -> nn.ModuleList:
    return nn.ModuleList(nn.Sequential(nn.Linear(DIM, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, DIM))
                         for _ in range(LAYERS))


class _GatedStack(nn.Module):
    """``x_{l+1} = x_l + z_l F_l(x_l)`` (Eq. 2) with residual MLP blocks and the plugin's per-language gates."""

    def __init__(self, langs: int) -> None:
        super().__init__()
        self.blocks = _blocks()
        self.decoder_latent = LatentLayerGates(langs, LAYERS, 1.0)  # the task finds "*_latent.logits"

    def forward(self, x, lang: int, update: int, soft_updates: int, tau: float):
        z = self.decoder_latent.sample(lang, tau, hard=gates_are_hard(update, soft_updates))
        for gate, block in zip(z, self.blocks):
            x = x + gate * block(x)
        return x


def _task(**args) -> LatentDepthTranslationTask:
    task = LatentDepthTranslationTask.__new__(LatentDepthTranslationTask)
    task.args = Namespace(**{"latent_inner_steps": 1, "latent_gate_lr": None, **args})
    task.reset_gate_state()
    return task


def _train_toy(utilisation: str, updates: int = 300, soft_updates: int = 100, deep_only: bool = False,
               lk_form: str = "sampled", seed: int = 0):
    """Alg. 2 on two languages: ``shallow`` maps x -> x (every layer only hurts), ``deep`` maps x through a
    fixed 4-block residual network (every layer helps). Eq. 8 with the plugin's criterion terms and schedules,
    K = 2 of 4, gates with their own Adam through the task's optimizer_step. ``deep_only``: one language, the
    deep one, so every layer is equally useful and L_K alone has to decide which two to keep."""
    torch.manual_seed(seed)
    teacher = _blocks()
    for p in teacher.parameters():
        p.data.mul_(1.5)
    langs = (1,) if deep_only else (0, 1)
    model = _GatedStack(len(langs))
    task = _task(latent_gate_lr=0.05)
    crit = LatentLayersLossCriterion(SimpleNamespace(target_dictionary=Dictionary()), False, 0.0,
                                     latent_kl_weight=0.1, latent_kl_anneal_updates=50, latent_lk_weight=0.1,
                                     latent_lk_utilisation=utilisation, latent_lk_form=lk_form)
    theta = torch.optim.Adam(model.parameters(), lr=1e-2)
    for update in range(updates):
        for row, lang in enumerate(langs):  # shallow, deep: one batch each per update
            x = torch.randn(32, DIM)
            with torch.no_grad():
                y = x
                for block in teacher if lang == 1 else ():
                    y = y + block(y)
            out = model(x, row, update, soft_updates, tau=5.0)
            kl, lk = crit.latent_terms({"lang": row, "decoder": {"q_all": model.decoder_latent.probs(), "k": 2}})
            beta, lam = crit.latent_weights(update)
            (((out - y) ** 2).mean() + beta * kl + lam * lk).backward()
        task.optimizer_step(SimpleNamespace(step=theta.step), model, update)
        theta.zero_grad()
    return model.decoder_latent


def test_two_languages_learn_different_depths():
    gates = _train_toy("aggregated")
    q = gates.probs().detach()
    shallow, deep = gates.select(0), gates.select(1)
    # the language that needs no layers selects fewer, and no layer more than the deep language does
    assert deep.sum() >= shallow.sum() + 2, q
    assert (q[1] >= q[0] - 0.05).all(), q
    assert q[1].mean() - q[0].mean() > 0.4, q
    # the gates left the threshold (at init every q = 0.73)
    assert (q - 0.5).abs().max() > 0.45 and q[0].min() < 0.1 and q[1].max() > 0.9, q


@pytest.mark.parametrize("seed", [0, 1])
def test_sampled_lk_decides_between_equally_useful_layers(seed):
    """The miniature's failure mode (issue 12): every layer helps equally and K = 2 of 4. L_K of the expected
    count leaves the gates spread around 0.5 (any spread meets K in expectation); the paper's L_K on sampled
    gates, whose variance term discretises them, keeps two layers and drops two."""
    sampled = _train_toy("aggregated", updates=400, deep_only=True, seed=seed).probs().detach()[0]
    mean = _train_toy("aggregated", updates=400, deep_only=True, lk_form="mean", seed=seed).probs().detach()[0]
    assert (mean - 0.5).abs().mean() < 0.15, mean
    assert (sampled - 0.5).abs().mean() > 0.35, sampled
    top, bottom = sampled.sort(descending=True).values.split(2)
    assert top.min() > 0.85 and bottom.max() < 0.15, sampled


def test_lk_per_language_forces_the_shallow_language_deeper():
    """The ablation of issue 12's point 4: L_K on each language's own q pushes the shallow one toward K layers."""
    aggregated = _train_toy("aggregated").probs().detach()
    per_language = _train_toy("language").probs().detach()
    assert per_language[0].sum() > aggregated[0].sum() + 0.5, (aggregated, per_language)


def test_gate_logits_have_their_own_constant_learning_rate_and_checkpointed_optimizer():
    torch.manual_seed(0)
    model = _GatedStack(2)
    task = _task(latent_gate_lr=0.05, latent_inner_steps=2)
    # the model's optimizer at a warm-up learning rate: the gates must not inherit it
    theta_opt = torch.optim.Adam(model.parameters(), lr=1e-6)
    phi = model.decoder_latent.logits

    def update(t: int, task: LatentDepthTranslationTask):
        before_phi, before_theta = phi.detach().clone(), model.blocks[0][0].weight.detach().clone()
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        task.optimizer_step(SimpleNamespace(step=theta_opt.step), model, t)
        return (phi.detach() - before_phi).abs(), (model.blocks[0][0].weight.detach() - before_theta).abs()

    d_phi, d_theta = update(0, task)  # inner step 1 of 2: Theta only
    assert d_phi.max() == 0 and 0 < d_theta.max() <= 1.1e-6
    d_phi, d_theta = update(1, task)  # last inner step: the gates take a full Adam step of their own lr
    assert torch.allclose(d_phi, torch.full_like(d_phi, 0.05), rtol=1e-4) and d_theta.max() <= 1.1e-6
    assert phi not in theta_opt.state  # the model's Adam keeps no moments for the gates
    assert task.phi_updates == 1 and task.gate_optimizer.state[phi]["step"] == 1
    # the gate optimizer's state goes into the checkpoint and comes back on resume, before the optimizer exists
    saved = task.get_checkpoint_dict()["LatentDepthTranslationTask"]
    assert saved["phi_updates"] == 1 and saved["gate_optimizer"]["param_groups"][0]["lr"] == 0.05
    resumed = _task(latent_gate_lr=0.05, latent_inner_steps=2)
    resumed.set_checkpoint_dict(saved)
    update(2, resumed)
    update(3, resumed)
    assert resumed.phi_updates == 2 and resumed.gate_optimizer.state[phi]["step"] == 2
    # without --latent-gate-lr the gates share the model's optimizer (fairseq's example, the old behaviour)
    shared = _task(latent_inner_steps=1)
    d_phi, _ = update(4, shared)
    assert shared.gate_optimizer is None and 0 < d_phi.max() <= 1.1e-6


def test_gate_lr_bad_input():
    with pytest.raises(ValueError, match="--latent-gate-lr must be > 0, got 0.0"):
        check_gate_lr(Namespace(latent_gate_lr=0.0))
    with pytest.raises(ValueError, match="use --amp instead of --fp16/--bf16"):
        check_gate_lr(Namespace(latent_gate_lr=0.1, fp16=True, bf16=False, amp=False))
    check_gate_lr(Namespace(latent_gate_lr=0.1, fp16=False, bf16=False, amp=True))
    check_gate_lr(Namespace(latent_gate_lr=None, fp16=True))
