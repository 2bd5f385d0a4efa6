"""The AKG step decomposition: dlog pi(x_o) = -eta A(x_o) K(x_o, x_u) G(x_u) + O(eta^2).

One SGD step theta' = theta - eta J_u^T G_u on an example x_u (G_u = dLoss/dz(x_u),
J = dz/dtheta) changes the logits at an observed x_o by
dz_o = -eta J_o J_u^T G_u + O(eta^2) = -eta K(x_o, x_u) G_u + O(eta^2), and the
log-softmax maps it through A(pi_o) = I - 1 pi_o^T. For a linear-softmax head
z = W phi(x), J_o J_u^T = <phi(x_o), phi(x_u)> I (derived in `derivations()`).
Sequences chi = [x; y]: each response position is a context of its own; the
change of the summed sequence log-prob is the sum of per-position blocks.
"""
import functools

import numpy as np

from learning_dynamics.theory.softmax import apply_A
from learning_dynamics.theory.derivation import Derivation
# sympy loads inside the functions that need them, so importing this module stays light (ldyn --help)


def akg_dlogp(pi_o, K, G, eta):
    """-eta A(pi_o) (K G): pi_o [..., V], K [..., V, V], G [..., V], broadcasting over the
    leading axes (sim/ntk.py: pi [N_o, 1, V], K [N_o, N_u, V, V], G [1, N_u, V])."""
    K = np.asarray(K, dtype=np.float64)
    G = np.asarray(G, dtype=np.float64)
    kg = np.matmul(K, G[..., None])[..., 0]
    return -np.asarray(eta, dtype=np.float64) * apply_A(pi_o, kg)


def linear_head_kernel(phi_o, phi_u):
    """<phi_o, phi_u> over the last axis: K = that * I for a linear-softmax head z = W phi."""
    phi_o = np.asarray(phi_o, dtype=np.float64)
    phi_u = np.asarray(phi_u, dtype=np.float64)
    return np.einsum("...d,...d->...", *np.broadcast_arrays(phi_o, phi_u))


def sequence_akg_dlogp(pi_o, tokens_o, K, G, eta):
    """First-order change of the summed log-prob of a response after one step on another.

    pi_o [L, V] the distributions at the observed response's positions, tokens_o [L]
    its tokens, K [L, L2, V, V] the per-position kernel blocks, G [L2, V] the updated
    response's per-position residuals. Position l gets dz_l = -eta sum_m K[l, m] G[m];
    the sequence change is sum_l (A(pi_l) dz_l)[tokens_l].
    """
    pi_o = np.asarray(pi_o, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    G = np.asarray(G, dtype=np.float64)
    dz = np.einsum("lmab,mb->la", K, G)
    per_pos = -float(eta) * apply_A(pi_o, dz)
    tokens = np.asarray(tokens_o)
    return float(per_pos[np.arange(len(tokens)), tokens].sum())


@functools.lru_cache(maxsize=None)
def _symbolic():
    import sympy as sp

    # a 2-label, 2-feature linear head: z = W phi
    W = sp.Matrix(2, 2, sp.symbols("w11 w12 w21 w22", real=True))
    phi_o = sp.Matrix(sp.symbols("phi_o1 phi_o2", real=True))
    phi_u = sp.Matrix(sp.symbols("phi_u1 phi_u2", real=True))
    params = list(W)
    J_o = (W * phi_o).jacobian(params)
    J_u = (W * phi_u).jacobian(params)
    K = sp.simplify(J_o * J_u.T)
    inner = (phi_o.T * phi_u)[0, 0]
    K_residual = sp.simplify(K - inner * sp.eye(2))
    # the step decomposition, to first order in eta
    eta = sp.Symbol("eta", positive=True)
    G = sp.Matrix(sp.symbols("G1 G2", real=True))
    theta_step = -eta * J_u.T * G
    z_o_new = (W + sp.Matrix(2, 2, list(theta_step))) * phi_o
    dz_o = sp.simplify(z_o_new - W * phi_o)
    dz_residual = sp.simplify(dz_o - (-eta * K * G))
    return {"J_o": J_o, "K": K, "K_residual": K_residual, "dz_o": dz_o, "dz_residual": dz_residual}


def derivations():

    s = _symbolic()
    return [Derivation("AKG decomposition and the linear-head kernel", (
        ("dlog pi(x_o) = -eta A(x_o) K(x_o, x_u) G(x_u) + O(eta^2), K = J_o J_u^T;", None),
        ("J_o = dz(x_o)/dW for z = W phi (V = D = 2):", s["J_o"]),
        ("K = J_o J_u^T:", s["K"]),
        ("K - <phi_o, phi_u> I:", s["K_residual"]),
        ("logit change at x_o after W' = W - eta J_u^T G (as a matrix), minus -eta K G:", s["dz_residual"]),
    ))]
