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

PROBES = {
    "chosen": "y+ (the chosen response)",
    "rejected": "y- (the rejected response)",
    "chosen_rephrase": "y+ rephrased: same meaning, different words",
    "chosen_format": "y+'s format with a different meaning",
    "rejected_rephrase": "y- rephrased: same meaning, different words",
    "rejected_format": "y-'s format with a different meaning",
    "other_chosen": "another training prompt's y+ (y_{j != i})",
    "test_response": "a held-out prompt's response",
    "irrelevant": "a fluent irrelevant sentence",
    "chosen_shuffled": "y+ with its words shuffled",
    "random_tokens": "random tokens",
    "initial_sample": "a sample of the initial model (on-policy y)",
    "greedy": "y*: per-position argmax under teacher forcing on y+'s prefixes",
}

# Probes that are neither trained on nor y*: under off-policy DPO they all fall.
OTHER_PROBES = tuple(p for p in PROBES if p not in ("chosen", "rejected", "greedy"))

VERDICTS = ("holds", "fails", "inconclusive")
DPO_FAMILY = ("dpo", "ipo", "simpo", "extend")


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
    """Point estimate and percentile CI of `statistic(*arrays)`, resampling prompts.

    Every array has prompts on axis -1 and is resampled with the same indices
    (paired: two runs on the same probe prompts keep their pairing).
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    n = arrays[0].shape[-1]
    point = float(statistic(*arrays))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    stats = np.array([statistic(*(a[..., i] for a in arrays)) for i in idx])
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return point, (float(lo), float(hi))


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
    frac = held.mean()
    z = 1.959963984540054
    centre = (frac + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(frac * (1 - frac) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    verdict = "holds" if held.all() else "fails"
    return Outcome(verdict, float(frac), (float(centre - half), float(centre + half)), n, detail)


def precision_recall(predicted: np.ndarray, actual: np.ndarray) -> dict:
    """How well a predicted boolean set (e.g. theory's rising set) matches the measured one."""
    predicted = np.asarray(predicted, dtype=bool).ravel()
    actual = np.asarray(actual, dtype=bool).ravel()
    tp = np.sum(predicted & actual)
    precision = tp / max(np.sum(predicted), 1)
    recall = tp / max(np.sum(actual), 1)
    accuracy = np.mean(predicted == actual) if predicted.size else float("nan")
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


def _rejected_falls_more(series, seed=0):
    keys = ["logps/chosen", "logps/rejected"]
    return _missing(series, keys) or _outcome(
        lambda c, r: np.mean(c) - np.mean(r),
        [_change(series, keys[0]), _change(series, keys[1])],
        "change of log pi(y+) minus change of log pi(y-)", seed)


def _all_other_probes_fall(series, seed=0):
    """Every probe type must fall: an intersection-union test over probe types.

    Each probe gets its own bootstrap; the claim holds only if every probe's
    interval lies below zero, fails if any lies above. The reported effect and
    interval are those of the probe that fell least.
    """
    keys = [f"logps/{p}" for p in OTHER_PROBES if f"logps/{p}" in series]
    if not keys:
        return _missing(series, [f"logps/{OTHER_PROBES[0]}"])
    outcomes = {k[6:]: _falls(k)(series, seed=seed) for k in keys}
    weakest = min(outcomes, key=lambda p: outcomes[p].effect)
    verdicts = {o.verdict for o in outcomes.values()}
    verdict = "fails" if "fails" in verdicts else ("holds" if verdicts == {"holds"} else "inconclusive")
    w = outcomes[weakest]
    detail = f"probe that fell least: {weakest}; " + ", ".join(
        f"{p} {o.effect:+.3g}" for p, o in outcomes.items())
    return Outcome(verdict, w.effect, w.ci, w.n, detail)


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


def squeeze_index(series: Mapping) -> np.ndarray:
    """Per prompt: how much y* gained relative to the other probes (nats).

    change(log pi(y*)) minus the mean change over the other probe types; a
    squeeze moves mass into y* and out of everything else, so it is large.
    """
    keys = [f"logps/{p}" for p in OTHER_PROBES if f"logps/{p}" in series]
    others = np.mean([_change(series, k) for k in keys], axis=0)
    return _change(series, "logps/greedy") - others


def _squeezes_less(series_reference: Mapping, series_other: Mapping, seed=0) -> Outcome:
    """The other run's squeeze index is smaller than the reference run's (paired over prompts)."""
    for s in (series_reference, series_other):
        missing = _missing(s, ["logps/greedy", "logps/chosen"])
        if missing:
            return missing
    a, b = squeeze_index(series_reference), squeeze_index(series_other)
    if a.shape != b.shape:
        return Outcome("inconclusive", float("nan"), (float("nan"),) * 2, 0,
                       "the two runs do not share the same probe prompts")
    return _outcome(lambda x, y: np.mean(x) - np.mean(y), [a, b],
                    "squeeze index (y* gain minus the mean probe change) of the reference run "
                    "minus that of the other run", seed)


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
               ("lm", "llm"), ("sft",), "nats", _rises("logps/chosen")),
    Prediction("P11", "SFT raises y* too, so y* rising alone is not the squeeze signature.",
               "theory.squeeze.first_order_dlogp(sign=+1)", "11", "run", ("lm", "llm"), ("sft",),
               "nats", _rises("logps/greedy")),
    Prediction("P12a", "SFT raises another prompt's answer y_{j != i} under x_i (the hallucination "
               "mechanism).", "theory.decomposition (K between [x_i; y_i] and [x_i; y_j])", "12", "run",
               ("lm", "llm"), ("sft",), "nats", _rises("logps/other_chosen")),
    Prediction("P12b", "Under SFT, y_{j != i} gains more than a fluent irrelevant response.",
               "theory.decomposition (K similarity)", "12", "run", ("lm", "llm"), ("sft",), "nats",
               _gains_more_than("other_chosen", "irrelevant")),
    Prediction("P12c", "SFT lowers random-token responses.", "theory.squeeze.first_order_dlogp(sign=+1)",
               "12", "run", ("lm", "llm"), ("sft",), "nats", _falls("logps/random_tokens")),
    Prediction("P13a", "Under SFT, y- (similar to y+) rises first, then falls.",
               "theory.decomposition (K similarity, then A's flattening)", "13", "run", ("lm", "llm"),
               ("sft",), "nats", _rise_then_fall("rejected")),
    Prediction("P13b", "Under SFT, a rephrase of y+ rises first, then falls.",
               "theory.decomposition", "13", "run", ("lm", "llm"), ("sft",), "nats",
               _rise_then_fall("chosen_rephrase")),

    # ---- whole runs: off-policy negative gradients
    Prediction("P09a", "Off-policy DPO ends with log pi(y+) below its start.",
               "theory.squeeze + two-context coupling (X04)", "9", "run", ("lm", "llm"), DPO_FAMILY,
               "nats", _falls("logps/chosen")),
    Prediction("P09b", "Off-policy DPO lowers log pi(y-) faster than log pi(y+).",
               "theory.residuals (equal and opposite coefficients, valley of y-)", "9", "run",
               ("lm", "llm"), DPO_FAMILY, "nats", _rejected_falls_more),
    Prediction("P09c", "Negative gradients on unlikely responses raise y* (the squeeze).",
               "theory.squeeze (P02 at rejected-only positions)", "9", "run", ("lm", "llm"),
               DPO_FAMILY + ("pg",), "nats", _rises("logps/greedy")),
    Prediction("P09d", "Off-policy DPO lowers every other probe response.",
               "theory.squeeze.threshold (labels below ||pi||^2 - pi_k fall)", "9", "run",
               ("lm", "llm"), DPO_FAMILY, "nats", _all_other_probes_fall),
    Prediction("P10", "Negative gradients make the model peakier: the mean token entropy on y+'s "
               "contexts falls.", "theory.flow (replicator sharpening)", "10", "run", ("lm", "llm"),
               DPO_FAMILY + ("pg",), "nats of entropy", _falls("entropy/chosen")),
    Prediction("P17", "Long off-policy DPO raises repetition in greedy generations.",
               "theory.flow (mass piles onto the argmax)", "17", "run", ("llm",), ("dpo",),
               "repeated 4-gram fraction", _rises("gen/rep4")),

    # ---- two runs on the same probe prompts
    Prediction("P14", "On-policy negatives squeeze less than off-policy ones.",
               "theory.squeeze.threshold (pi_k >= ||pi||^2: no squeeze)", "14", "compare",
               ("lm", "llm"), ("dpo", "onpolicy-dpo"), "nats of squeeze index", _squeezes_less),
    Prediction("P15", "SFT on y+ and y- before DPO ('extend') squeezes less during DPO.",
               "theory.squeeze.threshold (lifting pi(y-) out of the valley)", "15", "compare",
               ("lm", "llm"), ("dpo", "extend"), "nats of squeeze index", _squeezes_less),
)


BY_ID = {p.id: p for p in CATALOGUE}


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


def evaluate_run(series: Mapping, algo: str, level: str = "llm", seed: int = 0) -> list:
    """Every run-level prediction about `algo` at this level, as report rows."""
    rows = []
    for prediction in CATALOGUE:
        if prediction.scope == "run" and algo in prediction.applies_to and level in prediction.levels:
            rows.append(_row(prediction, prediction.evaluate(series, seed=seed)))
    return rows


def evaluate_comparison(series_by_algo: Mapping, level: str = "llm", seed: int = 0) -> list:
    """Every two-run prediction whose two algorithms are both in `series_by_algo`.

    `applies_to` is (reference, other): the other run is predicted to squeeze
    less. For "extend", pass the series of its DPO phase only.
    """
    rows = []
    for prediction in CATALOGUE:
        if prediction.scope != "compare" or level not in prediction.levels:
            continue
        reference, other = prediction.applies_to
        if reference in series_by_algo and other in series_by_algo:
            outcome = prediction.evaluate(series_by_algo[reference], series_by_algo[other], seed=seed)
            rows.append(_row(prediction, outcome))
    return rows
