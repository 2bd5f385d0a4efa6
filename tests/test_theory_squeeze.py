"""The squeezing-effect theorems over extreme inputs; each check is shown to catch a broken variant."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from learning_dynamics.theory import squeeze as Q
from learning_dynamics.theory import squeeze_derivation as QS
from learning_dynamics.theory import squeeze_dpo as QD
from learning_dynamics.theory.softmax import log_softmax, softmax, sqnorm
from theory_strategies import ETAS, distributions

SET = settings(max_examples=40, deadline=None)


def direct_dlogp(z, k, eta, sign):
    """The definition: log_softmax after the logit step minus before (fine for moderate eta)."""
    return log_softmax(Q.step_logits(z, k, eta, sign)) - log_softmax(z)


# --------------------------------------------------------------------------- formulas

def test_first_order_matches_paper_example():
    p = np.array([0.6, 0.3, 0.05, 0.05])
    np.testing.assert_allclose(Q.first_order_dlogp(p, 3, 0.5), [0.0975, -0.0525, -0.1775, -0.6775])
    np.testing.assert_allclose(Q.threshold(p, 3), 0.455 - 0.05)
    np.testing.assert_allclose(Q.first_order_dlogp(p, 0, 0.5, +1),
                               0.5 * np.array([1 - 1.2 + 0.455, 0.455 - 0.6 - 0.3, 0.455 - 0.65, 0.455 - 0.65]))


@SET
@given(distributions(), ETAS, st.sampled_from([-1, 1]))
def test_exact_equals_the_definition(case, eta, sign):
    p, k = case
    got = Q.exact_dlogp(p, k, eta, sign)
    want = direct_dlogp(np.log(p), k, eta, sign)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * max(1.0, eta))
    assert np.all(np.isfinite(got))


@SET
@given(distributions(), ETAS, st.sampled_from([-1, 1]))
def test_exact_and_first_order_agree_to_second_order(case, eta, sign):
    """d^2/d eta^2 of dlog pi_i is minus a variance of values in [-1, 1], so |exact - first| <= eta^2 / 2."""
    p, k = case
    gap = np.abs(Q.exact_dlogp(p, k, eta, sign) - Q.first_order_dlogp(p, k, eta, sign))
    assert np.all(gap <= 0.5 * eta ** 2 * (1 + 1e-9) + 1e-13 * eta)
    wrong = np.abs(Q.exact_dlogp(p, k, eta, sign) + Q.first_order_dlogp(p, k, eta, sign))
    if eta <= 1e-3 and np.max(np.abs(Q.first_order_dlogp(p, k, eta, sign))) > eta ** 2:
        # a wrong-sign first-order law is caught
        assert np.any(wrong > 0.5 * eta ** 2 + 1e-13 * eta)


def test_numpy_matches_sympy_at_random_points():
    import sympy as sp
    sy = QS.one_step()
    rng = np.random.default_rng(0)
    for _ in range(20):
        pk, sq, eta = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(1e-3, 10)
        s, pi = rng.choice([-1.0, 1.0]), rng.uniform(0, 1)
        subs = {sy.p_i: pi, sy.p_k: pk, sy.sq: sq, sy.eta: eta, sy.s: s}
        f = QS.numeric()
        assert float(f.fo_slope(eta, s) * pi + f.fo_intercept(pk, sq, eta, s)) == pytest.approx(
            float(sy.first_off.subs(subs)), rel=1e-12, abs=1e-14)
        assert float(f.fo_k(pk, sq, eta, s)) == pytest.approx(float(sy.first_k.subs(subs)), rel=1e-12)
        assert float(f.x_slope(eta, s) * pi + f.x_intercept(pk, eta, s)) == pytest.approx(
            float(sy.x_off.subs(subs)), rel=1e-12, abs=1e-14)
        assert float(f.threshold(pk, sq)) == pytest.approx(float(sy.thr.subs(subs)))
    assert all(sp.simplify(e) == 0 for e in sy.fo_check)


def test_no_overflow_at_extreme_logits_and_steps():
    z = np.array([1e3, -1e3, 0.0, 999.0])
    p = softmax(z)
    for eta in (1e-6, 1e3, 1e6):
        for sign in (-1, 1):
            for k in range(4):
                out = Q.exact_dlogp(p, k, eta, sign)
                assert np.all(np.isfinite(out) | (p == 0))


# --------------------------------------------------------------------------- theorems

@SET
@given(distributions(), ETAS)
def test_P01_target_always_falls(case, eta):
    p, k = case
    assert Q.target_falls(p, k, eta)
    assert not Q.target_falls(p, k, -eta) if eta < 1 else True   # the wrong direction raises it


@SET
@given(distributions(), ETAS)
def test_P02_runner_up_always_rises(case, eta):
    p, k = case
    assert Q.runner_up_rises(p, k, eta)
    # broken variant: "the global argmax rises" fails when the argmax is the target itself
    if k == int(np.argmax(p)) and p[k] > 0.5:
        assert Q.exact_dlogp(p, k, eta)[np.argmax(p)] < 0


@SET
@given(distributions(), ETAS)
def test_X01_rising_set_is_a_top_set(case, eta):
    p, k = case
    assert Q.rising_set_is_top_set(p, k, eta)


def test_X01_catches_a_non_top_set():
    p = np.array([0.5, 0.3, 0.15, 0.05])
    assert Q.rising_set_is_top_set(p, 3, 0.1)
    broken = p[[1, 0, 2, 3]]   # rising set of p evaluated against permuted probabilities
    rises = Q.rising_set(p, 3, 0.1)
    assert rises[0] and not rises[1] and broken[0] < broken[1]


@SET
@given(distributions(), ETAS, st.sampled_from([-1, 1]))
def test_P04_first_order_rising_set_is_the_threshold_set(case, eta, sign):
    p, k = case
    assert Q.rising_set_matches_threshold_first_order(p, k, eta, sign)


def test_P04_catches_a_threshold_without_pi_k():
    p = np.array([0.5, 0.3, 0.2])
    rises = Q.rising_set(p, 2, 0.1, exact=False)
    assert rises[1]                                  # 0.3 > ||p||^2 - p_k = 0.18
    assert not p[1] > sqnorm(p)                      # the broken threshold ||p||^2 = 0.38 says it falls


@SET
@given(distributions(), ETAS)
def test_P04_no_squeeze_when_target_is_peaky(case, eta):
    p, k = case
    assert Q.no_squeeze_when_target_is_peaky(p, k, eta)
    top = int(np.argmax(p))
    assert Q.no_squeeze_when_target_is_peaky(p, top, eta)
    if p[top] >= sqnorm(p):                      # argmax always satisfies the premise
        assert np.all(np.delete(Q.first_order_dlogp(p, top, eta), top) >= 0)


def test_P04_squeeze_when_target_is_small():
    p = np.array([0.7, 0.2, 0.05, 0.05])
    assert p[3] < sqnorm(p) and np.any(Q.first_order_dlogp(p, 3, 0.1)[:3] < 0)


@SET
@given(distributions(st.sampled_from([3, 5, 17, 256])), st.floats(0.2, 0.9))
def test_P05_peakier_squeezes_harder(case, temperature):
    p, k = case
    others = np.delete(np.arange(p.size), k)
    q = p.copy()
    q[others] = (1 - p[k]) * softmax(np.log(p[others]) / temperature)
    assert sqnorm(q) >= sqnorm(p) - 1e-15
    assert Q.peakier_squeezes_harder(p, q, k)
    # the same statement with p and q swapped is the broken one: it fails when q is strictly peakier
    if sqnorm(q) > sqnorm(p) + 1e-9:
        assert Q.threshold(p, k) < Q.threshold(q, k)


@SET
@given(st.integers(0, 2 ** 32 - 1), st.sampled_from([3, 10, 100]))
def test_P06_smaller_target_squeezes_harder_but_y_star_gains_less(seed, V):
    """For pi_k <= 1/4, lowering z_k lowers every i != k's first-order gain (d/dz_k of
    pi_i + pi_k - ||pi||^2 is pi_k (1 - pi_i - 3 pi_k + 2||pi||^2) > 0): more labels fall,
    the others fall further, and y*'s own gain shrinks too (P06b: it does NOT grow)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(V)
    k = int(np.argmin(z))
    z[k] = min(z[k], np.log(0.25 / 0.75) + np.log(np.exp(np.delete(z, k)).sum()))
    eta = 0.1
    gains, risers = [], []
    for t in np.linspace(0.0, 6.0, 7):
        zt = z.copy()
        zt[k] -= t
        p = softmax(zt)
        change = np.delete(Q.first_order_dlogp(p, k, eta), k)
        gains.append(change)
        risers.append(int(np.sum(change > 0)))
    gains = np.array(gains)
    assert np.all(np.diff(gains, axis=0) < 0)                  # every label's gain falls
    assert all(a >= b for a, b in zip(risers, risers[1:]))      # the rising set shrinks
    p0 = softmax(z)
    g0 = Q.runner_up_gain_first_order(p0, k, eta)
    z[k] -= 6.0
    assert Q.runner_up_gain_first_order(softmax(z), k, eta) < g0   # y*'s gain did NOT grow


def test_P06b_paper_numbers():
    """paper-notes item 6: y*'s dlog pi goes +0.029 -> +0.013 at eta = 0.1 as pi_k -> 0 (toy)."""
    z = np.array([3.0, 2.0, 1.0, 0.0])
    g = [Q.runner_up_gain_first_order(softmax(np.r_[z[:3], zk]), 3, 0.1) for zk in (0.0, -10.0)]
    assert g[1] < g[0]


@SET
@given(distributions(st.sampled_from([2, 3, 17, 256])))
def test_X02_one_hot_limit(case):
    p, k = case
    ystar = Q.runner_up(p, k)
    others = np.delete(p, [k, ystar]) if p.size > 2 else np.array([0.0])
    gap = p[ystar] - others.max()
    if gap < 1e-6:
        return
    etas = [1.0, 10.0, 60.0 / gap, 200.0 / gap]
    bounds = [float(Q.one_hot_bound(p, k, e)) for e in etas]
    assert all(a >= b for a, b in zip(bounds, bounds[1:]))
    for e in etas:
        assert Q.one_hot_limit(p, k, e)
    assert bounds[-1] <= 1e-6                       # the limit is reached, not vacuous
    after = p * np.exp(Q.exact_dlogp(p, k, etas[-1]))
    assert after[ystar] >= 1 - 1e-6
    # broken variant "one-hot on the global argmax" fails when the target is the argmax
    if k == int(np.argmax(p)):
        assert after[k] < 1e-6


# --------------------------------------------------------------------------- DPO

@SET
@given(distributions(st.sampled_from([3, 5, 256])), st.sampled_from([1e-3, 0.1, 1.0, 50.0]),
       st.sampled_from([0.01, 0.5, 1.0]))
def test_P08_shared_context_dpo_does_not_squeeze(case, eta, coef):
    p, plus = case
    minus = (plus + 1) % p.size
    out = QD.dpo_shared_context_dlogp(p, plus, minus, eta, coef)
    rest = np.delete(out, [plus, minus])
    np.testing.assert_allclose(rest, rest[0], rtol=0, atol=1e-12 * max(1, eta * coef))
    z = np.log(p)
    direct = log_softmax(z + eta * coef * (np.eye(p.size)[plus] - np.eye(p.size)[minus])) - log_softmax(z)
    np.testing.assert_allclose(out, direct, rtol=1e-9, atol=1e-9)
    # a lone negative step on `minus` does squeeze: the other labels shift by different amounts
    lone = np.delete(Q.exact_dlogp(p, minus, eta * coef), [plus, minus])
    if p.size > 3 and np.ptp(np.delete(p, [plus, minus])) > 1e-3 and eta * coef > 1e-3:
        assert np.ptp(lone) > 1e-9


def two_context_simulation(pa_logits, pb_logits, plus, minus, kappa, eta, beta=1.0):
    """One real SGD step of a DPO-style loss on a linear head: y+ scored at context a,
    y- at context b, |phi_a| = 1, <phi_a, phi_b> = kappa; returns (coef, measured dlog pi_a(+))."""
    torch = pytest.importorskip("torch")
    phi_a = torch.tensor([1.0, 0.0], dtype=torch.float64)
    phi_b = torch.tensor([kappa, 1.0], dtype=torch.float64)
    # W with W phi_a = za and W phi_b = zb
    za, zb = torch.tensor(pa_logits), torch.tensor(pb_logits)
    W = torch.stack([za, zb - kappa * za], dim=1).clone().requires_grad_(True)
    lp_plus = torch.log_softmax(W @ phi_a, -1)[plus]
    lp_minus = torch.log_softmax(W @ phi_b, -1)[minus]
    u = beta * (lp_plus - lp_minus)
    loss = -torch.nn.functional.logsigmoid(u)
    loss.backward()
    coef = float(beta * torch.sigmoid(-u.detach()))
    with torch.no_grad():
        W2 = W - eta * W.grad
        after = torch.log_softmax(W2 @ phi_a, -1)[plus]
    return coef, float(after - lp_plus.detach())


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.sampled_from([3, 6, 50]), st.floats(0.0, 3.0))
def test_X04_two_context_dpo_matches_simulation(seed, V, kappa):
    rng = np.random.default_rng(seed)
    za, zb = 2 * rng.standard_normal(V), 2 * rng.standard_normal(V)
    plus, minus = 0, 1
    eta = 1e-4
    coef, measured = two_context_simulation(za, zb, plus, minus, kappa, eta)
    pred = QD.dpo_two_context(softmax(za), softmax(zb), plus, minus, kappa, eta, coef)
    assert abs(measured - pred.dlogp_plus) <= 5 * (eta * coef) ** 2 * (1 + kappa) ** 2 + 1e-15
    assert bool(pred.falls) == (pred.dlogp_plus < 0)
    assert bool(pred.falls) == (kappa > pred.kappa_critical)


def test_X04_chosen_falls_when_both_contexts_share_a_peak():
    za = np.array([-2.0, -2.0, 4.0, 0.0])     # y+ = 0 unlikely, shared peak at label 2
    zb = np.array([-2.0, -3.0, 5.0, 0.0])     # y- = 1 in the valley of context b
    pa, pb = softmax(za), softmax(zb)
    crit = float(QD.dpo_two_context(pa, pb, 0, 1, 1.0, 1.0, 1.0).kappa_critical)
    assert np.isfinite(crit)
    for kappa, falls in ((0.5 * crit, False), (2.0 * crit, True)):
        pred = QD.dpo_two_context(pa, pb, 0, 1, kappa, 1e-4, 1.0)
        _, measured = two_context_simulation(za, zb, 0, 1, kappa, 1e-4, beta=1e-9)
        assert bool(pred.falls) is falls
        assert (measured < 0) is falls


def test_vectorized_over_batches_and_index_arrays():
    rng = np.random.default_rng(1)
    p = softmax(rng.standard_normal((4, 3, 7)))
    k = rng.integers(0, 7, size=(4, 3))
    out = Q.exact_dlogp(p, k, 0.3)
    assert out.shape == p.shape and Q.threshold(p, k).shape == (4, 3)
    for i in range(4):
        for j in range(3):
            np.testing.assert_allclose(out[i, j], Q.exact_dlogp(p[i, j], int(k[i, j]), 0.3))
    assert Q.target_falls(p, k, 0.3).shape == (4, 3)
    with pytest.raises(IndexError):
        Q.exact_dlogp(p, 7, 0.1)
    with pytest.raises(ValueError):
        Q.exact_dlogp(p, 0, 0.1, sign=0)
