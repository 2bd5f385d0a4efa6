"""The exact one-step squeeze in log space, against a 400-digit reference, for any finite eta.

dlog pi_i = x_i - log sum_j pi_j exp(x_j) with x_i = -sign eta (1 - pi_k + pi_i) (x_k = 0) is
evaluated by mpmath at 400 significant digits, enough for eta up to 1.8e308, and compared
with theory.squeeze.exact_dlogp for probabilities down to 1e-300 and exact zeros.
"""
import json
import math

import mpmath
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from learning_dynamics.theory import squeeze
from learning_dynamics.theory.squeeze_report import compute

ETA = st.one_of(st.floats(1e-300, 1.7e308), st.sampled_from([1e-8, 0.1, 1.0, 1e3, 1e14, 1e16, 1e100, 1e308]),
                st.floats(0.1, 2000.0))
WEIGHT = st.one_of(st.just(0.0), st.floats(1e-300, 1.0), st.floats(0.0, 1.0), st.sampled_from([1.0, 0.5, 1e-30]))


@st.composite
def cases(draw):
    w = np.array(draw(st.lists(WEIGHT, min_size=2, max_size=7)))
    if not w.sum() > 0:
        w[0] = 1.0
    p = w / w.sum()
    k = draw(st.integers(0, p.size - 1))
    return p, k, draw(ETA), draw(st.sampled_from([-1, 1]))


def reference(p, k, eta, sign):
    with mpmath.workdps(400):
        P = [mpmath.mpf(float(v)) for v in p]
        E = mpmath.mpf(eta)
        x = [mpmath.mpf(0) if i == k else -sign * E * (1 - P[k] + P[i]) for i in range(len(P))]
        log_z = mpmath.log(mpmath.fsum(pj * mpmath.exp(xj) for pj, xj in zip(P, x) if pj != 0))
        big = mpmath.mpf(np.finfo(np.float64).max)
        return [float(v) if abs(v) <= big else math.copysign(math.inf, v) for v in (xi - log_z for xi in x)]


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(cases())
def test_exact_change_matches_a_400_digit_reference_for_any_finite_eta(case):
    p, k, eta, sign = case
    with np.errstate(all="ignore"):
        ours = squeeze.exact_dlogp(p, k, eta, sign)
    for i, (got, want) in enumerate(zip(ours, reference(p, k, eta, sign))):
        if math.isinf(want):  # beyond float64: overflow to the right infinity (or the largest floats)
            assert got == want or (got * want > 0 and abs(got) > 1e307), (i, got, want)
        else:
            assert math.isfinite(got) and abs(got - want) <= 1e-9 * abs(want) + 1e-11, (i, got, want, case)


def test_the_reported_cases_of_issue_14():
    """eta = 1e14 and 1e16 on (0.5, 0.5): label 1 rises by log 2 (it used to print 0.6875 and 0)."""
    for eta in (1e14, 1e16, 1e300):
        assert squeeze.exact_dlogp(np.array([0.5, 0.5]), 0, eta, -1)[1] == math.log(2)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(cases())
def test_the_json_is_strict_and_echoes_label_sign_and_eta(case):
    p, k, eta, sign = case
    result = compute(p, k, eta, sign)
    text = json.dumps(result, allow_nan=False)  # raises on NaN or inf
    assert (result["label"], result["sign"], result["eta"]) == (k, "negative" if sign < 0 else "positive", eta)
    values = [row[key] for row in json.loads(text)["labels"] for key in ("dlogp_first_order", "dlogp_exact")]
    assert (None in values) == ("null_reason" in result)
