"""Cost of the first-order (jvp) prediction for a probe set against one forward pass over it.

The first-order check predicts every probe's change with one jvp along the SGD
direction (validate.first_order.predicted_per_unit_eta). Prints the median time
of that jvp and of a plain forward pass (sequence log-probs) over the same
sequences, in float32, timing warmed-up calls; target: jvp under 3x the forward.
The jvp needs SDPA's math kernel; the forward is timed with it and with the
default (fused) kernels.

    python benchmarks/bench_jvp.py [--model smollm2] [--device cuda] [--n-probe 24]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from gpu_common import setup, timed  # noqa: E402

from validate import first_order  # noqa: E402
from validate.probes import build_probe_set, probe_sequences  # noqa: E402
from validate.run import _tokenize_pairs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n-probe", type=int, default=24)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    device = torch.device(args.device)
    loaded, encoder, train, probe, test, settings = setup(args.model, args.device, n_probe=args.n_probe)
    model, pad = loaded.model, loaded.tokenizer.pad_token_id
    probes = build_probe_set(model, loaded.tokenizer, encoder, probe, train, test, settings,
                             progress=lambda *_: None)
    sequences = [(p, r) for _, _, p, r in probe_sequences(probes)]
    pair = _tokenize_pairs(encoder, probe[:1])[0]
    direction = first_order.sgd_direction(model, (pair["prompt"], pair["rejected"]), 1.0, pad, device)

    def forward():
        with torch.no_grad():
            first_order.probe_logps(model, sequences, pad, device, args.batch)

    def prediction():
        first_order.predicted_per_unit_eta(model, sequences, direction, pad, device, args.batch)

    fused = timed(forward, device, 3, 1)
    with first_order.exact_math():
        math_forward = timed(forward, device, 3, 1)
        jvp = timed(prediction, device, 3, 1)
    tokens = sum(len(p) + len(r) for p, r in sequences)
    print(f"{len(sequences)} probe sequences, {tokens} tokens, float32, {loaded.name} on {args.device}")
    print(f"  forward (fused SDPA) {fused * 1e3:8.1f} ms")
    print(f"  forward (math SDPA)  {math_forward * 1e3:8.1f} ms")
    print(f"  jvp prediction       {jvp * 1e3:8.1f} ms")
    print(f"  jvp / forward (same kernel): {jvp / math_forward:.2f}x; jvp / fused forward: {jvp / fused:.2f}x "
          "(target < 3x)")


if __name__ == "__main__":
    main()
