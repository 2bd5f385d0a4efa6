"""How far the first-order picture carries along a real training run: AdamW's update, k steps, the kernel.

The one-step check (validate.measure.first_order) steps along -grad L with a chosen eta.
Training takes AdamW's update instead: Delta theta = theta_{t+1} - theta_t, which
is not the gradient (Adam rescales every coordinate; its first step is nearly
lr * sign(g)). This module trains the model for k_max steps with the run's own
loss, batches and optimizer, and checks three things against the measured probe
log-probs:

- AdamW's update: the jvp at theta_t along Delta theta_t against the actual
  change, for the first step and for a step mid-run with warm optimizer state;
- k steps with a frozen kernel: the sum of the per-step first-order predictions
  with the step-0 kernel, sum_t J(theta_0) Delta theta_t. The jvp is linear in
  its tangent, so the sum is one jvp along theta_k - theta_0: the prediction for
  k steps costs one jvp, whatever k;
- k steps with a moving kernel: sum_t J(theta_t) Delta theta_t, each step's jvp at
  its own parameters (one jvp per step, so over a spread subset of the probes).
  actual - moving is the sum of the steps' own second-order remainders (the
  linearisation error); moving - frozen is what the kernel's drift changes;
- the kernel's drift (prediction P20), on the kernel the paper speaks of: the logit
  eNTK K = grad z(probe) grad z(train)^T between fixed probe sequences and the first
  batch's training sequences, apart from the softmax factors A and G, which the paper
  lets move (validate.measure.logit_kernel: a Gaussian sketch of K, its exact block on a token
  set, A.K.G, A and G alone), at step 0 and at each checkpoint. Described, not judged:
  the paper puts no number on "relatively stable", so P20's verdict is inconclusive
  with that reason, and the cosine curves with a bootstrap over probe and training
  sequences are the result. kernel_matrix (A.K.G alone) and kernel_drift (a verdict at
  the project's own 0.9) remain for callers of the earlier check.
"""
import contextlib

import numpy as np
import torch

from learning_dynamics.theory.errors import UserError
from learning_dynamics.validate.measure import factored_jvp
from learning_dynamics.validate.measure.first_order import (agreement, fused_attention, predicted_per_unit_eta, restoring,
                                                     sgd_direction, snapshot)
from learning_dynamics.validate.training.forward import probe_logps
from learning_dynamics.validate.presets import TRAJECTORY_ALGOS, Settings
from learning_dynamics.validate.measure.logit_kernel import KernelViews
from learning_dynamics.validate.training.session import batch_indices
from learning_dynamics.validate.training import algorithms as algos
# scipy loads inside the functions that need them, so importing this module stays light (ldyn --help)

K_STEPS = {"smoke": (1, 3, 6), "cpu": (1, 5, 20, 50), "cpu-regime": (1, 5, 20, 50), "default": (1, 5, 20, 50)}
KERNEL_PROBES = 12           # probe sequences in the kernel (rows of K)
MOVING_PROBES = 12           # probe sequences the moving-kernel sum covers (it costs one jvp per step)
KERNEL_TRAIN = 4             # training sequences in the kernel (columns): the first batch's y+ and y-
P20_THRESHOLD = 0.9          # the project's own reading of "relatively stable" (paper-notes item 20), not the paper's


def _difference(model, since: dict, out=None) -> dict:
    """The weights now minus `since`; into `out` when given (a step loop reuses one buffer, not 0.5 GB a step)."""
    if out is None:
        return {k: v.detach() - since[k] for k, v in model.named_parameters()}
    for k, v in model.named_parameters():
        torch.sub(v.detach(), since[k], out=out[k])
    return out


@contextlib.contextmanager
def holding(model, params: dict):
    """The model's weights are `params` inside the block and its own again after it."""
    with restoring(model):
        with torch.no_grad():
            for k, v in model.named_parameters():
                v.copy_(params[k])
        yield


def spread(names, n: int) -> list:
    """Indices of n probe sequences that cycle through the probe types, each type from a different prompt.

    names: the probe type of each sequence (prompt-major); a plain stride over them would pick one type only.
    """
    groups = list({name: [i for i, x in enumerate(names) if x == name] for name in dict.fromkeys(names)}.values())
    rotated = [g[k % len(g):] + g[:k % len(g)] for k, g in enumerate(groups)]   # type k starts at prompt k
    order = [g[r] for r in range(max(map(len, rotated), default=0)) for g in rotated if r < len(g)]
    return sorted(order[:n])


def kernel_matrix(model, probes, trains, pad_id, device, batch_size) -> np.ndarray:
    """K[p, u] = <grad log pi(probe p), grad log pi(train u)>, one factored jvp per training sequence."""
    columns = []
    for sequence in trains:
        with factored_jvp.capture(model) as factors:
            direction = sgd_direction(model, sequence, -1.0, pad_id, device)   # +grad log pi(sequence)
        columns.append(factored_jvp.predicted_per_unit_eta(model, probes, direction, factors, pad_id, device,
                                                           batch_size))
    return torch.stack(columns, dim=1).double().cpu().numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))


def kernel_drift(kernels: dict, threshold: float = P20_THRESHOLD, seed: int = 0) -> dict:
    """P20's verdict from the last checkpoint's similarity to step 0, CI by a bootstrap over probe rows."""
    from scipy.stats import bootstrap
    steps = sorted(kernels)
    first, last = kernels[steps[0]], kernels[steps[-1]]
    rows = np.arange(first.shape[0])

    def statistic(idx):
        idx = np.asarray(idx, dtype=int)
        return cosine(first[idx], last[idx])

    point = statistic(rows)
    if len(rows) > 1 and len(steps) > 1:
        res = bootstrap((rows,), statistic, vectorized=False, n_resamples=2000, method="percentile",
                        random_state=np.random.default_rng(seed))
        ci = (float(res.confidence_interval.low), float(res.confidence_interval.high))
    else:
        ci = (float("nan"), float("nan"))
    verdict = "holds" if ci[0] > threshold else "fails" if ci[1] < threshold else "inconclusive"
    return {"id": "P20", "claim": "The eNTK is relatively stable during training.", "verdict": verdict,
            "effect": point, "ci": list(ci), "threshold": threshold, "n": int(len(rows)),
            "effect_unit": f"cosine similarity of K at step {steps[-1]} with K at step {steps[0]}",
            "steps": steps, "similarity": [cosine(first, kernels[s]) for s in steps],
            "norm_ratio": [float(np.linalg.norm(kernels[s]) / max(np.linalg.norm(first), 1e-300)) for s in steps],
            "detail": f"K between {first.shape[0]} probe sequences and {first.shape[1]} training sequences; "
                      f"verdict: holds when the 95% CI lies above {threshold}, fails when below"}


def _reference_logps(model, pairs, indices, pad_id, device, batch_size) -> None:
    """ref_chosen / ref_rejected at theta_0 for the pairs the run will train on."""
    with torch.no_grad(), fused_attention():
        for key in ("chosen", "rejected"):
            logps = probe_logps(model, [(pairs[i]["prompt"], pairs[i][key]) for i in indices], pad_id, device,
                                batch_size)
            for i, value in zip(indices, logps.tolist()):
                pairs[i][f"ref_{key}"] = value


def _checked_steps(algorithm, k_steps) -> list:
    if not algorithm.steps_on_dataset_alone:
        raise UserError(f"the k-step check trains with --algo one of {', '.join(TRAJECTORY_ALGOS)}, "
                        f"not {algorithm.name!r}")
    k_steps = sorted(set(int(k) for k in k_steps))
    if not k_steps or k_steps[0] < 1:
        raise UserError(f"--k-steps must be positive integers, got {k_steps}")
    return k_steps


def run_trajectory(model, pairs, sequences, names, settings, pad_id, device, batch_size, k_steps,
                   progress=print, moving_probes: int = MOVING_PROBES) -> dict:
    """Train max(k_steps) AdamW steps and measure the first-order picture along them (see the module doc).
    settings: validate.presets.Settings (or its flat dict)."""
    settings = Settings.of(settings)
    algorithm = settings.algorithm
    algo, k_steps = algorithm.name, _checked_steps(algorithm, k_steps)
    pairs = [dict(p) for p in pairs]
    batches = [batch_indices(t, len(pairs), settings.batch_pairs, settings.seed) for t in range(k_steps[-1])]
    if algorithm.requires_reference:
        _reference_logps(model, pairs, sorted({i for b in batches for i in b}), pad_id, device, batch_size)
    trains = [(pairs[i]["prompt"], pairs[i][key]) for i in batches[0] for key in ("chosen", "rejected")][:KERNEL_TRAIN]
    views = KernelViews(model, [sequences[i] for i in spread(names, KERNEL_PROBES)], trains, pad_id, device,
                        batch_size, seed=settings.seed)
    moving_rows = spread(names, moving_probes)
    moving = MovingKernelSum(model, [sequences[i] for i in moving_rows], pad_id, device, batch_size)
    trained = _train(model, [[pairs[i] for i in b] for b in batches], sequences, settings, pad_id, device,
                     batch_size, k_steps, views, moving, progress)
    per_k = {}
    with holding(model, trained["theta0"]):   # the frozen kernel: every k's prediction is a jvp at theta_0
        for k in k_steps:
            delta = trained["deltas"].pop(k)
            predicted = predicted_per_unit_eta(model, sequences, delta, pad_id, device, batch_size).cpu().numpy()
            actual = (trained["scored"][k] - trained["scored"][0]).cpu().numpy()
            per_k[k] = {"k": k, **agreement(predicted, actual), "update_norm": _norm(delta),
                        "predicted": predicted.tolist(), "actual": actual.tolist(),
                        "moving_kernel": moving.compare(k, moving_rows, predicted, actual)}
    drift = views.drift(seed=settings.seed)
    return {"algo": algo, "lr": settings.lr, "batch_pairs": settings.batch_pairs, "k_steps": k_steps,
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "adamw_first_step": dict(per_k[1]) if k_steps[0] == 1 else None, "adamw_mid_step": trained["mid_step"],
            "k_step": [per_k[k] for k in k_steps], "train_log": trained["log"], "probe_names": list(names),
            "moving_kernel_probes": [int(i) for i in moving_rows],
            "kernel": {"probes": len(views.probes), "train_sequences": len(trains),
                       "matrices": {str(t): [[float(c[0]) for c in row] for row in v["A.K.G"]]
                                    for t, v in views.values.items()},
                       "sketch": views.sketch_matrices(),
                       "sketch_directions": [views.sketch_probe, views.sketch_train]},
            "P20": p20_described(drift)}


def _train(model, batches, sequences, settings, pad_id, device, batch_size, k_steps, views, moving, progress) -> dict:
    """The k-step run: AdamW steps on the run's batches; probe scores, the kernel's views and theta_k - theta_0
    at every k, the moving-kernel sum at every step, the warm-state step's own prediction."""
    k_max, mid = k_steps[-1], (k_steps[-2] if len(k_steps) > 1 else 0)   # mid: the warm-state step
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    algorithm = settings.algorithm

    def logps():
        with torch.no_grad():
            return probe_logps(model, sequences, pad_id, device, batch_size)

    out = {"theta0": snapshot(model), "scored": {0: logps()}, "deltas": {}, "log": [], "mid_step": None}
    views.measure(0)
    theta_t, update = snapshot(model), None       # buffers reused by every step
    for t in range(k_max):
        with fused_attention():   # the step a training run takes; only the jvps need the math kernel
            loss, metrics, _ = algos.step_loss(algorithm, "main", model, batches[t], settings, pad_id, device)
            if not torch.isfinite(loss):
                raise UserError(f"the k-step check's training loss became {loss.item()} at step {t}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
        out["log"].append({"step": t, **{k: round(float(v), 6) for k, v in metrics.items()}})
        step = t + 1
        update = _difference(model, theta_t, out=update)
        moving.add(theta_t, update, keep=step in k_steps)
        if step in k_steps or step in (mid, mid + 1):
            out["scored"][step] = logps()
        if step in k_steps:
            out["deltas"][step] = _difference(model, out["theta0"])
            views.measure(step)
            progress(f"k-step check: step {step} of {k_max}, loss {metrics['loss']:.4f}")
        if t == mid and mid > 0:
            out["mid_step"] = _own_prediction(model, sequences, update, theta_t, out["scored"], mid, pad_id, device,
                                              batch_size)
        with torch.no_grad():
            for k, v in model.named_parameters():
                theta_t[k].copy_(v)
    return out


def _own_prediction(model, sequences, update, theta_t, scored, step, pad_id, device, batch_size) -> dict:
    """One step's jvp at its own parameters along its own update, against the change it made."""
    predicted = predicted_per_unit_eta(model, sequences, update, pad_id, device, batch_size, at=theta_t)
    actual = (scored[step + 1] - scored[step]).cpu().numpy()
    return {"step": step, **agreement(predicted.cpu().numpy(), actual), "update_norm": _norm(update),
            "predicted": predicted.tolist(), "actual": actual.tolist()}


def p20_described(drift: dict) -> dict:
    """P20 on the logit eNTK (validate.measure.logit_kernel's sketch), described rather than judged: the paper calls the
    eNTK "relatively stable" without a number, so no threshold is the paper's. The verdict is the project's
    "inconclusive" with its reason; the curves of K, A.K.G, A and G are the result."""
    k = drift["K sketch"]
    steps = k["steps"]
    return {"id": "P20", "claim": "The eNTK is relatively stable during training.", "verdict": "inconclusive",
            "inconclusive_reason": "the paper gives no number for \"relatively stable\"",
            "effect": k["similarity"][-1], "ci": k["ci"][-1], "threshold": None, "n": k["n_probe"],
            "n_train": k["n_train"],
            "effect_unit": f"cosine similarity of the logit eNTK (Gaussian sketch) at step {steps[-1]} with step "
                           f"{steps[0]}",
            "steps": steps, "similarity": k["similarity"], "norm_ratio": k["norm_ratio"], "views": drift,
            "detail": f"K between {k['n_probe']} probe sequences and {k['n_train']} training sequences; 95% CI by a "
                      "bootstrap over both (resampled independently)"}


class MovingKernelSum:
    """sum_t J(theta_t) Delta theta_t over a subset of the probes: each step's jvp at its own parameters."""

    def __init__(self, model, probes, pad_id, device, batch_size):
        self.model, self.probes, self.args = model, probes, (pad_id, device, batch_size)
        self.total = torch.zeros(len(probes), dtype=torch.float64)
        self.kept = {}
        self.steps = 0

    def add(self, theta_t: dict, update: dict, keep: bool) -> None:
        if self.probes:
            self.total += predicted_per_unit_eta(self.model, self.probes, update, *self.args, at=theta_t).double().cpu()
        self.steps += 1
        if keep:
            self.kept[self.steps] = self.total.clone()

    def compare(self, k: int, rows, frozen: np.ndarray, actual: np.ndarray):
        """On the subset: actual vs the moving and the frozen sums, and the parts of the frozen sum's error.

        linearisation_error = mean|actual - moving| / mean|actual|: the steps' own second-order remainders;
        kernel_drift_error = mean|moving - frozen| / mean|actual|: what the kernel's drift changes.
        """
        if not self.probes:
            return None
        rows = np.asarray(rows, dtype=int)
        moving, frozen, actual = self.kept[k].numpy(), frozen[rows], actual[rows]
        scale = max(float(np.abs(actual).mean()), 1e-300)
        return {"probes": int(len(rows)), "moving": agreement(moving, actual), "frozen": agreement(frozen, actual),
                "linearisation_error": float(np.abs(actual - moving).mean() / scale),
                "kernel_drift_error": float(np.abs(moving - frozen).mean() / scale),
                "predicted": moving.tolist()}


def _norm(params: dict) -> float:
    return float(torch.sqrt(sum((v.double() ** 2).sum() for v in params.values())))
