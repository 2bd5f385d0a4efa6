"""When a run must stop: it diverged (non-finite loss or gradients), its gradient vanished (exactly zero), or it
collapsed (uniform or frozen).

A diverged or collapsed model tests no prediction, so `validate.training.run` stops it, keeps
its logs, writes `stopped.json`, and the report marks every verdict inconclusive
with the reason. Each check returns that reason (one clause) or None.
"""
import math

import numpy as np

# a trained LM this close to the uniform distribution (in nats, below log V) predicts nothing
ENTROPY_TOL = 1e-3
# a tiny random model may start near log V; collapse means the gap also shrank tenfold since step 0
ENTROPY_SHRINK = 0.1
# the loss of different batches cannot agree this closely unless the model's outputs stopped moving
FROZEN_STEPS = 8
FROZEN_TOL = 1e-6


def diverged(step: int, loss: float, grad_norm: float = None):
    """A step the run cannot go on from: a non-finite loss or gradient, or a gradient of exactly zero, which
    leaves AdamW nothing to follow (its update would be round-off and stale momentum), like a frozen loss."""
    if not math.isfinite(loss):
        return f"the loss became {loss} at step {step}"
    if grad_norm is not None and not math.isfinite(grad_norm):
        return f"the gradient norm became {grad_norm} at step {step}"
    if grad_norm is not None and grad_norm == 0.0:
        return (f"the loss gradient is exactly zero at step {step} (loss {loss:.6g}): the loss cannot move the "
                "model, as when every pair's chosen equals its rejected")
    return None


def frozen(log: list):
    """The last FROZEN_STEPS logged losses (different batches) are all the same number."""
    losses = [r["loss"] for r in log[-FROZEN_STEPS:]]
    if len(losses) == FROZEN_STEPS and max(losses) - min(losses) <= FROZEN_TOL * max(1.0, abs(losses[-1])):
        return (f"the loss froze at {losses[-1]:.6g} for {FROZEN_STEPS} steps (to step {log[-1]['step']}): "
                "the model's outputs stopped moving")
    return None


def entropy_gap(rows, log_vocab: float) -> float:
    """log V minus the mean next-token entropy over every scored probe sequence."""
    # an empty sequence (a y+/y- pair with no shared prefix) has no positions and no entropy
    return log_vocab - float(np.mean([r["entropy_mean"] for r in rows if r.get("n_tokens", 1) > 0]))


def uniform(step: int, gap: float, initial_gap: float, log_vocab: float):
    """The model's next-token distribution has become uniform (entropy within ENTROPY_TOL of log V)."""
    if not math.isfinite(gap):
        return f"the mean entropy became non-finite at step {step}"
    if gap <= ENTROPY_TOL and (initial_gap is None or gap < ENTROPY_SHRINK * initial_gap):
        return (f"the model collapsed to a uniform distribution at step {step} (mean entropy "
                f"{log_vocab - gap:.5f} nats, log V = {log_vocab:.5f})")
    return None
