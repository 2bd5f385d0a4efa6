"""Was a run in the regime a claim is about? The paper's run-level claims rest on two conditions:

- an **active force**: the loss still pushes the probe pairs. DPO's coefficient beta sigma(-u) on y+ and y- falls
  as the margin u grows; once it is near 0 the pair is no longer trained, and whatever the curves do next is
  not the mechanism the claim is about. Measured on the probe pairs from the tracked log-probs themselves (the
  step-0 model is the reference), as the share of the initial force left: |dL/dlog pi(y+)| now over at step 0
  (DPO: sigma(-u) / sigma(0)).
- **first-order steps**: one optimizer step moves the probe log-probs as the eNTK predicts (a jvp along the real
  update). The first step's relative error is measured during the run (validate.measure.regime).

A claim whose mechanism needs an active force is read at the last evaluation where the mean force on the probe
pairs was still ACTIVE; a claim that needs first-order steps is *not tested* where the first step's error passed
FIRST_ORDER. Neither is a failure of the claim: the run did not test it.
"""
from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np

from learning_dynamics.theory import residuals

# DPO: sigma(-u) >= 0.1, i.e. a fifth of sigma(0) = 0.5 (the bar for an active run at mid-run)
ACTIVE = 0.2
# a pair whose force fell below a tenth of its start (DPO: sigma(-u) < 0.05) is saturated
SATURATED = 0.1
# the first AdamW step's first-order error on the probe set, at most
FIRST_ORDER = 0.10

_SERIES_INPUTS = {"logp_chosen": "logps/chosen", "logp_rejected": "logps/rejected",
                  "len_chosen": "n_tokens/chosen", "len_rejected": "n_tokens/rejected"}


def force_curve(series: Mapping, loss: str, hyper: Mapping) -> Optional[np.ndarray]:
    """[n_evals, n_prompts]: |dL/dlog pi(y+)| on each probe pair over its value at the first evaluation, with the
    first evaluation's model as the reference; None where the loss reads what the probe set does not track (a
    policy sample's or a group's log-prob, a KL estimate)."""
    wrt, others = residuals.loss_inputs(loss)
    if "logp_chosen" not in wrt:
        return None
    values = {}
    for name in wrt + others:
        if name in _SERIES_INPUTS and _SERIES_INPUTS[name] in series:
            values[name] = np.asarray(series[_SERIES_INPUTS[name]], dtype=np.float64)
        elif name in ("ref_chosen", "ref_rejected") and _SERIES_INPUTS["logp_" + name[4:]] in series:
            values[name] = np.asarray(series[_SERIES_INPUTS["logp_" + name[4:]]], dtype=np.float64)[:1]
        elif name in hyper:
            values[name] = hyper[name]
        elif name not in residuals.loss_defaults(loss):
            return None
    coefficient = np.abs(residuals.residual_coefficients(loss, **values)["logp_chosen"])
    coefficient = np.broadcast_to(coefficient, np.shape(values["logp_chosen"]))
    start = coefficient[0]
    return np.divide(coefficient, start, out=np.ones_like(coefficient), where=start > 0)


@dataclass(frozen=True)
class Regime:
    """What a run's logs say about its regime (report.json's "regime")."""
    steps: tuple                              # the evaluation steps
    force: Optional[tuple] = None             # mean share of the initial force left, per evaluation
    saturated: Optional[tuple] = None         # share of probe pairs saturated, per evaluation
    visits: Optional[tuple] = None            # mean visits per probe pair before each evaluation
    covered: Optional[tuple] = None           # share of probe pairs visited at least once, per evaluation
    first_step_error: Optional[float] = None  # the first optimizer step's relative first-order error
    notes: tuple = field(default_factory=tuple)

    @property
    def active_until(self) -> Optional[int]:
        """Index of the last evaluation up to which the mean force stayed ACTIVE (None: not measured)."""
        if self.force is None:
            return None
        last = 0
        for i, f in enumerate(self.force):
            if f < ACTIVE:
                break
            last = i
        return last

    @property
    def first_epoch(self) -> Optional[int]:
        """Index of the first evaluation by which every probe pair was trained on at least once (None: never, or
        not measured)."""
        if self.covered is None:
            return None
        return next((i for i, c in enumerate(self.covered) if c >= 1.0), None)

    @property
    def first_order(self) -> Optional[bool]:
        return None if self.first_step_error is None else bool(self.first_step_error <= FIRST_ORDER)

    @classmethod
    def from_dict(cls, values: Mapping) -> "Regime":
        """Back from as_dict (a report's "regime")."""
        tupled = {k: None if values.get(k) is None else tuple(values[k])
                  for k in ("force", "saturated", "visits", "covered")}
        return cls(tuple(values["steps"]), **tupled, first_step_error=values.get("first_step_error"),
                   notes=tuple(values.get("notes", ())))

    def as_dict(self) -> dict:
        return {"steps": list(self.steps), "force": _listed(self.force), "saturated": _listed(self.saturated),
                "visits": _listed(self.visits), "covered": _listed(self.covered),
                "first_step_error": self.first_step_error,
                "active_until_step": None if self.active_until is None else int(self.steps[self.active_until]),
                "first_order": self.first_order, "thresholds": {"active": ACTIVE, "saturated": SATURATED,
                                                                "first_order": FIRST_ORDER},
                "notes": list(self.notes)}


def _listed(values):
    return None if values is None else [float(v) for v in values]


def measure(series: Mapping, steps, loss: Optional[str], hyper: Mapping, visits=None, first_step_error=None) -> Regime:
    """The regime of a run from its tracked curves (the force of `loss` on the probe pairs; None: not tracked), its
    visits per probe pair ([n_evals, n_prompts] or None) and its first step's first-order error (None: not
    measured)."""
    curve = None if loss is None else force_curve(series, loss, hyper)
    notes = []
    if curve is None:
        notes.append("the loss's force on the probe pairs is not tracked (it reads a policy sample, a group or a "
                     "KL estimate): claims are read at the end of the run")
    if first_step_error is None:
        notes.append("the first step's first-order error was not measured: claims are judged without it")
    return Regime(tuple(int(s) for s in steps),
                  None if curve is None else tuple(np.nanmean(curve, axis=1)),
                  None if curve is None else tuple(np.mean(curve < SATURATED, axis=1)),
                  None if visits is None else tuple(np.mean(np.asarray(visits, dtype=float), axis=1)),
                  None if visits is None else tuple(np.mean(np.asarray(visits) >= 1, axis=1)),
                  None if first_step_error is None else float(first_step_error), tuple(notes))


def gate(regime: Regime, needs: frozenset) -> tuple:
    """(last evaluation index to read, reason not tested or None) for a claim that `needs` "first order" and/or
    "active force"."""
    if "first order" in needs and regime.first_order is False:
        return None, (f"not tested: the first optimizer step's first-order error was {regime.first_step_error:.0%} "
                      f"(> {FIRST_ORDER:.0%}), so the steps are not the first-order force the claim is about")
    last = len(regime.steps) - 1
    if "active force" in needs and regime.active_until is not None:
        last = regime.active_until
        if last == 0:
            return None, (f"not tested: the mean force on the probe pairs fell below {ACTIVE:.0%} of its start by "
                          f"the first evaluation after step 0 (step {regime.steps[1] if len(regime.steps) > 1 else 0})")
    return last, None


def truncated(series: Mapping, last: int) -> dict:
    """The series up to evaluation `last` (a claim read where the run was still in its regime)."""
    return {k: np.asarray(v)[:last + 1] for k, v in series.items()}
