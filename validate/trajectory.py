"""How far the first-order picture carries along a real training run: AdamW's update, k steps, the kernel.

The one-step check (validate.first_order) steps along -grad L with a chosen eta.
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
- the kernel's drift (prediction P20): the eNTK between fixed probe sequences and
  the first batch's training sequences, K[p, u] = <grad log pi(p), grad log pi(u)>,
  at step 0 and at each checkpoint. A column of K is the jvp of the probes along
  one training sequence's gradient, computed through the kernel's factors
  (validate.factored_jvp). Verdict: the cosine similarity of K_k with K_0 at the
  last checkpoint against the paper's "relatively stable" (> 0.9), with a
  bootstrap CI over probe sequences.
"""
import contextlib

import numpy as np
import torch

from learning_dynamics.theory import algorithms as registry
from learning_dynamics.theory.errors import UserError
from learning_dynamics.validate import factored_jvp
from learning_dynamics.validate.first_order import (agreement, fused_attention, predicted_per_unit_eta, restoring,
                                                     sgd_direction, snapshot)
from learning_dynamics.validate.forward import probe_logps

K_STEPS = {"smoke": (1, 3, 6), "cpu": (1, 5, 20, 50), "default": (1, 5, 20, 50)}
KERNEL_PROBES = 12           # probe sequences in the kernel (rows of K)
MOVING_PROBES = 12           # probe sequences the moving-kernel sum covers (it costs one jvp per step)
KERNEL_TRAIN = 4             # training sequences in the kernel (columns): the first batch's y+ and y-
P20_THRESHOLD = 0.9          # paper-notes item 20: "relatively stable" = cosine similarity above ~0.9
# losses of one response or one dataset pair, needing no samples and no reference model during training
TRAJECTORY_ALGOS = tuple(name for name, a in registry.REGISTRY.items()
                         if not a.requires_samples and not a.warmup and a.data in ("chosen", "pair"))


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


def run_trajectory(model, pairs, sequences, names, settings, pad_id, device, batch_size, k_steps,
                   progress=print, moving_probes: int = MOVING_PROBES) -> dict:
    """Train max(k_steps) AdamW steps and measure the first-order picture along them (see the module doc)."""
    from learning_dynamics.validate import algorithms as algos
    from learning_dynamics.validate.session import batch_indices
    algo = settings["algo"]
    if algo not in TRAJECTORY_ALGOS:
        raise UserError(f"the k-step check trains with --algo one of {', '.join(TRAJECTORY_ALGOS)}, not {algo!r}")
    k_steps = sorted(set(int(k) for k in k_steps))
    if not k_steps or k_steps[0] < 1:
        raise UserError(f"--k-steps must be positive integers, got {k_steps}")
    k_max = k_steps[-1]
    mid = k_steps[-2] if len(k_steps) > 1 else 0      # the warm-state step: theta_mid -> theta_mid+1
    pairs = [dict(p) for p in pairs]
    batches = [batch_indices(t, len(pairs), settings["batch_pairs"], settings["seed"]) for t in range(k_max)]
    if registry.get(algo).requires_reference:
        _reference_logps(model, pairs, sorted({i for b in batches for i in b}), pad_id, device, batch_size)
    trains = [(pairs[i]["prompt"], pairs[i][key]) for i in batches[0] for key in ("chosen", "rejected")][:KERNEL_TRAIN]
    kernel_probes = [sequences[i] for i in spread(names, KERNEL_PROBES)]
    moving_rows = spread(names, moving_probes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])

    def logps():
        with torch.no_grad():
            return probe_logps(model, sequences, pad_id, device, batch_size)

    theta0 = snapshot(model)
    scored = {0: logps()}
    kernels = {0: kernel_matrix(model, kernel_probes, trains, pad_id, device, batch_size)}
    deltas, log, mid_step = {}, [], None
    moving = MovingKernelSum(model, [sequences[i] for i in moving_rows], pad_id, device, batch_size)
    theta_t, update = snapshot(model), None       # buffers reused by every step
    for t in range(k_max):
        with fused_attention():   # the step a training run takes; only the jvps need the math kernel
            loss, metrics, _ = algos.step_loss(algo, "main", model, [pairs[i] for i in batches[t]], settings,
                                               pad_id, device)
            if not torch.isfinite(loss):
                raise UserError(f"the k-step check's training loss became {loss.item()} at step {t}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
        log.append({"step": t, **{k: round(float(v), 6) for k, v in metrics.items()}})
        step = t + 1
        update = _difference(model, theta_t, out=update)
        moving.add(theta_t, update, keep=step in k_steps)
        if step in k_steps or step in (mid, mid + 1):
            scored[step] = logps()
        if step in k_steps:
            deltas[step] = _difference(model, theta0)
            kernels[step] = kernel_matrix(model, kernel_probes, trains, pad_id, device, batch_size)
            progress(f"k-step check: step {step} of {k_max}, loss {metrics['loss']:.4f}")
        if t == mid and mid > 0:
            predicted = predicted_per_unit_eta(model, sequences, update, pad_id, device, batch_size, at=theta_t)
            mid_step = {"step": mid, **agreement(predicted.cpu().numpy(),
                                                  (scored[mid + 1] - scored[mid]).cpu().numpy()),
                        "update_norm": _norm(update), "predicted": predicted.tolist(),
                        "actual": (scored[mid + 1] - scored[mid]).tolist()}
        with torch.no_grad():
            for k, v in model.named_parameters():
                theta_t[k].copy_(v)
    del optimizer, update, theta_t
    per_k = {}
    with holding(model, theta0):   # the frozen kernel: every k's prediction is a jvp at theta_0
        for k in k_steps:
            predicted = predicted_per_unit_eta(model, sequences, deltas[k], pad_id, device, batch_size).cpu().numpy()
            actual = (scored[k] - scored[0]).cpu().numpy()
            per_k[k] = {"k": k, **agreement(predicted, actual), "update_norm": _norm(deltas[k]),
                        "predicted": predicted.tolist(), "actual": actual.tolist(),
                        "moving_kernel": moving.compare(k, moving_rows, predicted, actual)}
            del deltas[k]
    first = {kk: v for kk, v in per_k[k_steps[0]].items()} if k_steps[0] == 1 else None
    return {"algo": algo, "lr": settings["lr"], "batch_pairs": settings["batch_pairs"], "k_steps": k_steps,
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "adamw_first_step": first, "adamw_mid_step": mid_step,
            "k_step": [per_k[k] for k in k_steps], "train_log": log, "probe_names": list(names),
            "moving_kernel_probes": [int(i) for i in moving_rows],
            "kernel": {"probes": len(kernel_probes), "train_sequences": len(trains),
                       "matrices": {str(s): m.tolist() for s, m in kernels.items()}},
            "P20": kernel_drift(kernels, seed=settings["seed"])}


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
