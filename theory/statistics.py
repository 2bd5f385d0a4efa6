"""The statistics behind every verdict: the bootstrap CI over prompts (scipy.stats.bootstrap) and the
verdict it decides, the Wilson interval of a fraction of cases (scipy.stats.binomtest), and
precision/recall of a predicted set (scikit-learn)."""
import contextlib
import contextvars
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from learning_dynamics.theory.errors import UserError
# scipy, sklearn load inside the functions that need them, so importing this module stays light (ldyn --help)


@dataclass(frozen=True)
class Outcome:
    verdict: str
    effect: float
    ci: tuple
    n: int
    detail: str = ""
    p_value: Optional[float] = None      # two-sided bootstrap p of "effect = 0" (what a multiplicity correction reads)

    def as_dict(self) -> dict:
        return {"verdict": self.verdict, "effect": self.effect, "ci": list(self.ci),
                "n": self.n, "detail": self.detail, "p_value": self.p_value}


# the training seed of every unit (prompt column) while a pooled verdict is computed (`grouped_by`)
_GROUPS = contextvars.ContextVar("bootstrap_groups", default=None)


@contextlib.contextmanager
def grouped_by(groups):
    """Inside the block every bootstrap is hierarchical: it resamples the groups (training seeds) first, then the
    units (prompts) within each group drawn, so that an interval over several seeds carries the seed-to-seed
    variation too. `groups`: one label per unit (column), in the columns' order."""
    token = _GROUPS.set(np.asarray(groups))
    try:
        yield
    finally:
        _GROUPS.reset(token)


def current_groups():
    """The groups of `grouped_by` in effect (None outside it)."""
    return _GROUPS.get()


def bootstrap(statistic: Callable, arrays, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple:
    """(point, percentile CI, two-sided p of 0) of `statistic(*arrays)`, resampling prompts: every array has
    prompts on axis -1 and is resampled with the same indices (paired: two runs on the same probe prompts keep
    their pairing); within `grouped_by`, seeds first, then prompts (a hierarchical bootstrap). Without groups the
    resampling is scipy.stats.bootstrap's."""
    from scipy import stats

    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    point = float(statistic(*arrays))
    nan = float("nan")
    if arrays[0].shape[-1] < 2 or not np.isfinite(point):
        return point, (nan, nan), None
    groups = _GROUPS.get()
    rng = np.random.default_rng(seed)
    if groups is not None and groups.shape[0] == arrays[0].shape[-1] and len(np.unique(groups)) > 1:
        draws = _hierarchical(statistic, arrays, groups, n_boot, rng)
    else:
        result = stats.bootstrap(arrays, lambda *a: statistic(*a), n_resamples=n_boot, paired=True,
                                 vectorized=False, axis=-1, confidence_level=level, method="percentile", rng=rng)
        draws = np.asarray(result.bootstrap_distribution, dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if draws.size < 2:
        return point, (nan, nan), None
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    p = min(1.0, 2 * min((np.sum(draws <= 0) + 1), (np.sum(draws >= 0) + 1)) / (draws.size + 1))
    return point, (float(low), float(high)), float(p)


def _hierarchical(statistic, arrays, groups, n_boot, rng) -> np.ndarray:
    labels = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in labels]
    out = np.empty(n_boot)
    for b in range(n_boot):
        picked = rng.integers(len(members), size=len(members))
        index = np.concatenate([rng.choice(members[g], size=members[g].size) for g in picked])
        out[b] = statistic(*[a[..., index] for a in arrays])
    return out


def bootstrap_ci(statistic: Callable, arrays, n_boot: int = 2000, seed: int = 0, level: float = 0.95):
    """(point, percentile CI) of `bootstrap`."""
    point, ci, _ = bootstrap(statistic, arrays, n_boot, seed, level)
    return point, ci


def holm(p_values) -> list:
    """Holm's step-down adjusted p-values (family-wise error control), in the order given; None stays None."""
    known = [(p, i) for i, p in enumerate(p_values) if p is not None]
    adjusted = [None] * len(p_values)
    running, m = 0.0, len(known)
    for rank, (p, i) in enumerate(sorted(known)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def verdict_from_p(effect: float, p: Optional[float], alpha: float = 0.05) -> str:
    """The verdict of an adjusted p-value: the effect's sign where p < alpha, else inconclusive."""
    if p is None or not np.isfinite(effect) or p >= alpha:
        return "inconclusive"
    return "holds" if effect > 0 else "fails"


def verdict_from_ci(ci) -> str:
    lo, hi = ci
    if lo > 0:
        return "holds"
    if hi < 0:
        return "fails"
    return "inconclusive"


def fraction_outcome(held: np.ndarray, detail: str = "") -> Outcome:
    """A step-level theorem checked on many cases: effect = fraction where it held.

    The verdict is "holds" only when it held in every case (a theorem admits no
    exceptions); the CI is the Wilson interval of the fraction.
    """
    held = np.asarray(held, dtype=bool).ravel()
    n = held.size
    if n == 0:
        return Outcome("inconclusive", float("nan"), (float("nan"), float("nan")), 0, "no cases")
    from scipy.stats import binomtest

    ci = binomtest(int(held.sum()), n).proportion_ci(confidence_level=0.95, method="wilson")
    verdict = "holds" if held.all() else "fails"
    return Outcome(verdict, float(held.mean()), (float(ci.low), float(ci.high)), n, detail)


def average_ranks(x) -> np.ndarray:
    """Ranks with ties averaged (scipy.stats.rankdata's "average"), without its per-call overhead: the bootstrap
    calls this thousands of times, and its resamples are full of ties."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="stable")
    starts = np.r_[True, np.diff(x[order]) != 0]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.r_[first[1:], len(x)] - 1
    ranks = np.empty(len(x))
    ranks[order] = ((first + last) / 2.0)[group]
    return ranks


def spearman(a, b) -> float:
    """Spearman's rho: Pearson's r of the ranks (equal to scipy.stats.spearmanr; tests hold them together)."""
    a, b = average_ranks(a), average_ranks(b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def precision_recall(predicted: np.ndarray, actual: np.ndarray) -> dict:
    """How well a predicted boolean set (e.g. theory's rising set) matches the measured one."""
    from sklearn.metrics import accuracy_score, precision_score, recall_score

    predicted = np.asarray(predicted, dtype=bool).ravel()
    actual = np.asarray(actual, dtype=bool).ravel()
    precision = precision_score(actual, predicted, zero_division=0) if predicted.size else 0.0
    recall = recall_score(actual, predicted, zero_division=0) if predicted.size else 0.0
    accuracy = accuracy_score(actual, predicted) if predicted.size else float("nan")
    return {"precision": float(precision), "recall": float(recall), "accuracy": float(accuracy),
            "n": int(predicted.size), "n_predicted": int(predicted.sum()), "n_actual": int(actual.sum())}


# --------------------------------------------------------------------------- numerical noise

# bits of the significand of each floating-point format a model may be scored in (IEEE 754; bfloat16 keeps 7)
SIGNIFICAND_BITS = {"float64": 52, "float32": 23, "float16": 10, "bfloat16": 7}
PRECISION_NAMES = {"fp64": "float64", "double": "float64", "fp32": "float32", "float": "float32",
                   "fp16": "float16", "half": "float16", "bf16": "bfloat16"}


def noise_per_token(precision: str = "float32") -> float:
    """The round-off of one token's log-probability in `precision`: the format's machine epsilon at a log-prob of
    order one nat. A lower bound (a forward pass rounds many times), so a change below it is noise for certain."""
    name = PRECISION_NAMES.get(str(precision).lower(), str(precision).lower())
    if name not in SIGNIFICAND_BITS:
        raise UserError(f"unknown precision {precision!r}; known: {', '.join(SIGNIFICAND_BITS)}")
    return 2.0 ** -SIGNIFICAND_BITS[name]


def noise_floor(tokens: float = 1.0, precision: str = "float32") -> float:
    """The numerical noise of a log-prob summed over `tokens` tokens (a per-token quantity: tokens=1)."""
    return float(tokens) * noise_per_token(precision)


def above_noise(outcome: Outcome, floor: float, precision: str = "float32") -> Outcome:
    """A verdict stands only where its interval clears the noise: "holds" needs the lower bound above `floor`,
    "fails" the upper bound below -floor; otherwise the quantity cannot be told from round-off: inconclusive."""
    lo, hi = outcome.ci
    if outcome.verdict == "holds" and lo > floor or outcome.verdict == "fails" and hi < -floor:
        return outcome
    if outcome.verdict not in ("holds", "fails"):
        return outcome
    why = (f"below the numerical noise of {precision} ({floor:.2g} in the effect's unit): the interval "
           f"[{lo:.3g}, {hi:.3g}] does not clear it")
    return Outcome("inconclusive", outcome.effect, outcome.ci, outcome.n,
                   f"{why}; {outcome.detail}" if outcome.detail else why)
