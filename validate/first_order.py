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
TARGET_NATS nats.

The jvp is validate.factored_jvp's (through the kernel's factors, fewer matmuls);
torch.func.jvp on dense tangents recomputes the first batch of probes and the
report keeps their largest relative difference.

Forward-mode AD does not run on SDPA's fused kernels; the math kernel is used,
in float64 with TF32 off, so the error floor stays far below the O(eta^2) term.
"""
import contextlib

import numpy as np
import torch
from torch.func import jvp

from learning_dynamics.validate import factored_jvp
from learning_dynamics.validate.forward import make_batch, probe_logps, sequence_logps

TARGET_NATS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)   # the largest predicted probe change at each eta
STEP_KINDS = {"positive": ("chosen", -1.0), "negative": ("rejected", 1.0)}  # L = sign * log pi(response)


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


def predicted_per_unit_eta(model, sequences, direction, pad_id, device, batch_size) -> torch.Tensor:
    """d log pi(probe) / d eta along the step direction, for every probe (torch.func.jvp, chunked).

    The reference implementation, for any direction; validate.factored_jvp computes the same
    for a one-sequence SGD direction with fewer matmuls, and the check uses that.
    """
    params = {k: v.detach() for k, v in model.named_parameters()}
    _, tangent_out = jvp(lambda p: probe_logps(model, sequences, pad_id, device, batch_size, p),
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


@contextlib.contextmanager
def stepped(model, direction, eta):
    """theta + eta * direction inside the block; the exact old weights after it."""
    saved = {k: v.detach().clone() for k, v in model.named_parameters()}
    with torch.no_grad():
        for k, v in model.named_parameters():
            v.add_(direction[k], alpha=eta)
    try:
        yield
    finally:
        with torch.no_grad():
            for k, v in model.named_parameters():
                v.copy_(saved[k])


def error_slope(etas, errors) -> float:
    """Least-squares slope of log(mean abs error) on log(eta)."""
    return float(np.polyfit(np.log(etas), np.log(errors), 1)[0])


def check_step(model, pair, kind, sequences, pad_id, device, batch_size) -> dict:
    """One pair, one step kind: predicted vs actual change of every probe over several etas."""
    key, sign = STEP_KINDS[kind]
    with factored_jvp.capture(model) as factors:
        direction = sgd_direction(model, (pair["prompt"], pair[key]), sign, pad_id, device)
    with torch.no_grad():
        before = probe_logps(model, sequences, pad_id, device, batch_size)
    per_eta = factored_jvp.predicted_per_unit_eta(model, sequences, direction, factors, pad_id, device, batch_size)
    dense = predicted_per_unit_eta(model, sequences[:batch_size], direction, pad_id, device, batch_size)
    methods_differ = float((per_eta[:len(dense)] - dense).abs().max() / dense.abs().max().clamp_min(1e-300))
    scale = float(per_eta.abs().max())
    etas = [nats / scale for nats in TARGET_NATS]
    predicted, actual = [], []
    for eta in etas:
        with stepped(model, direction, eta), torch.no_grad():
            actual.append((probe_logps(model, sequences, pad_id, device, batch_size) - before).cpu().numpy())
        predicted.append((eta * per_eta).cpu().numpy())
    predicted, actual = np.array(predicted), np.array(actual)
    errors = np.abs(actual - predicted).mean(axis=1)
    mid = len(etas) // 2
    return {"kind": kind, "etas": etas, "target_nats": list(TARGET_NATS), "mean_abs_error": errors.tolist(),
            "relative_error": (errors / np.abs(actual).mean(axis=1)).tolist(),
            "error_slope": error_slope(etas, errors), "jvp_methods_max_rel_diff": methods_differ,
            "pearson_r": float(np.corrcoef(predicted[mid], actual[mid])[0, 1]),
            "predicted": predicted[mid].tolist(), "actual": actual[mid].tolist()}
