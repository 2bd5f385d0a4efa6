"""`ldyn sim logits`: multi-step learning dynamics of a softmax over free logits and a linear head.

Everything here is float64 numpy, vectorized over R random starting distributions
(half Gaussian logits with a random temperature, half Dirichlet draws: flat to very
peaky). Two heads:
  free logits     theta = z, K = I (one context);
  linear head     z_c = W x_c + b_c with random features x_c and only W trained, so
                  dz_c = -eta sum_c' (x_c . x_c') G_c' exactly: K = kappa I within a
                  context (kappa = ||x||^2) and kappa_cc' = x_c . x_c' across contexts.
The simulator applies these updates itself (its own log-softmax, never theory's
formulas), so comparing its trajectories with theory/ is a real check.

Algorithms (residual coefficients from theory.residuals; y+ is a likely but not
greedy label, y- a "valley" label from the bottom half, y* the initial argmax):
  sft            positive step on y+ (one context, free logits)
  negative       pure negative gradient on y- (one context): the squeeze
  negative-onpolicy  the same with the pushed-down label sampled from pi every step
  dpo-shared     DPO with y+ and y- on one shared context (P08: no squeeze)
  dpo            off-policy DPO on two contexts coupled by the linear head's
                 kernel: a chosen-only position (y+) and a rejected-only one (y-)
  ipo, simpo     the same two contexts with IPO's and SimPO's coefficients
  onpolicy-dpo   as dpo, but y- is re-sampled from pi at the rejected context every step
  pg             REINFORCE with a baseline: y ~ pi, advantage 1[y = y+] - pi(y+)
                 (negative for every wrong sample)
  extend         SFT on y+ and y- first, then DPO from there (reference = that model);
                 only the DPO phase is reported, like `ldyn sim lm`
y* and the entropy are measured where the negative gradient acts (the rejected
context; the only context for one-context algorithms); the chosen context's y*
and entropy are reported too (`*_chosen_ctx`).
Then every step-scope prediction of theory.predictions at level "logits" is
checked on many random cases (see THEOREMS below).
"""
import argparse
import json
import math
import sys

import numpy as np

from learning_dynamics.sim.io import json_ready, writable_folder
from learning_dynamics.sim.style import add_format_option
from learning_dynamics.theory import algorithms as registry
from learning_dynamics.theory.errors import UserError
from learning_dynamics.theory import arguments as arg

DEFAULT_OUT = "ldyn-out/sim/logits"
PRESETS = {
    "default": dict(runs=1000, vocab=50, steps=200),
    "quick": dict(runs=200, vocab=30, steps=60),
}
LIMITS = {"runs": 1_000_000, "vocab": 1_000_000, "steps": 100_000}
DEFAULT_LR = 0.5
DEFAULT_BETA = 0.5
EPS = np.finfo(np.float64).eps
# Round-off allowance on a change of log pi: 256 eps per unit of logit magnitude.
# A case whose predicted effect is smaller than this cannot be resolved in float64:
# it is counted as "excluded", never as held.
ROUNDOFF = 256 * EPS
# Raw-gradient experiments of the simulator, not training algorithms: a negative step on y-, on a
# sample of pi, and DPO's two coefficients on one shared context.
GRADIENT_EXPERIMENTS = ("negative", "negative-onpolicy", "dpo-shared")
# The first runs keep this order (it fixes each run's random stream); every other registry algorithm follows.
_FIRST = ("sft", "negative", "negative-onpolicy", "dpo-shared", "pg", "dpo", "ipo", "simpo", "onpolicy-dpo", "extend")
ALGORITHMS = _FIRST + tuple(a for a in registry.ALGORITHMS if a not in _FIRST)
# Runs on two kernel-coupled contexts: y+ at the chosen-only one, y- at the rejected-only one.
PAIR_ALGORITHMS = tuple(a for a in ALGORITHMS if a in registry.REGISTRY and registry.get(a).data in ("pair", "unpaired"))


# =========================================================================== the simulator

def log_softmax(z):
    """Stable log-softmax over the last axis (the simulator's own, not theory's)."""
    m = z.max(axis=-1, keepdims=True)
    s = z - m
    return s - np.log(np.exp(s).sum(axis=-1, keepdims=True))


def entropy(logp):
    return -(np.exp(logp) * logp).sum(axis=-1)


def one_hot(labels, vocab):
    out = np.zeros(labels.shape + (vocab,))
    np.put_along_axis(out, labels[..., None], 1.0, axis=-1)
    return out


def take(x, labels):
    return np.take_along_axis(x, labels[..., None], axis=-1)[..., 0]


def random_logits(rng, n, vocab):
    """n starting logit vectors: Gaussian logits with a log-uniform temperature (scale
    0.3..6) or logs of Dirichlet draws (alpha 0.05..3, floored at 1e-30 so every
    logit stays finite). Together they span near-uniform to near-one-hot."""
    gaussian = rng.random(n) < 0.5
    scale = np.exp(rng.uniform(np.log(0.3), np.log(6.0), n))
    z_gauss = rng.standard_normal((n, vocab)) * scale[:, None]
    alpha = np.exp(rng.uniform(np.log(0.05), np.log(3.0), n))
    draws = np.maximum(rng.standard_gamma(np.broadcast_to(alpha[:, None], (n, vocab))), 1e-30)
    z_dir = np.log(draws / draws.sum(axis=-1, keepdims=True))
    z = np.where(gaussian[:, None], z_gauss, z_dir)
    return z - z.mean(axis=-1, keepdims=True)


def choose(rng, allowed):
    """One allowed label per row, uniformly (rows with none allowed: any label)."""
    score = rng.random(allowed.shape)
    score = np.where(allowed, score + 1.0, score)
    return score.argmax(axis=-1)


def ranks(p):
    """0 = most likely."""
    return np.argsort(np.argsort(-p, axis=-1, kind="stable"), axis=-1, kind="stable")


def draw_labels(rng, p, kind):
    """Labels for one-step checks: a valley (bottom quarter), an on-policy sample, or uniform."""
    n, vocab = p.shape
    valley = choose(rng, ranks(p) >= vocab - max(1, vocab // 4))
    sampled = sample(rng, p)
    uniform = rng.integers(0, vocab, n)
    return np.choose(kind, [valley, sampled, uniform])


def sample(rng, p):
    u = rng.random(p.shape[0])[:, None]
    cdf = np.cumsum(p, axis=-1)
    return np.minimum((cdf < u * cdf[:, -1:]).sum(axis=-1), p.shape[-1] - 1)


def kernel_step(z, kernel, grad, eta):
    """The linear head's exact update on all contexts: dz_c = -eta sum_c' K_cc' G_c'."""
    if kernel.shape[1] == 1:                 # one context: K is a scalar per run
        return z - (eta * kernel) * grad
    return z - eta * np.matmul(kernel, grad)


# --------------------------------------------------------------------------- residuals

def _coefficients(loss, **inputs):
    from learning_dynamics.theory.residuals import residual_coefficients
    return residual_coefficients(loss, **inputs)


def _residual(pi, token, coef):
    from learning_dynamics.theory.residuals import residual
    return residual(pi, token, coef)


def pair_coefficients(algo, logp_c, logp_r, ref_c, ref_r, beta):
    """(chosen, rejected) coefficients of (e_token - pi) for a pairwise registry algorithm; one label
    per response, so a length-normalised loss sees lengths of 1; `beta` is the KL strength of the
    reference-based losses (a reference-free one keeps the registry's beta)."""
    from learning_dynamics.theory.residuals import loss_inputs

    algorithm = registry.get(algo)
    wrt, others = loss_inputs(algorithm.loss)
    available = {"logp_chosen": logp_c, "logp_rejected": logp_r, "ref_chosen": ref_c, "ref_rejected": ref_r,
                 "len_chosen": 1, "len_rejected": 1}
    inputs = {k: v for k, v in available.items() if k in wrt + others}
    c = _coefficients(algorithm.loss, **inputs, **registry.hyper_parameters(algo, kl_beta=beta))
    return np.asarray(c["logp_chosen"], dtype=np.float64), np.asarray(c["logp_rejected"], dtype=np.float64)


# --------------------------------------------------------------------------- problems

def make_problem(rng, runs, vocab):
    """Starting state for the run-level comparison.

    Context 0 (chosen-only position) has logits z0; context 1 (rejected-only position)
    is a similar context, z1 = z0 + noise. Features: ||x0|| = 1, x1 = s (rho x0 + ...),
    so the linear head's kernel is [[1, rho s], [rho s, s^2]].
    """
    z0 = random_logits(rng, runs, vocab)
    z1 = z0 + rng.uniform(0.0, 0.5, runs)[:, None] * rng.standard_normal((runs, vocab))
    p0 = np.exp(log_softmax(z0))
    rank0 = ranks(p0)
    ystar = p0.argmax(axis=-1)
    plus = choose(rng, (rank0 >= 1) & (rank0 <= max(1, vocab // 5)))
    taken = one_hot(plus, vocab).astype(bool) | one_hot(ystar, vocab).astype(bool)
    minus = choose(rng, (rank0 >= vocab // 2) & ~taken)
    minus = np.where(taken[np.arange(runs), minus], choose(rng, ~taken), minus)
    rho = rng.uniform(0.3, 0.95, runs)
    s = np.exp(rng.uniform(np.log(0.7), np.log(1.5), runs))
    kernel = np.empty((runs, 2, 2))
    kernel[:, 0, 0], kernel[:, 0, 1], kernel[:, 1, 0], kernel[:, 1, 1] = 1.0, rho * s, rho * s, s * s
    return {"z": np.stack([z0, z1], axis=1), "kernel": kernel, "plus": plus, "minus": minus, "ystar": ystar}


def run_algorithm(name, problem, steps, eta, beta, rng, record=True):
    """Run one algorithm for `steps` steps; return per-step means and per-run final changes."""
    z = problem["z"].copy()
    plus, minus, ystar = problem["plus"], problem["minus"], problem["ystar"]
    runs, _, vocab = z.shape
    if name in PAIR_ALGORITHMS:
        kernel = problem["kernel"]
    else:                                    # one context (the chosen one), free logits K = I
        z, kernel = z[:, :1].copy(), np.ones((runs, 1, 1))
    algorithm = registry.REGISTRY.get(name)   # None for the gradient experiments
    if algorithm is not None and algorithm.warmup:  # SFT on y+ (context 0) and y- (context 1) first
        ext = min(steps, max(1, steps // 2))
        for _ in range(ext):
            logp = log_softmax(z)
            pi = np.exp(logp)
            grad = np.stack([_residual(pi[:, 0], plus, -np.ones(runs)),
                             _residual(pi[:, 1], minus, -np.ones(runs))], axis=1)
            z = kernel_step(z, kernel, grad, eta)
    ref = log_softmax(z)
    ref_c, ref_r_fixed = take(ref[:, 0], plus), take(ref[:, -1], minus)
    minus_ctx = z.shape[1] - 1
    # y* where the negative gradient acts (the rejected context; = the chosen one for
    # one-context algorithms): argmax of the starting pi there, excluding y-
    start = np.where(one_hot(minus, vocab).astype(bool), -np.inf, log_softmax(z[:, minus_ctx]))
    ystar_minus = start.argmax(axis=-1) if minus_ctx else ystar
    curves = {key: [] for key in ("plus", "minus", "ystar", "entropy", "ystar_chosen", "entropy_chosen")}

    def measure(logp, pi):
        ent = -np.einsum("rcv,rcv->rc", pi, logp)
        curves["plus"].append(take(logp[:, 0], plus))
        curves["minus"].append(take(logp[:, minus_ctx], minus))
        curves["ystar"].append(take(logp[:, minus_ctx], ystar_minus))
        curves["entropy"].append(ent[:, minus_ctx])
        curves["ystar_chosen"].append(take(logp[:, 0], ystar))
        curves["entropy_chosen"].append(ent[:, 0])

    for step in range(steps + 1):
        logp = log_softmax(z)
        pi = np.exp(logp)
        measure(logp, pi)
        if step == steps:
            break
        if algorithm is not None and algorithm.data == "chosen":
            coef = _coefficients(algorithm.loss, logp_chosen=take(logp[:, 0], plus))["logp_chosen"]
            grad = _residual(pi[:, 0], plus, coef)[:, None]
        elif name == "negative":
            grad = _residual(pi[:, 0], minus, np.ones(runs))[:, None]
        elif name == "negative-onpolicy":
            grad = _residual(pi[:, 0], sample(rng, pi[:, 0]), np.ones(runs))[:, None]
        elif algorithm is not None and algorithm.data == "group":  # one sample, reward [y = y+], baseline pi(y+)
            y = sample(rng, pi[:, 0])
            advantage = (y == plus) - take(pi[:, 0], plus)
            coef = _coefficients(algorithm.loss, logp=take(logp[:, 0], y), advantages=advantage)["logp"]
            grad = _residual(pi[:, 0], y, coef)[:, None]
        elif name == "dpo-shared":
            cc, cr = pair_coefficients("dpo", take(logp[:, 0], plus), take(logp[:, 0], minus),
                                       ref_c, take(ref[:, 0], minus), beta)
            grad = (_residual(pi[:, 0], plus, cc) + _residual(pi[:, 0], minus, cr))[:, None]
        else:
            neg, ref_r = minus, ref_r_fixed
            if algorithm.negative == "policy":
                neg = sample(rng, pi[:, 1])
                ref_r = take(ref[:, 1], neg)
            cc, cr = pair_coefficients(name, take(logp[:, 0], plus), take(logp[:, 1], neg), ref_c, ref_r, beta)
            grad = np.stack([_residual(pi[:, 0], plus, cc), _residual(pi[:, 1], neg, cr)], axis=1)
        z = kernel_step(z, kernel, grad, eta)
    series = {key: np.array(value) for key, value in curves.items()}       # [steps + 1, runs]
    return series


def summarize_series(series):
    change = {key: value[-1] - value[0] for key, value in series.items()}
    return {"dlogp_plus": float(change["plus"].mean()), "dlogp_minus": float(change["minus"].mean()),
            "dlogp_ystar": float(change["ystar"].mean()), "dentropy": float(change["entropy"].mean()),
            "frac_plus_fell": float((change["plus"] < 0).mean()),
            "frac_minus_fell": float((change["minus"] < 0).mean()),
            "frac_ystar_rose": float((change["ystar"] > 0).mean()),
            "frac_entropy_fell": float((change["entropy"] < 0).mean()),
            "dlogp_ystar_chosen_ctx": float(change["ystar_chosen"].mean()),
            "dentropy_chosen_ctx": float(change["entropy_chosen"].mean())}


# =========================================================================== theory comparisons

def compare_one_step(rng, runs, vocab, steps, eta):
    """Trajectories of repeated negative / positive / shared-DPO steps against theory's exact
    one-step formulas applied at every step (max abs difference of dlog pi)."""
    from learning_dynamics.theory.squeeze import dpo_shared_context_dlogp, exact_dlogp

    z = random_logits(rng, runs, vocab)
    p = np.exp(log_softmax(z))
    k_neg = draw_labels(rng, p, np.zeros(runs, dtype=int))
    k_pos = rng.integers(0, vocab, runs)
    plus = choose(rng, ~one_hot(k_neg, vocab).astype(bool))
    worst = {"negative": 0.0, "sft": 0.0, "dpo-shared": 0.0}
    states = {key: z.copy() for key in worst}
    coef = 0.5
    for _ in range(steps):
        for key, k, sign in (("negative", k_neg, -1.0), ("sft", k_pos, 1.0)):
            logp = log_softmax(states[key])
            pi = np.exp(logp)
            new = states[key] + sign * eta * (one_hot(k, vocab) - pi)
            actual = log_softmax(new) - logp
            worst[key] = max(worst[key], float(np.abs(actual - exact_dlogp(pi, k, eta, sign)).max()))
            states[key] = new
        logp = log_softmax(states["dpo-shared"])
        pi = np.exp(logp)
        new = states["dpo-shared"] + eta * coef * (one_hot(plus, vocab) - one_hot(k_neg, vocab))
        actual = log_softmax(new) - logp
        predicted = dpo_shared_context_dlogp(pi, plus, k_neg, eta, coef)
        worst["dpo-shared"] = max(worst["dpo-shared"], float(np.abs(actual - predicted).max()))
        states["dpo-shared"] = new
    return {"one_step_max_abs_err": worst, "one_step_eta": eta, "one_step_steps": steps}


def compare_flow(rng, runs, vocab, horizon):
    """Repeated negative steps with step size eta against theory.flow.integrate_flow over
    the same time horizon t = eta * steps: the difference shrinks as O(eta) (Euler)."""
    from learning_dynamics.theory.flow import integrate_flow

    z = random_logits(rng, runs, vocab)
    p0 = np.exp(log_softmax(z))
    k = draw_labels(rng, p0, np.zeros(runs, dtype=int))
    out = {}
    for eta in (0.1, 0.01):
        steps = int(round(horizon / eta))
        t_grid = np.linspace(0.0, horizon, 11)
        every = steps // 10
        flow = np.stack([integrate_flow(p0[i], int(k[i]), t_grid) for i in range(len(k))], axis=1)  # [T, runs, V]
        state, err = z.copy(), 0.0
        for step in range(steps + 1):
            logp = log_softmax(state)
            if step % every == 0:
                with np.errstate(divide="ignore"):
                    err = max(err, float(np.abs(np.exp(logp) - flow[step // every]).max()))
            if step == steps:
                break
            state = state - eta * (one_hot(k, vocab) - np.exp(logp))
        out[f"eta={eta}"] = err
    ratio = out["eta=0.1"] / max(out["eta=0.01"], 1e-300)
    return {"flow_max_abs_err_prob": out, "flow_horizon": horizon, "flow_err_ratio_eta_x10": ratio}


# =========================================================================== theorems

def _tol(*logits):
    """Round-off allowance per case for a change of log pi computed from these logits."""
    scale = 1.0
    for z in logits:
        scale = scale + np.abs(z).max(axis=-1)
    return ROUNDOFF * scale


def _result(held, decided, detail, tolerance):
    held, decided = np.asarray(held, bool), np.asarray(decided, bool)
    cases = int(decided.sum())
    return {"cases": cases, "held": int((held & decided).sum()),
            "excluded": int((~decided).sum()), "detail": detail, "tolerance": tolerance}


def _exact_step(z, k, eta, sign):
    """The simulator's own step and measured dlog pi, plus the residual range r (for bounds)."""
    logp = log_softmax(z)
    pi = np.exp(logp)
    v = sign * eta[:, None] * (one_hot(k, z.shape[-1]) - pi)
    new = z + v
    return pi, log_softmax(new) - logp, new, v


def _cases(rng, n, vocab, eta_range):
    z = random_logits(rng, n, vocab)
    p = np.exp(log_softmax(z))
    k = draw_labels(rng, p, rng.integers(0, 3, n))
    eta = np.exp(rng.uniform(np.log(eta_range[0]), np.log(eta_range[1]), n))
    return z, p, k, eta


def _others(k, vocab, *extra):
    mask = np.ones(k.shape + (vocab,), bool)
    for labels in (k,) + extra:
        mask[np.arange(len(labels)), labels] = False
    return mask


def theorem_p01(rng, n, vocab):
    z, p, k, eta = _cases(rng, n, vocab, (1e-3, 1e3))
    _, d, new, _ = _exact_step(z, k, eta, -1.0)
    bound = eta * (1 - take(p, k)) ** 2                      # dlog pi_k <= -eta (1 - pi_k)^2
    tol = _tol(z, new)
    decided = bound > tol
    return _result(take(d, k) < 0, decided, "measured dlog pi_k < 0 after one negative step, eta "
                   "log-uniform in [1e-3, 1e3]; excluded: eta (1 - pi_k)^2 below round-off",
                   "strict: no tolerance on the sign")


def theorem_p02(rng, n, vocab):
    z, p, k, eta = _cases(rng, n, vocab, (1e-3, 1e3))
    _, d, new, _ = _exact_step(z, k, eta, -1.0)
    mask = _others(k, vocab)
    ystar = np.where(mask, p, -1).argmax(axis=-1)
    pk, ps = take(p, k), take(p, ystar)
    # log(pi'_y*/pi_y*) >= -log(1 - pi_k (1 - exp(-eta (1 + pi_y* - pi_k)))) > 0
    lower = -np.log1p(-pk * -np.expm1(-eta * (1 + ps - pk)))
    decided = lower > _tol(z, new)
    return _result(take(d, ystar) > 0, decided, "measured dlog pi(y*) > 0, y* = argmax_{i != k} pi_i, eta "
                   "in [1e-3, 1e3]; excluded: the proven lower bound on the gain is below round-off "
                   "(pi_k ~ 1e-30 Dirichlet floors)", "strict: no tolerance on the sign")


def theorem_p03(rng, n, vocab):
    from learning_dynamics.theory.squeeze import first_order_dlogp

    z, p, k, eta = _cases(rng, n, vocab, (1e-4, 1.0))
    _, d, new, v = _exact_step(z, k, eta, -1.0)
    gap = first_order_dlogp(p, k, eta, -1) - d               # = 1/2 Var(v) at an intermediate point >= 0
    r = v.max(axis=-1) - v.min(axis=-1)
    tol = _tol(z, new)[:, None]
    held = ((gap >= -tol) & (gap <= (r ** 2 / 8)[:, None] + tol)).all(axis=-1)
    ratio = float(np.max(np.abs(gap).max(axis=-1) / eta ** 2))
    return _result(held, np.ones(n, bool), "for every label, 0 <= first-order - measured <= (eta r)^2/8 "
                   "(Lagrange remainder of log-sum-exp; r = range of the logit step), eta in [1e-4, 1]; "
                   f"max |error|/eta^2 = {ratio:.3f}", "256 eps x logit magnitude")


def theorem_p04(rng, n, vocab):
    from learning_dynamics.theory.squeeze import threshold

    z, p, k, eta = _cases(rng, n, vocab, (1e-5, 1e-2))
    _, d, new, v = _exact_step(z, k, eta, -1.0)
    thr = threshold(p, k, -1)[:, None]
    r = (v.max(axis=-1) - v.min(axis=-1))[:, None]
    tol = _tol(z, new)[:, None]
    margin = eta[:, None] * (p - thr)                        # first-order change; measured = margin - R, 0 <= R <= r^2/8
    sure_up = margin > r ** 2 / 8 + tol
    sure_down = margin < -tol
    mask = _others(k, vocab)
    judged = mask & (sure_up | sure_down)
    correct = np.where(sure_up, d > 0, d < 0)
    held = (correct | ~judged).all(axis=-1)
    peaky = take(p, k) >= thr[:, 0] + take(p, k)             # pi_k >= ||pi||^2
    none_fall = ((d >= -tol) | ~mask | ~sure_down).all(axis=-1) | ~peaky
    undecided_labels = int((mask & ~judged).sum())
    return _result(held & none_fall, judged.any(axis=-1),
                   f"labels i != k: measured sign of dlog pi_i = sign(pi_i - (||pi||^2 - pi_k)) where the "
                   f"second-order bound decides it; {int(judged.sum())} labels judged, {undecided_labels} "
                   f"within eta r^2/8 of the threshold left out; {int(peaky.sum())} cases with "
                   f"pi_k >= ||pi||^2, where no label fell", "256 eps x logit magnitude")


def theorem_p05(rng, n, vocab):
    """Same base logits at two inverse temperatures b1 < b2 (b2 peakier), same label k:
    the fraction of labels that fall (measured, small eta) does not shrink. Also
    theory.squeeze.peakier_squeezes_harder's fixed-pi_k form on pairs with equal pi_k."""
    z, _, _, _ = _cases(rng, n, vocab, (1, 2))
    b1 = np.exp(rng.uniform(np.log(0.3), 0.0, n))[:, None]
    b2 = b1 * np.exp(rng.uniform(0.05, 1.5, n))[:, None]
    k = draw_labels(rng, np.exp(log_softmax(z * b1)), rng.integers(0, 3, n))
    eta = np.full(n, 1e-4)
    mask = _others(k, vocab)
    falls = []
    decided = np.ones(n, bool)
    for b in (b1, b2):
        zb = z * b
        pb, d, new, v = _exact_step(zb, k, eta, -1.0)
        thr = (pb ** 2).sum(axis=-1) - take(pb, k)
        r = v.max(axis=-1) - v.min(axis=-1)
        close = np.abs(eta[:, None] * (pb - thr[:, None])) <= (r ** 2 / 8 + _tol(zb, new))[:, None]
        decided &= ~(close & mask).any(axis=-1)
        falls.append(((d < 0) & mask).sum(axis=-1))
    held = falls[1] >= falls[0]
    return _result(held, decided, "number of labels i != k that fall after one small negative step "
                   "(eta = 1e-4) at inverse temperature b2 > b1 is >= that at b1 (same logits, same k); "
                   "excluded: a label within the second-order bound of the threshold",
                   "256 eps x logit magnitude")


def _lower_target(rng, n, vocab):
    """Pairs (z, z with z_k lowered by delta > 0), k a label in the squeeze regime at both."""
    z, p, k, _ = _cases(rng, n, vocab, (1, 2))
    lowered = z.copy()
    lowered[np.arange(n), k] -= rng.uniform(0.05, 5.0, n)
    p2 = np.exp(log_softmax(lowered))
    valley = (take(p, k) < (p ** 2).sum(-1)) & (take(p2, k) < (p2 ** 2).sum(-1))
    return z, lowered, p, p2, k, valley


def theorem_p06(rng, n, vocab):
    from learning_dynamics.theory.squeeze import first_order_dlogp

    z, lowered, p, p2, k, valley = _lower_target(rng, n, vocab)
    eta = np.full(n, 1e-4)
    mask = _others(k, vocab)
    ystar = np.where(mask, p, -1).argmax(axis=-1)
    rest = _others(k, vocab, ystar)
    _, d1, new1, _ = _exact_step(z, k, eta, -1.0)
    _, d2, new2, _ = _exact_step(lowered, k, eta, -1.0)
    more_fall = ((d2 < 0) & mask).sum(-1) >= ((d1 < 0) & mask).sum(-1)
    # "the others fall further": first-order law at the same labels (exact in pi, no step noise),
    # cross-checked against the measured changes within the second-order bound
    f1, f2 = first_order_dlogp(p, k, eta, -1), first_order_dlogp(p2, k, eta, -1)
    further = ((f2 <= f1 + _tol(z, lowered)[:, None] * eta[:, None]) | ~rest).all(-1)
    return _result(more_fall & further, valley,
                   "lowering z_k (pi_k smaller, both in the squeeze regime pi_k < ||pi||^2): no fewer "
                   "labels fall (measured, eta = 1e-4) and every label other than k and y* has a "
                   "smaller first-order change; cases outside the squeeze regime do not apply",
                   "256 eps x logit magnitude")


def theorem_p06b(rng, n, vocab):
    from learning_dynamics.theory.squeeze import runner_up_gain_first_order

    z, lowered, p, p2, k, valley = _lower_target(rng, n, vocab)
    g1, g2 = runner_up_gain_first_order(p, k, 1.0), runner_up_gain_first_order(p2, k, 1.0)
    mask = _others(k, vocab)
    ystar = np.where(mask, p, -1).argmax(axis=-1)
    # the measured one-step gain (eta = 1e-3) agrees with the first-order one to eta^2/2
    eta = np.full(n, 1e-3)
    _, d1, _, _ = _exact_step(z, k, eta, -1.0)
    _, d2, _, _ = _exact_step(lowered, k, eta, -1.0)
    measured_ok = (take(d2, ystar) <= take(d1, ystar) + eta ** 2)
    held = (g2 <= g1 + 1e-12) & measured_ok
    shrink = float(np.mean((g1 - g2)[valley]))
    return _result(held, valley, "lowering z_k within the squeeze regime: y*'s first-order gain "
                   "(pi_y* + pi_k - ||pi||^2) does not grow, and the measured gain (eta = 1e-3) does not "
                   f"grow beyond eta^2; mean shrink per unit eta {shrink:.4f}", "1e-12 on the gain")


def theorem_p07(rng, n, vocab):
    z, p, k, eta = _cases(rng, n, vocab, (1e-3, 1e2))
    _, d, new, _ = _exact_step(z, k, eta, 1.0)
    mask = _others(k, vocab)
    top = np.where(mask, p, -1).argmax(axis=-1)
    second = np.where(_others(k, vocab, top), p, -1).max(axis=-1)
    # exact: pi'_i/pi_i = exp(-eta pi_i)/Z, so the gap in dlog is eta (pi_top - pi_second)
    decided = (eta * (take(p, top) - second) > _tol(z, new)) & (mask.sum(-1) >= 2)
    loser = np.where(mask, d, np.inf).argmin(axis=-1)
    return _result(loser == top, decided, "after one positive (SFT) step on k, eta in [1e-3, 1e2], the "
                   "competitor with the largest pi loses the most log-probability (measured); excluded: "
                   "top two competitors tied within round-off", "256 eps x logit magnitude")


def theorem_p08(rng, n, vocab, beta):
    z, p, plus, eta = _cases(rng, n, vocab, (1e-3, 10.0))
    minus = choose(rng, _others(plus, vocab))
    ref = z + rng.standard_normal(z.shape)
    logp = log_softmax(z)
    lref = log_softmax(ref)
    cc, cr = pair_coefficients("dpo", take(logp, plus), take(logp, minus), take(lref, plus), take(lref, minus), beta)
    grad = _residual(p, plus, cc) + _residual(p, minus, cr)
    new = z - eta[:, None] * grad
    d = log_softmax(new) - logp
    mask = _others(plus, vocab, minus)
    spread = np.where(mask, d, -np.inf).max(-1) - np.where(mask, d, np.inf).min(-1)
    ok = (spread <= 2 * _tol(z, new)) | (mask.sum(-1) == 0)
    return _result(ok, mask.sum(-1) >= 2, "one DPO step (theory.residuals coefficients) with y+ and y- on "
                   "the same logits: max - min of the measured dlog pi over the other labels is 0 up to "
                   f"round-off (largest spread {float(spread[mask.sum(-1) >= 2].max()):.2e})",
                   "2 x 256 eps x logit magnitude")


def theorem_p16(rng, n, vocab, beta):
    """DPO's coefficient falls with the margin; IPO's push on y- reverses past 1/(2 beta)."""
    betas = np.exp(rng.uniform(np.log(0.05), np.log(5.0), n))
    # DPO: two margins per case, the coefficient magnitude at the larger one is smaller
    zero = np.zeros(n)
    h1 = rng.normal(0, 3, n) / betas
    h2 = h1 + np.exp(rng.uniform(np.log(1e-3), np.log(10), n)) / betas
    c1 = np.abs(pair_coefficients("dpo", h1, zero, zero, zero, betas)[0])
    c2 = np.abs(pair_coefficients("dpo", h2, zero, zero, zero, betas)[0])
    dpo_ok = c2 < c1
    dpo_decided = np.abs(c1 - c2) > 1e-15 * np.maximum(c1, 1e-300)
    # IPO: one shared-context step; y- must rise iff the margin h is past 1/(2 beta)
    z, p, plus, _ = _cases(rng, n, vocab, (1, 2))
    minus = choose(rng, _others(plus, vocab))
    ref = z + rng.standard_normal(z.shape) / betas[:, None]
    logp, lref = log_softmax(z), log_softmax(ref)
    lc, lr, rc, rr = take(logp, plus), take(logp, minus), take(lref, plus), take(lref, minus)
    h = (lc - rc) - (lr - rr)
    cc, cr = pair_coefficients("ipo", lc, lr, rc, rr, betas)
    new = z - 0.1 * (_residual(p, plus, cc) + _residual(p, minus, cr))
    d_minus = take(log_softmax(new) - logp, minus)
    past = h > 1 / (2 * betas)
    ipo_ok = np.where(past, d_minus > 0, d_minus < 0) & np.where(past, cr < 0, cr > 0)
    ipo_decided = np.abs(h - 1 / (2 * betas)) > 1e-9 * (1 + np.abs(h))
    held = np.concatenate([dpo_ok, ipo_ok])
    decided = np.concatenate([dpo_decided, ipo_decided])
    return _result(held, decided, f"{n} DPO cases: |beta sigma(-u)| smaller at the larger margin "
                   f"(beta in [0.05, 5]); {n} IPO cases ({int(past.sum())} past the target): one shared-context "
                   "step raises log pi(y-) iff h > 1/(2 beta) and the rejected coefficient changes sign "
                   "there; excluded: margins equal within 1e-9", "none on the signs")


def theorem_p18(rng, n, vocab, beta):
    z, p, k, eta = _cases(rng, n, vocab, (1e-4, 1.0))
    other = choose(rng, _others(k, vocab))
    kind = rng.integers(0, 4, n)
    ones = np.ones(n)
    coef_pair = 0.5 * np.exp(rng.uniform(-3, 1, n))
    grads = [_residual(p, k, -ones), _residual(p, k, ones),
             _residual(p, k, -coef_pair) + _residual(p, other, coef_pair),
             _residual(p, k, rng.normal(0, 1, n))]
    grad = np.choose(kind[:, None], grads)
    logp = log_softmax(z)
    v = -eta[:, None] * grad
    new = z + v
    d = log_softmax(new) - logp
    s = (p * d).sum(-1)                                      # = -1/2 Var(v) at an intermediate point
    r = v.max(-1) - v.min(-1)
    tol = _tol(z, new)
    held = (s <= tol) & (s >= -r ** 2 / 8 - tol)
    slope = float(np.polyfit(np.log(eta), np.log(np.abs(s) + 1e-300), 1)[0])
    return _result(held, np.ones(n, bool), "sum_i pi_i dlog pi_i after one step of SFT / negative / "
                   "shared DPO / random-advantage PG residuals, eta in [1e-4, 1]: lies in "
                   f"[-(eta r)^2/8, 0] (r = range of the step); fitted log-log slope vs eta {slope:.2f}",
                   "256 eps x logit magnitude")


def theorem_p19(rng, n, vocab):
    """Linear head z_c = W x_c: one SGD step on context 0 moves W; compare the measured
    dlog pi at 3 contexts with -eta A K G (theory.softmax.apply_A, K = x_c . x_0)."""
    from learning_dynamics.theory.softmax import apply_A

    d_feat, contexts = 8, 3
    scale = np.exp(rng.uniform(np.log(0.3), np.log(3), n))[:, None, None]
    w = rng.standard_normal((n, vocab, d_feat)) * scale
    x = rng.standard_normal((n, contexts, d_feat)) / np.sqrt(d_feat)
    z = np.einsum("nvd,ncd->ncv", w, x)
    p = np.exp(log_softmax(z))
    k = draw_labels(rng, p[:, 0], rng.integers(0, 3, n))
    sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)         # negative or SFT step
    grad = -sign[:, None] * (one_hot(k, vocab) - p[:, 0])    # G at context 0
    etas = np.exp(rng.uniform(np.log(1e-4), np.log(1.0), n))
    w_new = w - etas[:, None, None] * np.einsum("nv,nd->nvd", grad, x[:, 0])
    z_new = np.einsum("nvd,ncd->ncv", w_new, x)
    measured = log_softmax(z_new) - log_softmax(z)
    kern = np.einsum("ncd,nd->nc", x, x[:, 0])
    predicted = apply_A(p, -etas[:, None, None] * kern[:, :, None] * grad[:, None, :])
    err = np.abs(measured - predicted).max(-1)               # [n, contexts]
    dz = z_new - z
    r = dz.max(-1) - dz.min(-1)
    tol = _tol(z.reshape(n, -1), z_new.reshape(n, -1))[:, None]
    held = (err <= r ** 2 / 8 + tol).all(-1)
    # the O(eta^2) slope on a fixed set of cases
    eta_grid = np.logspace(-4, -1, 7)
    errs = []
    for e in eta_grid:
        wn = w[:50] - e * np.einsum("nv,nd->nvd", grad[:50], x[:50, 0])
        zn = np.einsum("nvd,ncd->ncv", wn, x[:50])
        pr = apply_A(p[:50], -e * kern[:50, :, None] * grad[:50, None, :])
        errs.append(float(np.abs(log_softmax(zn) - log_softmax(z[:50]) - pr).max()))
    slope = float(np.polyfit(np.log(eta_grid), np.log(errs), 1)[0])
    return _result(held, np.ones(n, bool), "linear head with 8 random features, one SGD step on context 0 "
                   "(negative or SFT), 3 observed contexts: |measured - (-eta A K G)| <= (range of dz)^2/8 "
                   f"for every label; error vs eta log-log slope {slope:.2f} (expected 2)",
                   "256 eps x logit magnitude") | {"slope": slope}


def theorem_x01(rng, n, vocab):
    z, p, k, eta = _cases(rng, n, vocab, (1e-3, 1e3))
    _, d, new, _ = _exact_step(z, k, eta, -1.0)
    mask = _others(k, vocab)
    tol = _tol(z, new)[:, None]
    rises, falls = mask & (d > tol), mask & (d < -tol)
    lowest_riser = np.where(rises, p, np.inf).min(-1)
    highest_faller = np.where(falls, p, -np.inf).max(-1)
    ambiguous = (mask & (np.abs(d) <= tol)).sum()
    return _result(lowest_riser >= highest_faller, np.ones(n, bool),
                   "labels i != k that rise (measured, eta in [1e-3, 1e3]) all have larger pi than every "
                   f"label that falls; {int(ambiguous)} labels with |dlog pi| within round-off not counted "
                   "as either", "256 eps x logit magnitude")


def theorem_x02(rng, n, vocab):
    z, p, k, _ = _cases(rng, n, vocab, (1, 2))
    mask = _others(k, vocab)
    ystar = np.where(mask, p, -1).argmax(-1)
    ps = take(p, ystar)
    second = np.where(_others(k, vocab, ystar), p, -1).max(-1)
    gap = np.minimum(ps - second, 1.0)
    decided = gap > 1e-6
    eta = (35.0 + np.log(1.0 / ps)) / np.maximum(gap, 1e-6)  # then 1 - pi'(y*) <= e^-35
    _, d, _, _ = _exact_step(z, k, eta, -1.0)
    log_pstar = np.log(ps) + take(d, ystar)
    held = -log_pstar <= 1e-12
    return _result(held, decided, "at eta = (35 + log 1/pi_y*)/gap the measured pi'(y*) >= 1 - 1e-12 "
                   f"(largest eta {float(eta[decided].max()):.3g}); excluded: top two labels "
                   "within 1e-6 (eta would exceed 1e7)", "1e-12 on 1 - pi'(y*)")


def theorem_x03(rng, n, vocab, steps):
    """Repeated negative steps: y* keeps rising and stays the argmax among i != k; compare
    with theory.flow (gradient flow) and its replicator limit once pi_k ~ 0."""
    from learning_dynamics.theory.flow import flow_rhs, replicator_rhs

    z, p, k, _ = _cases(rng, n, vocab, (1, 2))
    mask = _others(k, vocab)
    ystar = np.where(mask, p, -1).argmax(-1)
    second = np.where(_others(k, vocab, ystar), p, -1).max(-1)
    decided = take(p, ystar) - second > 1e-3
    eta = 0.5
    monotone = np.ones(n, bool)
    replicator_ok = np.ones(n, bool)
    state = z.copy()
    for _ in range(steps):
        logp = log_softmax(state)
        pi = np.exp(logp)
        new = state - eta * (one_hot(k, vocab) - pi)
        d = log_softmax(new) - logp
        monotone &= take(d, ystar) >= -_tol(state, new)
        tiny = take(pi, k) < 1e-8
        if tiny.any():
            diff = np.abs(np.asarray(flow_rhs(pi, k)) - np.asarray(replicator_rhs(pi)))
            replicator_ok &= ~tiny | (np.where(mask, diff, 0).max(-1) <= take(pi, k) + 1e-12)
        state = new
    final = np.exp(log_softmax(state))
    argmax_ok = final.argmax(-1) == ystar
    converged = float(np.median(take(final, ystar)))
    return _result(monotone & argmax_ok & replicator_ok, decided,
                   f"{steps} negative steps of eta = {eta}: pi(y*) never falls, y* ends as the argmax, and "
                   "where pi_k < 1e-8 theory.flow's rhs equals the replicator's to within pi_k; median final "
                   f"pi(y*) {converged:.4f}; excluded: top two labels within 1e-3 (too slow to separate)",
                   "256 eps x logit magnitude") | {"median_final_pi_ystar": converged}


def theorem_x04(rng, n, vocab, beta):
    """Two contexts a (y+) and b (y-) coupled by kappa: theory.squeeze.dpo_two_context says
    when pi_a(y+) falls; check its sign against one small measured step."""
    from learning_dynamics.theory.squeeze import dpo_two_context

    za = random_logits(rng, n, vocab)
    zb = za + rng.uniform(0, 1, n)[:, None] * rng.standard_normal((n, vocab))
    pa, pb = np.exp(log_softmax(za)), np.exp(log_softmax(zb))
    rank_a = ranks(pa)
    plus = choose(rng, (rank_a >= 1) & (rank_a <= max(1, vocab // 5)))
    minus = choose(rng, (ranks(pb) >= vocab // 2) & _others(plus, vocab))
    kappa = np.exp(rng.uniform(np.log(0.05), np.log(5.0), n))
    coef = np.exp(rng.uniform(np.log(0.01), np.log(1.0), n))
    eta = 1e-4
    pred = dpo_two_context(pa, pb, plus, minus, kappa, eta, coef)
    dz = eta * coef[:, None] * (one_hot(plus, vocab) - pa) - kappa[:, None] * eta * coef[:, None] * (one_hot(minus, vocab) - pb)
    d = take(log_softmax(za + dz) - log_softmax(za), plus)
    r = dz.max(-1) - dz.min(-1)
    tol = _tol(za, za + dz)
    first = np.asarray(pred.dlogp_plus)
    decided = (first > r ** 2 / 8 + tol) | (first < -tol)
    held = (d < 0) == np.asarray(pred.falls)
    held &= np.asarray(pred.falls) == (kappa > np.asarray(pred.kappa_critical))
    frac = float(np.asarray(pred.falls)[decided].mean())
    return _result(held, decided, "one small two-context DPO step (eta = 1e-4, kappa in [0.05, 5]): the "
                   "measured sign of dlog pi_a(y+) matches theory's first-order prediction and its "
                   f"kappa > kappa_critical rule; y+ fell in {frac:.1%} of the cases; excluded: |first "
                   "order| inside the second-order bound", "256 eps x logit magnitude") | {"frac_plus_falls": frac}


def theorem_x05(rng, n, vocab):
    z, p, _, eta = _cases(rng, n, vocab, (1e-3, 10.0))
    k_off = p.argmin(-1)                                     # the tail
    k_on = sample(rng, p)                                    # on-policy
    same = k_on == k_off
    _, d_on, new_on, _ = _exact_step(z, k_on, eta, -1.0)
    _, d_off, new_off, _ = _exact_step(z, k_off, eta, -1.0)
    mask = _others(k_on, vocab, k_off)
    tol = _tol(z, new_on, new_off)[:, None]
    every_label = ((d_on >= d_off - tol) | ~mask).all(-1)
    fewer = ((d_on < -tol) & mask).sum(-1) <= ((d_off < -tol) & mask).sum(-1)
    return _result(every_label & fewer, ~same & (mask.sum(-1) >= 1),
                   "same pi, eta in [1e-3, 10]: a negative step on a label sampled from pi leaves every "
                   "other label with a dlog pi >= that after a step on the least likely label, and no more "
                   "labels fall; cases where the sample is the least likely label do not apply",
                   "256 eps x logit magnitude")


def evaluate_theorems(rng, n, vocab, steps, beta, progress=False):
    from tqdm import tqdm
    from learning_dynamics.theory.predictions import CATALOGUE

    evaluators = {
        "P01": lambda r: theorem_p01(r, n, vocab), "P02": lambda r: theorem_p02(r, n, vocab),
        "P03": lambda r: theorem_p03(r, n, vocab), "P04": lambda r: theorem_p04(r, n, vocab),
        "P05": lambda r: theorem_p05(r, n, vocab), "P06": lambda r: theorem_p06(r, n, vocab),
        "P06b": lambda r: theorem_p06b(r, n, vocab), "P07": lambda r: theorem_p07(r, n, vocab),
        "P08": lambda r: theorem_p08(r, n, vocab, beta), "P16": lambda r: theorem_p16(r, n, vocab, beta),
        "P18": lambda r: theorem_p18(r, n, vocab, beta), "P19": lambda r: theorem_p19(r, n, vocab),
        "X01": lambda r: theorem_x01(r, n, vocab), "X02": lambda r: theorem_x02(r, n, vocab),
        "X03": lambda r: theorem_x03(r, n, vocab, max(steps, 100)),
        "X04": lambda r: theorem_x04(r, n, vocab, beta), "X05": lambda r: theorem_x05(r, n, vocab),
    }
    predictions = [p for p in CATALOGUE if p.scope == "step" and "logits" in p.levels]
    rows = []
    seeds = rng.integers(0, 2 ** 63, len(predictions))
    for prediction, seed in tqdm(list(zip(predictions, seeds)), desc="theorems", file=sys.stderr,
                                 disable=not progress, leave=False):
        row = {"id": prediction.id, "claim": prediction.claim}
        evaluate = evaluators.get(prediction.id)
        if evaluate is None:
            row.update(cases=0, held_fraction=None, applies=False, detail="no evaluator at level logits")
        else:
            with np.errstate(over="ignore", under="ignore"):
                result = evaluate(np.random.default_rng(seed))
            cases = result["cases"]
            row.update(result, applies=cases > 0,
                       held_fraction=(result["held"] / cases) if cases else None)
        rows.append(row)
    return rows


# =========================================================================== figures

def squeeze_example(vocab=12):
    """A fixed, peaky 12-label distribution for the bar chart."""
    z = np.array([3.2, 2.6, 1.4, 1.0, 0.6, 0.3, 0.0, -0.4, -0.8, -1.2, -1.8, -2.5])[:vocab]
    return z


def plot_squeeze_bars(path, eta=2.0):
    from learning_dynamics.sim import style
    from learning_dynamics.theory.squeeze import threshold

    z = squeeze_example()
    vocab = len(z)
    p = np.exp(log_softmax(z))
    panels = [("an unlikely label", int(p.argmin())), ("the peak", int(p.argmax()))]
    fig, axes = style.figure(style.WIDTH, 2.6, ncols=2)
    labels = np.arange(vocab)
    for ax, (kind, k) in zip(axes, panels):
        new = z - eta * (one_hot(np.array(k), vocab) - p)
        after = np.exp(log_softmax(new))
        rose = after > p
        ax.bar(labels - 0.2, p, width=0.4, color=style.GREY, label="before")
        ax.bar((labels + 0.2)[rose], after[rose], width=0.4, color=style.GREEN, label="after: rose")
        ax.bar((labels + 0.2)[~rose], after[~rose], width=0.4, color=style.VERMILION, label="after: fell")
        thr = float(threshold(p, k, -1))
        if thr > 0:   # a negative threshold (k is the peak) means every other label rises: no line to draw
            ax.axhline(thr, color=style.BLACK, ls="--", lw=0.8,
                       label=r"theory: $i$ rises iff $\pi_i > \|\pi\|^2 - \pi_k$")
        ax.annotate("pushed\ndown", (k + 0.2, after[k]), xytext=(0, 12), textcoords="offset points",
                    ha="center", fontsize=7, arrowprops=dict(arrowstyle="->", lw=0.7))
        ax.set_xticks(labels)
        ax.set_xlabel("label $i$")
        ax.set_title(f"negative step on {kind}, $k={k}$ ($\\pi_k={p[k]:.3f}$, $\\eta={eta:g}$)"
                     + ("" if thr > 0 else f"\n$\\|\\pi\\|^2 - \\pi_k = {thr:.2f} < 0$: every other label rises"))
        ax.set_ylabel(r"probability $\pi_i$")
        ax.legend(loc="upper right")
    top = max(ax.get_ylim()[1] for ax in axes)
    for ax in axes:          # one scale for both panels, from zero (a negative threshold is not drawn)
        ax.set_ylim(0, top)
    fig.suptitle("The squeezing effect: pushing down an unlikely label moves mass into the peak;\n"
                 "pushing down the peak spreads it")
    return style.save(fig, path)


def plot_curves(path, curves):
    """Two rows: pure negative gradients (off- vs on-policy), then the DPO family."""
    from learning_dynamics.sim import style

    keys = [("plus", r"$\log\pi(y^+)$"), ("minus", r"$\log\pi(y^-)$"), ("ystar", r"$\log\pi(y^*)$"),
            ("entropy", "entropy")]
    rows = [{"negative": "-", "negative-onpolicy": "--"}, {"dpo": "-", "onpolicy-dpo": "--", "extend": ":"}]
    fig, axes = style.figure(style.WIDTH, 4.4, nrows=2, ncols=4)
    for row, styles in zip(axes, rows):
        for ax, (key, title) in zip(row, keys):
            for name, ls in styles.items():
                if name in curves:
                    series = curves[name][key]
                    ax.plot(series.mean(axis=1) - series[0].mean(), color=style.algorithm_color(name), ls=ls,
                            label=style.algorithm_label(name))
            style.reference_line(ax, 0.0, ls="-", lw=0.5)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.set_ylabel(r"$\Delta$ from step 0 (nats)")
    handles, labels = [], []
    for ax in axes[:, 0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.append(handle), labels.append(label)
    fig.legend(handles, labels, loc="outside lower center", ncols=3)
    fig.suptitle("Off-policy negatives squeeze ($y^*$ up, entropy down); on-policy ones and extend much less\n"
                 "free logits, mean over runs; $y^+$ at its context, the rest where the negative acts; "
                 "extend: its DPO phase")
    return style.save(fig, path)


# =========================================================================== the experiment

def run_logits(out=DEFAULT_OUT, seed=0, preset="default", progress=True, runs=None, vocab=None,
               steps=None, lr=DEFAULT_LR, beta=DEFAULT_BETA):
    """Run every algorithm and every theorem check; write figures and summary.json; return the summary."""
    import time

    from tqdm import tqdm
    from learning_dynamics.sim.io import atomic_write_json

    settings = dict(PRESETS[preset])
    for name, value in (("runs", runs), ("vocab", vocab), ("steps", steps)):
        if value is not None:
            settings[name] = value
    validate_settings(settings, seed, lr, beta)
    out = writable_folder(out)
    start = time.perf_counter()
    R, V, S = settings["runs"], settings["vocab"], settings["steps"]
    master = np.random.default_rng(seed)
    seeds = master.integers(0, 2 ** 63, 6)
    problem = make_problem(np.random.default_rng(seeds[0]), R, V)
    curves, algorithms = {}, {}
    with np.errstate(over="ignore", under="ignore"):
        for i, name in enumerate(tqdm(ALGORITHMS, desc="algorithms", file=sys.stderr, disable=not progress,
                                      leave=False)):
            rng = np.random.default_rng([seeds[1], i])
            curves[name] = run_algorithm(name, problem, S, lr, beta, rng)
            algorithms[name] = summarize_series(curves[name])
        comparisons = {**compare_one_step(np.random.default_rng(seeds[2]), min(R, 200), V, min(S, 50), lr),
                       **compare_flow(np.random.default_rng(seeds[3]), min(R, 20), V, horizon=5.0)}
    theorems = evaluate_theorems(np.random.default_rng(seeds[4]), R, V, S, beta, progress)
    figures = {"squeeze_bars": plot_squeeze_bars(out / "squeeze_bars.png").name,
               "offpolicy_vs_onpolicy": plot_curves(out / "offpolicy_vs_onpolicy.png", curves).name}
    off, on = algorithms["dpo"], algorithms["onpolicy-dpo"]
    summary = {
        "experiment": "logits", "seed": seed, "preset": preset,
        "settings": {**settings, "lr": lr, "beta": beta, "dtype": "float64",
                     "hyper_parameters": {a: registry.hyper_parameters(a, kl_beta=beta) for a in registry.ALGORITHMS}},
        "algorithms": algorithms,
        "squeeze_onpolicy_vs_offpolicy": {
            "ystar_gain_offpolicy": off["dlogp_ystar"], "ystar_gain_onpolicy": on["dlogp_ystar"],
            "entropy_drop_offpolicy": -off["dentropy"], "entropy_drop_onpolicy": -on["dentropy"],
            "ystar_gain_extend": algorithms["extend"]["dlogp_ystar"],
            "entropy_drop_extend": -algorithms["extend"]["dentropy"]},
        "theory_comparison": comparisons,
        "theorems": theorems,
        "all_applicable_theorems_held": all(t["held_fraction"] == 1.0 for t in theorems if t.get("applies")),
        "figures": figures,
        "tolerance_note": "held_fraction = held / cases over the cases that apply; a case whose predicted effect is below "
                          "float64 round-off (256 eps x logit magnitude) is counted in excluded, as is a case outside the theorem's premise",
        "elapsed_s": round(time.perf_counter() - start, 2),
    }
    atomic_write_json(out / "summary.json", _deterministic(summary))
    return summary


def _deterministic(summary):
    """The JSON is the same for the same seed: no wall-clock fields, floats to 12 significant digits."""
    return json_ready(summary, significant=12, drop=("elapsed_s",))


def validate_settings(settings, seed, lr, beta):
    for name, most in LIMITS.items():
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= most:
            raise UserError(f"--{name} must be an integer from 1 to {most} (got {value!r})")
    if settings["vocab"] < 3:
        raise UserError(f"--vocab must be at least 3: y+, y- and y* are distinct labels (got {settings['vocab']})")
    if settings["runs"] * settings["vocab"] > 50_000_000:
        raise UserError("--runs x --vocab must be at most 5e7 (memory); lower one of them")
    arg.check_seed(seed)
    for flag, value in (("--lr", lr), ("--beta", beta)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value <= 1e3:
            raise UserError(f"{flag} must be a finite number in (0, 1000] (got {value!r})")




# =========================================================================== CLI

def add_parser(subparsers):
    p = subparsers.add_parser(
        "logits", help="squeezing and multi-step dynamics on free logits and a linear head; theorem checks",
        description="Simulate SFT, negative gradients, DPO (one shared and two kernel-coupled contexts), IPO, "
                    "SimPO, on-policy DPO, policy gradient and 'extend' on many random softmax "
                    "distributions; compare with theory's one-step and gradient-flow predictions; check every "
                    "step-level theorem of the catalogue on random cases. Writes PNG figures and "
                    "summary.json to --out.",
        epilog="example: ldyn sim logits --out ./ldyn-out/sim/logits --seed 0 --runs 1000 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=arg.path, default=DEFAULT_OUT, help=f"output folder (default ./{DEFAULT_OUT})")
    add_format_option(p)
    p.add_argument("--seed", type=arg.SEED, default=0, help="random seed (default 0)")
    p.add_argument("--runs", type=arg.POSITIVE_INT, help="random starting distributions / theorem cases (default 1000; quick 200)")
    p.add_argument("--vocab", type=arg.POSITIVE_INT, help="number of labels V (default 50; quick 30)")
    p.add_argument("--steps", type=arg.POSITIVE_INT, help="steps per algorithm (default 200; quick 60)")
    p.add_argument("--lr", type=arg.LR, default=DEFAULT_LR, help=f"step size eta (default {DEFAULT_LR})")
    p.add_argument("--beta", type=arg.BETA, default=DEFAULT_BETA, help=f"DPO/IPO beta (default {DEFAULT_BETA})")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run of the same code (tests)")
    p.set_defaults(func=handle)


def handle(args):
    summary = run_logits(args.out, seed=args.seed, preset="quick" if args.quick else "default",
                         progress=not args.json or sys.stderr.isatty(), runs=args.runs, vocab=args.vocab,
                         steps=args.steps, lr=args.lr, beta=args.beta)
    if args.json:
        print(json.dumps(_deterministic(summary), sort_keys=True, allow_nan=False))
    else:
        print(human_summary(summary, args.out))
    return 0


def human_summary(s, out):
    lines = [f"free logits / linear head: {s['settings']['runs']} runs, V = {s['settings']['vocab']}, "
             f"{s['settings']['steps']} steps, eta = {s['settings']['lr']}, beta = {s['settings']['beta']} "
             f"({s['elapsed_s']} s)",
             f"{'algorithm':14} {'dlog pi(y+)':>12} {'dlog pi(y-)':>12} {'dlog pi(y*)':>12} {'d entropy':>10}"]
    for name, a in s["algorithms"].items():
        lines.append(f"{name:14} {a['dlogp_plus']:+12.3f} {a['dlogp_minus']:+12.3f} {a['dlogp_ystar']:+12.3f} "
                     f"{a['dentropy']:+10.3f}")
    c = s["theory_comparison"]
    lines.append("trajectory vs theory one-step formulas, max |diff|: " + ", ".join(
        f"{k} {v:.1e}" for k, v in c["one_step_max_abs_err"].items()))
    lines.append("trajectory vs theory gradient flow, max |dpi|: " + ", ".join(
        f"{k} {v:.1e}" for k, v in c["flow_max_abs_err_prob"].items()))
    lines.append(f"{'theorem':8} {'cases':>7} {'held':>7} {'excl.':>7}  claim")
    for t in s["theorems"]:
        held = "n/a" if t["held_fraction"] is None else f"{t['held_fraction']:.3f}"
        lines.append(f"{t['id']:8} {t['cases']:7d} {held:>7} {t.get('excluded', 0):7d}  {t['claim']}")
    lines.append(f"figures and summary.json in {out}")
    return "\n".join(lines)
