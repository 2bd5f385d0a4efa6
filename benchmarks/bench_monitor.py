"""What ProbeMonitor adds to a TRL DPO run at its defaults: one evaluation against `every` training steps.

Runs TRL's DPOTrainer on the default preference pairs with a ProbeMonitor at its defaults (every=100,
32 probe prompts x 12 probe types and the shared prefix of y+ and y-, 8 greedy generations at natural
and fixed length, the mass comparison with the step-0 copy), for --steps steps. In that one run it times
each training step that had no evaluation, and each evaluation the monitor made (scoring, generations,
files and the live report), and prints

    overhead ratio = mean evaluation time / (every x median training-step time)

the fraction the monitor adds to a run once it is past its one-off probe build (target <= 10%), beside
the build's own time. The monitor's output folder (--out) is a run directory with curves.png.

    python benchmarks/bench_monitor.py [--model smollm2] [--steps 6] [--batch 8] [--out runs/bench-monitor]
"""
import argparse
import statistics
import time

from transformers import TrainerCallback


class StepClock(TrainerCallback):
    """Wall time of each optimizer step, from its beginning to the end of the step's callbacks."""

    def __init__(self):
        self.seconds, self._start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="as for ldyn validate run --model")
    parser.add_argument("--steps", type=int, default=6, help="DPO steps to time (the monitor evaluates at 0 and at the end)")
    parser.add_argument("--batch", type=int, default=8, help="pairs per step (TRL's default per-device batch)")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--out", default="runs/bench-monitor")
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from learning_dynamics.validate.data.data import default_dataset
    from learning_dynamics.validate.training.model import load_model
    from learning_dynamics.validate.monitor.monitor import ProbeMonitor

    loaded = load_model(args.model, device="cuda" if torch.cuda.is_available() else "cpu")
    dataset = default_dataset(seed=0)
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in dataset["test"] + dataset["train"]]
    config = DPOConfig(output_dir=args.out + "-trainer", max_steps=args.steps, per_device_train_batch_size=args.batch,
                       learning_rate=args.lr, logging_steps=1, report_to=[], save_strategy="no", seed=0,
                       max_length=160, disable_tqdm=True, bf16=torch.cuda.is_available(),
                       gradient_checkpointing=False)  # faster steps: a larger, conservative ratio
    trainer = DPOTrainer(model=loaded.model, args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=loaded.tokenizer)
    clock = StepClock()
    monitor = ProbeMonitor(rows, out=args.out)  # the defaults are what is measured
    trainer.add_callback(monitor)
    trainer.add_callback(clock)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started

    evaluated = set(monitor.done) - {0}
    plain = [s for step, s in enumerate(clock.seconds, start=1) if step not in evaluated]
    step = statistics.median(plain)
    evaluation = (monitor.seconds["evaluate"] + monitor.seconds["report"]) / monitor.evaluations
    print(f"{args.model} on {str(loaded.model.device)}, DPO with {args.batch} pairs per step, {args.steps} steps, "
          f"probe set {len(monitor.probes)} prompts x {len(monitor.sequences) // len(monitor.probes)} probe types")
    print(f"  training step (median of {len(plain)} without an evaluation)  {step:8.2f} s")
    print(f"  monitor evaluation (mean of {monitor.evaluations})                  {evaluation:8.2f} s")
    print(f"  probe build (once, at step 0)                           {monitor.seconds['build']:8.2f} s")
    print(f"  whole run: {wall:.1f} s")
    print(f"overhead ratio at every={monitor.every}: {evaluation / (monitor.every * step):.3f} (target <= 0.10)")


if __name__ == "__main__":
    main()
