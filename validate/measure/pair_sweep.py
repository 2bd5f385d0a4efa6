"""The eta sweep over many training pairs: where the first-order picture breaks, as a median and an interval.

validate.measure.first_order.check_pair_steps sweeps one pair in detail (the fine grid from 0.01 nats, the error slope,
each push's share). Here each of the first N probe prompts' pairs is swept on a coarse grid from 1 nats, where the
relative error is already a percent or so, to 1000, stopping where it passes 100%: the y+ push, the y- push and the
DPO step, each over the pair's own prompt's probe responses (its y+ and y- among them, as in the detailed sweep)
and the next probe prompt's (a prompt it does not train on). Per pair and step kind, the step sizes where the
relative error first passes 10% (the end of the linear regime) and 100% (where it breaks) are interpolated on
log-log axes between the grid points around them (in float32: PAIR_DTYPE); over pairs they are reported as a
median with a bootstrap 95% interval (theory.statistics.bootstrap_ci), and the range. A pair whose error never
passes a level on the grid is censored there: it counts as beyond the grid, which the median can be.
"""
import numpy as np
import torch

from learning_dynamics.validate.measure.first_order import STEP_KINDS, pair_steps, sweep
from learning_dynamics.validate.data.probes import said_once
from learning_dynamics.theory.statistics import bootstrap_ci

PAIR_NATS = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
LEVELS = {"linear_up_to": 0.1, "breaks_at": 1.0}      # relative error levels whose crossing is reported
PROMPTS_PER_PAIR = 2                                  # the pair's own probe prompt and the next one
# float32: the grid starts at 1 nats, where float32's rounding floor (about 5% relative error at 0.01 nats,
# so about 0.05% at 1) is far below the error it measures; half float64's time on a CPU
PAIR_DTYPE = torch.float32


def pair_probe_sets(probes: list, n_pairs: int) -> list:
    """For pair i: the probe records of prompt i and of prompt i + 1 (cyclically; only i's with one prompt)."""
    n = len(probes)
    return [[probes[(i + k) % n] for k in range(min(PROMPTS_PER_PAIR, n))] for i in range(min(n_pairs, n))]


def crossing(rows: list, level: float):
    """Where the relative error first passes `level`: target nats and eta, interpolated on log-log axes.

    None when it never does on the grid (censored); at the first grid point when it already does there.
    """
    errors = [r["relative_error"] for r in rows]
    first = next((i for i, e in enumerate(errors) if not e <= level), None)
    if first is None:
        return None
    if first == 0 or not np.isfinite(errors[first]) or errors[first - 1] <= 0:
        return {"target_nats": rows[first]["target_nats"], "eta": rows[first]["eta"], "interpolated": False}
    lo, hi = rows[first - 1], rows[first]
    t = (np.log(level) - np.log(lo["relative_error"])) / (np.log(hi["relative_error"]) - np.log(lo["relative_error"]))
    nats = float(np.exp(np.log(lo["target_nats"]) + t * (np.log(hi["target_nats"]) - np.log(lo["target_nats"]))))
    return {"target_nats": nats, "eta": nats * hi["eta"] / hi["target_nats"], "interpolated": True}


def sweep_pair(model, pair: dict, sequences: list, pad_id, device, batch_size) -> dict:
    """The three step kinds of one pair on the coarse grid; per kind its rows and each level's crossing."""
    directions, per_eta, before, _ = pair_steps(model, pair, sequences, pad_id, device, batch_size)
    out = {}
    for kind in STEP_KINDS:
        swept = sweep(model, directions[kind], per_eta[kind], sequences, before, pad_id, device, batch_size,
                      grid=PAIR_NATS)
        out[kind] = {"per_eta": swept["per_eta"], "error_slope": swept["error_slope"],
                     **{name: crossing(swept["per_eta"], level) for name, level in LEVELS.items()}}
    return out


def summarise(values, seed: int = 0) -> dict:
    """Median, bootstrap 95% interval of the median and range over pairs; a censored value (None: beyond the
    grid) ranks above every crossing, and a statistic that lands among the censored is beyond the grid (inf)."""
    finite = [float(v) for v in values if v is not None]
    if not values:
        return {"median": None, "ci": [None, None], "min": None, "max": None, "n": 0, "n_crossed": 0}
    top = max(finite, default=1.0)
    stand_in = 2.0 * top + 1.0              # above every crossing, so ranks (all a median reads) are kept
    data = np.array([stand_in if v is None else v for v in values], dtype=float)
    point, ci = bootstrap_ci(np.median, [data], seed=seed)

    def back(x):
        return float(np.inf) if x > top else float(x)
    return {"median": back(point), "ci": [back(ci[0]), back(ci[1])], "min": back(data.min()),
            "max": back(data.max()), "n": int(len(data)), "n_crossed": len(finite)}


def over_pairs(per_pair: list, seed: int = 0) -> dict:
    """Per step kind and level: the crossing's target nats and eta summarised over pairs."""
    out = {}
    for kind in STEP_KINDS:
        out[kind] = {}
        for name in LEVELS:
            crossings = [p[kind][name] for p in per_pair]
            out[kind][name] = {unit: summarise([None if c is None else c[unit] for c in crossings], seed)
                               for unit in ("target_nats", "eta")}
        out[kind]["error_slope"] = summarise([p[kind]["error_slope"] for p in per_pair
                                              if np.isfinite(p[kind]["error_slope"])], seed)
    return out


def sweep_pairs(model, pairs: list, probes: list, pad_id, device, batch_size, seed: int = 0, progress=None,
                dtype=PAIR_DTYPE) -> dict:
    """The first len(pairs) probe prompts' pairs, each swept over its probe set (pair_probe_sets), in `dtype`
    (the model's own dtype comes back after; a float32 model made float64 goes back and forth exactly)."""
    saved = next(model.parameters()).dtype
    model.to(dtype)
    try:
        out = _sweep_pairs(model, pairs, probes, pad_id, device, batch_size, seed, progress)
    finally:
        model.to(saved)
    return dict(out, dtype=str(dtype).replace("torch.", ""))


def _sweep_pairs(model, pairs, probes, pad_id, device, batch_size, seed, progress) -> dict:
    per_pair = []
    for i, (pair, probe_set) in enumerate(zip(pairs, pair_probe_sets(probes, len(pairs)))):
        sequences, _ = said_once(probe_set)
        result = sweep_pair(model, pair, sequences, pad_id, device, batch_size)
        per_pair.append(dict(result, pair=i, n_probe_sequences=len(sequences),
                             probe_prompts=[p["prompt_id"] for p in probe_set]))
        if progress:
            progress(f"pair {i + 1} of {len(pairs)}: breaks at " + " / ".join(
                f"{result[k]['breaks_at']['target_nats']:.3g}" if result[k]["breaks_at"] else "-"
                for k in STEP_KINDS) + f" nats ({' / '.join(STEP_KINDS)})")
    return {"grid_nats": list(PAIR_NATS), "levels": dict(LEVELS), "prompts_per_pair": PROMPTS_PER_PAIR,
            "n_pairs": len(per_pair), "per_pair": per_pair, "summary": over_pairs(per_pair, seed)}
