"""Shared sympy helpers: sums over labels and lazy lambdify.

Nothing here imports sympy at module level: `import theory.<module>` must stay
light (tests/test_layering.py), so sympy is imported inside each function and
the first call of a numeric function pays for its lambdify once (lru_cache in
the caller).
"""


def label_sum(expr_i, p_i, delta, p_k, sq):
    """sum_i expr_i over the V labels, for expr_i a polynomial of degree <= 2 in p_i.

    `delta` is the symbol standing for [i = k]. Split expr_i into its i != k part
    (delta = 0) and the extra of label k: a per-label quadratic
    c0 + c1 p_i + c2 p_i^2 sums to V c0 + c1 sum p + c2 ||p||^2 = V c0 + c1 + c2 sq,
    and label k adds expr(p_k, delta=1) - expr(p_k, delta=0).
    The caller's expressions are constructed so that c0 = 0 (no V dependence).
    """
    import sympy as sp

    V = sp.Symbol("V", positive=True, integer=True)
    off = sp.expand(expr_i.subs(delta, 0))
    poly = sp.Poly(off, p_i)
    if poly.degree() > 2:
        raise ValueError("label_sum handles polynomials of degree <= 2 in p_i")
    c = [poly.coeff_monomial(p_i ** n) for n in range(3)]
    total = V * c[0] + c[1] + c[2] * sq
    extra = expr_i.subs({delta: 1, p_i: p_k}) - off.subs(p_i, p_k)
    return sp.simplify(sp.expand(total + extra))


def affine_parts(expr, p_i):
    """(slope, intercept) of an expression affine in p_i: lets numpy evaluate it as
    p * slope + intercept with one [.., V] temporary instead of one per operator."""
    import sympy as sp

    expr = sp.expand(expr)
    slope = sp.diff(expr, p_i)
    if sp.diff(slope, p_i) != 0:
        raise ValueError(f"{expr} is not affine in {p_i}")
    return sp.simplify(slope), sp.simplify(expr.subs(p_i, 0))


def lambdify(args, expr):
    """Vectorized float64 numpy function of `expr` (a sympy expression)."""
    import numpy as np
    import sympy as sp

    fn = sp.lambdify(args, expr, modules="numpy")

    def vectorized(*values):
        out = np.asarray(fn(*values), dtype=np.float64)
        shape = np.broadcast_shapes(out.shape, *(np.shape(v) for v in values))
        # a constant expression lambdifies to a scalar: give it the inputs' shape
        return out if out.shape == shape else np.broadcast_to(out, shape).copy()

    return vectorized
