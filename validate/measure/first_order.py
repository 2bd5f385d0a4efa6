"""Check 1: is one SGD step on a real LM the first-order (AKG) force theory says it is?

For a training pair, one plain SGD step theta' = theta - eta g, g = grad L(theta),
moves every probe's summed log-prob by

    predicted(eta) = eta * <grad log pi(probe), -g>       (a jvp along -g)

which is -eta A K G with the model's own eNTK summed over positions
(theory.decomposition.sequence_akg_dlogp). The actual change is measured by
re-scoring after the step (then the weights are restored). Theory predicts
Pearson r -> 1 at small eta and an error |actual - predicted| = O(eta^2): a
log-log slope of 2. Step sizes are set in units of the predicted change (so
they mean the same thing for any model): the largest probe moves by
TARGET_NATS nats. The grid runs on until the relative error passes 100%, so
the check shows where the linear picture stops, not only that it holds for
tiny steps. Three step kinds: a positive push on y+ (SFT), a negative push on
y- and the DPO-shaped step that is their sum; the jvp is linear in the
direction, so the DPO step's prediction is the sum of the two pushes' and each
push's share of every probe's predicted change is reported.

The jvp is validate.measure.factored_jvp's (through the kernel's factors, fewer matmuls);
torch.func.jvp on dense tangents recomputes the first batch of probes and the
report keeps their largest relative difference.

Forward-mode AD does not run on SDPA's fused kernels; the math kernel is used,
in float64 with TF32 off, so the error floor stays far below the O(eta^2) term.
"""
import contextlib

import numpy as np
import torch
from torch.func import jvp

from learning_dynamics.validate.measure import factored_jvp
from learning_dynamics.validate.training.forward import make_batch, probe_logps, sequence_logps

# The largest predicted probe change at each eta, from well inside the linear regime to far past it;
# the grid stops after the first eta whose relative error passes BREAK_RELATIVE_ERROR.
TARGET_NATS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
BREAK_RELATIVE_ERROR = 1.0
ETA2_REGIME = 0.1          # the error slope is fitted over the etas whose relative error is below this
HEADLINE_NATS = 0.1        # Pearson r reported as the step kind's headline: well inside the linear regime
DENSE_CHECK_SEQUENCES = 16  # probes whose jvp torch.func.jvp recomputes, holding the factored jvp to it
PUSHES = {"positive": ("chosen", -1.0), "negative": ("rejected", 1.0)}  # L = sign * log pi(response)
STEP_KINDS = (*PUSHES, "dpo")  # dpo: L = log pi(y-) - log pi(y+), the sum of the two pushes


def _rms_norm_in_input_dtype(module):
    """Llama's RMSNorm rounds to float32 inside; rounding is not smooth in theta and, in a
    float64 model, sets an error floor (~1e-6 nats) under the O(eta^2) term we measure."""
    def forward(hidden_states):
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return module.weight * (hidden_states * torch.rsqrt(variance + module.variance_epsilon))
    return forward


@contextlib.contextmanager
def exact_math(model=None):
    """Math SDPA kernel (forward AD works there), no TF32, and no float32 rounding in RMSNorm."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    norms = [m for m in (model.modules() if model is not None else ())
             if type(m).__name__.endswith("RMSNorm") and hasattr(m, "variance_epsilon")]
    for m in norms:
        m.forward = _rms_norm_in_input_dtype(m)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        for m in norms:
            del m.forward


@contextlib.contextmanager
def fused_attention():
    """Inside exact_math: SDPA's fused kernels again, for passes that need no forward AD (a training step).

    A CPU training step takes longer on the math kernel (benchmarks/bench_check_cpu.py measures how much).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                      SDPBackend.MATH]):
        yield


def predicted_per_unit_eta(model, sequences, direction, pad_id, device, batch_size, at=None,
                           shared_prompts=True) -> torch.Tensor:
    """d log pi(probe) / d eta along the step direction, for every probe (torch.func.jvp, chunked).

    at: the parameters (name -> tensor) to take the jvp at; the model's own by default.
    shared_prompts: as for forward.probe_logps (False: one row per sequence, the reference).
    The reference implementation, for any direction; validate.measure.factored_jvp computes the same
    for a one-sequence SGD direction with fewer matmuls, and the check uses that.
    """
    params = {k: v.detach() for k, v in model.named_parameters()} if at is None else at
    _, tangent_out = jvp(lambda p: probe_logps(model, sequences, pad_id, device, batch_size, p, shared_prompts),
                         (params,), (direction,))
    return tangent_out.detach()


def sgd_direction(model, pair_sequence, sign, pad_id, device) -> dict:
    """-grad of L = sign * log pi(response | prompt): the direction a plain SGD step moves theta."""
    model.zero_grad(set_to_none=True)
    batch = make_batch([pair_sequence], pad_id).to(device)
    (sign * sequence_logps(model, batch)[0].sum()).backward()
    direction = {k: -v.grad.detach().clone() for k, v in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return direction


def snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@contextlib.contextmanager
def restoring(model, saved=None):
    """Whatever the block does to the weights, the exact old ones come back after it.

    saved: a snapshot of the weights now, for a caller that steps many times from one point (no copy each time).
    """
    saved = snapshot(model) if saved is None else saved
    try:
        yield
    finally:
        with torch.no_grad():
            for k, v in model.named_parameters():
                v.copy_(saved[k])


@contextlib.contextmanager
def stepped(model, direction, eta, saved=None):
    """theta + eta * direction inside the block; the exact old weights (`saved`, if given) after it."""
    with restoring(model, saved):
        with torch.no_grad():
            for k, v in model.named_parameters():
                v.add_(direction[k], alpha=eta)
        yield


def error_slope(etas, errors) -> float:
    """Least-squares slope of log(mean abs error) on log(eta); nan with fewer than two points."""
    etas, errors = np.asarray(etas, dtype=float), np.asarray(errors, dtype=float)
    keep = (errors > 0) & np.isfinite(errors)
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(etas[keep]), np.log(errors[keep]), 1)[0])


def agreement(predicted: np.ndarray, actual: np.ndarray) -> dict:
    """How well one eta's predicted changes match the actual ones, over probes."""
    errors = np.abs(actual - predicted)
    finite = np.all(np.isfinite(actual))
    r = float(np.corrcoef(predicted, actual)[0, 1]) if finite and np.std(actual) > 0 and np.std(predicted) > 0 \
        else float("nan")
    return {"pearson_r": r, "mean_abs_error": float(errors.mean()),
            "relative_error": float(errors.mean() / max(np.abs(actual).mean(), 1e-300)),
            "sign_agreement": float(np.mean(np.sign(predicted) == np.sign(actual))),
            "mean_abs_actual": float(np.abs(actual).mean())}


def sweep(model, direction, per_eta, sequences, before, pad_id, device, batch_size, progress=None,
          grid=TARGET_NATS) -> dict:
    """Step theta along `direction` with growing eta (`grid`: the largest predicted probe change, in nats)
    until the relative error passes 100%."""
    scale = float(per_eta.abs().max())
    predicted_unit = per_eta.cpu().numpy()
    rows, kept, saved = [], None, snapshot(model)
    for nats in grid:
        eta = nats / scale
        with stepped(model, direction, eta, saved), torch.no_grad():
            actual = (probe_logps(model, sequences, pad_id, device, batch_size) - before).cpu().numpy()
        predicted = eta * predicted_unit
        rows.append({"target_nats": nats, "eta": eta, **agreement(predicted, actual)})
        if nats == HEADLINE_NATS or kept is None:
            kept = {"predicted": predicted.tolist(), "actual": actual.tolist(), "target_nats": nats}
        if progress:
            progress(f"  eta {eta:.3g} ({nats:g} nats): r {rows[-1]['pearson_r']:.4f}, "
                     f"relative error {rows[-1]['relative_error']:.3g}")
        if not np.all(np.isfinite(actual)) or rows[-1]["relative_error"] > BREAK_RELATIVE_ERROR:
            break
    return summarise_sweep(rows, kept)


def summarise_sweep(rows, kept) -> dict:
    """Per-eta rows plus the numbers a reader asks first: the slope in the eta^2 regime, where it breaks."""
    # the eta^2 regime: below 10% relative error, and not under the rounding floor, where the error
    # falls as eta grows (float32: ~5% at 0.01 nats); in float64 the floor is below the grid
    floor = int(np.argmin([r["relative_error"] for r in rows]))
    linear = [r for r in rows[floor:] if r["relative_error"] < ETA2_REGIME]
    broken = next((r for r in rows if not r["relative_error"] <= BREAK_RELATIVE_ERROR), None)
    headline = next((r for r in rows if r["target_nats"] == HEADLINE_NATS), rows[0])
    return {"per_eta": rows, "etas": [r["eta"] for r in rows],
            "relative_error": [r["relative_error"] for r in rows],
            "mean_abs_error": [r["mean_abs_error"] for r in rows],
            "error_slope": error_slope([r["eta"] for r in linear], [r["mean_abs_error"] for r in linear]),
            "eta2_regime_etas": [r["eta"] for r in linear],
            "pearson_r": headline["pearson_r"], "headline_target_nats": headline["target_nats"],
            "breaks_at": None if broken is None else {k: broken[k] for k in ("eta", "target_nats",
                                                                              "relative_error")},
            "last_within_10pct": None if not linear else {k: linear[-1][k] for k in ("eta", "target_nats")},
            **kept}


def push_shares(j_positive: np.ndarray, j_negative: np.ndarray, names) -> dict:
    """Each push's share of the DPO step's predicted change of every probe: |j-| / (|j+| + |j-|)."""
    total = np.abs(j_positive) + np.abs(j_negative)
    negative_share = np.abs(j_negative) / np.where(total > 0, total, 1.0)
    by_probe = {}
    for name in dict.fromkeys(names):
        pick = np.array([n == name for n in names])
        by_probe[name] = {"negative_share": float(negative_share[pick].mean()),
                          "same_sign": float(np.mean(np.sign(j_positive[pick]) == np.sign(j_negative[pick])))}
    return {"negative_share_mean": float(negative_share.mean()),
            "negative_dominates": float(np.mean(negative_share > 0.5)),
            "pushes_agree_in_sign": float(np.mean(np.sign(j_positive) == np.sign(j_negative))),
            "by_probe": by_probe, "negative_share": negative_share.tolist()}


def pair_steps(model, pair, sequences, pad_id, device, batch_size, dense_check: bool = False) -> tuple:
    """One training pair's y+ push, y- push and DPO step (their sum): (directions, predicted change per unit eta
    of every sequence, the sequences' log-probs now, the factored jvp's largest relative difference from the
    dense one on the first few sequences, or None without `dense_check`)."""
    directions, per_eta, methods_differ = {}, {}, []
    for kind, (key, sign) in PUSHES.items():
        with factored_jvp.capture(model) as factors:
            directions[kind] = sgd_direction(model, (pair["prompt"], pair[key]), sign, pad_id, device)
        per_eta[kind] = factored_jvp.predicted_per_unit_eta(model, sequences, directions[kind], factors, pad_id,
                                                            device, batch_size)
        if dense_check:
            n_dense = min(batch_size, len(sequences), DENSE_CHECK_SEQUENCES)
            dense = predicted_per_unit_eta(model, sequences[:n_dense], directions[kind], pad_id, device, batch_size)
            methods_differ.append(float((per_eta[kind][:n_dense] - dense).abs().max()
                                        / dense.abs().max().clamp_min(1e-300)))
    directions["dpo"] = {k: directions["positive"][k] + directions["negative"][k] for k in directions["positive"]}
    per_eta["dpo"] = per_eta["positive"] + per_eta["negative"]
    with torch.no_grad():
        before = probe_logps(model, sequences, pad_id, device, batch_size)
    return directions, per_eta, before, (max(methods_differ) if methods_differ else None)


def check_pair_steps(model, pair, sequences, names, pad_id, device, batch_size, progress=None) -> dict:
    """One training pair: the y+ push, the y- push and the DPO step (their sum), each swept over eta."""
    directions, per_eta, before, methods_differ = pair_steps(model, pair, sequences, pad_id, device, batch_size,
                                                             dense_check=True)
    steps = {}
    for kind in STEP_KINDS:
        if progress:
            progress(f"{kind} step:")
        steps[kind] = dict(sweep(model, directions[kind], per_eta[kind], sequences, before, pad_id, device,
                                 batch_size, progress), kind=kind,
                           jvp_methods_max_rel_diff=methods_differ)
    steps["dpo"]["push_shares"] = push_shares(per_eta["positive"].cpu().numpy(), per_eta["negative"].cpu().numpy(),
                                              names)
    return steps

