"""`ldyn theory squeeze`: one gradient step on label K of a given distribution, per label.

Validates the user's numbers (every bad input is a UserError with one line), then
reports theory.squeeze's first-order and exact changes of log p and the threshold.
"""
import json
import math

import numpy as np

from learning_dynamics.theory.errors import UserError
from learning_dynamics.theory.softmax import softmax
from learning_dynamics.theory import squeeze

SUM_TOL = 1e-6
COLUMNS = ("index", "p", "dlogp_first_order", "dlogp_exact", "rises_first_order", "rises_exact")


def _parse(text: str, what: str) -> np.ndarray:
    parts = [t.strip() for t in str(text).split(",")]
    try:
        values = [float(t) for t in parts]
    except ValueError:
        bad = next(t for t in parts if not _is_float(t))
        raise UserError(f"--{what}: {bad!r} is not a number (give comma-separated numbers, "
                        f"e.g. 0.6,0.3,0.1)") from None
    values = np.array(values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise UserError(f"--{what}: every value must be finite (got NaN or inf)")
    if values.size < 2:
        raise UserError(f"--{what}: need at least 2 labels, got {values.size}")
    return values


def _is_float(t: str) -> bool:
    try:
        float(t)
        return True
    except ValueError:
        return False


def _distribution(args) -> np.ndarray:
    if getattr(args, "probs", None) is not None:
        p = _parse(args.probs, "probs")
        if np.any(p < 0):
            raise UserError("--probs: probabilities must be >= 0")
        total = float(p.sum())
        if abs(total - 1.0) > SUM_TOL:
            raise UserError(f"--probs: probabilities sum to {total:.10g}, not 1 (within {SUM_TOL:g})")
        return p / total
    if getattr(args, "logits", None) is not None:
        return softmax(_parse(args.logits, "logits"))
    raise UserError("give --probs or --logits")


OVERFLOW = ("the change exceeds the float64 range (|dlog p| > 1.8e308) at this eta; "
            "its sign (rises_*) is still exact")


def compute(p: np.ndarray, k: int, eta: float, sign: int) -> dict:
    """Strict-JSON-ready: a change too large for float64 is None, and `null_reason` says why."""

    with np.errstate(all="ignore"):  # overflow at eta ~ 1e308 is reported as null, not warned about
        first = squeeze.first_order_dlogp(p, k, eta, sign)
        exact = squeeze.exact_dlogp(p, k, eta, sign)
        threshold = float(squeeze.threshold(p, k, sign))
    labels = [{"index": i, "p": float(p[i]), "dlogp_first_order": _finite(first[i]),
               "dlogp_exact": _finite(exact[i]), "rises_first_order": bool(first[i] > 0),
               "rises_exact": bool(exact[i] > 0)} for i in range(p.size)]
    result = {"label": k, "sign": "negative" if sign < 0 else "positive", "eta": eta,
              "threshold": threshold, "labels": labels}
    if not (np.all(np.isfinite(first)) and np.all(np.isfinite(exact))):
        result["null_reason"] = OVERFLOW
    return result


def _finite(x):
    return float(x) if math.isfinite(x) else None


def squeeze_command(args) -> int:
    p = _distribution(args)
    negative, positive = getattr(args, "negative", None), getattr(args, "positive", None)
    if (negative is None) == (positive is None):
        raise UserError("give exactly one of --negative K or --positive K")
    k, sign = (negative, -1) if negative is not None else (positive, +1)
    if not 0 <= k < p.size:
        raise UserError(f"label K = {k} is out of range: use 0..{p.size - 1} for {p.size} labels")
    eta = float(getattr(args, "lr", 0.1))
    if not math.isfinite(eta) or eta <= 0:
        raise UserError(f"--lr must be a finite number > 0, got {eta}")
    result = compute(p, k, eta, sign)
    if getattr(args, "json", False):
        print(json.dumps(result, allow_nan=False))
        return 0
    direction = "negative" if sign < 0 else "positive"
    side = ">" if sign < 0 else "<"
    print(f"{direction} step on label {k}, eta = {eta:g}")
    print(f"threshold ||p||^2 - p_k = {result['threshold']:.6g}: label i != {k} rises to first "
          f"order iff p_i {side} threshold")
    print("  ".join(f"{c:>18}" for c in COLUMNS))
    for row in result["labels"]:
        cells = [f"{row['index']:>18d}", f"{row['p']:>18.6g}", _cell(row['dlogp_first_order']),
                 _cell(row['dlogp_exact']), f"{str(row['rises_first_order']):>18}",
                 f"{str(row['rises_exact']):>18}"]
        print("  ".join(cells))
    if "null_reason" in result:
        print(f"overflow: {result['null_reason']} (null in --json)")
    return 0


def _cell(value) -> str:
    return f"{'overflow':>18}" if value is None else f"{value:>18.6g}"
