"""Gradient flow of repeated negative steps on label k over free logits.

dz/dt = -(e_k - pi), so (A(pi) applied) d log pi_i / dt = pi_i + pi_k - ||pi||^2 - [i=k]:
the first-order law at eta = 1. Differences of log-probs of two labels i, j != k
evolve by pi_i - pi_j (the k terms cancel), so the ordering of the non-k labels
never changes and the gap between the top two grows:
    d(pi_1 - pi_2)/dt = (pi_1 - pi_2)(pi_1 + pi_2 + pi_k - ||pi||^2) >= 0,
since ||pi||^2 <= pi_k^2 + pi_1^2 + pi_2 (1 - pi_1 - pi_k) <= pi_k + pi_1 + pi_2.
Hence log(pi_1/pi_j) grows at rate >= g0 = pi_1(0) - pi_2(0) for every j != 1
(for j = k at rate pi_1 - pi_k + 1 >= g0), and
    1 - pi_1(t) <= ((1 - pi_1(0)) / pi_1(0)) exp(-g0 t):
the flow converges to one-hot on the argmax over i != k, and concentrates to
within eps by T(eps) = log((1 - pi_1(0)) / (pi_1(0) eps)) / g0 (an upper bound).
Once pi_k ~ 0 the flow is the replicator equation d log pi_i/dt = pi_i - ||pi||^2.
"""
import functools

import numpy as np

from learning_dynamics.theory import symbolic
from learning_dynamics.theory.softmax import log_softmax, softmax, sqnorm
from learning_dynamics.theory.squeeze import first_order_dlogp
from learning_dynamics.theory.squeeze_derivation import one_step
from learning_dynamics.theory.derivation import Derivation
# scipy, sympy load inside the functions that need them, so importing this module stays light (ldyn --help)


def flow_rhs(p, k):
    """d log pi_i / dt under the negative-gradient flow on k (the first-order law, eta = 1)."""
    return first_order_dlogp(p, k, 1.0, sign=-1)


def replicator_rhs(p):
    """pi_i - ||pi||^2: the flow once pi_k ~ 0 (sympy: the pi_k -> 0 limit of flow_rhs)."""
    p = np.asarray(p, dtype=np.float64)
    return _fns()["replicator"](p, sqnorm(p)[..., None])


def integrate_flow(p0, k, t_grid, rtol=1e-10, atol=1e-12):
    """Probabilities [len(t_grid), V] along the flow from p0 [V], integrated on the logits
    (float64, scipy solve_ivp, LSODA: the flow stiffens as it concentrates)."""
    from scipy.integrate import solve_ivp

    p0 = np.asarray(p0, dtype=np.float64)
    t_grid = np.asarray(t_grid, dtype=np.float64)
    e_k = np.zeros_like(p0)
    e_k[int(k)] = 1.0

    def rhs(_t, z):
        return -(e_k - softmax(z))

    with np.errstate(divide="ignore"):
        z0 = np.log(p0)
    z0 = np.where(np.isfinite(z0), z0, -800.0)
    sol = solve_ivp(rhs, (float(t_grid[0]), float(t_grid[-1])), z0, t_eval=t_grid,
                    method="LSODA", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"integrate_flow: {sol.message}")
    return np.exp(log_softmax(sol.y.T))


def time_to_concentrate(p, k=None, eps=1e-3):
    """Upper bound on the flow time after which pi_{y*} >= 1 - eps, shape [...]:
        T = log((1 - pi_1) / (pi_1 eps)) / (pi_1 - pi_2),
    pi_1 >= pi_2 the top two over labels != k (all labels when k is None). The
    gap-based rate is a bound (module docstring): the gap only widens. inf on ties."""
    p = np.asarray(p, dtype=np.float64)
    if k is None:
        top2 = -np.sort(-p, axis=-1)[..., :2]
    else:
        q = p.copy()
        np.put_along_axis(q, np.broadcast_to(np.asarray(k), p.shape[:-1])[..., None], -np.inf, axis=-1)
        top2 = -np.sort(-q, axis=-1)[..., :2]
    with np.errstate(divide="ignore", invalid="ignore"):
        return _fns()["time"](top2[..., 0], top2[..., 1], np.float64(eps))


@functools.lru_cache(maxsize=None)
def _symbolic():
    import sympy as sp


    step = one_step()
    p_i, p_k, sq, d, eta, s = step.p_i, step.p_k, step.sq, step.d, step.eta, step.s
    rhs = sp.expand(step.first.subs({eta: 1, s: -1}))
    replicator = sp.expand(rhs.subs({p_k: 0, d: 0}))
    # gap dynamics of the top two non-k labels: d pi/dt = pi * rhs
    p1, p2, g0, eps = sp.symbols("pi_1 pi_2 g_0 epsilon", positive=True)
    rhs_off = rhs.subs(d, 0)
    gap_rate = sp.factor(p1 * rhs_off.subs(p_i, p1) - p2 * rhs_off.subs(p_i, p2))
    log_ratio_rate = sp.simplify(rhs_off.subs(p_i, p1) - rhs_off.subs(p_i, p2))
    t = sp.Symbol("t", positive=True)
    bound = (1 - p1) / p1 * sp.exp(-(p1 - p2) * t)
    T = sp.solve(sp.Eq(bound, eps), t)[0]
    return {"rhs": rhs, "replicator": replicator, "gap_rate": gap_rate, "log_ratio_rate": log_ratio_rate,
            "bound": bound, "T": sp.simplify(T), "p_i": p_i, "sq": sq, "p1": p1, "p2": p2, "eps": eps}


@functools.lru_cache(maxsize=None)
def _fns():
    s = _symbolic()
    return {"replicator": symbolic.lambdify((s["p_i"], s["sq"]), s["replicator"]),
            "time": symbolic.lambdify((s["p1"], s["p2"], s["eps"]), s["T"])}


def derivations():

    s = _symbolic()
    return [Derivation("Gradient flow of repeated negative steps", (
        ("d log pi_i / dt (eta = 1, sign = -1):", s["rhs"]),
        ("replicator limit pi_k -> 0, i != k:", s["replicator"]),
        ("d log(pi_1/pi_2)/dt for two labels != k (the k terms cancel):", s["log_ratio_rate"]),
        ("d(pi_1 - pi_2)/dt:", s["gap_rate"]),
        ("1 - pi_1(t) <=", s["bound"]),
        ("time until 1 - pi_1 <= eps (upper bound):", s["T"]),
    ))]
