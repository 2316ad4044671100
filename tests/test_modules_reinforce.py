"""REINFORCE on a real Transformer policy, and the moving-average baseline."""
import pytest
import torch

from fairseq_metabt.data.batches import pair_batch, strip_padding
from fairseq_metabt.modules.generation import GenerationSettings, InStepGenerator, sequence_log_probs
from fairseq_metabt.modules.reinforce import MovingAverageBaseline, policy_gradient_loss
from tiny_models import random_batch, tiny_dictionary, tiny_transformer


@pytest.mark.parametrize("advantage,direction", [(1.0, 1), (-1.0, -1)])
def test_reinforce_moves_log_prob_with_the_sign_of_the_reward(advantage, direction):
    d = tiny_dictionary()
    model = tiny_transformer(d, seed=1)
    batch = random_batch(d, n=4, seed=2)
    torch.manual_seed(3)
    model.train()
    sampler = InStepGenerator(model, d, GenerationSettings("sample", max_len_a=0, max_len_b=6))
    assert model.training, "building the generator keeps the caller's train mode"
    samples = sampler(batch["net_input"])
    assert model.training, "generation restores train mode"
    srcs = strip_padding(batch["net_input"]["src_tokens"], d.pad())
    pg_batch = pair_batch(srcs, samples, d.pad(), d.eos())
    model.eval()
    before = sequence_log_probs(model, pg_batch, d.pad())
    loss = policy_gradient_loss(before, torch.full_like(before, advantage))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)  # a small step: first-order regime
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        after = sequence_log_probs(model, pg_batch, d.pad())
    change = (after - before.detach())
    assert bool((direction * change > 0).all()), change


def test_advantages_carry_no_gradient():
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    adv = torch.tensor([0.5, -0.5], requires_grad=True)
    policy_gradient_loss(logp, adv).backward()
    assert torch.equal(logp.grad, torch.tensor([-0.5, 0.5])) and adv.grad is None


def test_moving_average_baseline():
    b = MovingAverageBaseline(decay=0.9)
    r0 = torch.tensor([1.0, 3.0])
    assert torch.allclose(b.advantage(r0), torch.tensor([-1.0, 1.0]))  # first step: centred on its own mean
    b.update(2.0)
    assert b.value == 2.0
    assert torch.allclose(b.advantage(torch.tensor([4.0])), torch.tensor([2.0]))  # pre-update baseline
    b.update(4.0)
    assert abs(b.value - (0.9 * 2.0 + 0.1 * 4.0)) < 1e-12
    restored = MovingAverageBaseline(0.9)
    restored.load_state_dict(b.state_dict())
    assert restored.value == b.value and restored.initialized
    with pytest.raises(ValueError):
        MovingAverageBaseline(1.0)


def test_greedy_generation_is_deterministic_and_beam_differs_in_settings():
    d = tiny_dictionary()
    model = tiny_transformer(d, seed=4)
    batch = random_batch(d, n=3, seed=5)
    greedy = InStepGenerator(model, d, GenerationSettings("greedy", max_len_a=0, max_len_b=5))
    a, b = greedy(batch["net_input"]), greedy(batch["net_input"])
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(int(x[-1]) == d.eos() for x in a)
    with pytest.raises(ValueError, match="generation mode"):
        GenerationSettings("nucleus")
    with pytest.raises(ValueError, match="temperature"):
        GenerationSettings("sample", temperature=0.0)
