"""The catalogue of checkable predictions: one id, one claim, the formula it rests on.

`sim/` and `validate/` evaluate this same catalogue, so a prediction means the
same thing on free logits, a digit classifier, a toy LM and a real LLM.

Three scopes:
- "step": a one-step (or gradient-flow) statement about a softmax; checked
  exactly on free logits and token by token on real models.
- "run": a statement about a whole finetuning run, evaluated on its probe curves
  (`series`, below) by `evaluate_run`.
- "compare": a statement about two runs on the same probe prompts, evaluated by
  `evaluate_comparison`.

`series` maps a key to an array [n_evals, n_prompts] (first row = before training):
    "logps/<probe>"   summed log-prob of that probe response under its prompt
    "entropy/chosen"  mean token entropy over y+'s positions
    "sqnorm/chosen"   mean ||pi||^2 over y+'s positions
    "gen/distinct2", "gen/rep4"   repetition statistics of greedy generations
An effect is signed so that a positive number is the predicted direction; its
95% interval comes from a bootstrap over prompts; the verdict is "holds" when
the interval lies above 0, "fails" when below, else "inconclusive". A failed
prediction is a result, reported as such.
"""
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

import numpy as np

from learning_dynamics.theory import algorithms
from learning_dynamics.theory import probes as probe_registry

# The probe types and their descriptions come from the probe registry (theory.probes).
PROBES = {p.name: p.description for p in probe_registry.PROBE_TYPES}

# Probes that are neither trained on nor y*: under off-policy DPO they all fall.
OTHER_PROBES = probe_registry.OTHER

VERDICTS = ("holds", "fails", "inconclusive")
# Which algorithms a prediction concerns is read from the registry's traits, never listed by name.
DPO_FAMILY = algorithms.having("offpolicy-negative")   # negative gradients on the dataset's unlikely y-
SQUEEZING = algorithms.having("squeezes")              # negative gradients on unlikely responses anywhere
POSITIVE_ONLY = algorithms.having("positive-only")     # SFT-like: every coefficient pushes its response up


@dataclass(frozen=True)
class Outcome:
    verdict: str
    effect: float
    ci: tuple
    n: int
    detail: str = ""

    def as_dict(self) -> dict:
        return {"verdict": self.verdict, "effect": self.effect, "ci": list(self.ci),
                "n": self.n, "detail": self.detail}


@dataclass(frozen=True)
class Prediction:
    id: str
    claim: str
    formula: str                  # where theory/ states it (function or formula)
    paper_item: str               # paper-notes section 5 item, or "ours"
    scope: str                    # "step" | "run" | "compare"
    levels: tuple                 # where it is evaluated: logits, digits, lm, llm
    applies_to: tuple = ()        # algorithms a run-level prediction is about
    effect_unit: str = ""
    evaluate: Optional[Callable] = field(default=None, compare=False, repr=False)


# --------------------------------------------------------------------------- statistics

def bootstrap_ci(statistic: Callable, arrays, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95):
    """Point estimate and percentile CI of `statistic(*arrays)`, resampling prompts (scipy.stats.bootstrap).

    Every array has prompts on axis -1 and is resampled with the same indices
    (paired: two runs on the same probe prompts keep their pairing).
    """
    from scipy import stats

    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    point = float(statistic(*arrays))
    if arrays[0].shape[-1] < 2 or not np.isfinite(point):
        return point, (float("nan"), float("nan"))
    result = stats.bootstrap(arrays, lambda *a: statistic(*a), n_resamples=n_boot, paired=True,
                             vectorized=False, axis=-1, confidence_level=level, method="percentile",
                             rng=np.random.default_rng(seed))
    return point, (float(result.confidence_interval.low), float(result.confidence_interval.high))


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


# --------------------------------------------------------------------------- run-level checks

def _change(series: Mapping, key: str) -> np.ndarray:
    """End minus start for every prompt."""
    curve = np.asarray(series[key], dtype=np.float64)
    return curve[-1] - curve[0]


def _missing(series: Mapping, keys) -> Optional[Outcome]:
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


def _too_few(n: int, what: str) -> Optional[Outcome]:
    if n >= MIN_SUBSET_PROMPTS:
        return None
    return Outcome("inconclusive", float("nan"), (float("nan"),) * 2, int(n),
                   f"only {n} probe prompts {what} (at least {MIN_SUBSET_PROMPTS} needed for a bootstrap interval)")


def _outcome(statistic, arrays, detail, seed=0) -> Outcome:
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    point, ci = bootstrap_ci(statistic, arrays, seed=seed)
    return Outcome(verdict_from_ci(ci), point, ci, int(arrays[0].shape[-1]), detail)


def _rises(key: str):
    def evaluate(series, seed=0):
        return _missing(series, [key]) or _outcome(
            np.mean, [_change(series, key)], f"mean change of {key}, end - start", seed)
    return evaluate


def _falls(key: str):
    def evaluate(series, seed=0):
        return _missing(series, [key]) or _outcome(
            lambda d: -np.mean(d), [_change(series, key)], f"mean fall of {key}, start - end", seed)
    return evaluate


def _all_of(outcomes: Mapping, what: str) -> Outcome:
    """An intersection-union test: holds only if every part holds, fails if any part fails.

    The effect and interval reported are those of the part that decided the
    verdict: a failing part (the worst), else an inconclusive one (the lowest
    lower bound), else, when all hold, the part with the lowest lower bound.
    """
    verdicts = {o.verdict for o in outcomes.values()}
    verdict = "fails" if "fails" in verdicts else ("holds" if verdicts == {"holds"} else "inconclusive")
    pool = {k: o for k, o in outcomes.items() if o.verdict == verdict} or outcomes
    low = lambda k: pool[k].ci[0] if np.isfinite(pool[k].ci[0]) else -np.inf  # noqa: E731
    decider = min(pool, key=(lambda k: pool[k].ci[1]) if verdict == "fails" else low)
    d = pool[decider]
    detail = f"decided by {decider} ({what}); " + ", ".join(
        f"{k} {o.effect:+.3g} [{o.ci[0]:.3g}, {o.ci[1]:.3g}]" for k, o in outcomes.items())
    return Outcome(verdict, d.effect, d.ci, d.n, detail)


def _rejected_falls_more(series, seed=0):
    """Both y+ and y- fall, and y- falls more (an SFT run, where y+ rises, must not pass)."""
    keys = ["logps/chosen", "logps/rejected"]
    missing = _missing(series, keys)
    if missing:
        return missing
    c, r = _change(series, keys[0]), _change(series, keys[1])
    parts = {"fall of y+": _outcome(lambda a: -np.mean(a), [c], "", seed),
             "fall of y-": _outcome(lambda a: -np.mean(a), [r], "", seed),
             "change of y+ minus change of y-": _outcome(lambda a, b: np.mean(a) - np.mean(b), [c, r], "", seed)}
    return _all_of(parts, "all three must be above 0")


def _all_other_probes_fall(series, seed=0):
    """Every probe type must fall: an intersection-union test over probe types."""
    keys = [f"logps/{p}" for p in OTHER_PROBES if f"logps/{p}" in series]
    if not keys:
        return _missing(series, [f"logps/{OTHER_PROBES[0]}"])
    return _all_of({k[6:]: _falls(k)(series, seed=seed) for k in keys}, "every probe's fall must be above 0")


def _against_control(key: str, sign: float, what: str):
    """Change of `key` in the run minus its change in the SFT control (same pairs, seed and probes),
    paired over prompts; sign +1: predicted to rise more than under SFT, -1: to fall more.

    Without a control the raw change is shown and the verdict is inconclusive: SFT alone moves
    these quantities too (it raises y* and lowers the entropy), so the raw change is no evidence.
    """
    def evaluate(series, seed=0, control=None):
        missing = _missing(series, [key])
        if missing:
            return missing
        run = _change(series, key)
        if control is None:
            point, ci = bootstrap_ci(lambda a: sign * np.mean(a), [run], seed=seed)
            return Outcome("inconclusive", point, ci, int(run.size),
                           f"no SFT control: raw {what} shown, not judged (SFT alone moves it too)")
        missing = _missing(control, [key])
        if missing:
            return missing
        base = _change(control, key)
        if base.shape != run.shape:
            return Outcome("inconclusive", float("nan"), (float("nan"),) * 2, 0,
                           "the run and its SFT control do not share the same probe prompts")
        out = _outcome(lambda a, b: sign * (np.mean(a) - np.mean(b)), [run, base],
                       f"{what} in this run minus in the SFT control (paired over prompts); "
                       f"run {sign * np.mean(run):+.3g}, control {sign * np.mean(base):+.3g}", seed)
        return out
    evaluate.controlled = True
    evaluate.needs_control = True
    return evaluate


def _gains_more_than(first: str, second: str):
    def evaluate(series, seed=0):
        keys = [f"logps/{first}", f"logps/{second}"]
        return _missing(series, keys) or _outcome(
            lambda a, b: np.mean(a) - np.mean(b),
            [_change(series, keys[0]), _change(series, keys[1])],
            f"change of log pi({first}) minus change of log pi({second})", seed)
    return evaluate


def _rise_then_fall(probe: str):
    """Rises to an interior peak, then falls: effect = min(peak - start, peak - end).

    The peak is the interior evaluation where the mean over prompts is highest
    (picked once, on all prompts); the bootstrap then resamples prompts around
    it. A curve that never rises above its start gets a negative effect.
    """
    def evaluate(series, seed=0):
        key = f"logps/{probe}"
        missing = _missing(series, [key])
        if missing:
            return missing
        curve = np.asarray(series[key], dtype=np.float64)
        if curve.shape[0] < 3:
            return Outcome("inconclusive", float("nan"), (float("nan"),) * 2, 0,
                           "needs at least 3 evaluations")
        peak = 1 + int(np.argmax(curve[1:-1].mean(axis=1)))
        rise, fall = curve[peak] - curve[0], curve[peak] - curve[-1]
        return _outcome(lambda r, f: min(np.mean(r), np.mean(f)), [rise, fall],
                        f"min(rise to the peak at eval {peak}, fall after it) of log pi({probe})", seed)
    return evaluate


def per_token(series: Mapping, probe: str) -> np.ndarray:
    """Mean per-token log-prob of a probe [n_evals, n_prompts]; y* ("greedy") is scored on y+'s tokens."""
    if probe == "greedy":
        if "argmax/chosen" in series and "n_tokens/chosen" in series:
            return np.asarray(series["argmax/chosen"]) / np.maximum(np.asarray(series["n_tokens/chosen"]), 1)
        return np.asarray(series["logps/greedy"]) / np.maximum(np.asarray(series["n_tokens/chosen"]), 1)
    return np.asarray(series[f"logps/{probe}"]) / np.maximum(np.asarray(series[f"n_tokens/{probe}"]), 1)


def squeeze_index_curve(series: Mapping) -> np.ndarray:
    """[n_evals, n_prompts]: per-token gain of y* since the start minus the mean per-token change of the
    other probe types (nats per token), so that long probes do not dominate.

    Series without token counts (older tables) fall back to summed log-probs.
    """
    keys = [p for p in OTHER_PROBES if f"logps/{p}" in series]
    if all(f"n_tokens/{p}" in series for p in keys + ["chosen"]):
        curve = {p: per_token(series, p) for p in keys + ["greedy"]}
    else:
        curve = {p: np.asarray(series[f"logps/{p}"], dtype=np.float64) for p in keys + ["greedy"]}
    delta = {p: c - c[0] for p, c in curve.items()}
    return delta["greedy"] - np.mean([delta[p] for p in keys], axis=0)


def squeeze_index(series: Mapping) -> np.ndarray:
    """Per prompt, end of the run: squeeze_index_curve's last row."""
    return squeeze_index_curve(series)[-1]


def margin_curve(series: Mapping) -> np.ndarray:
    """[n_evals, n_prompts]: the preference margin on the probe pairs, change of log pi(y+) minus change
    of log pi(y-) since the start (nats; DPO's implicit reward margin divided by beta)."""
    c, r = (np.asarray(series[f"logps/{k}"], dtype=np.float64) for k in ("chosen", "rejected"))
    return (c - c[0]) - (r - r[0])


def at_margin(series: Mapping, target: float):
    """The squeeze index per prompt where the mean probe margin first reaches `target`, linearly
    interpolated between evaluations; None if it never does."""
    margin = margin_curve(series).mean(axis=1)
    index = squeeze_index_curve(series)
    above = np.nonzero(margin >= target)[0]
    if not above.size:
        return None
    i = int(above[0])
    if i == 0:
        return index[0]
    w = (target - margin[i - 1]) / (margin[i] - margin[i - 1])
    return index[i - 1] + w * (index[i] - index[i - 1])


def _squeezes_less(series_reference: Mapping, series_other: Mapping, seed=0, basis="matched margin") -> Outcome:
    """The other run squeezes less than the reference run (paired over prompts), compared where both
    reach the same preference margin on the probe pairs (the largest both reach), or at equal steps."""
    for s in (series_reference, series_other):
        missing = _missing(s, ["logps/greedy", "logps/chosen", "logps/rejected"])
        if missing:
            return missing
    a, b = squeeze_index(series_reference), squeeze_index(series_other)
    if a.shape != b.shape:
        return Outcome("inconclusive", float("nan"), (float("nan"),) * 2, 0,
                       "the two runs do not share the same probe prompts")
    what = "per-token squeeze index (y* gain minus the mean probe change) of the reference run minus the other's"
    if basis == "equal steps":
        return _outcome(lambda x, y: np.mean(x) - np.mean(y), [a, b], what + ", at the end of each run", seed)
    ends = [margin_curve(s).mean(axis=1) for s in (series_reference, series_other)]
    target = min(float(e.max()) for e in ends)
    if target <= 0:
        return Outcome("inconclusive", float("nan"), (float("nan"),) * 2, 0,
                       "one of the runs never raises the probe margin above 0: nothing to match")
    a, b = at_margin(series_reference, target), at_margin(series_other, target)
    return _outcome(lambda x, y: np.mean(x) - np.mean(y), [a, b],
                    what + f", each where its mean probe margin first reaches {target:.3g} nats "
                    f"(final margins {ends[0][-1]:.3g} and {ends[1][-1]:.3g})", seed)


def _spearman(x, y) -> float:
    from scipy import stats
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(stats.spearmanr(x, y).statistic)


def _dose_response(dose_key: str, dose_name: str, sign: float):
    """Does the squeeze grow with the dose across prompts? effect = sign * Spearman rho between the
    prompt's initial dose and its squeeze index (against the SFT control's when one is given)."""
    def evaluate(series, seed=0, control=None):
        missing = _missing(series, [dose_key, "logps/greedy", "n_tokens/chosen"])
        if missing:
            return missing
        dose = np.asarray(series[dose_key], dtype=np.float64)[0]
        strength = squeeze_index(series)
        against = "raw squeeze index (no SFT control given)"
        if control is not None and squeeze_index(control).shape == strength.shape:
            strength = strength - squeeze_index(control)
            against = "squeeze index minus the SFT control's"
        thirds = np.array_split(np.argsort(dose), 3)
        bins = ", ".join(f"{dose[t].mean():.3g}: {strength[t].mean():+.3g}" for t in thirds if t.size)
        return _outcome(lambda d, st: sign * _spearman(d, st), [dose, strength],
                        f"{'-' if sign < 0 else ''}Spearman rho of the initial {dose_name} and the {against}, "
                        f"per token; tertiles (mean dose: mean squeeze) {bins}", seed)
    evaluate.controlled = True
    return evaluate


def _shared_prefix_does_not_squeeze(series, seed=0):
    """At the positions y+ and y- share (the same context, pushed up and down at once) the entropy falls
    less per token than at y-'s own positions: effect = per-token entropy fall at rejected-only positions
    minus at shared-prefix positions, over the prompts whose y+ and y- share a prefix."""
    keys = ["entropy/shared_prefix", "n_tokens/shared_prefix", "entropy/rejected", "n_tokens/rejected"]
    missing = _missing(series, keys)
    if missing:
        return missing
    n_shared = np.asarray(series["n_tokens/shared_prefix"])[0]
    n_rej = np.asarray(series["n_tokens/rejected"])[0]
    keep = (n_shared > 0) & (n_rej > n_shared)
    too_few = _too_few(int(keep.sum()), "have y+ and y- with a shared prefix")
    if too_few:
        return too_few
    total_shared = np.asarray(series["entropy/shared_prefix"]) * n_shared
    total_rej = np.asarray(series["entropy/rejected"]) * n_rej
    only = (total_rej - total_shared)[:, keep] / (n_rej - n_shared)[keep]
    shared = np.asarray(series["entropy/shared_prefix"])[:, keep]
    fall_only, fall_shared = only[0] - only[-1], shared[0] - shared[-1]
    return _outcome(lambda a, b: np.mean(a) - np.mean(b), [fall_only, fall_shared],
                    f"per-token entropy fall at rejected-only positions ({np.mean(fall_only):+.3g}) minus at "
                    f"shared-prefix positions ({np.mean(fall_shared):+.3g}), {int(keep.sum())} prompts with a "
                    f"shared prefix ({int(n_shared[keep].sum())} shared tokens)", seed)


def _top_token_share(tv, gain) -> float:
    return float(np.mean(gain) / max(np.mean(tv), 1e-12))


def _mass_into_top_token(series, seed=0, control=None):
    """Of the probability mass that moved on y+'s contexts (total variation from the start), the share the
    initial top token gained, minus the same share under the SFT control (paired over prompts): SFT's push
    on y+ moves mass too, into y+'s own tokens, so only the excess over SFT is the squeeze's direction."""
    keys = ["mass/tv", "mass/top_gain"]
    missing = _missing(series, keys)
    if missing:
        return missing
    tv, gain = np.asarray(series["mass/tv"])[-1], np.asarray(series["mass/top_gain"])[-1]
    if control is None:
        point, ci = bootstrap_ci(_top_token_share, [tv, gain], seed=seed)
        return Outcome("inconclusive", point, ci, int(tv.size),
                       "no SFT control: the raw share of the moved mass that went into the initial top token "
                       "is shown, not judged (SFT's push on y+ moves mass too)")
    missing = _missing(control, keys)
    if missing:
        return missing
    tv_c, gain_c = np.asarray(control["mass/tv"])[-1], np.asarray(control["mass/top_gain"])[-1]
    if tv_c.shape != tv.shape:
        return Outcome("inconclusive", float("nan"), (float("nan"),) * 2, 0,
                       "the run and its SFT control do not share the same probe prompts")
    return _outcome(lambda t, g, tc, gc: _top_token_share(t, g) - _top_token_share(tc, gc),
                    [tv, gain, tv_c, gain_c],
                    f"share of the moved mass that went into the initial top token in this run "
                    f"({_top_token_share(tv, gain):+.3g} of mean total variation {np.mean(tv):.3g}) minus in "
                    f"the SFT control ({_top_token_share(tv_c, gain_c):+.3g} of {np.mean(tv_c):.3g})", seed)


_mass_into_top_token.controlled = True
_mass_into_top_token.needs_control = True


def _repetition_against_control(series, seed=0, control=None):
    """Change of the repeated 4-gram fraction of each greedy generation's first words (validate.repetition:
    PREFIX_WORDS), in the run minus in the SFT control, over the prompts whose generations reach that length
    at the start and the end of both runs: length-matched, and no continuation forced past its end of turn."""
    key = "gen/rep4_prefix"
    missing = _missing(series, [key]) or (control is not None and _missing(control, [key]))
    if missing:
        return missing
    run = np.asarray(series[key], dtype=np.float64)[[0, -1]]
    if control is None:
        keep = np.isfinite(run).all(axis=0)
        point, ci = bootstrap_ci(np.mean, [run[1, keep] - run[0, keep]], seed=seed)
        return Outcome("inconclusive", point, ci, int(keep.sum()),
                       "no SFT control: the raw change of repetition is shown, not judged")
    base = np.asarray(control[key], dtype=np.float64)[[0, -1]]
    if base.shape != run.shape:
        return Outcome("inconclusive", float("nan"), (float("nan"),) * 2, 0,
                       "the run and its SFT control do not share the same generation prompts")
    keep = np.isfinite(run).all(axis=0) & np.isfinite(base).all(axis=0)
    too_few = _too_few(int(keep.sum()), f"of {run.shape[1]} have generations of at least the compared "
                       "length at the start and end of both runs")
    if too_few:
        return too_few
    d_run, d_base = run[1, keep] - run[0, keep], base[1, keep] - base[0, keep]
    return _outcome(lambda a, b: np.mean(a) - np.mean(b), [d_run, d_base],
                    f"rise of the repeated 4-gram fraction of the generations' first words in this run "
                    f"({np.mean(d_run):+.3g}) minus in the SFT control ({np.mean(d_base):+.3g}), "
                    f"{int(keep.sum())} prompts", seed)


_repetition_against_control.controlled = True
_repetition_against_control.needs_control = True


# --------------------------------------------------------------------------- the catalogue

_S = "step"
CATALOGUE = (
    # ---- one step on a softmax (free logits, linear head, token level)
    Prediction("P01", "A negative gradient on label k always lowers pi(k), for every step size.",
               "theory.squeeze.exact_dlogp: pi'_k/pi_k = exp(eta(pi_k - 1))/Z < 1", "1", _S,
               ("logits", "digits", "llm")),
    Prediction("P02", "Under a pure negative gradient on k, y* = argmax_{i != k} pi_i always rises.",
               "theory.squeeze.exact_dlogp: Z < exp(eta pi_{y*})", "2", _S, ("logits", "digits", "llm")),
    Prediction("P03", "First-order law: dlog pi_i = eta (pi_i + pi_k - ||pi||^2) for i != k.",
               "theory.squeeze.first_order_dlogp", "3", _S, ("logits", "digits", "llm")),
    Prediction("P04", "Regime switch: no label falls when pi_k >= ||pi||^2; otherwise only labels "
               "above ||pi||^2 - pi_k rise.", "theory.squeeze.threshold", "4", _S, ("logits", "digits")),
    Prediction("P05", "Peakier distributions squeeze harder: more labels fall.",
               "theory.squeeze.threshold (grows with ||pi||^2)", "5", _S, ("logits", "digits")),
    Prediction("P06", "Smaller pi(k) squeezes harder: more labels fall and the others fall further.",
               "theory.squeeze.threshold = ||pi||^2 - pi_k", "6", _S, ("logits",)),
    Prediction("P06b", "What does NOT follow: y*'s own first-order gain does not grow as pi(k) falls.",
               "theory.squeeze.first_order_dlogp at i = y*", "6", _S, ("logits",)),
    Prediction("P07", "A positive (SFT) step flattens the competitors: the most likely competitor "
               "loses the most.", "theory.squeeze.first_order_dlogp(sign=+1) = eta(||pi||^2 - pi_k - pi_i)",
               "7", _S, ("logits", "digits")),
    Prediction("P08", "DPO on one shared context does not squeeze: every other label shifts by the "
               "same log amount.", "theory.squeeze (shared-context DPO step)", "8", _S, ("logits", "llm")),
    Prediction("P16", "DPO's coefficient beta*sigma(-u) falls as the margin grows; IPO's push on y- "
               "reverses once the margin passes 1/(2 beta).", "theory.residuals.residual_coefficients",
               "16", _S, ("logits",)),
    Prediction("P18", "First-order mass conservation: sum_i pi_i dlog pi_i = O(eta^2).",
               "theory.softmax.apply_A (A v = v - pi.v)", "18", _S, ("logits", "digits", "llm")),
    Prediction("P19", "The AKG prediction -eta A K G matches the measured change; its error shrinks as "
               "O(eta^2).", "theory.decomposition.akg_dlogp", "19", _S, ("logits", "digits", "llm")),
    Prediction("P20", "The eNTK is relatively stable during training.", "theory.decomposition (K fixed)",
               "20", _S, ("digits",)),
    Prediction("X01", "The set of labels that gain under a negative step is a top set (rich get richer).",
               "theory.squeeze.exact_dlogp: pi'_i/pi_i = exp(eta pi_i)/Z increasing in pi_i", "ours", _S,
               ("logits",)),
    Prediction("X02", "As eta -> infinity a negative step gives one-hot on y*.",
               "theory.squeeze.exact_dlogp", "ours", _S, ("logits",)),
    Prediction("X03", "Repeated negative steps (gradient flow) converge to one-hot on the argmax; "
               "once pi_k ~ 0 the flow is the replicator dlog pi_i/dt = pi_i - ||pi||^2.",
               "theory.flow", "ours", _S, ("logits",)),
    Prediction("X04", "DPO on two contexts coupled by a kernel kappa: pi(y+) can fall; theory gives "
               "when.", "theory.squeeze (two-context DPO)", "9", _S, ("logits",)),
    Prediction("X05", "A negative sampled from pi (on-policy) squeezes less than one from the tail.",
               "theory.squeeze.threshold", "14", _S, ("logits",)),

    # ---- whole runs: SFT
    Prediction("P12d", "SFT raises log pi(y+).", "G_SFT = pi - e_y+ (theory.residuals)", "12", "run",
               ("lm", "llm"), POSITIVE_ONLY, "nats", _rises("logps/chosen")),
    Prediction("P11", "SFT raises y* too, so y* rising alone is not the squeeze signature.",
               "theory.squeeze.first_order_dlogp(sign=+1)", "11", "run", ("lm", "llm"), POSITIVE_ONLY,
               "nats", _rises("logps/greedy")),
    Prediction("P12a", "SFT raises another prompt's answer y_{j != i} under x_i (the hallucination "
               "mechanism).", "theory.decomposition (K between [x_i; y_i] and [x_i; y_j])", "12", "run",
               ("lm", "llm"), POSITIVE_ONLY, "nats", _rises("logps/other_chosen")),
    Prediction("P12b", "Under SFT, y_{j != i} gains more than a fluent irrelevant response.",
               "theory.decomposition (K similarity)", "12", "run", ("lm", "llm"), POSITIVE_ONLY, "nats",
               _gains_more_than("other_chosen", "irrelevant")),
    Prediction("P12c", "SFT lowers random-token responses.", "theory.squeeze.first_order_dlogp(sign=+1)",
               "12", "run", ("lm", "llm"), POSITIVE_ONLY, "nats", _falls("logps/random_tokens")),
    Prediction("P13a", "Under SFT, y- (similar to y+) rises first, then falls.",
               "theory.decomposition (K similarity, then A's flattening)", "13", "run", ("lm", "llm"),
               POSITIVE_ONLY, "nats", _rise_then_fall("rejected")),
    Prediction("P13b", "Under SFT, a rephrase of y+ rises first, then falls.",
               "theory.decomposition", "13", "run", ("lm", "llm"), POSITIVE_ONLY, "nats",
               _rise_then_fall("chosen_rephrase")),

    # ---- whole runs: off-policy negative gradients
    Prediction("P09a", "Off-policy DPO ends with log pi(y+) below its start.",
               "theory.squeeze + two-context coupling (X04)", "9", "run", ("lm", "llm"), DPO_FAMILY,
               "nats", _falls("logps/chosen")),
    Prediction("P09b", "Off-policy DPO lowers both log pi(y+) and log pi(y-), y- faster.",
               "theory.residuals (equal and opposite coefficients, valley of y-)", "9", "run",
               ("lm", "llm"), DPO_FAMILY, "nats", _rejected_falls_more),
    Prediction("P09c", "Negative gradients on unlikely responses raise y* (the squeeze) more than SFT "
               "on the same pairs does.",
               "theory.squeeze (P02 at rejected-only positions)", "9", "run", ("lm", "llm"),
               SQUEEZING, "nats", _against_control("logps/greedy", +1.0, "rise of log pi(y*)")),
    Prediction("P09d", "Off-policy DPO lowers every other probe response.",
               "theory.squeeze.threshold (labels below ||pi||^2 - pi_k fall)", "9", "run",
               ("lm", "llm"), DPO_FAMILY, "nats", _all_other_probes_fall),
    Prediction("P10", "Negative gradients make the model peakier: the mean token entropy on y+'s "
               "contexts falls more than under SFT on the same pairs.", "theory.flow (replicator sharpening)",
               "10", "run", ("lm", "llm"), SQUEEZING, "nats of entropy",
               _against_control("entropy/chosen", -1.0, "fall of the mean token entropy")),
    Prediction("P17", "Long off-policy DPO raises repetition in greedy generations (the repeated 4-gram "
               "fraction of each generation's first 12 words, against the SFT control).",
               "theory.flow (mass piles onto the argmax)", "17", "run", ("llm",), ("dpo",),
               "repeated 4-gram fraction", _repetition_against_control),
    Prediction("P05r", "Dose-response: prompts whose y- sits in a peakier distribution (lower initial "
               "entropy on y-'s contexts) squeeze harder.", "theory.squeeze.threshold (grows with ||pi||^2)",
               "5", "run", ("llm",), DPO_FAMILY, "Spearman rho",
               _dose_response("entropy/rejected", "mean token entropy on y-'s contexts", -1.0)),
    Prediction("P06r", "Dose-response: prompts whose y- is less likely (lower initial per-token "
               "log pi(y-)) squeeze harder.", "theory.squeeze.threshold = ||pi||^2 - pi_k", "6", "run",
               ("llm",), DPO_FAMILY, "Spearman rho",
               _dose_response("logp_mean/rejected", "per-token log pi(y-)", -1.0)),
    Prediction("P08r", "At the positions y+ and y- share, DPO's two pushes cancel: the entropy falls "
               "less there than at y-'s own positions.", "theory.squeeze (shared-context DPO step)", "8",
               "run", ("llm",), ("dpo", "ipo"), "nats of entropy per token", _shared_prefix_does_not_squeeze),
    Prediction("P18r", "Mass conservation directs the squeeze: a larger share of the probability mass that "
               "moves on y+'s contexts goes into the initial top token than under SFT on the same pairs.",
               "theory.softmax.apply_A (A v = v - pi.v)", "18", "run", ("llm",), DPO_FAMILY,
               "share of moved mass, minus SFT's", _mass_into_top_token),

    # ---- two runs on the same probe prompts
    Prediction("P14", "On-policy negatives squeeze less than off-policy ones.",
               "theory.squeeze.threshold (pi_k >= ||pi||^2: no squeeze)", "14", "compare",
               ("lm", "llm"), ("dpo", "onpolicy-dpo"), "nats per token of squeeze index", _squeezes_less),
    Prediction("P15", "SFT on y+ and y- before DPO ('extend') squeezes less during DPO.",
               "theory.squeeze.threshold (lifting pi(y-) out of the valley)", "15", "compare",
               ("lm", "llm"), ("dpo", "extend"), "nats per token of squeeze index", _squeezes_less),
)


BY_ID = {p.id: p for p in CATALOGUE}

_SQUEEZE_PROBES = ("chosen",) + OTHER_PROBES     # the squeeze index reads y* (on y+) and every other probe
# the probe responses each run-level verdict reads: a verdict whose probes are training targets carries a caveat
PROBES_USED = {
    "P12d": ("chosen",), "P11": ("chosen",), "P12a": ("other_chosen",), "P12b": ("other_chosen", "irrelevant"),
    "P12c": ("random_tokens",), "P13a": ("rejected",), "P13b": ("chosen_rephrase",),
    "P09a": ("chosen",), "P09b": ("chosen", "rejected"), "P09c": ("chosen",), "P09d": OTHER_PROBES,
    "P10": ("chosen",), "P17": (), "P05r": ("rejected",) + _SQUEEZE_PROBES,
    "P06r": ("rejected",) + _SQUEEZE_PROBES, "P08r": ("chosen", "rejected"), "P18r": ("chosen",),
    "P14": _SQUEEZE_PROBES, "P15": _SQUEEZE_PROBES,
}


# property tests (hypothesis, over extreme inputs too) that prove a step-level claim as a theorem
THEOREM_TESTS = {
    "P01": ("tests/test_theory_squeeze.py::test_P01_target_always_falls",),
    "P02": ("tests/test_theory_squeeze.py::test_P02_runner_up_always_rises",),
    "P03": ("tests/test_theory_squeeze.py::test_exact_and_first_order_agree_to_second_order",),
    "P04": ("tests/test_theory_squeeze.py::test_P04_first_order_rising_set_is_the_threshold_set",
            "tests/test_theory_squeeze.py::test_P04_no_squeeze_when_target_is_peaky"),
    "P05": ("tests/test_theory_squeeze.py::test_P05_peakier_squeezes_harder",),
    "P06": ("tests/test_theory_squeeze.py::test_P06_smaller_target_squeezes_harder_but_y_star_gains_less",),
    "P06b": ("tests/test_theory_squeeze.py::test_P06_smaller_target_squeezes_harder_but_y_star_gains_less",
             "tests/test_theory_squeeze.py::test_P06b_paper_numbers"),
    "P08": ("tests/test_theory_squeeze.py::test_P08_shared_context_dpo_does_not_squeeze",),
    "P16": ("tests/test_losses_vs_theory.py::test_dpo_coefficient_is_beta_sigma_minus_u",),
    "P18": ("tests/test_theory_softmax.py::test_mass_conservation_is_second_order",),
    "P19": ("tests/test_theory_decomposition.py::test_first_order_error_is_second_order",),
    "X01": ("tests/test_theory_squeeze.py::test_X01_rising_set_is_a_top_set",),
    "X02": ("tests/test_theory_squeeze.py::test_X02_one_hot_limit",),
    "X03": ("tests/test_theory_flow.py::test_flow_concentrates_on_y_star_within_the_time_bound",
            "tests/test_theory_flow.py::test_replicator_flow_from_near_zero_target_converges_to_argmax"),
    "X04": ("tests/test_theory_squeeze.py::test_X04_two_context_dpo_matches_simulation",),
}
SIMULATION_LEVELS = ("logits", "digits", "lm")


def coverage(prediction: Prediction) -> dict:
    """Where a claim is checked: theorem (property tests), simulation (free logits, digits, toy LM) and
    real model (a real-model verdict: the claim's own llm level, or a run-level variant of the same item,
    e.g. P05 -> P05r)."""
    real = [p.id for p in CATALOGUE if "llm" in p.levels and
            (p.id == prediction.id or (p.id == prediction.id + "r"))]
    if prediction.id.endswith("r") and prediction.id[:-1] in BY_ID:
        real = [prediction.id]
    return {"theorem": list(THEOREM_TESTS.get(prediction.id, ())),
            "simulation": [lvl for lvl in prediction.levels if lvl in SIMULATION_LEVELS],
            "real model": real}


def coverage_table() -> str:
    """Markdown: every prediction of the catalogue and the levels at which it is checked."""
    lines = ["| id | claim | theorem (property test) | simulation | real model |", "|---|---|---|---|---|"]
    for p in CATALOGUE:
        c = coverage(p)
        theorem = "yes (" + ", ".join(t.split("::")[1] for t in c["theorem"]) + ")" if c["theorem"] else "-"
        lines.append(f"| {p.id} | {p.claim} | {theorem} | {', '.join(c['simulation']) or '-'} | "
                     f"{', '.join(c['real model']) or '-'} |")
    return "\n".join(lines)


def get(prediction_id: str) -> Prediction:
    try:
        return BY_ID[prediction_id]
    except KeyError:
        from learning_dynamics.theory.errors import UserError
        raise UserError(f"unknown prediction id {prediction_id!r}; known: {', '.join(BY_ID)}") from None


def _row(prediction: Prediction, outcome: Outcome) -> dict:
    return {"id": prediction.id, "claim": prediction.claim, "verdict": outcome.verdict,
            "effect": outcome.effect, "ci": list(outcome.ci), "n": outcome.n,
            "unit": prediction.effect_unit, "detail": outcome.detail}


def _accepts_control(evaluate) -> bool:
    return getattr(evaluate, "controlled", False)


def evaluate_run(series: Mapping, algo: str, level: str = "llm", seed: int = 0, control: Mapping = None) -> list:
    """Every run-level prediction about `algo` at this level, as report rows.

    control: the series of the SFT control run (same pairs, seed and probe prompts); predictions
    that something else could also cause are judged as the difference against it.
    """
    rows = []
    for prediction in CATALOGUE:
        if prediction.scope == "run" and algo in prediction.applies_to and level in prediction.levels:
            if _accepts_control(prediction.evaluate):
                ctrl = control if algo != algorithms.CONTROL else None
                row = _row(prediction, prediction.evaluate(series, seed=seed, control=ctrl))
                row["control"] = ctrl is not None
                row["needs_control"] = getattr(prediction.evaluate, "needs_control", False)
            else:
                row = _row(prediction, prediction.evaluate(series, seed=seed))
            rows.append(row)
    return rows


def evaluate_comparison(series_by_algo: Mapping, level: str = "llm", seed: int = 0) -> list:
    """Every two-run prediction whose two algorithms are both in `series_by_algo`.

    `applies_to` is (reference, other): the other run is predicted to squeeze
    less. Each comparison gives two rows: at matched preference margin (the
    verdict) and at equal steps ("basis"). For "extend", pass the series of its
    DPO phase only.
    """
    rows = []
    for prediction in CATALOGUE:
        if prediction.scope != "compare" or level not in prediction.levels:
            continue
        reference, other = prediction.applies_to
        if reference in series_by_algo and other in series_by_algo:
            for basis in ("matched margin", "equal steps"):
                outcome = prediction.evaluate(series_by_algo[reference], series_by_algo[other], seed=seed,
                                              basis=basis)
                rows.append(dict(_row(prediction, outcome), basis=basis))
    return rows
