"""fairseq's --amp unscales gradients twice before Adam sees them; what the plugin reads of Adam's moments
(DDS's --dds-reward adam, MetaBT's preconditioner) is corrected back to an unscaled run's."""
import argparse

import pytest
import torch

pytestmark = pytest.mark.fast


def _adam(params):
    from fairseq.optim.adam import FairseqAdam

    cfg = argparse.Namespace(lr=[1e-3], adam_betas="(0.9, 0.98)", adam_eps=1e-8, weight_decay=0.0,
                             use_old_adam=False, fp16_adam_stats=False, tpu=False)
    return FairseqAdam(cfg, params)


def _amp(params, scale: float, growth_interval: int):
    """fairseq's AMPOptimizer with an enabled CPU loss scaler (its own is CUDA's, disabled on a CPU)."""
    from fairseq.optim.amp_optimizer import AMPOptimizer

    opt = AMPOptimizer.__new__(AMPOptimizer)
    opt.fp32_optimizer = _adam(params)
    opt._grad_scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=growth_interval)
    opt.min_loss_scale = 1e-4
    return opt


def _train(amp_scale=None, steps=3, growth_interval=3):
    """fairseq's sequence per update: backward (scaled under AMP), clip_grad_norm (unscales), step."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    params = list(model.parameters())
    opt = _adam(params) if amp_scale is None else _amp(params, amp_scale, growth_interval)
    data = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        x = torch.randn(7, 5, generator=data)
        opt.backward((model(x) ** 2).mean())
        opt.clip_grad_norm(0.0)
        opt.step()
    return model, opt


def test_reward_reads_the_moments_of_an_unscaled_run():
    from fairseq_metabt.modules import amp
    from fairseq_metabt.modules import gradients as G
    from fairseq_metabt.modules.dds_rewards import adam_step_scale

    ref_model, ref = _train()
    model, opt = _train(amp_scale=2.0 ** 7)
    # the third update grew the scale to 2^8: the moments were built at 2^7, which is what counts
    assert opt.scaler.get_scale() == 2.0 ** 8 and amp.moment_scale(opt) == 2.0 ** 7
    for p, q in zip(model.parameters(), ref_model.parameters()):
        raw = opt.optimizer.state[p]["exp_avg_sq"]
        # the defect is real: Adam averaged (g / 2^7)^2
        assert torch.allclose(raw * 2.0 ** 14, ref.optimizer.state[q]["exp_avg_sq"], rtol=1e-4)
    params, ref_params = list(model.parameters()), list(ref_model.parameters())
    for got, want in zip(G.adam_moments(opt, params), G.adam_moments(ref, ref_params)):
        assert torch.allclose(got.exp_avg_sq, want.exp_avg_sq, rtol=1e-4)
        # (the two runs step apart by Adam's eps, which the double unscale multiplies by 2^7: ~1e-5 relative)
        assert torch.allclose(got.exp_avg, want.exp_avg, rtol=1e-3)
        assert got.step == want.step == 3
    assert torch.allclose(adam_step_scale(opt, params), adam_step_scale(ref, ref_params), rtol=1e-4)
    # MetaBT's Adam preconditioner (Eq. 18) reads the same corrected moments: 1 / (sqrt(v_hat) + eps)
    from fairseq_metabt.modules.metabt_rewards import adam_preconditioner

    got, want = adam_preconditioner(opt, params), adam_preconditioner(ref, ref_params)
    assert torch.allclose(got, want, rtol=1e-4), (got / want).max()


def test_no_correction_without_a_second_unscale():
    from fairseq_metabt.modules import amp

    _, opt = _train()
    assert amp.moment_scale(opt) == 1.0  # fp32
    _, opt = _train(amp_scale=2.0 ** 7, growth_interval=100)
    assert amp.moment_scale(opt) == 2.0 ** 7
    opt._grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 7, enabled=False)
    assert amp.moment_scale(opt) == 1.0  # fairseq's CUDA scaler on a CPU: disabled, nothing unscaled
