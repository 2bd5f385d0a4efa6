"""What sets the first-order check's time on a CPU: batch size, and the attention kernel of a training step.

`ldyn validate check --first-order --preset cpu --device cpu` is a few hundred forwards and jvps over its
probe set plus 50 AdamW steps. Timed here, in turns, on the cpu preset's probe set (8 probe prompts):

- scoring the probe set in float64 (the eta sweep's unit) and a jvp along an AdamW update in float32 (the
  k-step part's unit), at the check's CPU batch (validate.check.CPU_BATCH) and at the preset's eval batch:
  a batch of sequences sorted by length pads less when it is small, and its activations stay in cache;
- one DPO training step of the preset's batch (forward and backward, no optimizer step) on SDPA's math kernel,
  which forward AD needs (validate.first_order.exact_math), and on the fused kernels a training run uses
  (validate.first_order.fused_attention), which the check's training steps now take.

    OMP_NUM_THREADS=2 python benchmarks/bench_check_cpu.py [--repeats 2]
"""
import argparse
import contextlib
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from gpu_common import timed_together  # noqa: E402

from learning_dynamics.validate import algorithms as algos  # noqa: E402
from learning_dynamics.validate import check, first_order, session, trajectory  # noqa: E402
from learning_dynamics.validate.forward import probe_logps  # noqa: E402
from learning_dynamics.validate.presets import settings_for  # noqa: E402
from learning_dynamics.validate.probes import build_probe_set  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    settings = settings_for("cpu", model=args.model, device="cpu")
    device = session.device("cpu")
    loaded = session.load(settings, device, progress=lambda *_: None, dtype=torch.float32)
    model, pad = loaded.model, loaded.pad_id
    examples = session.examples(settings, n_probe=check.N_PROBE_PROMPTS["cpu"])
    with first_order.exact_math(model):
        probes = build_probe_set(model, loaded.tokenizer, loaded.encoder, examples.probe, examples.train,
                                 examples.test, settings, progress=lambda *_: None, irrelevant=examples.irrelevant)
    sequences, _ = check.said_once(probes)
    pairs = loaded.tokenize(examples.train)
    batch_pairs = [pairs[i] for i in session.batch_indices(0, len(pairs), settings["batch_pairs"], settings["seed"])]
    trajectory._reference_logps(model, pairs, sorted(pairs.index(p) for p in batch_pairs), pad, device, 8)
    update = _adamw_update(model, batch_pairs, settings, pad, device)
    model64 = copy.deepcopy(model).double()
    small, large = check.CPU_BATCH, settings["eval_batch"]

    def score(batch):
        def run():
            with torch.no_grad(), first_order.exact_math(model64):
                probe_logps(model64, sequences, pad, device, batch)
        return run

    def jvp(batch):
        def run():
            with first_order.exact_math(model):
                first_order.predicted_per_unit_eta(model, sequences, update, pad, device, batch)
        return run

    def train_step(context):
        def run():
            with first_order.exact_math(model), context():
                loss, _, _ = algos.step_loss(settings["algo"], "main", model, batch_pairs, settings, pad, device)
                loss.backward()
            model.zero_grad(set_to_none=True)
        return run

    seconds = timed_together({f"score{small}": score(small), f"score{large}": score(large),
                              f"jvp{small}": jvp(small), f"jvp{large}": jvp(large),
                              "step_math": train_step(contextlib.nullcontext), "step_fused": train_step(first_order.fused_attention)},
                             device, args.repeats)
    print(f"{len(sequences)} probe responses ({len(probes)} probe prompts), {args.model} on the CPU, "
          f"{torch.get_num_threads()} threads; median of {args.repeats} timed rounds")
    for unit, name in (("score", "scoring, float64"), ("jvp", "jvp along an AdamW update, float32")):
        a, b = seconds[f"{unit}{small}"], seconds[f"{unit}{large}"]
        print(f"  {name:38s} batch {small}: {a:6.1f} s   batch {large}: {b:6.1f} s   ratio {a / b:.2f}")
    a, b = seconds["step_fused"], seconds["step_math"]
    print(f"  {settings['algo']} step of {len(batch_pairs)} pairs (fwd+bwd)     fused SDPA: {a:6.1f} s   "
          f"math SDPA: {b:6.1f} s   ratio {a / b:.2f}")


def _adamw_update(model, batch_pairs, settings, pad, device) -> dict:
    """theta_1 - theta_0 of the check's first AdamW step; the weights stay theta_0."""
    with first_order.restoring(model):
        theta0 = first_order.snapshot(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
        loss, _, _ = algos.step_loss(settings["algo"], "main", model, batch_pairs, settings, pad, device)
        loss.backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
        return {k: v.detach() - theta0[k] for k, v in model.named_parameters()}


if __name__ == "__main__":
    main()
