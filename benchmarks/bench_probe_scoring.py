"""Time to score the whole probe set once, and what avoiding full-vocabulary logits buys.

Scores every (prompt, probe response) of the default probe set (200 prompts x 12
probe types) with validate.training.forward.score_batch under bf16 autocast, batched by
length, against the naive way (fp32 `model(...).logits` at every position, a full
softmax for entropy and ||pi||^2). Prints tokens/s of each and their ratio.

    python benchmarks/bench_probe_scoring.py [--model smollm2] [--device cuda]
"""
import argparse
import contextlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from gpu_common import setup, timed  # noqa: E402

from learning_dynamics.validate.training.forward import make_batch  # noqa: E402
from learning_dynamics.validate.data.probes import build_probe_set, probe_sequences  # noqa: E402
from learning_dynamics.validate.training.run import _score_rows  # noqa: E402


@torch.no_grad()
def naive_scores(model, sequences, pad, device, batch_size):
    for start in range(0, len(sequences), batch_size):
        chunk = [(p, r) for _, _, p, r in sequences[start:start + batch_size]]
        batch = make_batch(chunk, pad).to(device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
        logp = logits.log_softmax(-1)
        mask = batch.response_mask[:, 1:].float()
        token = logp.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
        probs = logp.exp()
        entropy = -(probs * logp).sum(-1)
        sqnorm = (probs * probs).sum(-1)
        ((token + entropy + sqnorm + logp.max(-1).values) * mask).sum(-1).cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n-probe", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    device = torch.device(args.device)
    loaded, encoder, train, probe, test, settings = setup(args.model, args.device, n_probe=args.n_probe)
    cuda = device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    with autocast():
        probes = build_probe_set(loaded.model, loaded.tokenizer, encoder, probe, train, test,
                                 dict(settings, eval_batch=args.batch), progress=lambda *_: None)
    sequences = probe_sequences(probes)
    pad = loaded.tokenizer.pad_token_id
    tokens = sum(len(p) + len(r) for _, _, p, r in sequences)
    ours = timed(lambda: _score_rows(loaded.model, sequences, pad, device, args.batch, autocast), device, 3, 1)
    naive = timed(lambda: naive_scores(loaded.model, sequences, pad, device, min(args.batch, 64)), device, 3, 1)
    print(f"probe set: {len(probes)} prompts, {len(sequences)} sequences, {tokens} tokens")
    print(f"  validate scoring  {ours:7.2f} s  {tokens / ours:10.0f} tokens/s")
    print(f"  naive fp32 logits {naive:7.2f} s  {tokens / naive:10.0f} tokens/s")
    print(f"  speed-up: {naive / ours:.2f}x")


if __name__ == "__main__":
    main()
