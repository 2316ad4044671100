"""Gumbel estimators against brute-force expectations."""
import pytest
import torch

from fairseq_metabt.modules.gumbel import (
    gumbel_argmax_softmax,
    gumbel_noise,
    gumbel_sigmoid,
    straight_through_embedding,
    straight_through_gumbel_softmax,
)


def test_stgs_forward_is_one_hot_of_perturbed_argmax_and_backward_is_softmax_gradient():
    torch.manual_seed(0)
    logits = torch.randn(5, 7, requires_grad=True)
    g = torch.Generator().manual_seed(3)
    st, soft = straight_through_gumbel_softmax(logits, tau=2.0, beta=0.5, generator=g)
    noise = gumbel_noise(logits, 0.5, torch.Generator().manual_seed(3))
    expected_idx = (logits + noise).argmax(-1)
    assert torch.equal(st.detach(), torch.nn.functional.one_hot(expected_idx, 7).float())
    w = torch.randn(5, 7)
    (st * w).sum().backward()
    grad_st = logits.grad.clone()
    logits.grad = None
    ref = torch.softmax((logits + noise) / 2.0, -1)
    (ref * w).sum().backward()
    assert torch.allclose(grad_st, logits.grad, atol=1e-6)


@pytest.mark.parametrize("shape", [(15,), (3, 6)])
def test_straight_through_embedding_has_the_dense_one_hot_products_value_and_gradients(shape):
    """Lookup + custom backward == (one_hot - soft.detach() + soft) @ E, brute force, repeated ids included."""
    torch.manual_seed(0)
    vocab, dim = 11, 4
    weight = torch.randn(vocab, dim, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(*shape, dim, dtype=torch.float64)
    # 1. any soft input (a leaf): gradients w.r.t. soft and E
    soft = torch.rand(*shape, vocab, dtype=torch.float64).softmax(-1).requires_grad_()
    index = torch.randint(0, vocab, shape)
    assert index.unique().numel() < index.numel()  # some rows of E receive several gradients
    hard = torch.nn.functional.one_hot(index, vocab).double()
    dense = (hard - soft.detach() + soft) @ weight
    fast = straight_through_embedding(index, soft, weight)
    torch.testing.assert_close(fast, dense, rtol=0, atol=1e-12)
    g_dense = torch.autograd.grad((dense * upstream).sum(), (soft, weight))
    g_fast = torch.autograd.grad((fast * upstream).sum(), (soft, weight))
    for a, b in zip(g_fast, g_dense):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # 2. the STGS sample itself: the same gradient reaches the logits through the softmax (Eq. 6)
    logits = torch.randn(*shape, vocab, dtype=torch.float64, requires_grad=True)
    st, _ = straight_through_gumbel_softmax(logits, tau=2.0, beta=0.5, generator=torch.Generator().manual_seed(3))
    index, soft = gumbel_argmax_softmax(logits, tau=2.0, beta=0.5, generator=torch.Generator().manual_seed(3))
    dense, fast = st @ weight, straight_through_embedding(index.squeeze(-1), soft, weight)
    torch.testing.assert_close(fast, dense, rtol=0, atol=1e-12)
    g_dense = torch.autograd.grad((dense * upstream).sum(), (logits, weight))
    g_fast = torch.autograd.grad((fast * upstream).sum(), (logits, weight))
    for a, b in zip(g_fast, g_dense):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_straight_through_embedding_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="soft must be index's shape"):
        straight_through_embedding(torch.zeros(3, dtype=torch.long), torch.zeros(3, 5), torch.zeros(6, 2))


def test_stgs_beta_zero_is_greedy():
    logits = torch.randn(4, 9)
    st, _ = straight_through_gumbel_softmax(logits, tau=1.0, beta=0.0)
    assert torch.equal(st.argmax(-1), logits.argmax(-1))


def test_gumbel_max_samples_follow_softmax():
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5])
    g = torch.Generator().manual_seed(0)
    st, _ = straight_through_gumbel_softmax(logits.expand(40000, 4), tau=1.0, beta=1.0, generator=g)
    freq = st.mean(0)
    assert torch.allclose(freq, torch.softmax(logits, -1), atol=0.01)


def test_gumbel_sigmoid_gate_probability_matches_sigmoid_for_any_tau():
    logits = torch.tensor([-1.5, 0.0, 2.0])
    g = torch.Generator().manual_seed(1)
    for tau in (0.3, 1.0, 3.0):
        z = gumbel_sigmoid(logits.expand(40000, 3), tau=tau, generator=g)
        assert torch.allclose((z > 0.5).float().mean(0), torch.sigmoid(logits), atol=0.01)


def test_gumbel_sigmoid_hard_is_binary_with_relaxed_gradient():
    logits = torch.zeros(6, requires_grad=True)
    z = gumbel_sigmoid(logits, tau=1.0, hard=True, generator=torch.Generator().manual_seed(0))
    assert set(z.detach().tolist()) <= {0.0, 1.0}
    z.sum().backward()
    assert (logits.grad > 0).all()


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_non_positive_temperature_is_refused(bad):
    with pytest.raises(ValueError, match="tau must be > 0"):
        straight_through_gumbel_softmax(torch.zeros(3), tau=bad)
    with pytest.raises(ValueError, match="tau must be > 0"):
        gumbel_sigmoid(torch.zeros(3), tau=bad)
    with pytest.raises(ValueError, match="scale must be >= 0"):
        gumbel_noise(torch.zeros(3), scale=-0.5)
