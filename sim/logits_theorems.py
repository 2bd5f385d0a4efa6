"""The one-step theorems of the catalogue (P01-P08) checked on many random softmax cases:
the simulator's own step against theory's claim, with a float64 round-off allowance per case."""
import numpy as np

from learning_dynamics.sim.logits import (
    ROUNDOFF, loss_residual, choose, draw_labels, log_softmax, one_hot, pair_coefficients, random_logits, take)
from learning_dynamics.theory.algorithms import REGISTRY
from learning_dynamics.theory.squeeze import first_order_dlogp
from learning_dynamics.theory.squeeze import threshold
from learning_dynamics.theory.squeeze import runner_up_gain_first_order


def round_off_tolerance(*logits):
    """Round-off allowance per case for a change of log pi computed from these logits."""
    scale = 1.0
    for z in logits:
        scale = scale + np.abs(z).max(axis=-1)
    return ROUNDOFF * scale


def outcome(held, decided, detail, tolerance):
    held, decided = np.asarray(held, bool), np.asarray(decided, bool)
    cases = int(decided.sum())
    return {"cases": cases, "held": int((held & decided).sum()),
            "excluded": int((~decided).sum()), "detail": detail, "tolerance": tolerance}


def exact_step(z, k, eta, sign):
    """The simulator's own step and measured dlog pi, plus the residual range r (for bounds)."""
    logp = log_softmax(z)
    pi = np.exp(logp)
    v = sign * eta[:, None] * (one_hot(k, z.shape[-1]) - pi)
    new = z + v
    return pi, log_softmax(new) - logp, new, v


def random_cases(rng, n, vocab, eta_range):
    z = random_logits(rng, n, vocab)
    p = np.exp(log_softmax(z))
    k = draw_labels(rng, p, rng.integers(0, 3, n))
    eta = np.exp(rng.uniform(np.log(eta_range[0]), np.log(eta_range[1]), n))
    return z, p, k, eta


def others_mask(k, vocab, *extra):
    mask = np.ones(k.shape + (vocab,), bool)
    for labels in (k,) + extra:
        mask[np.arange(len(labels)), labels] = False
    return mask


def theorem_p01(rng, n, vocab):
    z, p, k, eta = random_cases(rng, n, vocab, (1e-3, 1e3))
    _, d, new, _ = exact_step(z, k, eta, -1.0)
    bound = eta * (1 - take(p, k)) ** 2                      # dlog pi_k <= -eta (1 - pi_k)^2
    tol = round_off_tolerance(z, new)
    decided = bound > tol
    return outcome(take(d, k) < 0, decided, "measured dlog pi_k < 0 after one negative step, eta "
                   "log-uniform in [1e-3, 1e3]; excluded: eta (1 - pi_k)^2 below round-off",
                   "strict: no tolerance on the sign")


def theorem_p02(rng, n, vocab):
    z, p, k, eta = random_cases(rng, n, vocab, (1e-3, 1e3))
    _, d, new, _ = exact_step(z, k, eta, -1.0)
    mask = others_mask(k, vocab)
    ystar = np.where(mask, p, -1).argmax(axis=-1)
    pk, ps = take(p, k), take(p, ystar)
    # log(pi'_y*/pi_y*) >= -log(1 - pi_k (1 - exp(-eta (1 + pi_y* - pi_k)))) > 0
    lower = -np.log1p(-pk * -np.expm1(-eta * (1 + ps - pk)))
    decided = lower > round_off_tolerance(z, new)
    return outcome(take(d, ystar) > 0, decided, "measured dlog pi(y*) > 0, y* = argmax_{i != k} pi_i, eta "
                   "in [1e-3, 1e3]; excluded: the proven lower bound on the gain is below round-off "
                   "(pi_k ~ 1e-30 Dirichlet floors)", "strict: no tolerance on the sign")


def theorem_p03(rng, n, vocab):

    z, p, k, eta = random_cases(rng, n, vocab, (1e-4, 1.0))
    _, d, new, v = exact_step(z, k, eta, -1.0)
    gap = first_order_dlogp(p, k, eta, -1) - d               # = 1/2 Var(v) at an intermediate point >= 0
    r = v.max(axis=-1) - v.min(axis=-1)
    tol = round_off_tolerance(z, new)[:, None]
    held = ((gap >= -tol) & (gap <= (r ** 2 / 8)[:, None] + tol)).all(axis=-1)
    ratio = float(np.max(np.abs(gap).max(axis=-1) / eta ** 2))
    return outcome(held, np.ones(n, bool), "for every label, 0 <= first-order - measured <= (eta r)^2/8 "
                   "(Lagrange remainder of log-sum-exp; r = range of the logit step), eta in [1e-4, 1]; "
                   f"max |error|/eta^2 = {ratio:.3f}", "256 eps x logit magnitude")


def theorem_p04(rng, n, vocab):

    z, p, k, eta = random_cases(rng, n, vocab, (1e-5, 1e-2))
    _, d, new, v = exact_step(z, k, eta, -1.0)
    thr = threshold(p, k, -1)[:, None]
    r = (v.max(axis=-1) - v.min(axis=-1))[:, None]
    tol = round_off_tolerance(z, new)[:, None]
    margin = eta[:, None] * (p - thr)                        # first-order change; measured = margin - R, 0 <= R <= r^2/8
    sure_up = margin > r ** 2 / 8 + tol
    sure_down = margin < -tol
    mask = others_mask(k, vocab)
    judged = mask & (sure_up | sure_down)
    correct = np.where(sure_up, d > 0, d < 0)
    held = (correct | ~judged).all(axis=-1)
    peaky = take(p, k) >= thr[:, 0] + take(p, k)             # pi_k >= ||pi||^2
    none_fall = ((d >= -tol) | ~mask | ~sure_down).all(axis=-1) | ~peaky
    undecided_labels = int((mask & ~judged).sum())
    return outcome(held & none_fall, judged.any(axis=-1),
                   f"labels i != k: measured sign of dlog pi_i = sign(pi_i - (||pi||^2 - pi_k)) where the "
                   f"second-order bound decides it; {int(judged.sum())} labels judged, {undecided_labels} "
                   f"within eta r^2/8 of the threshold left out; {int(peaky.sum())} cases with "
                   f"pi_k >= ||pi||^2, where no label fell", "256 eps x logit magnitude")


def theorem_p05(rng, n, vocab):
    """Same base logits at two inverse temperatures b1 < b2 (b2 peakier), same label k:
    the fraction of labels that fall (measured, small eta) does not shrink. Also
    theory.squeeze.peakier_squeezes_harder's fixed-pi_k form on pairs with equal pi_k."""
    z, _, _, _ = random_cases(rng, n, vocab, (1, 2))
    b1 = np.exp(rng.uniform(np.log(0.3), 0.0, n))[:, None]
    b2 = b1 * np.exp(rng.uniform(0.05, 1.5, n))[:, None]
    k = draw_labels(rng, np.exp(log_softmax(z * b1)), rng.integers(0, 3, n))
    eta = np.full(n, 1e-4)
    mask = others_mask(k, vocab)
    falls = []
    decided = np.ones(n, bool)
    for b in (b1, b2):
        zb = z * b
        pb, d, new, v = exact_step(zb, k, eta, -1.0)
        thr = (pb ** 2).sum(axis=-1) - take(pb, k)
        r = v.max(axis=-1) - v.min(axis=-1)
        close = np.abs(eta[:, None] * (pb - thr[:, None])) <= (r ** 2 / 8 + round_off_tolerance(zb, new))[:, None]
        decided &= ~(close & mask).any(axis=-1)
        falls.append(((d < 0) & mask).sum(axis=-1))
    held = falls[1] >= falls[0]
    return outcome(held, decided, "number of labels i != k that fall after one small negative step "
                   "(eta = 1e-4) at inverse temperature b2 > b1 is >= that at b1 (same logits, same k); "
                   "excluded: a label within the second-order bound of the threshold",
                   "256 eps x logit magnitude")


def _lower_target(rng, n, vocab):
    """Pairs (z, z with z_k lowered by delta > 0), k a label in the squeeze regime at both."""
    z, p, k, _ = random_cases(rng, n, vocab, (1, 2))
    lowered = z.copy()
    lowered[np.arange(n), k] -= rng.uniform(0.05, 5.0, n)
    p2 = np.exp(log_softmax(lowered))
    valley = (take(p, k) < (p ** 2).sum(-1)) & (take(p2, k) < (p2 ** 2).sum(-1))
    return z, lowered, p, p2, k, valley


def theorem_p06(rng, n, vocab):

    z, lowered, p, p2, k, valley = _lower_target(rng, n, vocab)
    eta = np.full(n, 1e-4)
    mask = others_mask(k, vocab)
    ystar = np.where(mask, p, -1).argmax(axis=-1)
    rest = others_mask(k, vocab, ystar)
    _, d1, new1, _ = exact_step(z, k, eta, -1.0)
    _, d2, new2, _ = exact_step(lowered, k, eta, -1.0)
    more_fall = ((d2 < 0) & mask).sum(-1) >= ((d1 < 0) & mask).sum(-1)
    # "the others fall further": first-order law at the same labels (exact in pi, no step noise),
    # cross-checked against the measured changes within the second-order bound
    f1, f2 = first_order_dlogp(p, k, eta, -1), first_order_dlogp(p2, k, eta, -1)
    further = ((f2 <= f1 + round_off_tolerance(z, lowered)[:, None] * eta[:, None]) | ~rest).all(-1)
    return outcome(more_fall & further, valley,
                   "lowering z_k (pi_k smaller, both in the squeeze regime pi_k < ||pi||^2): no fewer "
                   "labels fall (measured, eta = 1e-4) and every label other than k and y* has a "
                   "smaller first-order change; cases outside the squeeze regime do not apply",
                   "256 eps x logit magnitude")


def theorem_p06b(rng, n, vocab):

    z, lowered, p, p2, k, valley = _lower_target(rng, n, vocab)
    g1, g2 = runner_up_gain_first_order(p, k, 1.0), runner_up_gain_first_order(p2, k, 1.0)
    mask = others_mask(k, vocab)
    ystar = np.where(mask, p, -1).argmax(axis=-1)
    # the measured one-step gain (eta = 1e-3) agrees with the first-order one to eta^2/2
    eta = np.full(n, 1e-3)
    _, d1, _, _ = exact_step(z, k, eta, -1.0)
    _, d2, _, _ = exact_step(lowered, k, eta, -1.0)
    measured_ok = (take(d2, ystar) <= take(d1, ystar) + eta ** 2)
    held = (g2 <= g1 + 1e-12) & measured_ok
    shrink = float(np.mean((g1 - g2)[valley]))
    return outcome(held, valley, "lowering z_k within the squeeze regime: y*'s first-order gain "
                   "(pi_y* + pi_k - ||pi||^2) does not grow, and the measured gain (eta = 1e-3) does not "
                   f"grow beyond eta^2; mean shrink per unit eta {shrink:.4f}", "1e-12 on the gain")


def theorem_p07(rng, n, vocab):
    z, p, k, eta = random_cases(rng, n, vocab, (1e-3, 1e2))
    _, d, new, _ = exact_step(z, k, eta, 1.0)
    mask = others_mask(k, vocab)
    top = np.where(mask, p, -1).argmax(axis=-1)
    second = np.where(others_mask(k, vocab, top), p, -1).max(axis=-1)
    # exact: pi'_i/pi_i = exp(-eta pi_i)/Z, so the gap in dlog is eta (pi_top - pi_second)
    decided = (eta * (take(p, top) - second) > round_off_tolerance(z, new)) & (mask.sum(-1) >= 2)
    loser = np.where(mask, d, np.inf).argmin(axis=-1)
    return outcome(loser == top, decided, "after one positive (SFT) step on k, eta in [1e-3, 1e2], the "
                   "competitor with the largest pi loses the most log-probability (measured); excluded: "
                   "top two competitors tied within round-off", "256 eps x logit magnitude")


def theorem_p08(rng, n, vocab, beta):
    z, p, plus, eta = random_cases(rng, n, vocab, (1e-3, 10.0))
    minus = choose(rng, others_mask(plus, vocab))
    ref = z + rng.standard_normal(z.shape)
    logp = log_softmax(z)
    lref = log_softmax(ref)
    cc, cr = pair_coefficients(REGISTRY["dpo"], take(logp, plus), take(logp, minus), take(lref, plus),
                               take(lref, minus), beta)
    grad = loss_residual(p, plus, cc) + loss_residual(p, minus, cr)
    new = z - eta[:, None] * grad
    d = log_softmax(new) - logp
    mask = others_mask(plus, vocab, minus)
    spread = np.where(mask, d, -np.inf).max(-1) - np.where(mask, d, np.inf).min(-1)
    ok = (spread <= 2 * round_off_tolerance(z, new)) | (mask.sum(-1) == 0)
    decided = mask.sum(-1) >= 2   # a spread needs two labels besides y+ and y- (none when V = 3)
    largest = f"largest spread {float(spread[decided].max()):.2e}" if decided.any() else "no case has two other labels"
    return outcome(ok, decided, "one DPO step (theory.residuals coefficients) with y+ and y- on "
                   f"the same logits: max - min of the measured dlog pi over the other labels is 0 up to "
                   f"round-off ({largest})", "2 x 256 eps x logit magnitude")
