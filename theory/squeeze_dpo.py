"""DPO's step in the squeeze picture: y+ and y- on one shared context (the pi terms cancel: no
squeeze, P08), or on two contexts coupled by a kernel kappa (y+ can fall, X04). Derived with sympy in
theory/squeeze_derivation.py; the one-label step is theory/squeeze.py."""
from typing import NamedTuple

import numpy as np

from learning_dynamics.theory.softmax import sqnorm
from learning_dynamics.theory.squeeze import f64, numeric_functions, label_index, put_label, per_row, take_label


def dpo_shared_context_dlogp(p, plus, minus, eta, coef):
    """Exact dlog pi of every label after one DPO step with y+ and y- on one shared context.

    The chosen term's logit gradient -coef (e_+ - pi) and the rejected term's
    +coef (e_- - pi) sum to -coef (e_+ - e_-): the pi terms cancel (sympy), so
    z' = z + eta coef (e_+ - e_-). Every other label changes by the same -log Z:
    no squeeze (P08). plus != minus.
    """
    p = f64(p)
    ip, im = label_index(p, plus), label_index(p, minus)
    if np.any(ip == im):
        raise ValueError("plus and minus must differ")
    f = numeric_functions()
    pp, pm = take_label(p, ip), take_label(p, im)
    up, um, uo = f.dpo_plus(eta, coef), f.dpo_minus(eta, coef), f.dpo_other(eta, coef)
    rest = np.clip(1.0 - pp - pm, 0.0, None)
    with np.errstate(divide="ignore", over="ignore"):
        small = np.abs(up - uo) + np.abs(um - uo) <= 30.0
        log_z_small = uo + np.log1p(pp * np.expm1(np.minimum(up - uo, 30)) + pm * np.expm1(np.minimum(um - uo, 30)))
        stacked = np.stack(np.broadcast_arrays(np.log(rest) + uo, np.log(pp) + up, np.log(pm) + um), axis=-1)
        m = stacked.max(axis=-1)
        log_z_big = m + np.log(np.exp(stacked - m[..., None]).sum(axis=-1))
    log_z = np.where(small, log_z_small, log_z_big)
    out = np.empty_like(p)
    out[...] = per_row(uo - log_z, p)
    put_label(out, ip, up - log_z)
    put_label(out, im, um - log_z)
    return out


class TwoContextDPO(NamedTuple):
    dlogp_plus: np.ndarray       # first-order dlog pi_a(y+) in the chosen context a
    falls: np.ndarray            # bool: dlogp_plus < 0
    kappa_critical: np.ndarray   # pi_a(y+) falls iff kappa > kappa_critical (inf: never)


def dpo_two_context(p_plus_ctx, p_minus_ctx, plus, minus, kappa, eta, coef):
    """DPO with y+ and y- scored in two different contexts a and b coupled by a kernel kappa.

    Logit change in context a: dz_a = eta coef (e_+ - pi_a) - kappa eta coef (e_- - pi_b)
    (its own positive push plus the kernel-coupled negative push). sympy gives
        dlog pi_a(y+) = eta coef [ Q0 + kappa Q1 ],
        Q0 = 1 - 2 pi_a(+) + ||pi_a||^2 = ||e_+ - pi_a||^2 > 0,
        Q1 = pi_b(+) + pi_a(-) - pi_a . pi_b - [+ = -],
    so (eta coef > 0) pi_a(y+) falls iff Q1 < 0 and kappa > -Q0/Q1: when both
    contexts put their mass on the same other labels (pi_a . pi_b large) the
    squeeze from context b lifts that shared peak in a and drains y+.
    """
    pa, pb = f64(p_plus_ctx), f64(p_minus_ctx)
    ip, im = label_index(pa, plus), label_index(pa, minus)
    f = numeric_functions()
    args = (take_label(pa, ip), take_label(pa, im), take_label(pb, ip), sqnorm(pa),
            np.einsum("...v,...v->...", pa, pb), (ip == im)[..., 0].astype(np.float64))
    dlogp = f.two_dlogp(*args, kappa, eta, coef)
    q0, q1 = f.two_q0(*args), f.two_q1(*args)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa_crit = np.where(q1 < 0, -q0 / np.where(q1 < 0, q1, -1.0), np.inf)
    return TwoContextDPO(dlogp, dlogp < 0, kappa_crit)
