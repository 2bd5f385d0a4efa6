"""How much a run squeezed, read from its probe curves: the per-token squeeze index and its two parts
(y*'s gain, the other probes' fall), and the preference margin two runs are matched at.

Every curve is [n_evals, n_prompts] (first row = before training), per token, so that long probes do
not dominate; series without token counts (older tables) fall back to summed log-probs.
"""
from typing import Mapping

import numpy as np

from learning_dynamics.theory import probes as probe_registry

OTHER_PROBES = probe_registry.OTHER_UNTRAINED   # the squeeze index reads no training target

# The squeeze index is y*'s gain plus the other probes' fall; a comparison of two runs is judged on
# each part alone as well, so that a difference in one part is not read as a squeeze of the whole.
SQUEEZE_PARTS = {
    "index": "per-token squeeze index (y* gain minus the mean change of the other untrained probes)",
    "y*": "per-token gain of y*",
    "others": "per-token fall of the other untrained probes (minus their mean change)",
}


def per_token(series: Mapping, probe: str) -> np.ndarray:
    """Mean per-token log-prob of a probe [n_evals, n_prompts]; y* ("greedy") is scored on y+'s tokens."""
    if probe == "greedy":
        if "argmax/chosen" in series and "n_tokens/chosen" in series:
            return np.asarray(series["argmax/chosen"]) / np.maximum(np.asarray(series["n_tokens/chosen"]), 1)
        return np.asarray(series["logps/greedy"]) / np.maximum(np.asarray(series["n_tokens/chosen"]), 1)
    return np.asarray(series[f"logps/{probe}"]) / np.maximum(np.asarray(series[f"n_tokens/{probe}"]), 1)


def squeeze_part_curve(series: Mapping, part: str = "index") -> np.ndarray:
    """[n_evals, n_prompts] of one SQUEEZE_PARTS entry, as a change since the start."""
    if part not in SQUEEZE_PARTS:
        raise ValueError(f"unknown squeeze part {part!r}; known: {', '.join(SQUEEZE_PARTS)}")
    keys = [p for p in OTHER_PROBES if f"logps/{p}" in series]
    if all(f"n_tokens/{p}" in series for p in keys + ["chosen"]):
        curve = {p: per_token(series, p) for p in keys + ["greedy"]}
    else:
        curve = {p: np.asarray(series[f"logps/{p}"], dtype=np.float64) for p in keys + ["greedy"]}
    delta = {p: c - c[0] for p, c in curve.items()}
    gain, fall = delta["greedy"], -np.mean([delta[p] for p in keys], axis=0)
    return {"index": gain + fall, "y*": gain, "others": fall}[part]


def squeeze_index_curve(series: Mapping) -> np.ndarray:
    """[n_evals, n_prompts]: per-token gain of y* since the start minus the mean per-token change of the
    other probe types (nats per token)."""
    return squeeze_part_curve(series, "index")


def squeeze_index(series: Mapping) -> np.ndarray:
    """Per prompt, end of the run: squeeze_index_curve's last row."""
    return squeeze_index_curve(series)[-1]


def margin_curve(series: Mapping) -> np.ndarray:
    """[n_evals, n_prompts]: the preference margin on the probe pairs, change of log pi(y+) minus change
    of log pi(y-) since the start (nats; DPO's implicit reward margin divided by beta)."""
    c, r = (np.asarray(series[f"logps/{k}"], dtype=np.float64) for k in ("chosen", "rejected"))
    return (c - c[0]) - (r - r[0])


def at_margin(margin: np.ndarray, value: np.ndarray, target: float) -> float:
    """`value` ([n_evals]) where the mean margin ([n_evals]) first reaches `target`, linearly interpolated
    between the two evaluations around it; nan if it never does."""
    above = np.nonzero(margin >= target)[0]
    if not above.size:
        return float("nan")
    i = int(above[0])
    if i == 0:
        return float(value[0])
    w = (target - margin[i - 1]) / (margin[i] - margin[i - 1])
    return float(value[i - 1] + w * (value[i] - value[i - 1]))


def matched_margin_difference(margins, values) -> tuple:
    """(difference, target, bracket): reference minus other of the prompt-mean `values` where each run's
    prompt-mean margin first reaches the largest margin both reach (target); bracket[k] is the pair of
    evaluation indices run k is interpolated between. margins, values: one [n_evals, n_prompts] per run."""
    means = [np.asarray(m).mean(axis=1) for m in margins]
    target = min(float(m.max()) for m in means)
    if not target > 0:
        return float("nan"), target, None
    at = [at_margin(m, np.asarray(v).mean(axis=1), target) for m, v in zip(means, values)]
    bracket = []
    for m in means:
        i = int(np.nonzero(m >= target)[0][0])
        bracket.append((i, i) if i == 0 or m[i] == target else (i - 1, i))
    return at[0] - at[1], target, tuple(bracket)


def describe_bracket(bracket) -> str:
    """'at evaluation 3' or 'between evaluations 0 and 1'."""
    a, b = bracket
    return f"at evaluation {a}" if a == b else f"between evaluations {a} and {b}"
