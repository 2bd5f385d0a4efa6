"""Gradient flow of repeated negative steps: converges to one-hot on y*, replicator limit, time bound."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from learning_dynamics.theory import flow as F
from learning_dynamics.theory import squeeze as Q
from learning_dynamics.theory.softmax import softmax, sqnorm


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.sampled_from([3, 5, 20]))
def test_flow_concentrates_on_y_star_within_the_time_bound(seed, V):
    rng = np.random.default_rng(seed)
    p0 = softmax(1.5 * rng.standard_normal(V))
    k = int(rng.integers(V))
    ystar = int(Q.runner_up(p0, k))
    top = np.sort(np.delete(p0, k))[::-1]
    if top[0] - top[1] < 0.02:
        return
    T = float(F.time_to_concentrate(p0, k, eps=1e-3))
    path = F.integrate_flow(p0, k, np.linspace(0, T, 40))
    assert path[-1, ystar] >= 1 - 1e-3 - 1e-7
    others = [i for i in range(V) if i != k]
    order = np.argsort(p0[others])
    for row in path:                                 # ordering of non-k labels never changes
        assert np.all(np.diff(row[others][order]) >= -1e-9)
    gaps = path[:, ystar] - np.sort(path[:, others], axis=1)[:, -2]
    assert np.all(np.diff(gaps) >= -1e-8)              # the top-two gap only widens
    assert path[-1, k] < p0[k]
    # broken variant: the flow does not concentrate on the target when it is the argmax
    assert ystar != k


def test_flow_rhs_is_the_small_step_limit_and_replicator_the_pi_k_to_0_limit():
    rng = np.random.default_rng(0)
    p = softmax(rng.standard_normal(6))
    eta = 1e-7
    np.testing.assert_allclose(F.flow_rhs(p, 2), Q.exact_dlogp(p, 2, eta) / eta, rtol=1e-5, atol=1e-6)
    q = p.copy()
    q[2] = 0.0
    q /= q.sum()
    np.testing.assert_allclose(np.delete(F.flow_rhs(q, 2), 2), np.delete(F.replicator_rhs(q), 2), atol=1e-15)
    np.testing.assert_allclose(F.replicator_rhs(p), p - sqnorm(p))
    assert not np.allclose(F.replicator_rhs(p), F.flow_rhs(p, 2))       # differs while pi_k > 0


def test_replicator_matches_sympy_and_time_formula():
    sy = F._symbolic()
    p, s = 0.3, 0.25
    assert float(F._fns()["replicator"](p, s)) == pytest.approx(float(sy["replicator"].subs({sy["p_i"]: p, sy["sq"]: s})))
    p0 = np.array([0.5, 0.3, 0.2])
    T = float(F.time_to_concentrate(p0, eps=1e-2))
    assert T == pytest.approx(np.log(0.5 / (0.5 * 1e-2)) / 0.2)
    assert np.isinf(F.time_to_concentrate(np.array([0.4, 0.4, 0.2])))


def test_replicator_flow_from_near_zero_target_converges_to_argmax():
    p0 = np.array([0.45, 0.35, 0.2 - 1e-9, 1e-9])
    path = F.integrate_flow(p0, 3, [0.0, 200.0])
    assert path[-1, 0] > 1 - 1e-6
    assert len(F.derivations()) == 1
