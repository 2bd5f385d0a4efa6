"""The squeezing effect: one gradient step on label k of a softmax over free logits.

A step on label k moves the logits by z' = z + sign * eta (e_k - pi): sign = -1 is
a negative gradient (gradient descent on +log pi_k, i.e. "push k down"), sign = +1
a positive one (SFT on k). With K = I (free logits) or K = kappa I (linear head,
absorb kappa into eta) everything below is exact.

Exact one-step change (derived with sympy in theory/squeeze_derivation.py): with d_i = z'_i - z_i,
    log pi'_i - log pi_i = d_i - log Z,   Z = sum_j pi_j exp(d_j),
so for a negative step pi'_i / pi_i = exp(eta pi_i) / Z (i != k) with
Z = sum_j pi_j exp(eta (pi_j - [j=k])).
First-order law (A(pi) applied to the logit change):
    negative: dlog pi_i = eta (pi_i + pi_k - ||pi||^2) (i != k),  dlog pi_k = -eta (1 - 2 pi_k + ||pi||^2)
    positive: dlog pi_i = eta (||pi||^2 - pi_k - pi_i) (i != k),  dlog pi_k = +eta (1 - 2 pi_k + ||pi||^2)

Theorems (negative step, every eta > 0; proofs in each predicate's docstring):
  P01 pi_k always falls; P02 y* = argmax_{i != k} pi_i always rises; X01 the
  rising set is a top set; P04 to first order it is {i : pi_i > ||pi||^2 - pi_k},
  empty of fallers when pi_k >= ||pi||^2; P05 peakier pi squeezes harder; X02 as
  eta -> infinity pi' -> one-hot on y*.
What does NOT follow (P06b): y*'s own first-order gain eta (pi_{y*} + pi_k - ||pi||^2)
does not grow as pi_k falls: moving mass out of k lowers pi_k one-for-one while
||pi||^2 moves by less, so the gain usually shrinks; see `runner_up_gain_first_order`.

Inputs: p [..., V] (a distribution, summing to 1 in float64 precision), k an int
or an int array broadcastable to p.shape[:-1], eta > 0 a float or an array of the
same leading shape. Outputs are float64 numpy; sympy is imported only lazily.
"""
import functools

import numpy as np

from learning_dynamics.theory.softmax import softmax, sqnorm
from learning_dynamics.theory.squeeze_derivation import numeric

# exp(700) is finite in float64; the log1p/expm1 path keeps relative precision but
# needs x_j <= ~700 (negative step) and sum_j p_j exp(x_j) >= e^-1 (positive step).
_EXPM1_MAX_NEG = 600.0
_EXPM1_MAX_POS = 1.0


# --------------------------------------------------------------------------- helpers

def numeric_functions():
    """The numpy functions lambdified from the sympy derivation (built once, on first use)."""
    return numeric()


def f64(x):
    return np.asarray(x, dtype=np.float64)


def label_index(p, k):
    k = np.asarray(k)
    if not np.issubdtype(k.dtype, np.integer):
        raise TypeError("label index k must be an integer (array)")
    V = p.shape[-1]
    if np.any(k < 0) or np.any(k >= V):
        raise IndexError(f"label index out of range for V = {V}")
    return np.broadcast_to(k, p.shape[:-1])[..., None]


def take_label(x, idx):
    return np.take_along_axis(x, idx, axis=-1)[..., 0]


def put_label(x, idx, values):
    np.put_along_axis(x, idx, np.broadcast_to(values, idx.shape[:-1])[..., None], axis=-1)


def _sign(sign):
    if sign not in (-1, 1):
        raise ValueError("sign must be -1 (negative gradient) or +1 (positive gradient)")
    return float(sign)


def per_row(x, p):
    """A per-row scalar (or scalar) as [..., 1] so it broadcasts against p [..., V]."""
    return np.broadcast_to(f64(x), p.shape[:-1])[..., None]


def _others_mask(p, idx):
    mask = np.ones(p.shape, dtype=bool)
    put_label(mask, idx, False)
    return mask


def runner_up(p, k):
    """y* = argmax_{i != k} pi_i (first index on ties), shape [...]."""
    p = f64(p)
    idx = label_index(p, k)
    q = p.copy()
    put_label(q, idx, -np.inf)
    return np.argmax(q, axis=-1)


# --------------------------------------------------------------------------- numeric functions

def step_logits(z, k, eta, sign=-1):
    """z' = z + sign * eta (e_k - pi): one gradient step on log pi_k over free logits."""
    z = f64(z)
    s = _sign(sign)
    pi = softmax(z)
    idx = label_index(z, k)
    f = numeric_functions()
    out = z + pi * per_row(f.step_slope(eta, s), z)
    put_label(out, idx, take_label(out, idx) + f.step_k_extra(eta, s))
    return out


def first_order_dlogp(p, k, eta, sign=-1):
    """A(pi) (sign eta (e_k - pi)): the first-order change of every log pi_i.

    Evaluated as p * slope + intercept (one [.., V] temporary); label k separately.
    """
    p = f64(p)
    s = _sign(sign)
    idx = label_index(p, k)
    f = numeric_functions()
    pk, sq = take_label(p, idx), sqnorm(p)
    out = p * per_row(f.fo_slope(eta, s), p)
    out += per_row(f.fo_intercept(pk, sq, eta, s), p)
    put_label(out, idx, f.fo_k(pk, sq, eta, s))
    return out


def exact_dlogp(p, k, eta, sign=-1):
    """Exact log pi'_i - log pi_i after z' = z + sign eta (e_k - pi), for every label.

    With x_i = d_i - d_k (sympy: x_i = -sign eta (1 - pi_k + pi_i), x_k = 0):
        dlog pi_i = x_i - log sum_j pi_j exp(x_j).
    Shifting by d_k makes label k's own change -log1p(sum_j pi_j expm1(x_j)), a
    sum of same-signed terms for a negative step, so its sign is exact even when
    it is 1e-30; for small steps this log1p/expm1 path keeps relative precision.
    Large steps switch to a log-sum-exp shifted by the dominant label m, with every
    x_j - x_m formed from p_j - p_m (never as a difference of two huge x's), so the
    result is correct to relative precision for any finite eta; a change whose size
    exceeds float64 (|dlog pi| > ~1.8e308) comes out as -inf.
    """
    p = f64(p)
    s = _sign(sign)
    idx = label_index(p, k)
    f = numeric_functions()
    pk = take_label(p, idx)
    x = p * per_row(f.x_slope(eta, s), p)
    x += per_row(f.x_intercept(pk, eta, s), p)
    put_label(x, idx, 0.0)
    # per row, the expm1 path needs no overflow (negative step: x_j >= 0 up to
    # eta (1 - pi_k + pi_j)) and no cancellation in 1 + S (positive step: x_j <= 0)
    if s < 0:
        small = np.max(x, axis=-1) <= _EXPM1_MAX_NEG
    else:
        small = np.min(x, axis=-1) >= -_EXPM1_MAX_POS
    if small.all():
        return _finish_expm1(p, x)
    large = functools.partial(_finish_log_space, p, idx, pk, eta, s, f)
    if not small.any():
        return large()
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(small[..., None], _finish_expm1(p, x.copy()), large())


def _finish_expm1(p, x):
    e = np.expm1(x)
    log_z = np.log1p(np.einsum("...v,...v->...", p, e))
    return np.subtract(x, log_z[..., None], out=e)


def _finish_log_space(p, idx, pk, eta, s, f):
    """dlog pi_i = d_i - log sum_j pi_j exp(d_j) with d = x - x_m, m the label of largest pi_m exp(x_m).

    x is affine in pi with one slope for every j != k (x_k = 0), so x_j - x_m = slope (pi_j - pi_m)
    for j, m != k, and x_k - x_m = -x_m: no difference of two large numbers is ever taken. Labels
    with pi_j = 0 drop out of the sum. m is found on x / eta (the same argmax, no overflow).
    """
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        log_p = np.log(p)
        unit = p * per_row(f.x_slope(1.0, s), p) + per_row(f.x_intercept(pk, 1.0, s), p)
        put_label(unit, idx, 0.0)
        slope, intercept = per_row(f.x_slope(eta, s), p), per_row(f.x_intercept(pk, eta, s), p)
        m = np.argmax(log_p / per_row(eta, p) + unit, axis=-1)[..., None]
        d = _shift(p, idx, m, slope, intercept)
        # x / eta rounds labels with pi_j within ~1e-16 of each other to a tie; the differences d do not
        better = np.argmax(np.where(p > 0, log_p + d, -np.inf), axis=-1)[..., None]
        if np.any(better != m):
            d = _shift(p, idx, better, slope, intercept)
        a = np.where(p > 0, log_p + d, -np.inf)  # pi_j = 0 drops out even where d_j overflowed to inf
        top = np.max(a, axis=-1, keepdims=True)
        log_z = top + np.log(np.sum(np.exp(a - top), axis=-1, keepdims=True))
        return d - log_z


def _shift(p, idx, m, slope, intercept):
    """x - x_m for every label, from pi_j - pi_m (j, m != k) and x_m itself (for label k)."""
    p_m = np.take_along_axis(p, m, axis=-1)
    m_is_k = m == idx
    d = np.where(m_is_k, p * slope + intercept, slope * (p - p_m))
    put_label(d, idx, np.where(m_is_k[..., 0], 0.0, -(p_m * slope + intercept)[..., 0]))
    return d


def threshold(p, k, sign=-1):
    """||pi||^2 - pi_k, shape [...]: the root in pi_i of the first-order law (sympy solve).

    Negative step: label i != k rises to first order iff pi_i > threshold.
    Positive step: label i != k rises iff pi_i < threshold (all fall when it is <= 0).
    `sign` only documents which side rises; the root is the same.
    """
    p = f64(p)
    _sign(sign)
    idx = label_index(p, k)
    return numeric_functions().threshold(take_label(p, idx), sqnorm(p))


def rising_set(p, k, eta, sign=-1, exact=True):
    """bool [..., V]: labels whose log-prob goes up (label k included: it never does
    under a negative step, always does under a positive one)."""
    change = exact_dlogp(p, k, eta, sign) if exact else first_order_dlogp(p, k, eta, sign)
    return change > 0


def runner_up_gain_first_order(p, k, eta):
    """eta (pi_{y*} + pi_k - ||pi||^2): y*'s first-order gain under a negative step.

    NOT a theorem that it grows as pi_k falls: d/d(pi_k) of the gain is
    1 - d||pi||^2/d pi_k, positive whenever ||pi||^2 changes by less than pi_k,
    so lowering pi_k usually lowers y*'s gain (tests/test_theory_squeeze.py).
    """
    p = f64(p)
    return take_label(first_order_dlogp(p, k, eta, -1), runner_up(p, k)[..., None])


# --------------------------------------------------------------------------- theorems

def target_falls(p, k, eta):
    """P01: under a negative step pi_k falls, for every eta > 0.

    Proof: pi'_k / pi_k = exp(-eta (1 - pi_k)) / Z and Z = sum_j pi_j exp(eta (pi_j - [j=k]))
    > pi_k exp(-eta (1 - pi_k)) + (1 - pi_k) exp(0) ... more simply, dividing by
    exp(-eta (1 - pi_k)): Z exp(eta (1 - pi_k)) = pi_k + sum_{j != k} pi_j exp(eta (1 - pi_k + pi_j)) > 1
    because every exponent is > 0 and sum_j pi_j = 1 (pi_k < 1). Hence the ratio < 1.
    """
    p = f64(p)
    idx = label_index(p, k)
    return take_label(exact_dlogp(p, k, eta, -1), idx) < 0


def runner_up_rises(p, k, eta):
    """P02: y* = argmax_{i != k} pi_i rises under a negative step, for every eta > 0 (pi_k > 0).

    Proof: pi'_{y*}/pi_{y*} = exp(eta pi_{y*}) / Z, and
    Z = sum_{j != k} pi_j exp(eta pi_j) + pi_k exp(-eta (1 - pi_k))
      < (1 - pi_k) exp(eta pi_{y*}) + pi_k exp(eta pi_{y*}) = exp(eta pi_{y*}),
    strictly because the k term has exponent -eta (1 - pi_k) < eta pi_{y*} and pi_k > 0.
    """
    p = f64(p)
    ystar = runner_up(p, k)[..., None]
    return take_label(exact_dlogp(p, k, eta, -1), ystar) > 0


def rising_set_is_top_set(p, k, eta):
    """X01: the labels i != k that rise are the most likely ones (a top set).

    Proof: for i != k, pi'_i / pi_i = exp(eta pi_i) / Z with one Z for all i, an
    increasing function of pi_i; so i rises iff pi_i > log(Z)/eta. The numeric
    exact_dlogp is monotone in pi_i too (p * slope + intercept, then one shift),
    so the property holds exactly in float64, ties included.
    """
    p = f64(p)
    idx = label_index(p, k)
    others = _others_mask(p, idx)
    rises = rising_set(p, k, eta, -1, exact=True) & others
    lowest_riser = np.where(rises, p, np.inf).min(axis=-1)
    highest_faller = np.where(others & ~rises, p, -np.inf).max(axis=-1)
    return lowest_riser >= highest_faller


def _near_tie(p, thr, pk, sq):
    # float64 evaluation of eta (pi_i - thr) can flip sign within a few ulps of the root
    return np.abs(p - thr[..., None]) <= 16 * np.finfo(np.float64).eps * (p + (pk + sq)[..., None])


def rising_set_matches_threshold_first_order(p, k, eta, sign=-1):
    """P04: to first order, label i != k rises iff pi_i > ||pi||^2 - pi_k (negative step),
    iff pi_i < ||pi||^2 - pi_k (positive step). Labels within a few ulps of the
    threshold are not judged (their float64 sign is rounding)."""
    p = f64(p)
    idx = label_index(p, k)
    pk, sq = take_label(p, idx), sqnorm(p)
    thr = threshold(p, k, sign)
    predicted = p > thr[..., None] if sign < 0 else p < thr[..., None]
    rises = rising_set(p, k, eta, sign, exact=False)
    judged = _others_mask(p, idx) & ~_near_tie(p, thr, pk, sq)
    return np.all((predicted == rises) | ~judged, axis=-1)


def no_squeeze_when_target_is_peaky(p, k, eta):
    """P04 (regime switch): if pi_k >= ||pi||^2, no label i != k falls to first order.

    Proof: dlog pi_i = eta pi_i + eta (pi_k - ||pi||^2) >= eta pi_i >= 0. Returns
    True where the premise fails (the implication holds vacuously).
    """
    p = f64(p)
    idx = label_index(p, k)
    premise = take_label(p, idx) >= sqnorm(p)
    change = first_order_dlogp(p, k, eta, -1)
    conclusion = np.all((change >= 0) | ~_others_mask(p, idx), axis=-1)
    return ~premise | conclusion


def peakier_squeezes_harder(p, q, k, eta=1.0):
    """P05: with the same pi_k, a peakier distribution (larger ||pi||^2) squeezes harder.

    Proof: at fixed pi_k the threshold ||pi||^2 - pi_k grows with ||pi||^2, and a
    label at any given probability level pi_i gets the first-order change
    eta (pi_i + pi_k - ||pi||^2), smaller under the peakier q. So every level that
    falls under p falls under q. Returns, for p and q with p_k = q_k (to 1e-12) and
    ||q||^2 >= ||p||^2, whether threshold(q) >= threshold(p) and the change at the
    levels of p is no larger under q; True where the premise fails.
    """
    p, q = f64(p), f64(q)
    idx = label_index(p, k)
    pk, qk = take_label(p, idx), take_label(q, idx)
    premise = (np.abs(pk - qk) <= 1e-12) & (sqnorm(q) >= sqnorm(p))
    f = numeric_functions()
    at_p = f.fo_intercept(pk, sqnorm(p), eta, -1.0)
    at_q = f.fo_intercept(qk, sqnorm(q), eta, -1.0)
    tol = 1e-12 * np.abs(f64(eta))
    ok = (threshold(q, k) >= threshold(p, k) - 1e-12) & (at_q <= at_p + tol)
    return ~premise | ok


def one_hot_bound(p, k, eta):
    """Upper bound on 1 - pi'_{y*} after a negative step: sum_{j != y*} pi_j/pi_{y*} exp(x_j - x_{y*})
    with x_j - x_{y*} = eta (pi_j - pi_{y*}) (j != k) and -eta (1 - pi_k + pi_{y*}) (j = k).
    It tends to 0 as eta -> infinity whenever y* is the unique argmax over i != k."""
    p = f64(p)
    ystar = runner_up(p, k)[..., None]
    change = exact_dlogp(p, k, eta, -1)
    rel = change - take_label(change, ystar)[..., None]          # log-ratio pi'_j/pi'_{y*} - log p_j/p_y*
    w = p * np.exp(rel)
    put_label(w, ystar, 0.0)
    return w.sum(axis=-1) / take_label(p, ystar)


def one_hot_limit(p, k, eta, tol=1e-6):
    """X02: as eta -> infinity a negative step gives one-hot on y*.

    Proof: pi'_j / pi'_{y*} = (pi_j / pi_{y*}) exp(x_j - x_{y*}); every exponent
    is <= -eta * gap (gap = pi_{y*} - max_{j != y*, k} pi_j > 0) or -eta (for k),
    so 1 - pi'_{y*} <= pi'_{y*} sum_j pi'_j/pi'_{y*} <= one_hot_bound -> 0.
    Returns True where the bound is still above tol (eta not yet large enough for
    this pi) or the exact post-step mass on y* is >= 1 - tol.
    """
    p = f64(p)
    ystar = runner_up(p, k)[..., None]
    w = p * np.exp(exact_dlogp(p, k, eta, -1))
    put_label(w, ystar, 0.0)
    off_mass = w.sum(axis=-1)
    return (one_hot_bound(p, k, eta) > tol) | (off_mass <= tol)
