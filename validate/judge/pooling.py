"""Several training seeds of one experiment, judged together (`ldyn validate report` over their run folders).

A seed group is the runs that differ in their seed only (the same algorithm, model, data and sizes). Their
probe curves are joined along the prompt axis, seed after seed, and every bootstrap resamples seeds first, then
prompts within each seed drawn (theory.statistics.grouped_by), so a pooled interval carries the seed-to-seed
variation (the batch order and the samples) as well as the prompts'. A control is paired seed by seed. A claim
is read where every seed was still in its regime (theory.regime), and is not tested if one seed was not.

The primary verdicts (theory.predictions.PRIMARY, named before the runs were made) are corrected for
multiplicity with Holm's step-down procedure over the family; every other verdict is exploratory.
"""
import numpy as np

from learning_dynamics.theory import algorithms, predictions
from learning_dynamics.theory import regime as regimes
from learning_dynamics.theory.statistics import grouped_by, holm, verdict_from_p

# settings that do not change what a run computes, and the seed itself: left out of a seed group's key
NOT_THE_EXPERIMENT = ("seed", "checkpoint_every", "data_sha256")


def _key(settings: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in settings.items() if k not in NOT_THE_EXPERIMENT))


def seed_groups(settings_of: dict) -> list:
    """[[run directory, ...], ...]: runs that differ in their seed only, two seeds or more, ordered by seed."""
    groups = {}
    for d, s in settings_of.items():
        groups.setdefault(_key(s), []).append(d)
    out = []
    for dirs in groups.values():
        seeds = [settings_of[d]["seed"] for d in dirs]
        if len(set(seeds)) > 1 and len(set(seeds)) == len(seeds):
            out.append(sorted(dirs, key=lambda d: settings_of[d]["seed"]))
    return out


def joined(series_list) -> dict:
    """The series of several seeds side by side along the prompt axis (keys every seed has, with equal rows)."""
    keys = set.intersection(*(set(s) for s in series_list))
    out = {}
    for k in sorted(keys):
        arrays = [np.asarray(s[k]) for s in series_list]
        if len({a.shape[:-1] for a in arrays}) == 1:
            out[k] = np.concatenate(arrays, axis=-1)
    return out


def joined_regime(regimes_list):
    """The regime every seed was in: the earliest end of an active force, the largest first-step error."""
    known = [r for r in regimes_list if r is not None]
    if not known:
        return None
    forces = [r.force for r in known if r.force is not None]
    errors = [r.first_step_error for r in known if r.first_step_error is not None]
    return regimes.Regime(known[0].steps, tuple(np.min(np.array(forces), axis=0)) if forces else None,
                          first_step_error=max(errors) if errors else None,
                          notes=tuple(dict.fromkeys(n for r in known for n in r.notes)))


def pooled_rows(group, settings_of, series_of, regime_of, controls_of, names) -> list:
    """Every run-level verdict of one seed group, over its seeds together."""
    algo = settings_of[group[0]]["algo"]
    labels = np.concatenate([np.full(np.shape(series_of[d]["logps/chosen"])[-1], settings_of[d]["seed"])
                             for d in group])
    controls = {}
    for name in algorithms.controls(algo):
        matched = [controls_of[d].get(name) for d in group]
        if all(matched):
            controls[name] = joined([series_of[c] for c in matched])
    with grouped_by(labels):
        rows = predictions.evaluate_run(joined([series_of[d] for d in group]), algo, level="llm", seed=0,
                                        controls=controls, regime=joined_regime([regime_of.get(d) for d in group]),
                                        precision=settings_of[group[0]].get("precision") or "float32")
    seeds = [settings_of[d]["seed"] for d in group]
    parents = {names[d].rsplit("/", 1)[0] if "/" in names[d] else "" for d in group}
    prefix = f"{parents.pop()}/" if len(parents) == 1 and "" not in parents else ""   # a folder all seeds share
    label = f"{prefix}{algo} ({len(group)} seeds)"
    return [dict(r, run=label, algo=algo, seeds=seeds, pooled=True) for r in rows]


def is_primary(row: dict) -> bool:
    """A row of the primary family: a primary claim, judged against the run's first control where it has one."""
    return row["id"] in predictions.PRIMARY and row.get("primary_control", True) and "basis" not in row


def correct_for_multiplicity(rows: list) -> list:
    """Holm's correction over the primary rows (the pooled ones where there are any); the rest exploratory."""
    family = [i for i, r in enumerate(rows) if is_primary(r) and r.get("pooled")] or \
        [i for i, r in enumerate(rows) if is_primary(r)]
    family = [i for i, r in ((i, rows[i]) for i in family) if r["verdict"] != "not tested"]
    adjusted = holm([rows[i].get("p_value") for i in family])
    out = [dict(r, role="exploratory") for r in rows]
    for i, p in zip(family, adjusted):
        raw = out[i]["verdict"]
        # a correction only widens: an effect inside the scoring's round-off stays inconclusive
        verdict = raw if out[i].get("inconclusive_reason") else verdict_from_p(out[i]["effect"], p)
        out[i] = dict(out[i], role="primary", p_holm=p, verdict=verdict,
                      detail=f"primary, Holm-corrected over {len(family)} claims: p {_p(p)} (raw p "
                             f"{_p(out[i].get('p_value'))}, uncorrected verdict {raw}); {out[i].get('detail', '')}")
    return out


def _p(p) -> str:
    return "n/a" if p is None else f"{p:.3g}"
