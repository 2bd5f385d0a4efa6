"""Cost of the first-order (jvp) prediction for a probe set against one forward pass over it.

The first-order check predicts every probe's change with one jvp along the SGD
direction of one training sequence. Prints the median time, over warmed-up calls
in float32, of a plain forward pass (sequence log-probs) over the probe
sequences and of the two implementations of that jvp: torch.func.jvp on dense
tangents (validate.measure.first_order.predicted_per_unit_eta) and the factored jvp the
check uses (validate.measure.factored_jvp), with their largest relative difference.
Target: the check's jvp under 3x the forward. The jvp needs SDPA's math kernel;
the forward is timed with it and with the default (fused) kernels.

The k-step check (validate.measure.trajectory) costs one jvp along an AdamW update per
prediction, a dense tangent (Adam's update is not low-rank, so no factoring):
the frozen step-0 kernel sums the per-step jvps into one jvp along
theta_k - theta_0, once per evaluated k whatever k is; the moving kernel takes
one jvp per step at that step's own parameters (over the probes it covers).
The script times that jvp along a real AdamW update (one step at the default
preset's lr on a training pair) beside the forward; the last line states it.

    python benchmarks/bench_jvp.py [--model smollm2] [--device cuda] [--n-probe 24] [--repeats 5]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from gpu_common import setup, timed_together, tokenize_pairs  # noqa: E402

from learning_dynamics.validate.measure import factored_jvp, first_order  # noqa: E402
from learning_dynamics.validate.training.forward import make_batch, probe_logps, sequence_logps  # noqa: E402
from learning_dynamics.validate.data.probes import build_probe_set, probe_sequences  # noqa: E402
from learning_dynamics.validate.measure.trajectory import K_STEPS, MOVING_PROBES, spread  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n-probe", type=int, default=24)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    loaded, encoder, train, probe, test, settings = setup(args.model, args.device, n_probe=args.n_probe)
    model, pad = loaded.model, loaded.tokenizer.pad_token_id
    probes = build_probe_set(model, loaded.tokenizer, encoder, probe, train, test, settings,
                             progress=lambda *_: None)
    flat = probe_sequences(probes)
    sequences = [(p, r) for _, _, p, r in flat]
    moving_probes = [sequences[i] for i in spread([name for _, name, _, _ in flat], MOVING_PROBES)]
    pair = tokenize_pairs(encoder, probe[:1])[0]
    with factored_jvp.capture(model) as factors:
        direction = first_order.sgd_direction(model, (pair["prompt"], pair["rejected"]), 1.0, pad, device)

    adamw_update = _adamw_update(model, pair, settings["lr"], pad, device)

    def forward():
        with torch.no_grad():
            probe_logps(model, sequences, pad, device, args.batch)

    def dense():
        return first_order.predicted_per_unit_eta(model, sequences, direction, pad, device, args.batch)

    def factored():
        return factored_jvp.predicted_per_unit_eta(model, sequences, direction, factors, pad, device, args.batch)

    def along_adamw():
        return first_order.predicted_per_unit_eta(model, sequences, adamw_update, pad, device, args.batch)

    def along_adamw_moving_probes():   # one step of the moving-kernel sum
        return first_order.predicted_per_unit_eta(model, moving_probes, adamw_update, pad, device, args.batch)

    def on_math_kernel(fn):
        def run():
            with first_order.exact_math():
                return fn()
        return run

    seconds = timed_together({"fused": forward, "forward": on_math_kernel(forward), "dense": on_math_kernel(dense),
                              "factored": on_math_kernel(factored), "adamw": on_math_kernel(along_adamw),
                              "adamw_moving": on_math_kernel(along_adamw_moving_probes)},
                             device, args.repeats)
    fused, math_forward, dense_jvp, factored_time = (seconds[k] for k in ("fused", "forward", "dense", "factored"))
    a, b = on_math_kernel(dense)(), on_math_kernel(factored)()
    differ = float((a - b).abs().max() / a.abs().max())
    tokens = sum(len(p) + len(r) for p, r in sequences)
    n_factored = len(factors.factored())
    print(f"{len(sequences)} probe sequences, {tokens} tokens, float32, {loaded.name} on {args.device}; "
          f"training sequence {len(pair['prompt']) + len(pair['rejected'])} tokens, "
          f"{n_factored} of {len(factors.layers)} linear layers factored")
    print(f"  forward (fused SDPA)      {fused * 1e3:8.1f} ms")
    print(f"  forward (math SDPA)       {math_forward * 1e3:8.1f} ms")
    print(f"  jvp, torch.func (dense)   {dense_jvp * 1e3:8.1f} ms   {dense_jvp / math_forward:.2f}x the forward")
    print(f"  jvp, factored (check's)   {factored_time * 1e3:8.1f} ms   {factored_time / math_forward:.2f}x the forward")
    print(f"  the two jvps differ by at most {differ:.1e} of the largest prediction")
    print(f"  check's jvp / forward (same kernel): {factored_time / math_forward:.2f}x; / fused forward: "
          f"{factored_time / fused:.2f}x (target < 3x)")
    ks, adamw, moving = K_STEPS["default"], seconds["adamw"] / math_forward, seconds["adamw_moving"] / math_forward
    print(f"  jvp along an AdamW update {seconds['adamw'] * 1e3:8.1f} ms   {adamw:.2f}x the forward "
          f"(the k-step prediction's unit: a dense tangent, lr {settings['lr']:g})")
    print(f"  the same over the moving kernel's {len(moving_probes)} probe responses "
          f"{seconds['adamw_moving'] * 1e3:.1f} ms   {moving:.3f}x the forward over all {len(sequences)}")
    print(f"  k-step prediction, k = {', '.join(map(str, ks))}: frozen kernel one jvp per evaluated k: "
          f"{len(ks) * adamw:.1f} forwards in all; moving kernel one jvp per step: {ks[-1] * moving:.1f} forwards")


def _adamw_update(model, pair, lr, pad, device) -> dict:
    """theta_1 - theta_0 of one AdamW step (SFT loss on the pair's y+); the weights stay theta_0."""
    with first_order.restoring(model):
        theta0 = first_order.snapshot(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        batch = make_batch([(pair["prompt"], pair["chosen"])], pad).to(device)
        (-sequence_logps(model, batch)[0].sum()).backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
        return {k: v.detach() - theta0[k] for k, v in model.named_parameters()}


if __name__ == "__main__":
    main()
