"""Response log-probs of a Hugging Face causal LM without a [batch, length, vocab] tensor.

The body runs over whole sequences, but the LM head only over the positions that
predict response tokens: prompts (with SmolLM2's system prompt) are most of each
sequence, and the head (576 x 49152) is a large share of the FLOPs. Log-probs come
from cross-entropy (a fused log-softmax + gather); statistics of the whole
next-token distribution (entropy, ||pi||^2 via logsumexp(2z) - 2 logsumexp(z),
max log pi) are computed in chunks of tokens under no_grad.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from learning_dynamics.sim.batches import right_pad, span_mask
from learning_dynamics.sim.losses import _upcast

STATS_CHUNK = 2048   # tokens per [chunk, vocab] temporary in the statistics pass


@dataclass
class Batch:
    """Right-padded token rows; response_mask marks the response tokens (not the prompt)."""
    input_ids: torch.Tensor       # [B, T] long
    attention_mask: torch.Tensor  # [B, T] long
    response_mask: torch.Tensor   # [B, T] bool

    def to(self, device):
        return Batch(self.input_ids.to(device, non_blocking=True), self.attention_mask.to(device, non_blocking=True),
                     self.response_mask.to(device, non_blocking=True))

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


def make_batch(sequences, pad_id: int) -> Batch:
    """sequences: list of (prompt_ids, response_ids) -> one right-padded Batch."""
    ids, lengths = right_pad([list(p) + list(r) for p, r in sequences], pad_id)
    width = ids.shape[1]
    attention = span_mask(width, torch.zeros_like(lengths), lengths).long()
    response = span_mask(width, [len(p) for p, _ in sequences], lengths)
    return Batch(ids, attention, response)


def decoder_body(model):
    return model.get_decoder() if hasattr(model, "get_decoder") else model.model


def response_logits(model, batch: Batch):
    """Logits at the positions that predict response tokens: [N, V], labels [N], row index [N]."""
    hidden = decoder_body(model)(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    predicts = batch.response_mask[:, 1:]                     # position t predicts token t+1
    picked = hidden[:, :-1][predicts]                         # [N, H]
    labels = batch.input_ids[:, 1:][predicts]
    rows = torch.nonzero(predicts, as_tuple=True)[0]
    return model.get_output_embeddings()(picked), labels, rows


def sequence_logps(model, batch: Batch):
    """Summed log pi(response | prompt) per row [B] (differentiable) and token counts [B]."""
    logits, labels, rows = response_logits(model, batch)
    token_logps = -F.cross_entropy(_upcast(logits), labels, reduction="none")
    n_rows = batch.input_ids.shape[0]
    sums = torch.zeros(n_rows, dtype=token_logps.dtype, device=token_logps.device).index_add(0, rows, token_logps)
    counts = torch.zeros(n_rows, dtype=token_logps.dtype, device=token_logps.device).index_add(
        0, rows, torch.ones_like(token_logps))
    return sums, counts


def _chunks(sequences, size):
    return [sequences[i:i + size] for i in range(0, len(sequences), size)]


def probe_logps(model, sequences, pad_id, device, batch_size, params=None) -> torch.Tensor:
    """Summed log-probs of (prompt_ids, response_ids) sequences, [N]; with `params`, a functional call.

    Batches are filled in order of length, so that few tokens are padding (a probe set mixes short and long
    responses and prompts); the result is in the order of `sequences`.
    """
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]) + len(sequences[i][1]))
    outs = []
    for chunk in _chunks(order, batch_size):
        batch = make_batch([sequences[i] for i in chunk], pad_id).to(device)
        if params is None:
            outs.append(sequence_logps(model, batch)[0])
        else:
            outs.append(functional_sequence_logps(model, params, batch))
    out = torch.cat(outs)
    back = torch.empty(len(order), dtype=torch.long)
    back[order] = torch.arange(len(order))
    return out[back.to(out.device)]


def functional_sequence_logps(model, params, batch):
    """sequence_logps with the weights taken from `params` (name -> tensor, e.g. dual tensors for a jvp)."""
    class Bound:  # what sequence_logps asks of a model, answered with `params`
        def get_decoder(self):
            return lambda **kw: functional_call(model.get_decoder(), _sub(params, "model."), (), kw)

        def get_output_embeddings(self):
            head = model.get_output_embeddings()
            name = "lm_head.weight" if "lm_head.weight" in params else "model.embed_tokens.weight"
            return lambda h: F.linear(h, params[name], head.bias)

    return sequence_logps(Bound(), batch)[0]


def _sub(params, prefix):
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


@torch.no_grad()
def token_statistics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Per-token log pi(label), entropy, ||pi||^2 and max log pi, chunk by chunk, float32."""
    out = {"logp": [], "entropy": [], "sqnorm": [], "argmax_logp": [], "argmax": []}
    for start in range(0, logits.shape[0], STATS_CHUNK):
        z = _upcast(logits[start:start + STATS_CHUNK])
        lse = torch.logsumexp(z, dim=-1)
        out["logp"].append(z.gather(-1, labels[start:start + STATS_CHUNK, None]).squeeze(-1) - lse)
        out["entropy"].append(lse - (torch.softmax(z, dim=-1) * z).sum(-1))
        out["sqnorm"].append(torch.exp(torch.logsumexp(2 * z, dim=-1) - 2 * lse))
        top = z.max(dim=-1)
        out["argmax_logp"].append(top.values - lse)
        out["argmax"].append(top.indices)
    return {k: torch.cat(v) if v else logits.new_zeros(0) for k, v in out.items()}


@torch.no_grad()
def score_batch(model, batch: Batch) -> dict:
    """Per row: logp_sum, n_tokens, entropy_mean, sqnorm_mean, argmax_logp_sum (all [B], float32, CPU)."""
    logits, labels, rows = response_logits(model, batch)
    stats = token_statistics(logits, labels)
    n_rows = batch.input_ids.shape[0]

    def per_row(values):
        return torch.zeros(n_rows, device=values.device).index_add(0, rows, values.float())

    counts = per_row(torch.ones_like(stats["logp"]))
    safe = counts.clamp_min(1)
    return {"logp_sum": per_row(stats["logp"]).cpu(), "n_tokens": counts.long().cpu(),
            "entropy_mean": (per_row(stats["entropy"]) / safe).cpu(),
            "sqnorm_mean": (per_row(stats["sqnorm"]) / safe).cpu(),
            "argmax_logp_sum": per_row(stats["argmax_logp"]).cpu()}


@torch.no_grad()
def mass_shift(model, reference, batch: Batch) -> dict:
    """Per row, averaged over response positions: how far the next-token distribution moved from the
    reference model's (total variation) and how much of it the reference's top token gained.

    tv_mean        mean of 1/2 sum_v |pi(v) - pi_0(v)|
    top_gain_mean  mean of pi(top_0) - pi_0(top_0), top_0 = the reference's argmax
    The share of the moved mass that went into the top token is top_gain / tv
    (P18 on a real model). Chunked over tokens, float32, never [B, T, V].
    """
    logits, _, rows = response_logits(model, batch)
    ref_logits, _, _ = response_logits(reference, batch)
    tv, gain = [], []
    for start in range(0, logits.shape[0], STATS_CHUNK):
        p = torch.softmax(_upcast(logits[start:start + STATS_CHUNK]).float(), dim=-1)
        p0 = torch.softmax(_upcast(ref_logits[start:start + STATS_CHUNK]).float(), dim=-1)
        tv.append(0.5 * (p - p0).abs().sum(-1))
        top = p0.argmax(-1, keepdim=True)
        gain.append((p.gather(-1, top) - p0.gather(-1, top)).squeeze(-1))
    n_rows = batch.input_ids.shape[0]

    def per_row(values):
        return torch.zeros(n_rows, device=rows.device).index_add(0, rows, values.float())

    tv, gain = (torch.cat(v) if v else logits.new_zeros(0).float() for v in (tv, gain))
    counts = per_row(torch.ones_like(tv)).clamp_min(1)
    return {"tv_mean": (per_row(tv) / counts).cpu(), "top_gain_mean": (per_row(gain) / counts).cpu()}
