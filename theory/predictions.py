"""Judging the catalogue's predictions (theory/catalogue.py, whose names this module re-exports) on runs.

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
prediction is a result, reported as such. The evaluators are theory/evaluators.py,
the statistics theory/statistics.py.
"""
import contextlib
from typing import Mapping, Optional

import numpy as np

from learning_dynamics.theory import algorithms
from learning_dynamics.theory import regime as regimes
# the catalogue, re-exported: sim/, validate/ and the tests read it from here
from learning_dynamics.theory.catalogue import (  # noqa: F401
    BY_ID, CATALOGUE, DPO_FAMILY, OTHER_PROBES, POSITIVE_ONLY, PRIMARY, PROBES, SIMULATION_LEVELS, SQUEEZE_REGIME,
    SQUEEZING, THEOREM_TESTS, VERDICTS, Prediction, coverage, coverage_table, get)
from learning_dynamics.theory.outcomes import MIN_SUBSET_PROMPTS
from learning_dynamics.theory.statistics import Outcome, above_noise, current_groups, grouped_by, noise_floor


def _row(prediction: Prediction, outcome: Outcome) -> dict:
    return {"id": prediction.id, "claim": prediction.claim, "verdict": outcome.verdict,
            "effect": outcome.effect, "ci": list(outcome.ci), "n": outcome.n,
            "unit": prediction.effect_unit, "detail": outcome.detail, "p_value": outcome.p_value}


def _accepts_control(evaluate) -> bool:
    return getattr(evaluate, "controlled", False)


def evaluate_run(series: Mapping, algo: str, level: str = "llm", seed: int = 0, control: Mapping = None,
                 controls: Mapping = None, regime=None, precision: str = "float32") -> list:
    """Every run-level prediction about `algo` at this level, as report rows.

    controls: {control algorithm: its series} for the runs on the same pairs, seed and probe prompts among
    theory.algorithms.controls(algo); predictions that something else could also cause are judged as the
    difference against each, one row per control: first the counterfactual control (the same step without the
    negative gradient, read at equal steps; the row with "primary_control"), then SFT, labelled. `control`
    alone: the SFT control's series. regime: theory.regime.Regime of the run; a claim is "not tested" outside the
    regime it is about, and read at the last evaluation where the run was still in it. precision: what the probes
    were scored in; a verdict in nats must clear its numerical noise (theory.statistics.above_noise), else it is
    inconclusive with that reason.
    """
    if controls is None:
        controls = {algorithms.CONTROL: control} if control is not None else {}
    present = [name for name in algorithms.controls(algo) if controls.get(name) is not None]
    rows = []
    for prediction in CATALOGUE:
        if prediction.scope == "run" and algo in prediction.applies_to and level in prediction.levels:
            last, reason = regimes.gate(regime, prediction.regime) if regime is not None else (None, None)
            if reason:
                rows.append(_not_tested(prediction, reason))
                continue
            read, read_controls = _read_at(series, last), {k: _read_at(v, last) for k, v in controls.items()}
            usable, dropped = _usable_prompts(prediction, [read, *read_controls.values()])
            if usable is not None and usable.sum() < MIN_SUBSET_PROMPTS:
                rows.append(_row(prediction, Outcome("inconclusive", float("nan"), (float("nan"),) * 2,
                                                     int(usable.sum()), f"only {int(usable.sum())} probe prompts "
                                                     f"have usable probes ({dropped})")))
                continue
            with _only(usable):
                read = _columns(read, usable)
                read_controls = {k: _columns(v, usable) for k, v in read_controls.items()}
                if _accepts_control(prediction.evaluate):
                    new = _controlled_rows(prediction, read, read_controls, present, seed, precision)
                else:
                    new = [_judged_row(prediction, prediction.evaluate(read, seed=seed), read, precision)]
            rows += [_dropped_note(_read_note(r, regime, last), dropped) for r in new]
    return rows


def noise_in_unit(unit: str, series: Mapping, precision: str = "float32"):
    """The numerical noise of an effect in `unit`: per token for per-token units ("nats per token ...", mean
    entropies), times the probes' mean response length for a summed log-prob ("nats"); None for a unitless
    statistic (a rank correlation, a fraction), whose noise is not a round-off."""
    if not unit.startswith("nats"):
        return None
    if "per token" in unit or "entropy" in unit:
        return noise_floor(1, precision)
    lengths = np.asarray(series.get("n_tokens/chosen", [[1.0]]), dtype=np.float64)[0]
    return noise_floor(float(np.mean(lengths)) if lengths.size else 1.0, precision)


def _judged_row(prediction: Prediction, outcome: Outcome, series: Mapping, precision: str) -> dict:
    """The report row of `outcome`, inconclusive when its effect does not clear the scoring's round-off."""
    floor = noise_in_unit(prediction.effect_unit, series, precision)
    judged = outcome if floor is None else above_noise(outcome, floor, precision)
    row = _row(prediction, judged)
    if judged is not outcome:
        row["inconclusive_reason"] = judged.detail.split(";")[0]
    return row


def _usable_prompts(prediction: Prediction, series_list) -> tuple:
    """(bool mask of the prompts whose probes this prediction reads are all usable, or None when all are;
    what was left out). A probe marked unusable (validate.probe_quality) is NaN in its series."""
    keys = [f"logps/{p}" for p in prediction.probes]
    masks = [np.isfinite(np.asarray(s[k], dtype=float)).all(axis=0) for s in series_list if s for k in keys if k in s]
    if not masks:
        return None, ""
    usable = np.logical_and.reduce(masks)
    if usable.all():
        return None, ""
    return usable, f"{int((~usable).sum())} of {usable.size} probe prompts left out: an unusable model-written probe"


def _columns(series, usable):
    """The series' columns of the usable prompts. A series over the first k prompts only (the greedy generations:
    gen/*, over the first gen_prompts probe prompts) keeps its usable ones among those k."""
    if series is None or usable is None:
        return series
    return {k: np.asarray(v)[..., usable[:np.shape(v)[-1]]] for k, v in series.items()}


def _only(usable):
    """Within a pooled (grouped) bootstrap, the groups of the prompts kept."""
    groups = current_groups()
    return grouped_by(groups[usable]) if usable is not None and groups is not None else contextlib.nullcontext()


def _dropped_note(row: dict, dropped: str) -> dict:
    return dict(row, detail=f"{dropped}; {row['detail']}") if dropped else row


def _read_at(series: Optional[Mapping], last: Optional[int]):
    """The series as a claim reads it: whole, or up to evaluation `last` (the run's regime ended there)."""
    if series is None or last is None:
        return series
    n = len(np.asarray(series["logps/chosen"])) if "logps/chosen" in series else None
    return series if n is None or last >= n - 1 else regimes.truncated(series, last)


def _read_note(row: dict, regime, last) -> dict:
    if regime is None or last is None or last >= len(regime.steps) - 1:
        return row
    note = (f"read at step {regime.steps[last]}, the last evaluation where the mean force on the probe pairs was "
            f"at least {regimes.ACTIVE:.0%} of its start (the run went on to step {regime.steps[-1]})")
    return dict(row, detail=f"{note}; {row['detail']}" if row.get("detail") else note, read_step=regime.steps[last])


def _not_tested(prediction: Prediction, reason: str) -> dict:
    nan = float("nan")
    return dict(_row(prediction, Outcome("not tested", nan, (nan, nan), 0, reason)), not_tested=reason)


def _controlled_rows(prediction: Prediction, series: Mapping, controls: Mapping, present: list, seed: int,
                     precision: str = "float32") -> list:
    needs = getattr(prediction.evaluate, "needs_control", False)
    if not present:
        return [dict(_judged_row(prediction, prediction.evaluate(series, seed=seed), series, precision),
                     control=None, needs_control=needs, primary_control=True)]
    rows = []
    for rank, name in enumerate(present):
        counterfactual = algorithms.get(name).control_of is not None
        outcome = prediction.evaluate(series, seed=seed, control=controls[name],
                                      control_label=algorithms.get(name).label,
                                      **({"basis": "equal steps"} if counterfactual else {}))
        rows.append(dict(_judged_row(prediction, outcome, series, precision), control=name, needs_control=needs,
                         primary_control=rank == 0))
    return rows


def evaluate_comparison(series_by_algo: Mapping, level: str = "llm", seed: int = 0, regime_by_algo=None,
                        precision: str = "float32") -> list:
    """Every two-run prediction whose two algorithms are both in `series_by_algo`.

    `applies_to` is (reference, other): the other run is predicted to squeeze less. Each comparison is read at
    equal exposure (both runs at the same steps; with one batch order, each probe pair after as many visits in
    both: the regimes' visit counts are checked) and, for the part read on untrained probes only (the other
    probes' fall: y* is read on y+'s contexts, a training target), also at matched preference margin, searched
    only after the first epoch (every probe pair trained on once), not inside the first optimizer steps. For
    "extend", pass the series of its DPO phase only. precision: as for evaluate_run.
    """
    regime_by_algo = regime_by_algo or {}
    rows = []
    for prediction in CATALOGUE:
        if prediction.scope != "compare" or level not in prediction.levels:
            continue
        reference, other = prediction.applies_to
        if reference not in series_by_algo or other not in series_by_algo:
            continue
        pair = [regime_by_algo.get(reference), regime_by_algo.get(other)]
        last, reason = _both_in_regime(prediction, *pair)
        for basis in ("equal exposure",) + (("matched margin",) if prediction.id.endswith("b") else ()):
            if reason or (basis == "equal exposure" and _unequal_exposure(*pair)):
                why = reason or "not tested: the two runs did not visit the probe pairs equally (another batch order)"
                rows.append(dict(_not_tested(prediction, why), basis=basis))
                continue
            outcome = prediction.evaluate(_read_at(series_by_algo[reference], last),
                                          _read_at(series_by_algo[other], last), seed=seed,
                                          basis="equal steps" if basis == "equal exposure" else basis,
                                          from_eval=_after_first_epoch(pair))
            rows.append(dict(_judged_row(prediction, outcome, series_by_algo[reference], precision), basis=basis))
    return rows


def _unequal_exposure(first, second) -> bool:
    if first is None or second is None or first.visits is None or second.visits is None:
        return False
    return len(first.visits) != len(second.visits) or not np.allclose(first.visits, second.visits)


def _after_first_epoch(regimes_pair) -> int:
    """The first evaluation after which both runs had trained on every probe pair (0 where not measured)."""
    epochs = [r.first_epoch for r in regimes_pair if r is not None and r.covered is not None]
    if any(e is None for e in epochs):
        return 10 ** 9        # some pair never trained: no evaluation qualifies
    return max(epochs, default=0)


def _both_in_regime(prediction: Prediction, first, second) -> tuple:
    """(last evaluation both runs are read at, or None; a reason not tested, or None)."""
    lasts = []
    for name, regime in (("the reference run", first), ("the other run", second)):
        if regime is None:
            continue
        last, reason = regimes.gate(regime, prediction.regime)
        if reason:
            return None, f"{name}: {reason}"
        lasts.append(last)
    return (min(lasts) if lasts else None), None
