"""What sets the first-order check's time on a CPU, and what its k-step prediction costs.

`ldyn validate check --first-order --preset cpu --device cpu` is a few hundred forwards and jvps over its
probe set plus 50 AdamW steps. Timed here, in turns, on the first 8 of the cpu preset's probe prompts
(96 probe responses, 12 per prompt) at the check's CPU batch (validate.check.run.CPU_BATCH):

- scoring the probe set in float64 (the eta sweep's unit) and a jvp along an AdamW update in float32 (the
  k-step part's unit), with a prompt's responses sharing one pass over the prompt
  (validate.training.forward's shared-prompt batches, what the check does) and with one row per sequence;
- the k-step prediction's cost: the frozen kernel's one jvp per k over the whole probe set, and the moving
  kernel's one jvp per step over its 12 probes, each against a float32 forward of the probe set;
- one DPO training step of the preset's batch (forward and backward, no optimizer step) on SDPA's math kernel,
  which forward AD needs (validate.measure.first_order.exact_math), and on the fused kernels a training run uses
  (validate.measure.first_order.fused_attention), which the check's training steps take.

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

from learning_dynamics.validate.training import algorithms as algos  # noqa: E402
from learning_dynamics.validate.check import run as check
from learning_dynamics.validate.measure import first_order, trajectory
from learning_dynamics.validate.training import session  # noqa: E402
from learning_dynamics.validate.training.forward import probe_logps  # noqa: E402
from learning_dynamics.validate.presets import settings_for  # noqa: E402
from learning_dynamics.validate.data.probes import build_probe_set  # noqa: E402

PROMPTS = 8   # of the cpu preset's probe prompts: the ratios, not the check's total, are what is measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    settings = settings_for("cpu", model=args.model, device="cpu")
    device = session.device("cpu")
    loaded = session.load(settings, device, progress=lambda *_: None, dtype=torch.float32)
    model, pad = loaded.model, loaded.pad_id
    examples = session.examples(settings, n_probe=settings.n_probe)
    with first_order.exact_math(model):
        probes = build_probe_set(model, loaded.tokenizer, loaded.encoder, examples.probe[:PROMPTS], examples.train,
                                 examples.test, settings, progress=lambda *_: None, irrelevant=examples.irrelevant)
    sequences, names = check.said_once(probes)
    moving = [sequences[i] for i in trajectory.spread(names, trajectory.MOVING_PROBES)]
    pairs = loaded.tokenize(examples.train)
    batch_pairs = [pairs[i] for i in session.batch_indices(0, len(pairs), settings["batch_pairs"], settings["seed"])]
    trajectory._reference_logps(model, pairs, sorted(pairs.index(p) for p in batch_pairs), pad, device, 8)
    update = _adamw_update(model, batch_pairs, settings, pad, device)
    model64 = copy.deepcopy(model).double()
    batch = check.CPU_BATCH

    def score(shared, net=model64, seqs=sequences):
        def run():
            with torch.no_grad(), first_order.exact_math(net):
                probe_logps(net, seqs, pad, device, batch, shared_prompts=shared)
        return run

    def jvp(shared, seqs=sequences):
        def run():
            with first_order.exact_math(model):
                first_order.predicted_per_unit_eta(model, seqs, update, pad, device, batch, shared_prompts=shared)
        return run

    def train_step(context):
        def run():
            with first_order.exact_math(model), context():
                loss, _, _ = algos.step_loss(settings.algorithm, "main", model, batch_pairs, settings, pad, device)
                loss.backward()
            model.zero_grad(set_to_none=True)
        return run

    seconds = timed_together({"score_shared": score(True), "score_rows": score(False),
                              "jvp_shared": jvp(True), "jvp_rows": jvp(False),
                              "forward32": score(True, model), "jvp_moving": jvp(True, moving),
                              "forward32_moving": score(True, model, moving),
                              "step_math": train_step(contextlib.nullcontext),
                              "step_fused": train_step(first_order.fused_attention)}, device, args.repeats)
    print(f"{len(sequences)} probe responses ({len(probes)} probe prompts), {args.model} on the CPU, "
          f"{torch.get_num_threads()} threads, batches of {batch}; median of {args.repeats} timed rounds")
    for unit, name in (("score", "scoring, float64"), ("jvp", "jvp along an AdamW update, float32")):
        a, b = seconds[f"{unit}_shared"], seconds[f"{unit}_rows"]
        print(f"  {name:38s} shared prompts: {a:6.1f} s   one row each: {b:6.1f} s   ratio {a / b:.2f}")
    print(f"  k-step prediction, frozen kernel: one jvp per k over the probe set, {seconds['jvp_shared']:.1f} s "
          f"= {seconds['jvp_shared'] / seconds['forward32']:.2f} forwards ({seconds['forward32']:.1f} s, float32)")
    print(f"  k-step prediction, moving kernel: one jvp per step over {len(moving)} probes, "
          f"{seconds['jvp_moving']:.1f} s = {seconds['jvp_moving'] / seconds['forward32_moving']:.2f} forwards "
          f"of them ({seconds['forward32_moving']:.1f} s)")
    a, b = seconds["step_fused"], seconds["step_math"]
    print(f"  {settings['algo']} step of {len(batch_pairs)} pairs (fwd+bwd)     fused SDPA: {a:6.1f} s   "
          f"math SDPA: {b:6.1f} s   ratio {a / b:.2f}")


def _adamw_update(model, batch_pairs, settings, pad, device) -> dict:
    """theta_1 - theta_0 of the check's first AdamW step; the weights stay theta_0."""
    with first_order.restoring(model):
        theta0 = first_order.snapshot(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
        loss, _, _ = algos.step_loss(settings.algorithm, "main", model, batch_pairs, settings, pad, device)
        loss.backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
        return {k: v.detach() - theta0[k] for k, v in model.named_parameters()}


if __name__ == "__main__":
    main()
