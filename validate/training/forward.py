"""Response log-probs of a Hugging Face causal LM without a [batch, length, vocab] tensor.

The body runs over whole sequences, but the LM head only over the positions that
predict response tokens: prompts (with SmolLM2's system prompt) are most of each
sequence, and the head (576 x 49152) is a large share of the FLOPs. Log-probs come
from cross-entropy (a fused log-softmax + gather); statistics of the whole
next-token distribution (entropy, ||pi||^2 via logsumexp(2z) - 2 logsumexp(z),
max log pi) are computed in chunks of tokens under no_grad.
"""
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from learning_dynamics.sim.common.batches import right_pad, span_mask
from learning_dynamics.sim.losses import upcast
# transformers loads inside the functions that need them, so importing this module stays light (ldyn --help)

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

    @property
    def n_sequences(self) -> int:
        return self.input_ids.shape[0]

    def body_inputs(self) -> dict:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    def pick(self, hidden):
        """(hidden states at the positions that predict response tokens [N, H], labels [N], sequence [N])."""
        predicts = self.response_mask[:, 1:]                     # position t predicts token t+1
        return (hidden[:, :-1][predicts], self.input_ids[:, 1:][predicts],
                torch.nonzero(predicts, as_tuple=True)[0])


@dataclass
class SharedPromptBatch:
    """Sequences that share a prompt, one row per prompt: the prompt once, then each of its responses.

    A response attends to the prompt and to its own earlier tokens only (a 4D mask), and its positions
    restart where the prompt ends, so every response sees exactly what it would see alone; the body runs
    over each prompt once instead of once per response. A probe set's 12 responses per prompt are about a
    third of its tokens this way (the prompts, with SmolLM2's system prompt, are twice the responses).
    """
    input_ids: torch.Tensor       # [R, T] long
    attention_mask: torch.Tensor  # [R, 1, T, T] bool: query t may attend to key s
    position_ids: torch.Tensor    # [R, T] long
    source: torch.Tensor          # [N] long: flat row * T + t of the position that predicts each response token
    labels: torch.Tensor          # [N] long
    sequence: torch.Tensor        # [N] long: which of the batch's sequences each token belongs to
    n_sequences: int
    n_tokens: int                 # tokens the body runs over, padding left out

    def to(self, device):
        return SharedPromptBatch(*(getattr(self, f).to(device, non_blocking=True) for f in
                                   ("input_ids", "attention_mask", "position_ids", "source", "labels", "sequence")),
                                 self.n_sequences, self.n_tokens)

    def body_inputs(self) -> dict:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}

    def pick(self, hidden):
        return hidden.reshape(-1, hidden.shape[-1])[self.source], self.labels, self.sequence


def make_batch(sequences, pad_id: int) -> Batch:
    """sequences: list of (prompt_ids, response_ids) -> one right-padded Batch."""
    ids, lengths = right_pad([list(p) + list(r) for p, r in sequences], pad_id)
    width = ids.shape[1]
    attention = span_mask(width, torch.zeros_like(lengths), lengths).long()
    response = span_mask(width, [len(p) for p, _ in sequences], lengths)
    return Batch(ids, attention, response)


def make_shared_prompt_batch(groups, pad_id: int) -> SharedPromptBatch:
    """groups: lists of (prompt_ids, response_ids) with one prompt each -> one SharedPromptBatch.

    The batch's sequences are the groups' sequences in order. Padding attends to itself only.
    """
    rows, segments, positions, source, labels, sequence = [], [], [], [], [], []
    first = 0                     # the batch's index of the group's first sequence
    for r, group in enumerate(groups):
        prompt = list(group[0][0])
        row, segment, position = list(prompt), [0] * len(prompt), list(range(len(prompt)))
        for j, (prompt_ids, response) in enumerate(group):
            if list(prompt_ids) != prompt:
                raise ValueError("a shared-prompt group holds sequences of different prompts")
            start = len(row)
            for i, token in enumerate(response):
                if i or prompt:   # as in make_batch, a sequence's first token is never predicted
                    source.append((r, start + i - 1 if i else len(prompt) - 1))
                    labels.append(int(token))
                    sequence.append(first + j)
            row += list(response)
            segment += [j + 1] * len(response)
            position += range(len(prompt), len(prompt) + len(response))
        rows.append(row)
        segments.append(segment)
        positions.append(position)
        first += len(group)
    ids, _ = right_pad(rows, pad_id)
    width = ids.shape[1]
    segment, _ = right_pad(segments, -1)      # -1: padding
    position, _ = right_pad(positions, 0)
    query, key = segment[:, :, None], segment[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    mask = causal & (((key == 0) & (query >= 0)) | (key == query))
    at = torch.tensor(source, dtype=torch.long).reshape(-1, 2)
    return SharedPromptBatch(ids, mask[:, None], position, at[:, 0] * width + at[:, 1],
                             torch.tensor(labels, dtype=torch.long), torch.tensor(sequence, dtype=torch.long),
                             sum(map(len, groups)), sum(map(len, rows)))


def decoder_body(model):
    return model.get_decoder() if hasattr(model, "get_decoder") else model.model


def response_logits(model, batch: Batch):
    """Logits at the positions that predict response tokens: [N, V], labels [N], sequence index [N].

    batch: a Batch, or a SharedPromptBatch (its sequences, not its rows, are what the indices count).
    """
    hidden = decoder_body(model)(**batch.body_inputs()).last_hidden_state
    picked, labels, rows = batch.pick(hidden)
    return readout(model, picked), labels, rows


_FP32_HEADS = {}   # id(weight) -> (weak reference, version, fp32 copy): a no-grad readout re-casts only after the weights change


def readout(model, hidden):
    """The logits of `hidden` [N, H]. Low-precision weights (a CPU run in bf16) are read out in fp32: a bf16
    logit of 20 is rounded to steps of 0.125, too coarse for a log-prob. Under autocast (a GPU run) the
    autocast decides, as before."""
    head = model.get_output_embeddings()
    weight = getattr(head, "weight", None)      # a functional call's head is a plain function of its params
    if weight is None or weight.dtype not in (torch.bfloat16, torch.float16) \
            or torch.is_autocast_enabled(hidden.device.type):
        return head(hidden)
    bias = None if head.bias is None else head.bias.float()
    if torch.is_grad_enabled():
        return F.linear(hidden.float(), weight.float(), bias)
    cached = _FP32_HEADS.get(id(weight))
    if cached is None or cached[0]() is not weight or cached[1] != weight._version:
        _FP32_HEADS.clear()     # one model's head at a time: a few hundred MB at most
        cached = _FP32_HEADS[id(weight)] = (weakref.ref(weight), weight._version, weight.detach().float())
    return F.linear(hidden.float(), cached[2], bias)


def sequence_logps(model, batch: Batch):
    """Summed log pi(response | prompt) per row [B] (differentiable) and token counts [B]."""
    logits, labels, rows = response_logits(model, batch)
    token_logps = -F.cross_entropy(upcast(logits), labels, reduction="none")
    n_rows = batch.n_sequences
    sums = torch.zeros(n_rows, dtype=token_logps.dtype, device=token_logps.device).index_add(0, rows, token_logps)
    counts = torch.zeros(n_rows, dtype=token_logps.dtype, device=token_logps.device).index_add(
        0, rows, torch.ones_like(token_logps))
    return sums, counts


def _chunks(sequences, size):
    return [sequences[i:i + size] for i in range(0, len(sequences), size)]


def probe_logps(model, sequences, pad_id, device, batch_size, params=None, shared_prompts=True) -> torch.Tensor:
    """Summed log-probs of (prompt_ids, response_ids) sequences, [N]; with `params`, a functional call.

    shared_prompts: the sequences of one prompt go through the body together, as one SharedPromptBatch row
    (a batch holds whole prompts, up to batch_size sequences or one prompt's); False, or a model whose
    attention takes no custom mask: batch_size sequences a batch, one row each. The two agree to rounding
    (tests hold them together). Batches are filled in order of length, so that few tokens are padding;
    the result is in the order of `sequences`.
    """
    out, order = [], []
    for indices, batch in batches(model, sequences, batch_size, pad_id, shared_prompts):
        batch = batch.to(device)
        out.append(sequence_logps(model, batch)[0] if params is None
                   else functional_sequence_logps(model, params, batch))
        order += indices
    return in_order(torch.cat(out), order)


def in_order(values: torch.Tensor, order) -> torch.Tensor:
    """values[k] belongs to sequence order[k]: the values in the sequences' own order."""
    back = torch.empty(len(order), dtype=torch.long)
    back[list(order)] = torch.arange(len(order))
    return values[back.to(values.device)]


def batches(model, sequences, batch_size, pad_id, shared_prompts=True):
    """(indices, batch) over (prompt_ids, response_ids) sequences, filled in order of length so that few tokens
    are padding: SharedPromptBatch rows (a prompt's sequences after one copy of it) where the model's attention
    reads the 4D mask, else one row per sequence (validate.training.forward's two batch kinds agree to rounding)."""
    if shared_prompts and takes_4d_masks(model):
        return _shared_prompt_batches(sequences, batch_size, pad_id)
    return _one_row_batches(sequences, batch_size, pad_id)


def one_batch(model, sequences, pad_id, shared_prompts=True):
    """All `sequences` in one batch (a training step's, whose loss needs them in one graph): (indices, batch)."""
    return next(iter(batches(model, sequences, max(len(sequences), 1), pad_id, shared_prompts)))


def _one_row_batches(sequences, batch_size, pad_id):
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]) + len(sequences[i][1]))
    return ((chunk, make_batch([sequences[i] for i in chunk], pad_id)) for chunk in _chunks(order, batch_size))


def _shared_prompt_batches(sequences, batch_size, pad_id):
    groups = {}
    for i, (prompt, _) in enumerate(sequences):
        groups.setdefault(tuple(prompt), []).append(i)
    groups = sorted(groups.values(), key=lambda g: len(sequences[g[0]][0]) + sum(len(sequences[i][1]) for i in g))
    batch = []
    for group in groups:
        if batch and sum(map(len, batch)) + len(group) > batch_size:
            yield _shared(batch, sequences, pad_id)
            batch = []
        batch.append(group)
    if batch:
        yield _shared(batch, sequences, pad_id)


def _shared(batch, sequences, pad_id):
    return ([i for g in batch for i in g],
            make_shared_prompt_batch([[sequences[i] for i in g] for g in batch], pad_id))


def takes_4d_masks(model) -> bool:
    """Whether the model's attention reads our boolean 4D mask as given: SDPA does, in transformers 5 (its
    masking utils pass a 4D mask through; older versions expect an additive one), and a sliding window would
    be ignored by it, so such models, eager attention and older versions take one row per sequence."""
    import transformers
    config = getattr(model, "config", None)
    return (getattr(config, "_attn_implementation", None) == "sdpa" and not getattr(config, "sliding_window", None)
            and int(transformers.__version__.split(".")[0]) >= 5)


class Bound:
    """What sequence_logps and response_logits ask of a model, answered with `params` (name -> tensor)."""

    def __init__(self, model, params):
        self.model, self.params = model, params

    def get_decoder(self):
        return lambda **kw: functional_call(self.model.get_decoder(), _sub(self.params, "model."), (), kw)

    def get_output_embeddings(self):
        head = self.model.get_output_embeddings()
        name = "lm_head.weight" if "lm_head.weight" in self.params else "model.embed_tokens.weight"
        return lambda h: F.linear(h, self.params[name], head.bias)


def functional_sequence_logps(model, params, batch):
    """sequence_logps with the weights taken from `params` (name -> tensor, e.g. dual tensors for a jvp)."""
    return sequence_logps(Bound(model, params), batch)[0]


def functional_response_logits(model, params, batch):
    """response_logits with the weights taken from `params`: logits [N, V], labels [N], sequence index [N]."""
    return response_logits(Bound(model, params), batch)


def _sub(params, prefix):
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


@torch.no_grad()
def token_statistics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Per-token log pi(label), entropy, ||pi||^2 and max log pi, chunk by chunk, float32."""
    out = {"logp": [], "entropy": [], "sqnorm": [], "argmax_logp": [], "argmax": []}
    for start in range(0, logits.shape[0], STATS_CHUNK):
        z = upcast(logits[start:start + STATS_CHUNK])
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
    n_rows = batch.n_sequences

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
        p = torch.softmax(upcast(logits[start:start + STATS_CHUNK]).float(), dim=-1)
        p0 = torch.softmax(upcast(ref_logits[start:start + STATS_CHUNK]).float(), dim=-1)
        tv.append(0.5 * (p - p0).abs().sum(-1))
        top = p0.argmax(-1, keepdim=True)
        gain.append((p.gather(-1, top) - p0.gather(-1, top)).squeeze(-1))
    n_rows = batch.n_sequences

    def per_row(values):
        return torch.zeros(n_rows, device=rows.device).index_add(0, rows, values.float())

    tv, gain = (torch.cat(v) if v else logits.new_zeros(0).float() for v in (tv, gain))
    counts = per_row(torch.ones_like(tv)).clamp_min(1)
    return {"tv_mean": (per_row(tv) / counts).cpu(), "top_gain_mean": (per_row(gain) / counts).cpu()}
