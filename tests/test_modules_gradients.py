"""Gradient alignment math against brute force (per-example backward passes)."""
import pytest
import torch

from fairseq_metabt.modules import gradients as G
from fairseq_metabt.modules.generation import sequence_log_probs
from tiny_models import random_batch, tiny_dictionary, tiny_transformer


@pytest.fixture(scope="module")
def setup():
    d = tiny_dictionary()
    model = tiny_transformer(d).eval()
    batch = random_batch(d, n=6)
    params = [p for p in model.parameters() if p.requires_grad]

    def losses():
        return -sequence_log_probs(model, batch, d.pad())

    # warm-up: the first gradient after building a model can differ (fairseq-facts.md)
    torch.autograd.grad(losses().sum(), params, allow_unused=True)
    direction = G.flatten(torch.autograd.grad(losses()[:3].mean(), params, allow_unused=True), params)
    brute = []
    for i in range(6):
        gi = G.flatten(torch.autograd.grad(losses()[i], params, allow_unused=True), params)
        brute.append(torch.dot(gi, direction))
    return model, params, losses, direction, torch.stack(brute)


def test_double_backward_matches_per_example_loop(setup):
    _, params, losses, direction, brute = setup
    dots = G.per_example_dot_double_backward(losses, params, direction)
    assert torch.allclose(dots, brute, rtol=1e-3, atol=1e-4), (dots, brute)


def test_taylor_trick_approximates_per_example_loop(setup):
    _, params, losses, direction, brute = setup
    before = [p.detach().clone() for p in params]
    dots = G.per_example_dot_taylor(losses, params, direction, eps=1e-3)
    rel = (dots - brute).abs() / brute.abs().clamp_min(1e-3)
    assert float(rel.max()) < 0.1, (dots, brute)
    # the parameters are restored exactly
    assert all(torch.equal(a, b) for a, b in zip(before, params))


def test_taylor_refuses_zero_direction(setup):
    _, params, losses, direction, _ = setup
    with pytest.raises(ValueError, match="non-zero direction"):
        G.per_example_dot_taylor(losses, params, torch.zeros_like(direction))


def test_similarity_dot_cosine_and_degenerate_cases():
    a, b = torch.tensor([1.0, 2.0, 2.0]), torch.tensor([2.0, 0.0, 1.0])
    dot, ok = G.similarity(a, b, "dot")
    assert ok and float(dot) == 4.0
    cos, ok = G.similarity(a, b, "cosine")
    assert ok and abs(float(cos) - 4.0 / (3.0 * 5 ** 0.5)) < 1e-6
    _, ok = G.similarity(a, torch.zeros(3), "cosine")
    assert not ok, "a zero-norm gradient gives no usable cosine"
    _, ok = G.similarity(a, torch.tensor([float("nan"), 0.0, 0.0]), "dot")
    assert not ok
    with pytest.raises(ValueError):
        G.similarity(a, b, "angle")


def test_flatten_roundtrip():
    params = [torch.randn(2, 3), torch.randn(4)]
    flat = G.flatten(params, params)
    back = G.unflatten_like(flat, params)
    assert all(torch.equal(x, y) for x, y in zip(params, back))
    with pytest.raises(ValueError):
        G.unflatten_like(torch.zeros(3), params)


def test_average_grads_single_worker_fills_missing_and_keeps_the_rest():
    """One worker: existing grads are left as they are (same tensors), a missing one becomes zeros, and the
    returned vector is their concatenation (brute force)."""
    import torch
    from fairseq_metabt.modules import gradients as G

    a, b = torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))
    a.grad = torch.randn(3, 2)
    kept = a.grad
    flat = G.average_grads_([a, b])
    assert a.grad is kept
    assert torch.equal(b.grad, torch.zeros(4))
    assert torch.equal(flat, torch.cat([kept.reshape(-1), torch.zeros(4)]))
