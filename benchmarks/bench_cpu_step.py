"""A cpu-preset run's units on this CPU, against the machine's own peak: the DPO step and the evaluation.

In one process, timed in turns (gpu_common.timed_together), on the cpu preset's first DPO batch (SmolLM2, 4 pairs,
references precomputed as a run does) and on the first --probe-prompts prompts of the committed cpu-preset
probe set (validate/reports/smollm2-135m-instruct-cpu/dpo/probes.json, 14 sequences a prompt):

- the machine's practical peak: a square matmul in fp32 and in bf16 (bf16 at a small size where the CPU has
  no bf16 units: it is emulated there, and slow);
- the DPO step (forward, backward, AdamW) before this change (fp32, one row per sequence: the committed runs'
  step), now (the run's precision, `auto` here; a pair's y+ and y- after one copy of its prompt), in bf16 where
  the CPU has bf16 units, and TRL's DPOTrainer step on the same pairs (its reference log-probs precomputed too);
- an evaluation before (one row per probe sequence; greedy generations at every evaluation) and now (a prompt's
  probes after one copy of it; generations at the first and last evaluation only), and per run of the preset.

Achieved fraction of the measured peak: 6·N FLOPs per trained token, 2·N per scored token (N: parameters).

    OMP_NUM_THREADS=2 python benchmarks/bench_cpu_step.py [--repeats 3] [--probe-prompts 8] [--no-trl]
"""
import argparse
import contextlib
import copy
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from gpu_common import timed_together  # noqa: E402

from learning_dynamics.theory.algorithms import REGISTRY  # noqa: E402
from learning_dynamics.validate.training import forward, session  # noqa: E402
from learning_dynamics.validate.training import algorithms as algos  # noqa: E402
from learning_dynamics.validate.training.precision import Precision, TrainingWeights, cpu_bf16_units, resolve  # noqa: E402
from learning_dynamics.validate.presets import settings_for  # noqa: E402
from learning_dynamics.validate.data.probes import eos_ids, read_probe_set, tracked_sequences  # noqa: E402
from learning_dynamics.validate.measure.scoring import greedy_generations, mass_records, score_rows  # noqa: E402

PROBES = os.path.join(os.path.dirname(__file__), "..", "validate", "reports", "smollm2-135m-instruct-cpu", "dpo",
                      "probes.json")


def matmul_peak(dtype, size: int, repeats: int = 3) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size ** 3 * repeats / (time.perf_counter() - start)


@contextlib.contextmanager
def one_row_each():
    """The committed runs' batches: one row per sequence, every prompt repeated."""
    saved = forward.takes_4d_masks
    forward.takes_4d_masks = lambda model: False
    try:
        yield
    finally:
        forward.takes_4d_masks = saved


def dpo_step(model, precision, pairs, settings, pad, one_row=False):
    weights = TrainingWeights(model, precision, lr=settings.lr, weight_decay=settings.weight_decay)

    def run():
        with one_row_each() if one_row else contextlib.nullcontext():
            loss, _, tokens = algos.step_loss(REGISTRY["dpo"], "main", model, pairs, settings, pad, "cpu")
        weights.zero_grad()
        loss.backward()
        weights.grad_norm()
        weights.step()
        run.tokens = tokens
    return run


def trl_step(model, reference, tokenizer, examples, settings):
    """TRL's DPOTrainer on the same pairs (chat format, the same template), one training_step + AdamW step."""
    import tempfile

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer
    rows = [{"prompt": [{"role": "user", "content": e["prompt"]}],
             "chosen": [{"role": "assistant", "content": e["chosen"]}],
             "rejected": [{"role": "assistant", "content": e["rejected"]}]} for e in examples]
    config = DPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=len(rows), use_cpu=True,
                       bf16=False, report_to=[], learning_rate=settings.lr, beta=settings.hyper["beta"],
                       precompute_ref_log_probs=True, max_length=settings.max_prompt_tokens
                       + settings.max_response_tokens, save_strategy="no", logging_steps=1, dataloader_num_workers=0)
    trainer = DPOTrainer(model=model, ref_model=reference, args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1   # set by Trainer's loop, which a single training_step skips
    inputs = next(iter(trainer.get_train_dataloader()))

    def run():
        trainer.training_step(trainer.model, inputs)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    return run


def evaluation(model, reference, probes, sequences, loaded, settings, one_row, generate):
    def run():
        with torch.no_grad(), one_row_each() if one_row else contextlib.nullcontext():
            score_rows(model, sequences, loaded.pad_id, "cpu", settings.eval_batch, loaded.autocast)
            mass_records(model, reference, sequences, loaded.pad_id, "cpu", loaded.autocast)
            if generate:
                greedy_generations(model, probes[:settings.gen_prompts], loaded.tokenizer, eos_ids(loaded.tokenizer),
                                   loaded.pad_id, settings, loaded.autocast)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probe-prompts", type=int, default=8)
    parser.add_argument("--no-trl", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also time the step under torch.compile (inductor)")
    args = parser.parse_args()
    units = cpu_bf16_units()
    fp32_peak = matmul_peak(torch.float32, 2048)
    bf16_size = 2048 if units else 256
    bf16_peak = matmul_peak(torch.bfloat16, bf16_size, 3 if units else 1)
    peak = max(fp32_peak, bf16_peak)
    now = resolve("auto", "cpu")
    settings = settings_for("cpu", precision=now.name)
    loaded = session.load(settings, torch.device("cpu"), progress=lambda *_: None)
    base, pad, tok = loaded.model.train(), loaded.pad_id, loaded.tokenizer
    examples = session.examples(settings)
    indices = session.batch_indices(0, len(examples.train), settings.batch_pairs, settings.seed)
    batch = [examples.train[i] for i in indices]
    pairs = loaded.tokenize(batch)
    for p in pairs:
        p["ref_chosen"], p["ref_rejected"] = -40.0, -60.0     # a step's time does not depend on their values
    fp32 = Precision("fp32", "cpu", "fp32", now.hardware)
    units_to_time = {"step_before": dpo_step(copy.deepcopy(base), fp32, pairs, settings, pad, one_row=True),
                     "step_now": dpo_step(copy.deepcopy(base), now, pairs, settings, pad)}
    if units and now.name != "bf16":
        units_to_time["step_bf16"] = dpo_step(copy.deepcopy(base), Precision("bf16", "cpu", "bf16", now.hardware),
                                              pairs, settings, pad)
    if args.compile:   # inductor on the CPU: kept only if its warm-up pays within one cpu-preset run
        compiled = copy.deepcopy(base)
        compiled.get_decoder().compile(dynamic=True)
        step = dpo_step(compiled, now, pairs, settings, pad)
        clock = time.perf_counter()
        step()
        step.warmup = time.perf_counter() - clock
        units_to_time["step_compiled"] = step
    if not args.no_trl:
        try:
            units_to_time["step_trl"] = trl_step(copy.deepcopy(base), copy.deepcopy(base).eval(), tok, batch, settings)
        except ImportError:
            print("TRL is not installed: its DPOTrainer step is not timed (pip install -e '.[trl]')")
    probes = read_probe_set(PROBES, base.get_input_embeddings().weight.shape[0])[:args.probe_prompts]
    sequences = tracked_sequences(probes)
    scorer = copy.deepcopy(base).eval().to(now.weights_dtype)
    reference = copy.deepcopy(base).eval().to(now.weights_dtype)
    units_to_time["eval_before"] = evaluation(scorer, reference, probes, sequences, loaded, settings, True, True)
    units_to_time["eval_now"] = evaluation(scorer, reference, probes, sequences, loaded, settings, False, False)
    units_to_time["generations"] = evaluation(scorer, reference, probes, [], loaded, settings, False, True)
    seconds = timed_together(units_to_time, torch.device("cpu"), args.repeats)
    report(seconds, units_to_time, sequences, probes, settings, now, units, fp32_peak, bf16_peak, bf16_size, peak,
           sum(p.numel() for p in base.parameters()))


def report(seconds, units, sequences, probes, settings, now, cpu_units, fp32_peak, bf16_peak, bf16_size, peak, n):
    print(f"{now.hardware}; torch {torch.__version__}, {torch.get_num_threads()} threads; `auto` precision: "
          f"{now.name}; median of the timed rounds")
    print(f"  matmul peak: fp32 {fp32_peak / 1e9:.0f} GFLOP/s (2048), bf16 {bf16_peak / 1e9:.1f} GFLOP/s "
          f"({bf16_size}{'' if cpu_units else ', emulated: no bf16 units'})")
    trained = units["step_now"].tokens
    before = seconds["step_before"]
    print(f"  DPO step, {settings.batch_pairs} pairs (forward, backward, AdamW):")
    for key, label in (("step_before", "fp32, one row per sequence (before)"), ("step_now", f"{now.name}, shared "
                       "prompts (now)"), ("step_bf16", "bf16, shared prompts"), ("step_compiled", "now, torch.compile"),
                       ("step_trl", "TRL DPOTrainer")):
        if key in seconds:
            tokens = units[key].tokens if hasattr(units[key], "tokens") else None
            rate = f", {tokens / seconds[key]:.0f} tokens/s" if tokens else ""
            achieved = f", {6 * n * tokens / seconds[key] / peak:.0%} of the peak" if tokens else ""
            print(f"    {label:40s} {seconds[key]:7.2f} s{rate}{achieved}; before/this {before / seconds[key]:.2f}x")
    if "step_trl" in seconds:
        print(f"    TRL / now: {seconds['step_trl'] / seconds['step_now']:.2f}x")
    if "step_compiled" in seconds:
        saved = seconds["step_now"] - seconds["step_compiled"]
        warmup = units["step_compiled"].warmup
        pays = f"pays for itself after {warmup / saved:.0f} steps" if saved > 0 else "never pays (it is not faster)"
        print(f"    torch.compile (inductor): warm-up {warmup:.0f} s, then {seconds['step_compiled']:.2f} s a step: "
              f"{pays} (a cpu-preset run has {settings.steps})")
    scored = sum(len(p) + len(r) for _, _, p, r in sequences)
    print(f"  evaluation of {len(probes)} probe prompts ({len(sequences)} sequences, {scored} tokens one row each):")
    gen = seconds["generations"]
    for key, label in (("eval_before", "before: one row each, generations"), ("eval_now", "now: shared prompts")):
        print(f"    {label:40s} {seconds[key]:7.2f} s; {2 * n * scored / seconds[key] / peak:.0%} of the peak "
              "(counting the one-row tokens)")
    evals = 7   # the cpu preset's evaluations: steps 0, 1, 2, 4, 8, 16, 24
    run_before = evals * seconds["eval_before"]
    run_now = evals * seconds["eval_now"] + 2 * gen
    print(f"    greedy generations alone {gen:.2f} s; per cpu-preset run ({evals} evaluations, generations at every "
          f"one before, at 2 now): {run_before:.0f} s before, {run_now:.0f} s now, {run_before / run_now:.2f}x")
    steps = (settings.steps * seconds["step_before"], settings.steps * seconds["step_now"])
    print(f"  a cpu-preset run's {settings.steps} steps and {evals} evaluations of these {len(probes)} probe prompts "
          f"(the preset tracks {settings.n_probe}): {steps[0] + run_before:.0f} s before, {steps[1] + run_now:.0f} s "
          f"now, {(steps[0] + run_before) / (steps[1] + run_now):.2f}x (load, probe build and reference scoring "
          "not included)")


if __name__ == "__main__":
    main()
