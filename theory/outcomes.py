"""The building blocks of every evaluator (theory/evaluators.py): a probe curve's change over a run, the
outcome of a series that lacks a key or holds too few prompts, and a bootstrapped Outcome."""
from typing import Mapping, Optional

import numpy as np

from learning_dynamics.theory.statistics import Outcome, bootstrap, verdict_from_ci


def change(series: Mapping, key: str) -> np.ndarray:
    """End minus start for every prompt."""
    curve = np.asarray(series[key], dtype=np.float64)
    return curve[-1] - curve[0]


def missing_keys(series: Mapping, keys) -> Optional[Outcome]:
    absent = [k for k in keys if k not in series]
    if absent:
        return Outcome("inconclusive", float("nan"), (float("nan"), float("nan")), 0,
                       "not tracked: " + ", ".join(absent))
    short = [k for k in keys if np.asarray(series[k]).shape[0] < 2]
    if short:
        return Outcome("inconclusive", float("nan"), (float("nan"), float("nan")), 0,
                       "fewer than 2 evaluations: " + ", ".join(short))
    return None


# A verdict read on a subset of the probe prompts (those with a shared prefix, those whose generations are
# long enough) needs this many: a percentile bootstrap over fewer prompts has far too few distinct
# resamples for its 95% interval to cover (3 prompts give 10).
MIN_SUBSET_PROMPTS = 8


def too_few_prompts(n: int, what: str) -> Optional[Outcome]:
    if n >= MIN_SUBSET_PROMPTS:
        return None
    return Outcome("inconclusive", float("nan"), (float("nan"),) * 2, int(n),
                   f"only {n} probe prompts {what} (at least {MIN_SUBSET_PROMPTS} needed for a bootstrap interval)")


def bootstrap_outcome(statistic, arrays, detail, seed=0) -> Outcome:
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    point, ci, p = bootstrap(statistic, arrays, seed=seed)
    return Outcome(verdict_from_ci(ci), point, ci, int(arrays[0].shape[-1]), detail, p)
