"""The AKG decomposition against a real float64 SGD step on a linear softmax head."""
import numpy as np
import pytest

from learning_dynamics.theory import decomposition as D
from learning_dynamics.theory.softmax import softmax

torch = pytest.importorskip("torch")


def linear_head_step(W, phi_o, phi_u, y_u, eta):
    """One SGD step of cross-entropy on (phi_u, y_u); returns (pi_o, G_u, measured dlog pi(x_o))."""
    W = torch.tensor(W, dtype=torch.float64, requires_grad=True)
    phi_o, phi_u = torch.tensor(phi_o), torch.tensor(phi_u)
    z_u = W @ phi_u
    z_u.retain_grad()
    loss = -torch.log_softmax(z_u, -1)[y_u]
    loss.backward()
    with torch.no_grad():
        before = torch.log_softmax(W @ phi_o, -1)
        after = torch.log_softmax((W - eta * W.grad) @ phi_o, -1)
    return before.exp().numpy(), z_u.grad.numpy(), (after - before).numpy()


def slope(etas, errors):
    return np.polyfit(np.log(etas), np.log(errors), 1)[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_first_order_error_is_second_order(seed):
    rng = np.random.default_rng(seed)
    V, Dm = 8, 5
    W = rng.standard_normal((V, Dm))
    phi_o, phi_u = rng.standard_normal(Dm), rng.standard_normal(Dm)
    etas = np.logspace(-4, -1.5, 8)
    kernel = D.linear_head_kernel(phi_o, phi_u)
    np.testing.assert_allclose(kernel, phi_o @ phi_u)
    errors, broken = [], []
    for eta in etas:
        pi_o, G, measured = linear_head_step(W, phi_o, phi_u, 3, eta)
        pred = D.akg_dlogp(pi_o, kernel * np.eye(V), G, eta)
        errors.append(np.abs(pred - measured).max())
        broken.append(np.abs(-eta * kernel * G - measured).max())        # A dropped
    assert abs(slope(etas, errors) - 2.0) <= 0.1
    assert abs(slope(etas, broken) - 1.0) <= 0.1                         # the check can fail


def test_akg_broadcasts_like_sim_ntk():
    rng = np.random.default_rng(0)
    N_o, N_u, V = 3, 4, 5
    pi = softmax(rng.standard_normal((N_o, 1, V)))
    K = rng.standard_normal((N_o, N_u, V, V))
    G = rng.standard_normal((1, N_u, V))
    out = D.akg_dlogp(pi, K, G, 0.1)
    assert out.shape == (N_o, N_u, V)
    o, u = 1, 2
    A = np.eye(V) - pi[o, 0][None, :]
    np.testing.assert_allclose(out[o, u], -0.1 * A @ K[o, u] @ G[0, u])


def test_sequence_akg_against_a_real_step():
    """Per-position linear head z_l = W phi_l; SFT step on sequence u, observe sequence o."""
    rng = np.random.default_rng(5)
    V, Dm, L, L2 = 6, 4, 3, 2
    W0 = rng.standard_normal((V, Dm))
    phi_o, phi_u = rng.standard_normal((L, Dm)), rng.standard_normal((L2, Dm))
    tok_o, tok_u = rng.integers(0, V, L), rng.integers(0, V, L2)
    etas = np.logspace(-4, -2, 5)
    errors = []
    for eta in etas:
        W = torch.tensor(W0, requires_grad=True)
        z_u = W @ torch.tensor(phi_u).T                       # [V, L2]
        z_u.retain_grad()
        loss = -torch.log_softmax(z_u, 0)[tok_u, np.arange(L2)].sum()
        loss.backward()
        with torch.no_grad():
            lo = lambda M: torch.log_softmax(M @ torch.tensor(phi_o).T, 0)[tok_o, np.arange(L)].sum()
            measured = float(lo(W - eta * W.grad) - lo(W))
            pi_o = torch.softmax(W @ torch.tensor(phi_o).T, 0).T.numpy()
        K = np.einsum("ld,md->lm", phi_o, phi_u)[:, :, None, None] * np.eye(V)
        pred = D.sequence_akg_dlogp(pi_o, tok_o, K, z_u.grad.T.numpy(), eta)
        errors.append(abs(pred - measured))
    assert abs(slope(etas, errors) - 2.0) <= 0.1


def test_derivation_shows_kernel_is_inner_product_identity():
    import sympy as sp
    s = D._symbolic()
    assert s["K_residual"] == sp.zeros(2, 2) and s["dz_residual"] == sp.zeros(2, 1)
