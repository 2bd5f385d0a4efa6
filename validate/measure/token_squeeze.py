"""Check 2: the squeeze token by token on a real LM.

One DPO-shaped SGD step on a pair: L = log pi(y-) - log pi(y+) (the negative
push on y- and the positive push on y+ with equal weights, as DPO's residual
gives them). Along y-'s positions theory distinguishes two kinds of context:

- shared prefix (position l <= d, d the first index where y+ and y- differ): both
  responses see the same context there, so on free logits their pushes meet in
  one softmax and the pi terms cancel (theory.squeeze_dpo.dpo_shared_context_dlogp):
  no squeeze predicted;
- rejected-only (l > d): only the negative push acts; theory.squeeze says the
  argmax other than y-'s token rises, and to first order exactly the tokens with
  pi_i > ||pi||^2 - pi_k rise (theory.squeeze.threshold).

The real model couples positions and tokens through its eNTK, so the free-logit
rule is a prediction to test, not a given: we report how often the argmax rises
and the precision/recall of the threshold's rising set against the measured one.

Pooled over the whole vocabulary, precision and recall are dominated by tens of
thousands of tokens with probability ~1e-9 whose changes are noise-sized and
matter for nothing; they are also reported over the tokens that carry the
mass: the TOP_TOKENS most likely at each position (before the step). At
shared-prefix positions the free-logit theory (P08) says every other token
shifts by the same log amount; the equal-shift test measures, per position,
the spread (standard deviation) of the change over the top tokens other than
the trained ones as a share of its root mean square (0 when all shift
equally, 1 when there is no common shift at all), with the
rejected-only positions (where theory predicts a squeeze, not an equal shift)
as the control.
"""
import numpy as np
import torch

TOP_TOKENS = 50     # tokens per position that "carry the mass" for the pooled precision/recall

from learning_dynamics.theory.statistics import precision_recall
from learning_dynamics.theory.squeeze import threshold
from learning_dynamics.validate.measure import token_channels
from learning_dynamics.validate.measure.first_order import stepped
from learning_dynamics.validate.training.forward import make_batch, response_logits, sequence_logps


def first_divergence(a, b) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


@torch.no_grad()
def _distributions(model, prompt, response, pad_id, device) -> torch.Tensor:
    """log pi(. | context) at each response position: [L, V] float64 (one sequence at a time)."""
    logits, _, _ = response_logits(model, make_batch([(prompt, response)], pad_id).to(device))
    return torch.log_softmax(logits.double(), dim=-1)


def dpo_direction(model, pair, pad_id, device) -> dict:
    """-grad of L = log pi(y-) - log pi(y+): the direction one plain SGD step moves theta."""
    model.zero_grad(set_to_none=True)
    batch = make_batch([(pair["prompt"], pair["rejected"]), (pair["prompt"], pair["chosen"])], pad_id).to(device)
    logps = sequence_logps(model, batch)[0]
    (logps[0] - logps[1]).backward()
    direction = {k: -v.grad.detach().clone() for k, v in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return direction


def check_pair(model, pair, nats, pad_id, device, channels: bool = False) -> dict:
    """Per-position records of one pair: kind, argmax rises, predicted and measured rising sets.

    The step size is eta = nats / ||grad L||^2, which lowers L by `nats` to first order:
    the same size of step for every pair, whatever its gradient norm.
    channels: also split each position's first-order change into validate.measure.token_channels' channels ("channels").
    """
    before = _distributions(model, pair["prompt"], pair["rejected"], pad_id, device)
    with token_channels.head_gradient(model) as head:
        direction = dpo_direction(model, pair, pad_id, device)
    eta = nats / max(sum(float((v * v).sum()) for v in direction.values()), 1e-30)
    with stepped(model, direction, eta):
        after = _distributions(model, pair["prompt"], pair["rejected"], pad_id, device)
    change = (after - before).cpu().numpy()
    split = (token_channels.pair_channels(model, pair, direction, eta, before, change, pad_id, device,
                                          head.get("weight")) if channels else None)
    logp = before.cpu().numpy()
    pi = np.exp(logp)
    tokens = np.array(pair["rejected"])
    d = first_divergence(pair["chosen"], pair["rejected"])
    others = np.ones_like(pi, dtype=bool)
    others[np.arange(len(tokens)), tokens] = False
    masked = np.where(others, logp, -np.inf)
    top = masked.argmax(axis=1)
    rows = np.arange(len(tokens))
    predicted = pi > threshold(pi, tokens, sign=-1)[:, None]
    top_k = min(TOP_TOKENS, pi.shape[1])
    top_mask = np.zeros_like(others)
    np.put_along_axis(top_mask, np.argpartition(-logp, top_k - 1, axis=1)[:, :top_k], True, axis=1)
    untrained = others.copy()                 # neither y-'s nor y+'s token at that position
    shared_rows = rows[rows < len(pair["chosen"])]
    untrained[shared_rows, np.array(pair["chosen"])[shared_rows]] = False
    spread, shift = _equal_shift(change, top_mask & untrained)
    return {"kind": np.where(rows <= d, "shared", "rejected_only"),
            "argmax_rises": change[rows, top] > 0, "argmax_change": change[rows, top],
            "target_change": change[rows, tokens],
            "predicted": predicted & others, "measured": (change > 0) & others, "top": top_mask & others,
            "spread": spread, "shift": shift, "channels": split}


def _equal_shift(change, mask):
    """Per position: std and |mean| of the change over the masked tokens."""
    counts = np.maximum(mask.sum(axis=1), 1)
    mean = np.where(mask, change, 0.0).sum(axis=1) / counts
    var = np.where(mask, (change - mean[:, None]) ** 2, 0.0).sum(axis=1) / counts
    return np.sqrt(var), np.abs(mean)


def summarise(records) -> dict:
    out = {}
    for kind in ("shared", "rejected_only"):
        picks = [(r, r["kind"] == kind) for r in records]
        n = int(sum(m.sum() for _, m in picks))
        if n == 0:
            out[kind] = {"positions": 0, "argmax_rises": None, "precision": None, "recall": None,
                         "mean_abs_argmax_change": None, "target_falls": None, "top": None, "equal_shift": None}
            continue
        cat = lambda key: np.concatenate([r[key][m] for r, m in picks])  # noqa: E731
        scores = precision_recall(cat("predicted").ravel(), cat("measured").ravel())
        top = cat("top")
        top_scores = precision_recall(cat("predicted")[top], cat("measured")[top])
        spread, shift = cat("spread"), cat("shift")
        ratio = spread / np.maximum(np.hypot(spread, shift), 1e-300)   # 0: one equal shift; 1: no common shift
        out[kind] = {"positions": n, "argmax_rises": float(cat("argmax_rises").mean()),
                     "mean_abs_argmax_change": float(np.abs(cat("argmax_change")).mean()),
                     "target_falls": float((cat("target_change") < 0).mean()), **scores,
                     "top": dict(top_scores, tokens_per_position=TOP_TOKENS),
                     "equal_shift": {"median_spread": float(np.median(spread)),
                                     "median_abs_shift": float(np.median(shift)),
                                     "median_spread_over_rms": float(np.median(ratio)),
                                     "fraction_spread_below_shift": float(np.mean(spread < shift))}}
    return out
