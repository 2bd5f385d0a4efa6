"""A run's regime (theory.regime), measured: the first optimizer step's first-order error on the probe set, the
visits each probe pair had before every evaluation, and the force left on the probe pairs.

During `ldyn validate run`, the first training step of the tracked phase is also predicted to first order: a jvp of
every probe's log-prob along the real update theta_1 - theta_0, taken at theta_0 in float32 on SDPA's math kernel
(validate.measure.first_order), written to first_step.json. The actual change is the tracked change from step 0 to step 1
(every run evaluates at step 1), so the report needs no model to read the error.

A run that did not predict its first step (made before this existed) may take the measurement of a first-order
check (`ldyn validate check --first-order`) whose k-step run took the same first step: same model, data, algorithm,
learning rate, batch rule, seed and split. Its first_step.json then names the check,

    {"measured_by": "../first-order/first_order.json", "why": "..."}

and the report reads the check's AdamW first step (validate.first_order's agreement on the check's probes); a check
that took another first step is refused in one line.
"""
from pathlib import Path

import numpy as np

from learning_dynamics.sim.common.io import atomic_write_json, read_json
from learning_dynamics.theory import probes as probe_registry
from learning_dynamics.theory import regime as regimes
from learning_dynamics.theory.errors import CorruptFile
from learning_dynamics.validate.training.session import batch_indices
from learning_dynamics.theory import algorithms
# torch loads inside the functions that need them, so importing this module stays light (ldyn --help)

FIRST_STEP = "first_step.json"
# the settings that fix a run's first optimizer step: a check must share them to lend its measurement
SAME_FIRST_STEP = ("model", "data", "algo", "lr", "beta", "batch_pairs", "seed", "n_train", "n_probe",
                   "weight_decay", "max_prompt_tokens", "max_response_tokens")


def predict_first_step(model, theta0: dict, theta1: dict, sequences, pad_id, device, batch_size) -> list:
    """d log pi(probe) along theta_1 - theta_0 at theta_0, for each (prompt_id, probe, prompt_ids, response_ids)
    said once (a repeated probe adds no response of its own); one {"prompt_id", "probe", "predicted"} each."""
    import torch

    from learning_dynamics.validate.measure.first_order import exact_math, predicted_per_unit_eta
    said = [s for s in sequences if s[1] in probe_registry.SAID_ONCE]
    direction = {k: theta1[k] - theta0[k] for k in theta0}
    was_training = model.training
    model.eval()
    try:
        with exact_math(model):
            predicted = predicted_per_unit_eta(model, [(s[2], s[3]) for s in said], direction, pad_id, device,
                                               batch_size, at=theta0)
    finally:
        model.train(was_training)
    del direction
    return [{"prompt_id": s[0], "probe": s[1], "predicted": float(v)}
            for s, v in zip(said, predicted.float().cpu().tolist())]


def write_first_step(out: Path, step: int, rows: list) -> None:
    atomic_write_json(Path(out) / FIRST_STEP, {"step": int(step), "rows": rows})


def borrowed_first_step(path: Path, saved: dict, settings) -> dict:
    """The AdamW first step measured by the check first_step.json names (see the module's docstring)."""
    check_path = (path.parent / str(saved["measured_by"])).resolve()
    check = read_json(check_path, {}, expect=dict)
    step = (check.get("trajectory") or {}).get("adamw_first_step")
    if not step or "relative_error" not in step:
        raise CorruptFile(path, f"it names {saved['measured_by']}, which holds no first-order check's AdamW step")
    theirs = check.get("settings") or {}
    for key in SAME_FIRST_STEP:
        if theirs.get(key) != settings.get(key):
            raise CorruptFile(path, f"the check it names took another first step ({key}: {theirs.get(key)!r} "
                                    f"there, {settings.get(key)!r} in this run)")
    kept = {k: step[k] for k in ("relative_error", "pearson_r", "sign_agreement") if k in step}
    return {**kept, "n": len(step.get("actual", ())), "measured_by": str(saved["measured_by"]),
            "why": saved.get("why")}


def first_step_error(run_dir: Path, rows_by_step, settings=None) -> dict:
    """The first step's agreement (validate.measure.first_order.agreement) from first_step.json and the tracked change
    from evaluation 0 to evaluation 1, or the check's it names; {} when either is missing."""
    from learning_dynamics.validate.measure.first_order import agreement
    path = Path(run_dir) / FIRST_STEP
    saved = read_json(path, expect=dict)
    if saved and "measured_by" in saved and settings is not None:
        return borrowed_first_step(path, saved, settings)
    if not saved or 0 not in rows_by_step or 1 not in rows_by_step:
        return {}
    try:
        predicted = {(str(r["prompt_id"]), r["probe"]): float(r["predicted"]) for r in saved["rows"]}
    except (KeyError, TypeError, ValueError):
        raise CorruptFile(path, "its rows lack prompt_id, probe or predicted") from None
    before, after = rows_by_step[0], rows_by_step[1]
    keys = [k for k in predicted if k in before and k in after]
    if len(keys) < 2:
        return {}
    actual = np.array([after[k] - before[k] for k in keys])
    guess = np.array([predicted[k] for k in keys])
    return {**agreement(guess, actual), "n": len(keys)}


def visits(n_pairs: int, batch_pairs: int, seed: int, steps, n_probe: int) -> np.ndarray:
    """[n_evals, n_probe]: how many training steps before each evaluation step held each probe pair (probe
    prompt i is training pair i: validate.training.session.examples puts the probe pairs first)."""
    steps = [int(s) for s in steps]
    counts = np.zeros(n_pairs)
    out, done = [], 0
    for step in steps:
        for t in range(done, step):
            counts[batch_indices(t, n_pairs, batch_pairs, seed)] += 1
        done = max(done, step)
        out.append(counts[:n_probe].copy())
    return np.array(out)


def measure_run(run_dir: Path, settings, info: dict, series, steps, tracked_rows) -> tuple:
    """(theory.regime.Regime, the first step's agreement or {}) of one run directory (report.json's "regime")."""
    from learning_dynamics.validate.training.algorithms import hyper_parameters
    algorithm = algorithms.get(settings["algo"])
    hyper = hyper_parameters(algorithm, settings)
    by_step = {}
    for r in tracked_rows:
        by_step.setdefault(int(r["step"]), {})[(str(r["prompt_id"]), r["probe"])] = float(r["logp_sum"])
    ordered = sorted(by_step)
    first = first_step_error(run_dir, {i: by_step[s] for i, s in enumerate(ordered[:2])} if len(ordered) > 1
                             else {}, settings)
    n_pairs = info.get("n_train_pairs")
    n_probe = np.shape(series["logps/chosen"])[1] if "logps/chosen" in series else 0
    seen = None
    # ldyn's own batch schedule (validate.training.session.batch_indices); a monitored run's batches are its trainer's
    if settings.get("preset") != "monitor" and isinstance(n_pairs, int) and n_pairs > 0 and n_probe:
        seen = visits(n_pairs, settings["batch_pairs"], settings["seed"], steps, min(n_probe, n_pairs))
    # a policy-sample negative is not the tracked y-: the force on the probe pairs is not what training sees
    regime = regimes.measure(series, steps, algorithm.loss if algorithm.negative != "policy" else None, hyper,
                             visits=seen, first_step_error=first.get("relative_error"))
    return regime, first

