"""sim/ntk.py: the two eNTK implementations agree with each other, with a naive
per-logit autograd loop, and with the closed form of a linear model; the AKG
prediction matches a real SGD step to first order."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from learning_dynamics.sim import ntk

IMPLEMENTATIONS = (ntk.entk_jacobian_contraction, ntk.entk_ntk_vector_products)


def tiny_mlp(seed=0, width=8, inputs=5, classes=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, width), nn.Tanh(), nn.Linear(width, classes)).double()


class TinyCNN(nn.Module):
    """Convolution + pooling: parameters of several shapes, to catch flattening mistakes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, kernel_size=3)
        self.head = nn.Linear(3 * 3 * 3, 4)

    def forward(self, x):
        return self.head(F.avg_pool2d(torch.tanh(self.conv(x)), 2).flatten(1))


def naive_entk(model, x1, x2):
    """One backward pass per logit and per example, then explicit dot products."""
    def jacobian(x):
        rows = [torch.autograd.grad(model(x[None])[0, v], list(model.parameters())) for v in range(4)]
        return torch.stack([torch.cat([g.flatten() for g in row]) for row in rows])

    return torch.stack([torch.stack([jacobian(a) @ jacobian(b).T for b in x2]) for a in x1])


@pytest.mark.parametrize("make_model, shape", [(tiny_mlp, (5,)), (lambda: TinyCNN().double(), (1, 8, 8))])
def test_both_implementations_match_a_naive_autograd_loop(make_model, shape):
    torch.manual_seed(1)
    model = make_model()
    apply_fn, params = ntk.functionalize(model)
    x1, x2 = torch.randn(3, *shape, dtype=torch.float64), torch.randn(2, *shape, dtype=torch.float64)
    reference = naive_entk(model, x1, x2)
    for kernel_fn in IMPLEMENTATIONS:
        kernel = kernel_fn(apply_fn, params, x1, x2)
        assert kernel.shape == (3, 2, 4, 4)
        assert ntk.max_relative_difference(reference, kernel) < 1e-12, kernel_fn.__name__


@settings(deadline=None, max_examples=8)
@given(seed=st.integers(0, 10_000), n1=st.integers(1, 5), n2=st.integers(1, 5),
       chunk=st.one_of(st.none(), st.integers(1, 3)))
def test_implementations_agree_in_float64_at_any_size_and_chunking(seed, n1, n2, chunk):
    apply_fn, params = ntk.functionalize(tiny_mlp(seed))
    generator = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n1, 5, dtype=torch.float64, generator=generator)
    x2 = torch.randn(n2, 5, dtype=torch.float64, generator=generator)
    k_jac = ntk.entk_jacobian_contraction(apply_fn, params, x1, x2, chunk_size=chunk)
    k_vps = ntk.entk_ntk_vector_products(apply_fn, params, x1, x2, chunk_size=chunk)
    assert ntk.max_relative_difference(k_jac, k_vps) < 1e-5


def test_linear_model_kernel_is_the_closed_form():
    """z = W x + b: dz_a/dW_ab' = x_b' delta, so K(x1, x2) = (<x1, x2> + 1) I exactly."""
    torch.manual_seed(0)
    apply_fn, params = ntk.functionalize(nn.Linear(6, 4).double())
    x1, x2 = torch.randn(3, 6, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    expected = (x1 @ x2.T + 1)[:, :, None, None] * torch.eye(4, dtype=torch.float64)
    for kernel_fn in IMPLEMENTATIONS:
        assert torch.allclose(kernel_fn(apply_fn, params, x1, x2), expected, atol=1e-12)


def test_kernel_is_symmetric_and_positive_semidefinite():
    apply_fn, params = ntk.functionalize(tiny_mlp(3))
    x = torch.randn(4, 5, dtype=torch.float64)
    kernel = ntk.entk_jacobian_contraction(apply_fn, params, x, x)
    gram = kernel.permute(0, 2, 1, 3).reshape(16, 16)           # [(n, a), (m, b)]
    assert torch.allclose(gram, gram.T, atol=1e-12)
    assert torch.linalg.eigvalsh(gram).min() > -1e-10 * gram.abs().max()


def test_self_blocks_and_group_means_match_the_full_kernel():
    apply_fn, params = ntk.functionalize(tiny_mlp(4))
    x = torch.randn(6, 5, dtype=torch.float64)
    full = ntk.entk_jacobian_contraction(apply_fn, params, x, x)
    diagonal = torch.stack([full[n, n] for n in range(6)])
    assert torch.allclose(ntk.entk_self(apply_fn, params, x, chunk_size=4), diagonal, atol=1e-12)
    grouped = ntk.entk_of_group_means(apply_fn, params, [x[:2], x[2:]])
    assert torch.allclose(grouped[0, 1], full[:2, 2:].mean(dim=(0, 1)), atol=1e-12)
    assert torch.allclose(grouped[1, 1], full[2:, 2:].mean(dim=(0, 1)), atol=1e-12)


def sgd_change(model, x_obs, x_upd, y_upd, eta):
    """Actual dlog pi on x_obs after one SGD step on sum CE(x_upd), weights restored after."""
    before = torch.log_softmax(model(x_obs), dim=-1).detach()
    grads = torch.autograd.grad(F.cross_entropy(model(x_upd), y_upd, reduction="sum"), list(model.parameters()))
    saved = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads):
            p -= eta * g
        after = torch.log_softmax(model(x_obs), dim=-1)
        for p, s in zip(model.parameters(), saved):
            p.copy_(s)
    return (after - before).numpy()


@pytest.mark.parametrize("kernel_fn", IMPLEMENTATIONS)
def test_akg_prediction_is_first_order_exact(kernel_fn):
    model = tiny_mlp(5, width=16)
    apply_fn, params = ntk.functionalize(model)
    torch.manual_seed(6)
    x_obs, x_upd, y_upd = torch.randn(7, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64), \
        torch.tensor([1, 3])
    residual = (torch.softmax(model(x_upd), dim=-1) - F.one_hot(y_upd, 4)).detach().numpy()   # G = pi - e_y
    errors = []
    for eta in (1e-3, 1e-2):
        predicted = ntk.akg_prediction(apply_fn, params, x_obs, x_upd, residual, eta, kernel_fn=kernel_fn)
        actual = sgd_change(model, x_obs, x_upd, y_upd, eta)
        assert np.abs(predicted - actual).max() < 0.05 * np.abs(actual).max()
        errors.append(np.linalg.norm(predicted - actual))
    slope = np.log10(errors[1] / errors[0])                     # eta grew 10x
    assert 1.8 < slope < 2.2


def test_akg_prediction_sees_the_sign_of_the_step():
    """A wrong sign in -eta A K G would still correlate in magnitude; check the direction."""
    model = tiny_mlp(7)
    apply_fn, params = ntk.functionalize(model)
    x = torch.randn(1, 5, dtype=torch.float64)
    y = torch.tensor([2])
    residual = (torch.softmax(model(x), dim=-1) - F.one_hot(y, 4)).detach().numpy()
    predicted = ntk.akg_prediction(apply_fn, params, x, x, residual, 1e-2)
    assert predicted[0, 2] > 0                                     # learning (x, 2) raises log p(2 | x)
    assert np.sign(predicted[0, 2]) == np.sign(sgd_change(model, x, x, y, 1e-2)[0, 2])
