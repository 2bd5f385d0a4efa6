"""The sympy derivations behind theory.squeeze, and the numpy functions lambdified from them.

Three derivations, each a typed record of its symbols and results: one step on label k
(`one_step`), DPO on one shared context (`shared_context_dpo`) and on two contexts coupled
by kappa (`two_context_dpo`). `numeric()` lambdifies what theory.squeeze evaluates;
`derivations()` prints them (`ldyn theory derive`). sympy is imported only when called.
"""
import functools
from typing import Callable, NamedTuple

from learning_dynamics.theory import symbolic
from learning_dynamics.theory.derivation import Derivation
# sympy loads inside the functions that need them, so importing this module stays light (ldyn --help)


class OneStep(NamedTuple):
    """z' = z + sigma eta (e_k - pi) on free logits; pi_i, pi_k, S_2 = ||pi||^2, delta = [i = k]."""
    p_i: object
    p_k: object
    sq: object
    d: object
    eta: object
    s: object
    step_i: object           # the logit change of label i
    pi_dot_step: object      # pi . (z' - z)
    first: object            # first-order dlog pi_i = (A(pi)(z' - z))_i
    first_off: object        # ... for i != k
    first_k: object          # ... for i = k
    thr: object              # i != k rises (sigma = -1) iff pi_i > thr
    step_k: object           # the logit change of label k
    x_off: object            # d_i - d_k for i != k (the exact change's exponent)
    fo_check: tuple          # V = 3: d/d eta at 0 of the exact change minus the first-order law (all zero)


class SharedContextDPO(NamedTuple):
    """DPO's two residuals on one context: dL/dlog pi(y+) = -c, dL/dlog pi(y-) = +c."""
    c: object
    dp: object               # [i = y+]
    dm: object               # [i = y-]
    g_dpo: object            # G per label
    dz_dpo: object           # z' - z = -eta G: the pi terms cancel


class TwoContextDPO(NamedTuple):
    """DPO's y+ push on context a and y- push on context b, coupled by the kernel kappa."""
    a_p: object              # pi_a(y+)
    a_m: object              # pi_a(y-)
    b_p: object              # pi_b(y+)
    sa: object               # ||pi_a||^2
    ab: object               # pi_a . pi_b
    dpm: object              # [y+ = y-]
    kappa: object
    dz_a: object             # the logit change on context a, per label
    a_dot_dz: object         # pi_a . dz_a
    two: object              # first-order dlog pi_a(y+)
    q0: object               # its kappa = 0 part / (eta c)
    q1: object               # its coefficient of kappa / (eta c)
    kappa_crit: object       # pi_a(y+) falls for kappa beyond this


@functools.lru_cache(maxsize=None)
def one_step() -> OneStep:
    import sympy as sp

    p_i, p_k, sq, d, eta, s = sp.symbols("pi_i pi_k S_2 delta eta sigma", real=True)
    # the step: z' - z = sign eta grad_z log pi_k, and grad_z log pi_k = e_k - pi (row k of A)
    step_i = s * eta * (d - p_i)
    pi_dot_step = symbolic.label_sum(p_i * step_i, p_i, d, p_k, sq)
    first = sp.expand(step_i - pi_dot_step)                    # A(pi) applied to the step
    first_off, first_k = first.subs(d, 0), sp.factor(first.subs({d: 1, p_i: p_k}))
    thr = sp.solve(sp.Eq(first_off, 0), p_i)[0]
    step_k = step_i.subs({d: 1, p_i: p_k})
    x_off = sp.expand(step_i.subs(d, 0) - step_k)              # d_i - d_k
    # check: d/d eta at 0 of the exact change equals the first-order law (V = 3, k = 1)
    q = sp.symbols("q1:4", positive=True)
    steps = [s * eta * ((1 if j == 0 else 0) - q[j]) for j in range(3)]
    logz = sp.log(sum(q[j] * sp.exp(steps[j]) for j in range(3)))
    exact3 = [steps[j] - logz for j in range(3)]
    sq3 = sum(t ** 2 for t in q)
    fo_check = tuple(sp.simplify((sp.diff(exact3[j], eta).subs(eta, 0) -
                                  sp.diff(first, eta).subs({d: 1 if j == 0 else 0, p_i: q[j], p_k: q[0], sq: sq3})
                                  ).subs(q[2], 1 - q[0] - q[1])) for j in range(3))
    return OneStep(p_i, p_k, sq, d, eta, s, step_i, pi_dot_step, first, first_off, first_k, thr, step_k, x_off,
                   fo_check)


@functools.lru_cache(maxsize=None)
def shared_context_dpo() -> SharedContextDPO:
    import sympy as sp

    p_i, eta = one_step().p_i, one_step().eta
    c, dp, dm = sp.symbols("c delta_+ delta_-", real=True)
    g_dpo = -c * (dp - p_i) + c * (dm - p_i)
    return SharedContextDPO(c, dp, dm, g_dpo, sp.expand(-eta * g_dpo))


@functools.lru_cache(maxsize=None)
def two_context_dpo() -> TwoContextDPO:
    import sympy as sp

    eta, c = one_step().eta, shared_context_dpo().c
    # two contexts: pi_a, pi_b per label; inner products as symbols
    a_i, b_i, Dp, Dm, kappa = sp.symbols("pi_a_i pi_b_i delta_+i delta_-i kappa", real=True)
    a_p, a_m, b_p, sa, ab, dpm = sp.symbols("pi_a(+) pi_a(-) pi_b(+) S_a pi_a.pi_b delta_+-", real=True)
    dz_a = eta * c * (Dp - a_i) - kappa * eta * c * (Dm - b_i)
    poly = sp.Poly(sp.expand(a_i * dz_a), a_i, b_i, Dp, Dm)
    table = {(1, 0, 1, 0): a_p, (1, 0, 0, 1): a_m, (2, 0, 0, 0): sa, (1, 1, 0, 0): ab, (1, 0, 0, 0): 1}
    a_dot_dz = sum(coef * table[m] for m, coef in poly.terms())
    dz_plus = dz_a.subs({Dp: 1, Dm: dpm, a_i: a_p, b_i: b_p})
    two = sp.expand(dz_plus - a_dot_dz)
    q0 = sp.expand(two.subs(kappa, 0) / (eta * c))
    q1 = sp.expand(sp.diff(two, kappa) / (eta * c))
    kappa_crit = sp.solve(sp.Eq(two, 0), kappa)[0]
    return TwoContextDPO(a_p, a_m, b_p, sa, ab, dpm, kappa, dz_a, a_dot_dz, two, q0, q1, kappa_crit)


class Numeric(NamedTuple):
    """The numpy functions theory.squeeze evaluates (argument order in each comment)."""
    step_slope: Callable     # (eta, sigma): z'_i - z_i = slope * pi_i for i != k
    step_k_extra: Callable   # (eta, sigma): label k's extra change
    fo_slope: Callable       # (eta, sigma): first-order dlog pi_i = slope * pi_i + intercept (i != k)
    fo_intercept: Callable   # (pi_k, S_2, eta, sigma)
    fo_k: Callable           # (pi_k, S_2, eta, sigma): first-order dlog pi_k
    threshold: Callable      # (pi_k, S_2)
    x_slope: Callable        # (eta, sigma): x_i = d_i - d_k = slope * pi_i + intercept
    x_intercept: Callable    # (pi_k, eta, sigma)
    dpo_plus: Callable       # (eta, c): shared-context DPO's logit change of y+
    dpo_minus: Callable      # (eta, c): ... of y-
    dpo_other: Callable      # (eta, c): ... of every other label
    two_dlogp: Callable      # (a_p, a_m, b_p, S_a, a.b, [y+ = y-], kappa, eta, c)
    two_q0: Callable         # (a_p, a_m, b_p, S_a, a.b, [y+ = y-])
    two_q1: Callable         # (a_p, a_m, b_p, S_a, a.b, [y+ = y-])


@functools.lru_cache(maxsize=None)
def numeric() -> Numeric:
    import sympy as sp

    one, shared, two = one_step(), shared_context_dpo(), two_context_dpo()
    p_i, p_k, sq, eta, s, c = one.p_i, one.p_k, one.sq, one.eta, one.s, shared.c
    L = symbolic.lambdify
    step_slope, step_int = symbolic.affine_parts(one.step_i.subs(one.d, 0), p_i)
    assert step_int == 0
    fo_slope, fo_int = symbolic.affine_parts(one.first_off, p_i)
    x_slope, x_int = symbolic.affine_parts(one.x_off, p_i)
    dz, dp, dm = shared.dz_dpo, shared.dp, shared.dm
    two_args = (two.a_p, two.a_m, two.b_p, two.sa, two.ab, two.dpm)
    return Numeric(
        step_slope=L((eta, s), step_slope),
        step_k_extra=L((eta, s), sp.simplify(one.step_k - step_slope * p_k)),
        fo_slope=L((eta, s), fo_slope),
        fo_intercept=L((p_k, sq, eta, s), fo_int),
        fo_k=L((p_k, sq, eta, s), one.first_k),
        threshold=L((p_k, sq), one.thr),
        x_slope=L((eta, s), x_slope),
        x_intercept=L((p_k, eta, s), x_int),
        dpo_plus=L((eta, c), dz.subs({dp: 1, dm: 0, p_i: 0})),
        dpo_minus=L((eta, c), dz.subs({dp: 0, dm: 1, p_i: 0})),
        dpo_other=L((eta, c), dz.subs({dp: 0, dm: 0, p_i: 0})),
        two_dlogp=L(two_args + (two.kappa, eta, c), two.two),
        two_q0=L(two_args, two.q0),
        two_q1=L(two_args, two.q1),
    )


def derivations():
    import sympy as sp

    one, shared, two = one_step(), shared_context_dpo(), two_context_dpo()
    return [
        Derivation("One step on label k: z' = z + sign eta (e_k - pi)", (
            ("logit change of label i (delta = [i = k], sigma = sign):", one.step_i),
            ("pi . (z' - z), summed over labels:", one.pi_dot_step),
            ("first-order dlog pi_i = (A(pi)(z' - z))_i:", one.first),
            ("i != k:", one.first_off),
            ("i = k:", one.first_k),
            ("threshold: i != k rises (sigma = -1) iff pi_i >", one.thr),
        )),
        Derivation("Exact one-step change", (
            ("dlog pi_i = x_i - log sum_j pi_j exp(x_j), x_i = d_i - d_k; for i != k, x_i =", one.x_off),
            ("check, V = 3: d/d eta at 0 of the exact change minus the first-order law",
             sp.Matrix(list(one.fo_check))),
        )),
        Derivation("DPO on one shared context", (
            ("G = -c (e_+ - pi) + c (e_- - pi), per label:", shared.g_dpo),
            ("z' - z = -eta G: the pi terms cancel", shared.dz_dpo),
        )),
        Derivation("DPO on two contexts coupled by kappa", (
            ("dz_a per label:", two.dz_a),
            ("pi_a . dz_a:", two.a_dot_dz),
            ("first-order dlog pi_a(y+):", two.two),
            ("Q0 (kappa = 0 part, / eta c):", two.q0),
            ("Q1 (coefficient of kappa, / eta c):", two.q1),
            ("pi_a(y+) falls for kappa beyond", two.kappa_crit),
        )),
    ]
