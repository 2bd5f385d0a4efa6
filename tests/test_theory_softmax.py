"""Softmax calculus identities, stable at extreme logits, numpy checked against sympy."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.special import logsumexp as scipy_lse

from learning_dynamics.theory import softmax as S
from theory_strategies import SCALES

SET = settings(max_examples=40, deadline=None)


@st.composite
def logits(draw, sizes=st.sampled_from([2, 3, 10, 300, 10_000])):
    V = draw(sizes)
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    z = draw(SCALES) * rng.standard_normal(V) + draw(st.sampled_from([0.0, 1e3, -1e3]))
    return z


@SET
@given(logits())
def test_logsumexp_and_softmax_are_stable(z):
    np.testing.assert_allclose(S.logsumexp(z), scipy_lse(z), rtol=1e-13, atol=1e-12)
    p = S.softmax(z)
    assert np.all(np.isfinite(p)) and abs(p.sum() - 1) < 1e-12
    np.testing.assert_allclose(S.log_softmax(z), z - scipy_lse(z), rtol=1e-12, atol=1e-9)


def test_logsumexp_edge_cases():
    assert S.logsumexp(np.array([-np.inf, -np.inf])) == -np.inf
    np.testing.assert_allclose(S.logsumexp(np.array([1e3, 1e3])), 1e3 + np.log(2))
    np.testing.assert_allclose(S.logsumexp(np.zeros((2, 3)), axis=0, keepdims=True), np.full((1, 3), np.log(2)))


@SET
@given(logits())
def test_log_sqnorm_from_logits(z):
    p = S.softmax(z)
    got = S.log_sqnorm_from_logits(z)
    np.testing.assert_allclose(got, np.log(S.sqnorm(p)), rtol=1e-11, atol=1e-11)
    # broken variant: logsumexp(2z) - logsumexp(z) is not it
    assert abs((S.logsumexp(2 * z) - S.logsumexp(z)) - got) > 1e-6 or abs(S.logsumexp(z)) < 1e-6


@SET
@given(logits(st.sampled_from([2, 3, 10, 300])))
def test_frobenius_identity(z):
    p = S.softmax(z)
    A = S.log_softmax_jacobian(p)
    want = np.sum(A ** 2)
    np.testing.assert_allclose(S.frobenius_sq_A(p), want, rtol=1e-12)
    V = p.size
    assert abs((V - 1 + V * S.sqnorm(p)) - want) > 0.5       # a wrong constant is caught


@SET
@given(logits(st.sampled_from([2, 3, 10, 300])), st.integers(0, 1000))
def test_jacobians_and_apply_A(z, seed):
    p = S.softmax(z)
    v = np.random.default_rng(seed).standard_normal(p.size)
    A = S.log_softmax_jacobian(p)
    np.testing.assert_allclose(S.apply_A(p, v), A @ v, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(S.prob_jacobian(p), p[:, None] * A, atol=1e-15)
    np.testing.assert_allclose(A @ np.ones_like(p), 0, atol=1e-12)            # A 1 = 0: logit shifts do nothing
    assert abs(p @ S.apply_A(p, v)) <= 1e-12 * (1 + np.abs(v).max())     # first-order mass conservation


def test_jacobian_matches_finite_differences_and_sympy():
    import sympy as sp
    sy = S._symbolic()
    rng = np.random.default_rng(3)
    z = rng.standard_normal(3)
    numeric = S.log_softmax_jacobian(S.softmax(z))
    symbolic = np.array(sy["jac"].subs(dict(zip(sy["z"], z))).evalf(), dtype=np.float64)
    np.testing.assert_allclose(numeric, symbolic, rtol=1e-12)
    h = 1e-6
    fd = np.stack([(S.log_softmax(z + h * e) - S.log_softmax(z - h * e)) / (2 * h) for e in np.eye(3)], axis=1)
    np.testing.assert_allclose(numeric, fd, atol=1e-8)
    assert sp.simplify(sy["jac_residual"]) == sp.zeros(3, 3)
    V, sq = 7.0, 0.3
    assert float(S._frobenius_fn()(V, sq)) == pytest.approx(float(sy["frobenius_sq"].subs({sy["V"]: V, sy["sq"]: sq})))


@SET
@given(logits(st.sampled_from([2, 5, 300, 10_000])), st.sampled_from([1e-4, 1e-2, 0.3]), st.integers(0, 1000))
def test_mass_conservation_is_second_order(z, eta, seed):
    """sum_i pi_i dlog pi_i = -KL(pi || pi') in [-eta^2 range(v)^2 / 8, 0] (Hoeffding's lemma)."""
    p = S.softmax(z)
    v = np.random.default_rng(seed).standard_normal(p.size)
    change = S.log_softmax(z + eta * v) - S.log_softmax(z)
    weighted = float(np.sum(p * change))
    bound = eta ** 2 * np.ptp(v) ** 2 / 8
    # round-off: each log-softmax carries its logsumexp's rounding, eps times the logits' scale (z up to ~1e3 here)
    rounding = 1e-13 + 4 * np.finfo(np.float64).eps * float(np.max(np.abs(z)))
    assert -bound * (1 + 1e-6) - rounding <= weighted <= rounding
    # the unweighted sum is first order, not second: the check can tell them apart
    first_order_unweighted = eta * np.sum(S.apply_A(p, v))
    if abs(first_order_unweighted) > 10 * p.size * bound:
        assert abs(np.sum(change)) > bound


def test_batched_shapes():
    z = np.random.default_rng(0).standard_normal((4, 5, 6))
    p = S.softmax(z)
    assert S.sqnorm(p).shape == (4, 5) and S.log_softmax_jacobian(p).shape == (4, 5, 6, 6)
    assert S.apply_A(p[:, :1], np.ones((1, 5, 6))).shape == (4, 5, 6)
    assert S.frobenius_sq_A(p).shape == (4, 5)
    assert len(S.derivations()) >= 3
