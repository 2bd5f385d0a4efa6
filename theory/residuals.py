"""Residual terms G: the derivative of each finetuning loss w.r.t. the sequence log-probs.

Every loss is written once here in sympy, mirroring sim/losses.py term for term
(same parameter names and defaults; tests/test_losses_vs_theory.py checks both
against torch autograd), and differentiated symbolically. The coefficient
c = dL/dlog pi(y) turns into the logit-space residual at each position of y:
    G = dL/dz = c (e_y - pi)        (since d log pi_y / dz = e_y - pi),
so c < 0 is a positive (SFT-like) push on y and c > 0 a negative gradient.
DPO: c(y+) = -beta sigma(-u), c(y-) = +beta sigma(-u), u the reward margin.
"""
import functools
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping, Optional

import numpy as np

from learning_dynamics.theory import symbolic
from learning_dynamics.theory.derivation import Derivation
# sympy loads inside the functions that need them, so importing this module stays light (ldyn --help)

@dataclass(frozen=True)
class Loss:
    """One finetuning loss: its inputs, its hyper-parameter defaults and its sympy form, in one place.

    wrt: the log-prob inputs G is taken with respect to; others: every other input (a log-prob in `others` is
    held constant: detached in the torch form, as dpo-pull-only's y-). formula(S, sigmoid, logsigmoid) -> the
    sympy loss, S the symbols by input name. sim.losses registers the torch form under the same name (a test
    fails for a loss without one, and holds the two to each other's gradients).
    """
    name: str
    wrt: tuple
    others: tuple
    defaults: Mapping
    formula: Callable = field(compare=False, repr=False)
    same_as: Optional[str] = None    # derived once, under this loss's name (the DPO loss on other responses)


def _dpo(S, sigmoid, logsigmoid):
    beta = S["beta"]
    return -logsigmoid(beta * (S["logp_chosen"] - S["ref_chosen"]) - beta * (S["logp_rejected"] - S["ref_rejected"]))


def _ipo(S, sigmoid, logsigmoid):
    ratio = (S["logp_chosen"] - S["ref_chosen"]) / S["len_chosen"] - (S["logp_rejected"] - S["ref_rejected"]) / \
        S["len_rejected"]
    return (ratio - 1 / (2 * S["beta"])) ** 2


def _simpo(S, sigmoid, logsigmoid):
    beta = S["beta"]
    return -logsigmoid(beta * S["logp_chosen"] / S["len_chosen"] - beta * S["logp_rejected"] / S["len_rejected"]
                       - S["gamma"])


def _slic(S, sigmoid, logsigmoid):
    import sympy as sp
    return sp.Max(0, S["delta"] - S["logp_chosen"] + S["logp_rejected"]) - S["lam"] * S["logp_chosen"]


def _dpop(S, sigmoid, logsigmoid):
    import sympy as sp
    beta, lc, rc = S["beta"], S["logp_chosen"], S["ref_chosen"]
    return -logsigmoid(beta * (lc - rc) - beta * (S["logp_rejected"] - S["ref_rejected"])
                       - beta * S["lam"] * sp.Max(0, rc - lc))


def _sppo(S, sigmoid, logsigmoid):
    import sympy as sp
    return (S["logp"] - S["ref_logp"] - S["eta"] * (S["win_prob"] - sp.Rational(1, 2))) ** 2


def _kto(S, sigmoid, logsigmoid):
    # TRL's loss_type "kto" (Eqn 7 of the KTO paper), z = kl held constant: 1 - sigma(beta (r(y+) - z)) for a
    # desirable example, 1 - sigma(beta (z - r(y-))) for an undesirable one
    beta, kl = S["beta"], S["kl"]
    return (1 - sigmoid(beta * (S["logp_chosen"] - S["ref_chosen"] - kl))) + \
        (1 - sigmoid(beta * (kl - (S["logp_rejected"] - S["ref_rejected"]))))


_PAIR = ("logp_chosen", "logp_rejected")
_DPO_INPUTS = dict(wrt=_PAIR, others=("ref_chosen", "ref_rejected", "beta"), defaults={"beta": 0.1}, formula=_dpo)
_LOSSES = (
    Loss("sft", ("logp_chosen",), (), {}, lambda S, sigmoid, logsigmoid: -S["logp_chosen"]),
    Loss("dpo", **_DPO_INPUTS),
    Loss("onpolicy-dpo", **_DPO_INPUTS, same_as="dpo"),
    Loss("spin", **_DPO_INPUTS, same_as="dpo"),
    Loss("ipo", _PAIR, ("ref_chosen", "ref_rejected", "beta", "len_chosen", "len_rejected"),
         {"beta": 0.1, "len_chosen": None, "len_rejected": None}, _ipo),
    Loss("simpo", _PAIR, ("len_chosen", "len_rejected", "beta", "gamma"), {"beta": 2.0, "gamma": 0.5}, _simpo),
    Loss("slic", _PAIR, ("delta", "lam"), {"delta": 1.0, "lam": 0.1}, _slic),
    Loss("dpop", _PAIR, ("ref_chosen", "ref_rejected", "beta", "lam"), {"beta": 0.1, "lam": 50.0}, _dpop),
    Loss("sppo", ("logp",), ("ref_logp", "win_prob", "eta"), {"eta": 1.0}, _sppo),
    Loss("pg", ("logp",), ("advantages",), {}, lambda S, sigmoid, logsigmoid: -S["advantages"] * S["logp"]),
    # one desirable (y+) and one undesirable (y-) example; kl is the detached reference-KL estimate
    Loss("kto", _PAIR, ("ref_chosen", "ref_rejected", "kl", "beta"), {"beta": 0.1}, _kto),
    # DPO's loss with log pi(y-) held constant (detached): the same coefficient beta sigma(-u) on y+, no push on y-
    Loss("dpo-pull-only", ("logp_chosen",), ("logp_rejected", "ref_chosen", "ref_rejected", "beta"), {"beta": 0.1},
         _dpo, same_as="dpo"),
)
BY_NAME = MappingProxyType({loss.name: loss for loss in _LOSSES})
LOSSES = tuple(BY_NAME)


def get(name: str) -> Loss:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}") from None


def loss_inputs(loss) -> tuple:
    """(log-prob inputs that G is taken with respect to, the other inputs) of `loss`."""
    return get(loss).wrt, get(loss).others


def loss_defaults(loss) -> dict:
    """Hyper-parameter defaults of `loss`: the one place they are written (sim.losses mirrors them, tested)."""
    return dict(get(loss).defaults)


def _sigmoid_np(x):
    # the sign-split form never evaluates exp of a large positive number
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _logsigmoid_np(x):
    x = np.asarray(x, dtype=np.float64)
    return np.minimum(x, 0.0) - np.log1p(np.exp(-np.abs(x)))


def _heaviside_np(x, h0=None):
    # torch.clamp(min=0) passes the gradient where x >= 0, so H(0) = 1 here
    return np.heaviside(np.asarray(x, dtype=np.float64), 1.0)


def _functions():
    """sympy sigmoid / logsigmoid with their derivatives, so lambdify can map them to
    stable numpy versions instead of exp(-u)/(1 + exp(-u)) (overflow at |u| ~ 710)."""
    import sympy as sp

    class sigmoid(sp.Function):
        def fdiff(self, argindex=1):
            return sigmoid(self.args[0]) * sigmoid(-self.args[0])

    class logsigmoid(sp.Function):
        def fdiff(self, argindex=1):
            return sigmoid(-self.args[0])

    return sigmoid, logsigmoid


@functools.lru_cache(maxsize=None)
def _symbolic():
    import sympy as sp

    sigmoid, logsigmoid = _functions()
    names = {n for loss in _LOSSES for n in loss.wrt + loss.others}
    S = {n: sp.Symbol(n, real=True) for n in sorted(names)}
    losses = {loss.name: loss.formula(S, sigmoid, logsigmoid) for loss in _LOSSES}
    grads = {loss.name: {v: sp.diff(losses[loss.name], S[v]) for v in loss.wrt} for loss in _LOSSES}
    # the logit-space residual: d/dz of log softmax(z)_y, on 3 labels with y = label 1
    z = sp.symbols("z1:4", real=True)
    c = sp.Symbol("c", real=True)
    logp_y = z[0] - sp.log(sum(sp.exp(t) for t in z))
    G = sp.Matrix([sp.simplify(c * sp.diff(logp_y, t)) for t in z])
    pis = [sp.exp(t) / sum(sp.exp(u) for u in z) for t in z]
    G_check = sp.simplify(G - sp.Matrix([c * ((1 if j == 0 else 0) - pis[j]) for j in range(3)]))
    # residual(pi, token, coef) per label: coef ([i = token] - pi_i)
    p_i, d = sp.symbols("pi_i delta", real=True)
    per_label = c * (d - p_i)
    return {"S": S, "losses": losses, "grads": grads, "G": G, "G_check": G_check,
            "per_label": per_label, "p_i": p_i, "d": d, "c": c}


@functools.lru_cache(maxsize=None)
def _grad_fn(loss, var):
    import sympy as sp

    sigmoid, logsigmoid = _functions()
    s = _symbolic()
    args = [s["S"][n] for n in get(loss).wrt + get(loss).others]
    fn = sp.lambdify(args, s["grads"][loss][var],
                     modules=[{"sigmoid": _sigmoid_np, "logsigmoid": _logsigmoid_np,
                               "Heaviside": _heaviside_np}, "numpy"])

    def vectorized(*values):
        out = np.asarray(fn(*values), dtype=np.float64)
        return np.broadcast_to(out, np.broadcast_shapes(out.shape, *(np.shape(v) for v in values))).copy()

    return vectorized


def residual_coefficients(loss, **inputs):
    """dL/dlog pi(response) for each log-prob input of `loss`, keyed by its argument name
    ("logp_chosen", "logp_rejected"; "logp" for sppo and pg). Inputs and defaults are
    those of the matching sim.losses function; arrays broadcast."""
    spec = get(loss)
    wrt, others, defaults = spec.wrt, spec.others, spec.defaults
    unknown = set(inputs) - set(wrt) - set(others)
    if unknown:
        raise TypeError(f"{loss}: unexpected inputs {sorted(unknown)}")
    values = {**defaults, **inputs}
    if loss == "ipo":
        if (values["len_chosen"] is None) != (values["len_rejected"] is None):
            raise ValueError("ipo: give both lengths (per-token IPO) or neither (summed IPO)")
        if values["len_chosen"] is None:                 # summed convention = lengths of 1
            values["len_chosen"] = values["len_rejected"] = 1.0
    missing = [n for n in wrt + others if n not in values]
    if missing:
        raise TypeError(f"{loss}: missing inputs {missing}")
    args = [np.asarray(values[n], dtype=np.float64) for n in wrt + others]
    return {v: _grad_fn(loss, v)(*args) for v in wrt}


@functools.lru_cache(maxsize=None)
def _residual_parts():
    s = _symbolic()
    slope, intercept = symbolic.affine_parts(s["per_label"].subs(s["d"], 0), s["p_i"])
    token_extra = s["per_label"].subs({s["d"]: 1, s["p_i"]: 0}) - intercept
    return (symbolic.lambdify((s["c"],), slope), symbolic.lambdify((s["c"],), intercept),
            symbolic.lambdify((s["c"],), token_extra))


def residual(pi, token, coef):
    """coef (e_token - pi): the logit-space G at one position, pi [..., V], token int [...],
    coef broadcastable to pi.shape[:-1]."""
    pi = np.asarray(pi, dtype=np.float64)
    coef = np.broadcast_to(np.asarray(coef, dtype=np.float64), pi.shape[:-1])
    slope, intercept, extra = _residual_parts()
    out = pi * slope(coef)[..., None] + intercept(coef)[..., None]
    idx = np.broadcast_to(np.asarray(token), pi.shape[:-1])[..., None]
    np.put_along_axis(out, idx, np.take_along_axis(out, idx, -1) + extra(coef)[..., None], axis=-1)
    return out


def derivations():

    s = _symbolic()
    steps = [("G = c d log pi_y / dz, c = dL/dlog pi_y (3 labels, y = 1):", s["G"]),
             ("minus c (e_y - pi):", s["G_check"])]
    for loss in _LOSSES:
        if loss.same_as:
            continue
        steps.append((f"{loss.name}: L =", s["losses"][loss.name]))
        for var, g in s["grads"][loss.name].items():
            steps.append((f"   dL/d{var} =", g))
    for loss in _LOSSES:
        if loss.same_as:
            held = [n for n in loss.others if n.startswith("logp")]
            steps.append((f"{loss.name}: the {loss.same_as} loss" + (f", differentiated in {', '.join(loss.wrt)} only "
                          f"({', '.join(held)} held constant): no push on it" if held else
                          " on other responses (same coefficients)"), None))
    return [Derivation("Residual terms G of each loss", tuple(steps))]
