"""Per-token channels of a DPO step: which part of the model carries the squeeze at y-'s positions.

One DPO-shaped SGD step (validate.measure.token_squeeze: L = log pi(y-) - log pi(y+), direction d = -grad L) moves the
logits at each of y-'s positions l, to first order, by dz_l = W dh_l + dW h_l, with h_l the last hidden state
(after the final norm) and W the output embedding. Three channels:

- "hidden (body)": W times the part of dh_l that the layers and norms' change moves (readout fixed);
- "hidden (input embedding)": W times the part of dh_l that the input embedding's change moves;
- "readout": the output embedding's change times the fixed h_l (hidden state fixed).

SmolLM2 ties its input and output embeddings: one matrix E, one change d_E, read in both roles; the input role is
the second channel and the output role the third. The readout channel is split further by where d_E's rows come
from: the head's own gradient (every row moves) and the input role's gradient (only the rows of tokens the pair's
inputs hold). Each channel's change of log pi(v) is dz_v - pi . dz (A is linear), reported for v = y-'s token and
the top token other than y-'s (the squeeze's winner), at shared-prefix and rejected-only positions. The channels
sum to the exact jvp of log pi (torch.func.jvp through the whole model, the tied matrix in both roles at once); the
largest gap over every position and token is reported.
"""
import contextlib

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import jvp

from learning_dynamics.validate.training.forward import Bound, functional_response_logits, make_batch

CHANNELS = ("hidden (body)", "hidden (input embedding)", "readout")
READOUT_SOURCES = ("readout: head's gradient", "readout: input role's gradient")   # tied embeddings only
TOKENS = ("top", "rejected")      # the top token other than y-'s, and y-'s own token


def embedding_names(model) -> tuple:
    """(input embedding's parameter name, output embedding's): one name when the two are tied."""
    names = {id(p): k for k, p in model.named_parameters()}
    return names[id(model.get_input_embeddings().weight)], names[id(model.get_output_embeddings().weight)]


@contextlib.contextmanager
def head_gradient(model, sign: float = -1.0):
    """The output embedding's gradient from its output role alone (`sign` x D^T X of the one backward run inside
    the block), in out["weight"]: with tied embeddings, what the head contributes to the shared matrix's gradient."""
    head, out = model.get_output_embeddings(), {}

    def record(module, args, output):
        inputs = args[0].detach().reshape(-1, args[0].shape[-1])
        output.register_hook(lambda g: out.__setitem__("weight", sign * g.detach().reshape(-1, g.shape[-1]).T @ inputs))

    handle = head.register_forward_hook(record)
    try:
        yield out
    finally:
        handle.remove()


def _hidden_tangent(model, batch, tangents: dict) -> tuple:
    """(h, dh) at the response-predicting positions, [L, H] each, with only `tangents`' parameters moving."""
    with fwAD.dual_level():
        params = {k: (fwAD.make_dual(v.detach(), tangents[k]) if k in tangents else v.detach())
                  for k, v in model.named_parameters()}
        hidden = Bound(model, params).get_decoder()(**batch.body_inputs()).last_hidden_state
        primal, tangent = fwAD.unpack_dual(batch.pick(hidden)[0])
        return primal.detach(), (torch.zeros_like(primal) if tangent is None else tangent.detach())


@torch.no_grad()
def logit_channels(model, sequence, direction: dict, pad_id, device, head_part=None) -> dict:
    """Each channel's first-order logit change [L, V] along `direction` at the response positions of `sequence`.

    head_part: the output role's share of a tied embedding's direction (head_gradient); adds READOUT_SOURCES.
    """
    batch = make_batch([sequence], pad_id).to(device)
    input_name, output_name = embedding_names(model)
    body = {k: v for k, v in direction.items() if k != input_name and k != output_name}
    h, dh_body = _hidden_tangent(model, batch, body)
    _, dh_input = _hidden_tangent(model, batch, {input_name: direction[input_name]})
    head = model.get_output_embeddings()
    weight = head.weight.detach()
    out = {"hidden (body)": dh_body @ weight.T, "hidden (input embedding)": dh_input @ weight.T,
           "readout": h @ direction[output_name].T}
    bias = next((k for k in direction if k.startswith("lm_head.") and k.endswith("bias")), None)
    if bias is not None:
        out["readout"] = out["readout"] + direction[bias]
    if head_part is not None and input_name == output_name:
        out[READOUT_SOURCES[0]] = h @ head_part.T
        out[READOUT_SOURCES[1]] = h @ (direction[output_name] - head_part).T
    return out


def exact_logp_tangent(model, sequence, direction: dict, pad_id, device) -> torch.Tensor:
    """d log pi(. | context) / d eta along `direction` at every response position [L, V]: one torch.func.jvp."""
    batch = make_batch([sequence], pad_id).to(device)
    params = {k: v.detach() for k, v in model.named_parameters()}
    _, tangent = jvp(lambda p: torch.log_softmax(functional_response_logits(model, p, batch)[0], dim=-1),
                     (params,), (direction,))
    return tangent.detach()


def _through_a(dz: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    """dlog pi = A dz = dz - (pi . dz): the softmax's own Jacobian, linear, so the channels add."""
    return dz - (pi * dz).sum(-1, keepdim=True)


def pair_channels(model, pair, direction, eta, logp_before, change, pad_id, device, head_part=None) -> dict:
    """Per position of y-: each channel's first-order change of log pi(top) and log pi(y-), the exact first-order
    change, the measured one; and the largest gap between the channels' sum and the exact jvp."""
    sequence = (pair["prompt"], pair["rejected"])
    pi = logp_before.exp()
    channels = {name: _through_a(dz.double(), pi) for name, dz in
                logit_channels(model, sequence, direction, pad_id, device, head_part).items()}
    exact = exact_logp_tangent(model, sequence, direction, pad_id, device).double()
    total = sum(channels[name] for name in CHANNELS)
    rows = torch.arange(len(pair["rejected"]))
    tokens = torch.as_tensor(pair["rejected"])
    others = logp_before.clone()
    others[rows, tokens] = -torch.inf
    picks = {"top": others.argmax(-1), "rejected": tokens}
    change = torch.as_tensor(change)
    return {"channels": {name: {t: (eta * c[rows, picks[t]]).cpu().numpy() for t in TOKENS}
                         for name, c in channels.items()},
            "exact": {t: (eta * exact[rows, picks[t]]).cpu().numpy() for t in TOKENS},
            "actual": {t: change[rows, picks[t].cpu()].numpy() for t in TOKENS},
            "sum_gap": float((total - exact).abs().max() / exact.abs().max().clamp_min(1e-300))}


def summarise(records: list, kinds: list) -> dict:
    """Per position kind and token: the mean change per channel, its share of the exact first-order change, the
    fraction of positions where the channel alone moves the token the way the exact change does, and which
    channel carries the most of it."""
    out = {"max_sum_gap": max((r["sum_gap"] for r in records), default=float("nan")), "by_kind": {}}
    names = [n for n in records[0]["channels"]] if records else []
    for kind in ("shared", "rejected_only"):
        picks = [k == kind for k in kinds]
        entry = {"positions": int(sum(int(p.sum()) for p in picks))}
        for token in TOKENS:
            cat = lambda values: np.concatenate([v[p] for v, p in zip(values, picks)])   # noqa: E731
            exact = cat([r["exact"][token] for r in records])
            actual = cat([r["actual"][token] for r in records])
            parts = {n: cat([r["channels"][n][token] for r in records]) for n in names}
            if not exact.size:
                entry[token] = None
                continue
            scale = max(float(np.abs(exact).mean()), 1e-300)
            toward = np.stack([np.sign(exact) * parts[n] for n in CHANNELS])   # each channel, signed as the change
            largest = np.argmax(toward, axis=0)
            entry[token] = {"mean_exact": float(exact.mean()), "mean_actual": float(actual.mean()),
                            "rises_exact": float(np.mean(exact > 0)), "rises_actual": float(np.mean(actual > 0)),
                            "channels": {n: {"mean": float(v.mean()), "share": float(v.mean() / exact.mean())
                                             if exact.mean() else float("nan"),
                                             "mean_abs_over_exact": float(np.abs(v).mean() / scale),
                                             "same_sign": float(np.mean(np.sign(v) == np.sign(exact))),
                                             "largest_at": (float(np.mean(largest == CHANNELS.index(n)))
                                                            if n in CHANNELS else None)}
                                         for n, v in parts.items()},
                            "carrier": max(CHANNELS, key=lambda n: np.sign(exact.mean()) * parts[n].mean())}
        out["by_kind"][kind] = entry
    return out
