"""Calibrating the regime cpu preset (issue 30): for each candidate learning rate, on SmolLM2 on the CPU,

1. the first AdamW step's first-order error on the probe set: theta_1 - theta_0 of one step on the preset's first
   batch, a jvp along it at theta_0 (validate.measure.regime, the run's own check) against the rescored change; AdamW's
   first step is its largest relative one (every weight moves by lr: the update is sign-like), so a rate whose first
   step is first-order keeps every later step first-order too;
2. the DPO force on the probe pairs at mid-run: STEPS (48) AdamW steps of 4 fresh pairs each (the preset's batches,
   over all the default data's training pairs, so each pair is seen about once), then sigma(-u) on the probe pairs,
   u = beta * (margin now - margin at step 0), and the change of log pi(y+).

    OMP_NUM_THREADS=2 python validate/reports/smollm2-135m-instruct-cpu/regime/calibrate.py [--lrs 5e-6,1e-5,2e-5]

The probe set is the committed cpu-preset run's (../dpo/probes.json, 24 prompts; --probe-prompts of them).
"""
import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from learning_dynamics.theory.algorithms import REGISTRY
from learning_dynamics.theory.probes import SAID_ONCE
from learning_dynamics.validate.training import algorithms as algos
from learning_dynamics.validate.training import session
from learning_dynamics.validate.measure.first_order import agreement, exact_math
from learning_dynamics.validate.training.forward import probe_logps
from learning_dynamics.validate.training.precision import Precision, TrainingWeights
from learning_dynamics.validate.presets import settings_for
from learning_dynamics.validate.data.probes import read_probe_set, tracked_sequences
from learning_dynamics.validate.measure.regime import predict_first_step

HERE = Path(__file__).resolve().parent


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lrs", default="5e-6,1e-5,2e-5")
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--probe-prompts", type=int, default=8)
    parser.add_argument("--out", default=str(HERE / "calibration.json"))
    args = parser.parse_args()
    settings = settings_for("cpu", n_train=None, precision="fp32")
    loaded = session.load(settings, torch.device("cpu"), progress=lambda *_: None)
    base, pad = loaded.model, loaded.pad_id
    probes = read_probe_set(HERE.parent / "dpo" / "probes.json", base.get_input_embeddings().weight.shape[0])
    probes = probes[:args.probe_prompts]
    sequences = [s for s in tracked_sequences(probes) if s[1] in SAID_ONCE]   # what the run's check predicts
    pairs_seqs = [(p["prompt_ids"], p["ids"][k]) for p in probes for k in ("chosen", "rejected")]
    examples = session.examples(settings)
    pairs = loaded.tokenize(examples.train)
    # the reference log-probs the steps need, once, for the training pairs the steps visit (one batch order: the
    # settings' seed, the same for every learning rate)
    visited = sorted({i for step in range(args.steps)
                      for i in session.batch_indices(step, len(pairs), settings.batch_pairs, settings.seed)})
    with torch.no_grad():
        ref = probe_logps(base, [(pairs[i]["prompt"], pairs[i][k]) for i in visited for k in ("chosen", "rejected")],
                          pad, "cpu", 16)
    for j, i in enumerate(visited):
        pairs[i]["ref_chosen"], pairs[i]["ref_rejected"] = float(ref[2 * j]), float(ref[2 * j + 1])
    with torch.no_grad():
        start = probe_logps(base, [(s[2], s[3]) for s in sequences], pad, "cpu", 8)
        pair_start = probe_logps(base, pairs_seqs, pad, "cpu", 8).reshape(-1, 2)
    results = {"n_train_pairs": len(pairs), "probe_prompts": len(probes), "steps": args.steps, "lrs": {}}
    fp32 = Precision("fp32", "cpu", "fp32", "calibration")
    for lr in [float(x) for x in args.lrs.split(",")]:
        clock = time.perf_counter()
        model = copy.deepcopy(base).train()
        weights = TrainingWeights(model, fp32, lr=lr, weight_decay=0.0)
        s = settings.with_changes(lr=lr)
        coefficient, chosen_change = {}, {}
        for step in range(args.steps):
            batch = [pairs[i] for i in session.batch_indices(step, len(pairs), s.batch_pairs, s.seed)]
            loss, _, _ = algos.step_loss(REGISTRY["dpo"], "main", model, batch, s, pad, "cpu")
            weights.zero_grad()
            loss.backward()
            weights.grad_norm()
            theta0 = weights.parameters_fp32() if step == 0 else None
            weights.step()
            if step == 0:
                predicted = predict_first_step(model, theta0, weights.parameters_fp32(), sequences, pad, "cpu", 8)
                del theta0
                with torch.no_grad():
                    actual = (probe_logps(model, [(q[2], q[3]) for q in sequences], pad, "cpu", 8) - start).numpy()
                first = agreement(np.array([r["predicted"] for r in predicted]), actual)
            if step + 1 in (args.steps // 4, args.steps // 2, args.steps):
                with torch.no_grad():
                    now = probe_logps(model, pairs_seqs, pad, "cpu", 8).reshape(-1, 2)
                u = s.hyper["beta"] * ((now[:, 0] - pair_start[:, 0]) - (now[:, 1] - pair_start[:, 1]))
                coefficient[step + 1] = float(torch.sigmoid(-u).mean())
                chosen_change[step + 1] = float((now[:, 0] - pair_start[:, 0]).mean())
        results["lrs"][str(lr)] = {"first_step": first, "mean_sigma_minus_u": coefficient,
                                   "mean_change_logp_chosen": chosen_change,
                                   "seconds": round(time.perf_counter() - clock, 1)}
        print(lr, json.dumps(results["lrs"][str(lr)]), flush=True)
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
