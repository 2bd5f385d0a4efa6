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
checked on many random cases (sim/logits_theorems*.py); figures in sim/logits_figures.py,
the command in sim/logits_cli.py.
"""
import math

import numpy as np

from learning_dynamics.theory import algorithms as registry
from learning_dynamics.theory.residuals import residual_coefficients
from learning_dynamics.theory.residuals import residual
from learning_dynamics.theory.residuals import loss_inputs
from learning_dynamics.theory.squeeze import exact_dlogp
from learning_dynamics.theory.squeeze_dpo import dpo_shared_context_dlogp
from learning_dynamics.theory.flow import integrate_flow

DEFAULT_OUT = "ldyn-out/sim/logits"
PRESETS = {
    "default": dict(runs=1000, vocab=50, steps=200),
    "quick": dict(runs=200, vocab=30, steps=60),
}
# compare_flow integrates the gradient flow with scipy's LSODA, whose work array holds a dense V x V Jacobian
# (8 V^2 bytes): 2 GiB of it bounds the vocabulary at 16384 labels
FLOW_MEMORY_BYTES = 2**31
LIMITS = {"runs": 1_000_000, "vocab": math.isqrt(FLOW_MEMORY_BYTES // 8), "steps": 100_000}
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
# What `ldyn sim logits` runs: every registry algorithm (theory.algorithms.ALGORITHMS) and the gradient experiments,
# so neither list alone. The first runs keep this order because it fixes each run's random stream (the committed
# figures and numbers); every other registry algorithm follows in registry order.
_FIRST = ("sft", "negative", "negative-onpolicy", "dpo-shared", "pg", "dpo", "ipo", "simpo", "onpolicy-dpo", "extend")
SIMULATED = _FIRST + tuple(a for a in registry.ALGORITHMS if a not in _FIRST)
# Runs on two kernel-coupled contexts: y+ at the chosen-only one, y- at the rejected-only one.
PAIR_ALGORITHMS = tuple(a for a in SIMULATED if a in registry.REGISTRY and registry.get(a).data in ("pair", "unpaired"))


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
    return residual_coefficients(loss, **inputs)


def loss_residual(pi, token, coef):
    return residual(pi, token, coef)


def pair_coefficients(algorithm, logp_c, logp_r, ref_c, ref_r, beta, kl=None):
    """(chosen, rejected) coefficients of (e_token - pi) for a pairwise registry algorithm (its record); one label
    per response, so a length-normalised loss sees lengths of 1; `beta` is the KL strength of the
    reference-based losses (a reference-free one keeps the registry's beta)."""

    wrt, others = loss_inputs(algorithm.loss)
    available = {"logp_chosen": logp_c, "logp_rejected": logp_r, "ref_chosen": ref_c, "ref_rejected": ref_r,
                 "len_chosen": 1, "len_rejected": 1, "kl": kl}
    inputs = {k: v for k, v in available.items() if k in wrt + others}
    c = _coefficients(algorithm.loss, **inputs, **registry.hyper_parameters(algorithm.name, kl_beta=beta))
    chosen = np.asarray(c["logp_chosen"], dtype=np.float64)
    # a response the loss holds constant (dpo-pull-only's y-) gets no push: coefficient 0
    return chosen, np.asarray(c.get("logp_rejected", np.zeros_like(chosen)), dtype=np.float64)


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
    if algorithm is not None and algorithm.warmup:
        z = _warmed_up(z, kernel, plus, minus, steps, eta)
    ref = log_softmax(z)
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
        grad = _gradient(name, algorithm, logp, pi, plus, minus, ref, beta, rng)
        z = kernel_step(z, kernel, grad, eta)
    series = {key: np.array(value) for key, value in curves.items()}       # [steps + 1, runs]
    return series


def _warmed_up(z, kernel, plus, minus, steps, eta):
    """'extend': SFT on y+ (context 0) and y- (context 1) for half the steps before the algorithm's own."""
    runs = z.shape[0]
    for _ in range(min(steps, max(1, steps // 2))):
        logp = log_softmax(z)
        pi = np.exp(logp)
        grad = np.stack([loss_residual(pi[:, 0], plus, -np.ones(runs)),
                         loss_residual(pi[:, 1], minus, -np.ones(runs))], axis=1)
        z = kernel_step(z, kernel, grad, eta)
    return z


def _gradient(name, algorithm, logp, pi, plus, minus, ref, beta, rng):
    """The loss residual G of one step of `name` at the current logits, [runs, contexts, vocab]."""
    runs = logp.shape[0]
    ref_c, ref_r_fixed = take(ref[:, 0], plus), take(ref[:, -1], minus)
    if algorithm is not None and algorithm.data == "chosen":
        coef = _coefficients(algorithm.loss, logp_chosen=take(logp[:, 0], plus))["logp_chosen"]
        return loss_residual(pi[:, 0], plus, coef)[:, None]
    elif name == "negative":
        return loss_residual(pi[:, 0], minus, np.ones(runs))[:, None]
    elif name == "negative-onpolicy":
        return loss_residual(pi[:, 0], sample(rng, pi[:, 0]), np.ones(runs))[:, None]
    elif algorithm is not None and algorithm.data == "group":  # one sample, reward [y = y+], baseline pi(y+)
        y = sample(rng, pi[:, 0])
        advantage = (y == plus) - take(pi[:, 0], plus)
        coef = _coefficients(algorithm.loss, logp=take(logp[:, 0], y), advantages=advantage)["logp"]
        return loss_residual(pi[:, 0], y, coef)[:, None]
    elif name == "dpo-shared":
        cc, cr = pair_coefficients(registry.REGISTRY["dpo"], take(logp[:, 0], plus), take(logp[:, 0], minus),
                                   ref_c, take(ref[:, 0], minus), beta)
        return (loss_residual(pi[:, 0], plus, cc) + loss_residual(pi[:, 0], minus, cr))[:, None]
    else:
        neg, ref_r = minus, ref_r_fixed
        if algorithm.negative == "policy":
            neg = sample(rng, pi[:, 1])
            ref_r = take(ref[:, 1], neg)
        kl = None
        if algorithm.data == "unpaired":   # TRL's KL estimate: y- under the chosen context, y+ under the other
            kl = np.maximum(0.0, 0.5 * (take(logp[:, 0], neg) - take(ref[:, 0], neg)
                                        + take(logp[:, 1], plus) - take(ref[:, 1], plus)))
        cc, cr = pair_coefficients(algorithm, take(logp[:, 0], plus), take(logp[:, 1], neg), ref_c, ref_r, beta, kl)
        return np.stack([loss_residual(pi[:, 0], plus, cc), loss_residual(pi[:, 1], neg, cr)], axis=1)


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
