"""Softmax calculus: stable log-sum-exp, the log-softmax Jacobian A and its identities.

pi = softmax(z), A(pi) = d log pi / dz = I - 1 pi^T (row i is e_i - pi), and the
probability Jacobian d pi / dz = diag(pi) - pi pi^T. Identities (derived in
`derivations()`):
  ||A||_F^2 = V - 2 + V ||pi||^2,
  log ||pi||^2 = logsumexp(2z) - 2 logsumexp(z),
  sum_i pi_i (A v)_i = 0 for every v (first-order mass conservation).
All numeric functions are float64 numpy, vectorized over leading axes; sympy is
imported only by `derivations()` and the lazily built lambdified functions.
"""
import functools

import numpy as np

from learning_dynamics.theory import symbolic
from learning_dynamics.theory.derivation import Derivation
# sympy loads inside the functions that need them, so importing this module stays light (ldyn --help)


def _f64(x):
    return np.asarray(x, dtype=np.float64)


def logsumexp(z, axis=-1, keepdims=False):
    """log sum exp z, shifted by the max so that logits of +-1e3 neither overflow nor
    underflow to log 0; rows that are all -inf give -inf (not nan)."""
    z = _f64(z)
    m = np.max(z, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)  # an all -inf row: shift by 0, log 0 = -inf
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(z - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


def log_softmax(z):
    z = _f64(z)
    return z - logsumexp(z, keepdims=True)


def softmax(z):
    """exp(log_softmax): tiny probabilities come out as exp of an accurate log, not 0/0."""
    return np.exp(log_softmax(z))


def sqnorm(p):
    """||pi||^2 = sum_i pi_i^2 over the last axis (einsum: no [.., V] temporary)."""
    p = _f64(p)
    return np.einsum("...v,...v->...", p, p)


def log_sqnorm_from_logits(z):
    """log ||softmax(z)||^2 = logsumexp(2z) - 2 logsumexp(z): exact in log space, so
    it neither forms pi nor loses ||pi||^2 ~ 1e-300 to underflow."""
    z = _f64(z)
    return logsumexp(2.0 * z) - 2.0 * logsumexp(z)


def apply_A(pi, v):
    """A(pi) v = v - (pi . v) 1: the first-order change of log pi for a logit change v.

    Broadcasts over leading axes; never forms the V x V matrix."""
    pi, v = _f64(pi), _f64(v)
    return v - np.einsum("...v,...v->...", *np.broadcast_arrays(pi, v))[..., None]


def log_softmax_jacobian(pi):
    """A(pi) = I - 1 pi^T as [.., V, V]: entry (i, j) = d log pi_i / d z_j = [i=j] - pi_j."""
    pi = _f64(pi)
    V = pi.shape[-1]
    return np.eye(V) - pi[..., None, :]


def prob_jacobian(pi):
    """d pi / dz = diag(pi) - pi pi^T as [.., V, V] (= diag(pi) A)."""
    pi = _f64(pi)
    return pi[..., :, None] * np.eye(pi.shape[-1]) - pi[..., :, None] * pi[..., None, :]


@functools.lru_cache(maxsize=None)
def _frobenius_fn():
    s = _symbolic()
    return symbolic.lambdify((s["V"], s["sq"]), s["frobenius_sq"])


def frobenius_sq_A(pi):
    """||A(pi)||_F^2 = V - 2 + V ||pi||^2 (derived per row, then summed over rows)."""
    pi = _f64(pi)
    return _frobenius_fn()(np.float64(pi.shape[-1]), sqnorm(pi))


# --------------------------------------------------------------------------- sympy

@functools.lru_cache(maxsize=None)
def _symbolic():
    import sympy as sp

    p_i, p_k, sq, d = sp.symbols("pi_i pi_k S_2 delta", real=True)
    V = sp.Symbol("V", positive=True, integer=True)
    # Jacobian of log softmax from its definition, on an explicit 3-label softmax
    z = sp.symbols("z1:4", real=True)
    logZ = sp.log(sum(sp.exp(t) for t in z))
    logpi = sp.Matrix([t - logZ for t in z])
    jac = logpi.jacobian(sp.Matrix(z))
    pis = sp.Matrix([sp.exp(t) / sum(sp.exp(u) for u in z) for t in z])
    A_explicit = sp.eye(3) - sp.ones(3, 1) * pis.T
    jac_residual = sp.simplify(jac - A_explicit)
    # ||row i of A||^2 = ||e_i - pi||^2 = (1 - pi_i)^2 + (S_2 - pi_i^2), summed over rows
    row_sq = sp.expand((1 - p_i) ** 2 + sq - p_i ** 2)
    slope, intercept = symbolic.affine_parts(row_sq, p_i)
    frob = sp.expand(V * intercept + slope * 1)            # sum_i pi_i = 1
    # mass conservation: sum_i pi_i (v_i - pi.v) = pi.v - (pi.v) sum_i pi_i = 0
    pv = sp.Symbol("pi_dot_v", real=True)
    v_i = sp.Symbol("v_i", real=True)
    mass = sp.simplify(pv - pv * 1)
    # log ||pi||^2 from logits, on the same explicit softmax
    log_sq = sp.log(sum(sp.exp(2 * t) for t in z)) - 2 * logZ
    log_sq_check = sp.simplify(sp.exp(log_sq) - sum(t ** 2 for t in pis))
    return {"V": V, "sq": sq, "p_i": p_i, "jac": jac, "jac_residual": jac_residual,
            "row_sq": row_sq, "frobenius_sq": frob, "mass": mass, "A_v_i": v_i - pv,
            "log_sq": log_sq, "log_sq_check": log_sq_check, "z": z, "logpi": logpi}


def derivations():
    import sympy as sp

    s = _symbolic()
    return [
        Derivation("Log-softmax Jacobian A = I - 1 pi^T", (
            ("d log pi_i / d z_j for log pi = z - log sum exp z (V = 3):", s["jac"]),
            ("minus (I - 1 pi^T) simplifies to", s["jac_residual"]),
        )),
        Derivation("||A||_F^2 = V - 2 + V ||pi||^2", (
            ("row i of A is e_i - pi; its squared norm", s["row_sq"]),
            ("summed over the V rows with sum_i pi_i = 1", sp.Eq(sp.Symbol("||A||_F^2"), s["frobenius_sq"])),
        )),
        Derivation("log ||pi||^2 from logits", (
            ("log ||pi||^2 =", s["log_sq"]),
            ("exp of it minus sum pi_i^2 simplifies to", s["log_sq_check"]),
        )),
        Derivation("First-order mass conservation", (
            ("(A v)_i =", s["A_v_i"]),
            ("sum_i pi_i (A v)_i = pi.v - (pi.v) sum_i pi_i =", s["mass"]),
        )),
    ]
