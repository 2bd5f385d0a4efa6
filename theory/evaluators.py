"""How a run-level prediction of theory.predictions is judged on a run's probe curves.

`series` maps a key to an array [n_evals, n_prompts] (first row = before training);
each evaluator returns an Outcome (theory.statistics): an effect signed so that a
positive number is the predicted direction, its bootstrap CI over prompts, a verdict.
Some are judged against the SFT control run (`controlled`), some compare two runs at
matched preference margin and at equal steps.
"""
from typing import Mapping, Optional

import numpy as np

from learning_dynamics.theory import probes as probe_registry
from learning_dynamics.theory.outcomes import (  # noqa: F401 (MIN_SUBSET_PROMPTS: read from here too)
    MIN_SUBSET_PROMPTS, bootstrap_outcome, change, missing_keys, too_few_prompts)
from learning_dynamics.theory.squeeze_measures import (
    SQUEEZE_PARTS, at_margin, describe_bracket, margin_curve, matched_margin_difference, squeeze_index,
    squeeze_part_curve)
from learning_dynamics.theory.statistics import Outcome, bootstrap, bootstrap_ci, verdict_from_ci
# scipy loads inside the functions that need them, so importing this module stays light (ldyn --help)

# Probes that are neither trained on nor y*: under off-policy DPO they all fall.
OTHER_PROBES = probe_registry.OTHER


def rises(key: str):
    def evaluate(series, seed=0):
        return missing_keys(series, [key]) or bootstrap_outcome(
            np.mean, [change(series, key)], f"mean change of {key}, end - start", seed)
    return evaluate


def falls(key: str):
    def evaluate(series, seed=0):
        return missing_keys(series, [key]) or bootstrap_outcome(
            lambda d: -np.mean(d), [change(series, key)], f"mean fall of {key}, start - end", seed)
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


def rejected_falls_more(series, seed=0):
    """Both y+ and y- fall, and y- falls more (an SFT run, where y+ rises, must not pass)."""
    keys = ["logps/chosen", "logps/rejected"]
    missing = missing_keys(series, keys)
    if missing:
        return missing
    c, r = change(series, keys[0]), change(series, keys[1])
    parts = {"fall of y+": bootstrap_outcome(lambda a: -np.mean(a), [c], "", seed),
             "fall of y-": bootstrap_outcome(lambda a: -np.mean(a), [r], "", seed),
             "change of y+ minus change of y-": bootstrap_outcome(lambda a, b: np.mean(a) - np.mean(b), [c, r], "",
                                                                  seed)}
    return _all_of(parts, "all three must be above 0")


def all_other_probes_fall(series, seed=0):
    """Every probe type must fall: an intersection-union test over probe types."""
    keys = [f"logps/{p}" for p in OTHER_PROBES if f"logps/{p}" in series]
    if not keys:
        return missing_keys(series, [f"logps/{OTHER_PROBES[0]}"])
    return _all_of({k[6:]: falls(k)(series, seed=seed) for k in keys}, "every probe's fall must be above 0")


def _accepts_control(evaluate, needs: bool = True):
    """Mark an evaluator that takes a control run's series (`needs`: without it the verdict is not judged); it is
    called with `control_label` (how its detail names the control) and `basis` (how the two runs are read)."""
    evaluate.controlled = True
    evaluate.needs_control = needs
    return evaluate


def _unpaired_control(series: Mapping, control: Mapping, keys, prompts: str = "probe prompts") -> Optional[Outcome]:
    """The control lacks a key, or scores another number of prompts or evaluations: there is nothing to pair the
    run with (a control is read at the run's own evaluations)."""
    missing = missing_keys(control, keys)
    if missing:
        return missing
    if any(np.shape(control[k])[-1] != np.shape(series[k])[-1] for k in keys):
        return Outcome("inconclusive", float("nan"), (float("nan"),) * 2, 0,
                       f"the run and its control do not share the same {prompts}")
    return None


def against_control(key: str, sign: float, what: str):
    """Change of `key` in the run minus its change in the SFT control (same pairs, seed and probes),
    paired over prompts; sign +1: predicted to rise more than under SFT, -1: to fall more.

    Without a control the raw change is shown and the verdict is inconclusive: SFT alone moves
    these quantities too (it raises y* and lowers the entropy), so the raw change is no evidence.
    """
    def evaluate(series, seed=0, control=None, control_label="SFT", basis=None):
        missing = missing_keys(series, [key])
        if missing:
            return missing
        run = change(series, key)
        if control is None:
            point, ci = bootstrap_ci(lambda a: sign * np.mean(a), [run], seed=seed)
            return Outcome("inconclusive", point, ci, int(run.size),
                           f"no control: raw {what} shown, not judged (SFT alone moves it too)")
        unpaired = _unpaired_control(series, control, [key])
        if unpaired:
            return unpaired
        base = change(control, key)
        return bootstrap_outcome(lambda a, b: sign * (np.mean(a) - np.mean(b)), [run, base],
                                 f"{what} in this run minus in the {control_label} control (paired over prompts); "
                                 f"run {sign * np.mean(run):+.3g}, control {sign * np.mean(base):+.3g}", seed)
    return _accepts_control(evaluate)


def gains_more_than(first: str, second: str):
    def evaluate(series, seed=0):
        keys = [f"logps/{first}", f"logps/{second}"]
        return missing_keys(series, keys) or bootstrap_outcome(
            lambda a, b: np.mean(a) - np.mean(b),
            [change(series, keys[0]), change(series, keys[1])],
            f"change of log pi({first}) minus change of log pi({second})", seed)
    return evaluate


def rise_then_fall(probe: str):
    """Rises to an interior peak, then falls: effect = min(peak - start, peak - end).

    The peak is the interior evaluation where the mean over prompts is highest
    (picked once, on all prompts); the bootstrap then resamples prompts around
    it. A curve that never rises above its start gets a negative effect.
    """
    def evaluate(series, seed=0):
        key = f"logps/{probe}"
        missing = missing_keys(series, [key])
        if missing:
            return missing
        curve = np.asarray(series[key], dtype=np.float64)
        if curve.shape[0] < 3:
            return Outcome("inconclusive", float("nan"), (float("nan"),) * 2, 0,
                           "needs at least 3 evaluations")
        peak = 1 + int(np.argmax(curve[1:-1].mean(axis=1)))
        rise, fall = curve[peak] - curve[0], curve[peak] - curve[-1]
        return bootstrap_outcome(lambda r, f: min(np.mean(r), np.mean(f)), [rise, fall],
                                 f"min(rise to the peak at eval {peak}, fall after it) of log pi({probe})", seed)
    return evaluate


def squeezes_less(part: str = "index"):
    """The other run squeezes less than the reference run (paired over prompts), on one part of the squeeze
    (theory.squeeze_measures.SQUEEZE_PARTS): compared where both reach the same preference margin on the probe
    pairs (the largest both reach), or at equal steps. At matched margin the bootstrap resamples prompts before
    matching, so the interval carries the uncertainty of where each run reaches the margin too."""
    what = SQUEEZE_PARTS[part]

    def evaluate(series_reference: Mapping, series_other: Mapping, seed=0, basis="matched margin",
                 from_eval: int = 0) -> Outcome:
        for s in (series_reference, series_other):
            missing = missing_keys(s, ["logps/greedy", "logps/chosen", "logps/rejected"])
            if missing:
                return missing
        curves = [squeeze_part_curve(s, part) for s in (series_reference, series_other)]
        if curves[0].shape[1] != curves[1].shape[1]:
            return Outcome("inconclusive", float("nan"), (float("nan"),) * 2, 0,
                           "the two runs do not share the same probe prompts")
        if basis == "equal steps":
            return bootstrap_outcome(lambda x, y: np.mean(x) - np.mean(y), [curves[0][-1], curves[1][-1]],
                                     f"{what}: the reference run's minus the other's, at the end of each run", seed)
        # matched only among the evaluations from `from_eval` on (after the first epoch, not inside the first
        # optimizer steps); changes stay changes since the start
        margins = [margin_curve(s)[from_eval:] for s in (series_reference, series_other)]
        curves = [c[from_eval:] for c in curves]
        if not len(margins[0]) or not len(margins[1]):
            return Outcome("inconclusive", float("nan"), (float("nan"),) * 2, 0,
                           "no evaluation after the first epoch (every probe pair trained on once) to match at")
        point, target, bracket = matched_margin_difference(margins, curves)
        if not target > 0:
            return Outcome("inconclusive", float("nan"), (float("nan"),) * 2, 0,
                           "one of the runs never raises the probe margin above 0: nothing to match")

        def resampled(index):
            cols = index.astype(int)
            return matched_margin_difference([m[:, cols] for m in margins], [c[:, cols] for c in curves])[0]
        n = curves[0].shape[1]
        point, ci, p = bootstrap(resampled, [np.arange(n, dtype=np.float64)], seed=seed)
        ends = [float(m.mean(axis=1)[-1]) for m in margins]
        return Outcome(verdict_from_ci(ci), point, ci, n,
                       f"{what}: the reference run's minus the other's, each where its mean probe margin first "
                       f"reaches {target:.3g} nats, searched from evaluation {from_eval} on (final margins "
                       f"{ends[0]:.3g} and {ends[1]:.3g}; the reference "
                       f"{describe_bracket(bracket[0])}, the other {describe_bracket(bracket[1])}; "
                       f"the interval resamples prompts before matching)", p)
    return evaluate


def _spearman(x, y) -> float:
    from scipy import stats
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(stats.spearmanr(x, y).statistic)


def dose_response(dose_key: str, dose_name: str, sign: float):
    """Does the squeeze grow with the dose across prompts? effect = sign * Spearman rho between the
    prompt's initial dose and its squeeze index (against the SFT control's when one is given)."""
    def evaluate(series, seed=0, control=None, control_label="SFT", basis=None):
        missing = missing_keys(series, [dose_key, "logps/greedy", "n_tokens/chosen"])
        if missing:
            return missing
        dose = np.asarray(series[dose_key], dtype=np.float64)[0]
        strength = squeeze_index(series)
        against = "raw squeeze index (no control given)"
        if control is not None and squeeze_index(control).shape == strength.shape:
            strength = strength - squeeze_index(control)
            against = f"squeeze index minus the {control_label} control's"
        thirds = np.array_split(np.argsort(dose), 3)
        bins = ", ".join(f"{dose[t].mean():.3g}: {strength[t].mean():+.3g}" for t in thirds if t.size)
        return bootstrap_outcome(lambda d, st: sign * _spearman(d, st), [dose, strength],
                                 f"{'-' if sign < 0 else ''}Spearman rho of the initial {dose_name} and the {against}, "
                                 f"per token; tertiles (mean dose: mean squeeze) {bins}", seed)
    return _accepts_control(evaluate, needs=False)


def shared_prefix_does_not_squeeze(series, seed=0):
    """At the positions y+ and y- share (the same context, pushed up and down at once) the entropy falls
    less per token than at y-'s own positions: effect = per-token entropy fall at rejected-only positions
    minus at shared-prefix positions, over the prompts whose y+ and y- share a prefix."""
    keys = ["entropy/shared_prefix", "n_tokens/shared_prefix", "entropy/rejected", "n_tokens/rejected"]
    missing = missing_keys(series, keys)
    if missing:
        return missing
    n_shared = np.asarray(series["n_tokens/shared_prefix"])[0]
    n_rej = np.asarray(series["n_tokens/rejected"])[0]
    keep = (n_shared > 0) & (n_rej > n_shared)
    too_few = too_few_prompts(int(keep.sum()), "have y+ and y- with a shared prefix")
    if too_few:
        return too_few
    total_shared = np.asarray(series["entropy/shared_prefix"]) * n_shared
    total_rej = np.asarray(series["entropy/rejected"]) * n_rej
    only = (total_rej - total_shared)[:, keep] / (n_rej - n_shared)[keep]
    shared = np.asarray(series["entropy/shared_prefix"])[:, keep]
    fall_only, fall_shared = only[0] - only[-1], shared[0] - shared[-1]
    return bootstrap_outcome(lambda a, b: np.mean(a) - np.mean(b), [fall_only, fall_shared],
                             f"per-token entropy fall at rejected-only positions ({np.mean(fall_only):+.3g}) minus at "
                             f"shared-prefix positions ({np.mean(fall_shared):+.3g}), {int(keep.sum())} prompts with a "
                             f"shared prefix ({int(n_shared[keep].sum())} shared tokens)", seed)


def _top_token_share(tv, gain) -> float:
    return float(np.mean(gain) / max(np.mean(tv), 1e-12))


def _share_at_mass(tv, gain, target: float) -> float:
    """The initial top token's share of the moved mass where the prompt-mean total variation ([n_evals,
    n_prompts] curves) first reaches `target`: the gain there (interpolated) over target."""
    return at_margin(tv.mean(axis=1), gain.mean(axis=1), target) / target


@_accepts_control
def mass_into_top_token(series, seed=0, control=None, control_label="SFT", basis="matched moved mass"):
    """Of the probability mass that moved on y+'s contexts (total variation from the start), the share the
    initial top token gained, minus the same share under the control (paired over prompts): SFT's push
    on y+ moves mass too, into y+'s own tokens, so only the excess over SFT is the squeeze's direction. Against
    SFT both runs are read where they have moved the same mass (the largest mean total variation both reach),
    since SFT's push on y+ is not DPO's in size; the bootstrap resamples prompts before matching. Against a
    counterfactual control (basis "equal steps": the same pull on y+, no push on y-) both are read at the end."""
    keys = ["mass/tv", "mass/top_gain"]
    missing = missing_keys(series, keys)
    if missing:
        return missing
    tv, gain = (np.asarray(series[k], dtype=np.float64) for k in keys)
    if control is None:
        point, ci = bootstrap_ci(_top_token_share, [tv[-1], gain[-1]], seed=seed)
        return Outcome("inconclusive", point, ci, int(tv.shape[1]),
                       "no control: the raw share of the moved mass that went into the initial top token "
                       "is shown, not judged (SFT's push on y+ moves mass too)")
    unpaired = _unpaired_control(series, control, keys)
    if unpaired:
        return unpaired
    tv_c, gain_c = (np.asarray(control[k], dtype=np.float64) for k in keys)
    if basis == "equal steps":
        return bootstrap_outcome(lambda t, g, tc, gc: _top_token_share(t, g) - _top_token_share(tc, gc),
                                 [tv[-1], gain[-1], tv_c[-1], gain_c[-1]],
                                 f"share of the moved mass that went into the initial top token in this run "
                                 f"({_top_token_share(tv[-1], gain[-1]):+.3g}) minus in the {control_label} control "
                                 f"({_top_token_share(tv_c[-1], gain_c[-1]):+.3g}), at equal steps (paired over "
                                 "prompts)", seed)

    def difference(index):
        cols = index.astype(int)
        target = min(tv[:, cols].mean(axis=1).max(), tv_c[:, cols].mean(axis=1).max())
        if not target > 0:
            return float("nan")
        return (_share_at_mass(tv[:, cols], gain[:, cols], target)
                - _share_at_mass(tv_c[:, cols], gain_c[:, cols], target))
    n = tv.shape[1]
    target = min(tv.mean(axis=1).max(), tv_c.mean(axis=1).max())
    point, ci, p = bootstrap(difference, [np.arange(n, dtype=np.float64)], seed=seed)
    return Outcome(verdict_from_ci(ci), point, ci, n,
                   f"share of the moved mass that went into the initial top token in this run "
                   f"({_share_at_mass(tv, gain, target):+.3g}) minus in the {control_label} control "
                   f"({_share_at_mass(tv_c, gain_c, target):+.3g}), each where its mean total variation first "
                   f"reaches {target:.3g} (final {tv.mean(axis=1)[-1]:.3g} and {tv_c.mean(axis=1)[-1]:.3g}); at "
                   f"equal steps {_top_token_share(tv[-1], gain[-1]):+.3g} minus "
                   f"{_top_token_share(tv_c[-1], gain_c[-1]):+.3g}", p)


@_accepts_control
def repetition_against_control(series, seed=0, control=None, control_label="SFT", basis=None):
    """Change of the repeated 4-gram fraction of each greedy generation's first words (validate.data.repetition:
    PREFIX_WORDS), in the run minus in the SFT control, over the prompts whose generations reach that length
    at the start and the end of both runs: length-matched, and no continuation forced past its end of turn."""
    key = "gen/rep4_prefix"
    missing = missing_keys(series, [key])
    if missing:
        return missing
    run = np.asarray(series[key], dtype=np.float64)[[0, -1]]
    if control is None:
        keep = np.isfinite(run).all(axis=0)
        if not keep.any():   # no generation reaches the compared length: there is no change to show
            return too_few_prompts(0, f"of {run.shape[1]} have generations of at least the compared length at the "
                                   "start and the end (and no SFT control is given)")
        point, ci = bootstrap_ci(np.mean, [run[1, keep] - run[0, keep]], seed=seed)
        return Outcome("inconclusive", point, ci, int(keep.sum()),
                       "no control: the raw change of repetition is shown, not judged")
    unpaired = _unpaired_control(series, control, [key], prompts="generation prompts")
    if unpaired:
        return unpaired
    base = np.asarray(control[key], dtype=np.float64)[[0, -1]]
    keep = np.isfinite(run).all(axis=0) & np.isfinite(base).all(axis=0)
    too_few = too_few_prompts(int(keep.sum()), f"of {run.shape[1]} have generations of at least the compared "
                              "length at the start and end of both runs")
    if too_few:
        return too_few
    d_run, d_base = run[1, keep] - run[0, keep], base[1, keep] - base[0, keep]
    return bootstrap_outcome(lambda a, b: np.mean(a) - np.mean(b), [d_run, d_base],
                             f"rise of the repeated 4-gram fraction of the generations' first words in this run "
                             f"({np.mean(d_run):+.3g}) minus in the {control_label} control ({np.mean(d_base):+.3g}), "
                             f"{int(keep.sum())} prompts", seed)


def second_copy_logp(series: Mapping, probe: str = "sample_repeated") -> np.ndarray:
    """[n_evals, n_prompts]: per-token log pi of a repeated probe's second copy given the prompt and the first,
    its log-prob minus that of the probe it repeats over the tokens it adds (theory.probes: `repeats`)."""
    once = probe_registry.get(probe).repeats
    added = np.asarray(series[f"n_tokens/{probe}"]) - np.asarray(series[f"n_tokens/{once}"])
    return (np.asarray(series[f"logps/{probe}"]) - np.asarray(series[f"logps/{once}"])) / np.maximum(added, 1)


_REPEAT_KEYS = [f"{k}/{p}" for p in ("sample_repeated", "initial_sample") for k in ("logps", "n_tokens")]
_second_copy_rises = against_control("second copy", +1.0, "rise of the per-token log pi of the initial sample's "
                                     "second copy right after it")


@_accepts_control
def repeats_itself_against_control(series, seed=0, control=None, control_label="SFT", basis=None):
    """Teacher-forced and length-controlled: the same tokens at every step, whatever the model now generates."""
    missing = missing_keys(series, _REPEAT_KEYS) or (control is not None and
                                                 _unpaired_control(series, control, _REPEAT_KEYS))
    if missing:
        return missing
    return _second_copy_rises({"second copy": second_copy_logp(series)}, seed=seed, control_label=control_label,
                              control=None if control is None else {"second copy": second_copy_logp(control)})
