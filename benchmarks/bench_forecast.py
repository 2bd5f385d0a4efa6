"""What a displacement forecast costs per pair, in forwards of that pair (`ldyn validate forecast`).

Per pair the forecast takes one gradient of the pair's loss (a forward and a backward over the prompt, y+ and y-
in one shared-prompt row), one factored jvp along it (validate.measure.factored_jvp: y+, y- and y* at once) and one dense
jvp along the first AdamW update; `--verify` adds a gradient of the algorithm's own loss and three scoring
forwards (before, after the SGD step, after the AdamW step). Timed in turns on the same pairs, so that a shared
machine slows every unit alike and the ratios stay fair; the unit is one no-grad forward of the pair's
shared-prompt row (y+ and y- after one copy of the prompt).

    OMP_NUM_THREADS=2 python benchmarks/bench_forecast.py [--model smollm2] [--pairs 4] [--repeats 3]
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from gpu_common import timed_together  # noqa: E402

from learning_dynamics.validate.measure import factored_jvp, first_order
from learning_dynamics.validate.training import session  # noqa: E402
from learning_dynamics.validate.forecast import steps  # noqa: E402
from learning_dynamics.validate.training.algorithms import hyper_parameters  # noqa: E402
from learning_dynamics.validate.forecast.run import forecast_settings, select_pairs  # noqa: E402
from learning_dynamics.validate.training.forward import make_batch  # noqa: E402


def units(model, pairs, settings, pad, device) -> dict:
    """name -> a function that runs that unit over every pair once."""
    algorithm, hyper = settings.algorithm, hyper_parameters(settings.algorithm, settings)
    batches = [steps.pair_batch(model, p, pad, device) for p in pairs]
    one_row = [make_batch([(p["prompt"], p["chosen"]), (p["prompt"], p["rejected"])], pad) for p in pairs]
    saved = first_order.snapshot(model)

    def forward(rows):
        return lambda: [steps.scores(model, b) for b in rows]

    def gradient():
        for b in batches:
            with factored_jvp.capture(model):
                steps.gradient_pass(model, b, algorithm, hyper)
            model.zero_grad(set_to_none=True)

    def forecast(adamw):
        return lambda: [steps.forecast_pair(model, p, algorithm, hyper, pad, device, settings.lr, adamw=adamw)
                        for p in pairs]

    def verify():
        for p in pairs:
            steps.verify_pair(model, p, settings, pad, device, 1e-6, saved)

    return {"forward (shared-prompt row)": forward(batches), "forward (one row per sequence)": forward(one_row),
            "gradient pass": gradient, "forecast, SGD only": forecast(False), "forecast, SGD + AdamW": forecast(True),
            "verify (both steps)": verify}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    settings = forecast_settings("cpu", model=args.model, device="cpu")
    device = session.device("cpu")
    loaded = session.load(settings, device, progress=lambda *_: None, dtype=torch.float32)
    records, _ = select_pairs(None, args.pairs)
    pairs = loaded.tokenize(records)
    tokens = sum(len(p["prompt"]) + len(p["chosen"]) + len(p["rejected"]) for p in pairs) / len(pairs)
    started = time.perf_counter()
    with first_order.exact_math(loaded.model):
        times = timed_together(units(loaded.model, pairs, settings, loaded.pad_id, device), device,
                               repeats=args.repeats)
    unit = times["forward (shared-prompt row)"]
    print(f"{args.model}, {len(pairs)} pairs of the built-in data ({tokens:.0f} tokens a pair in one shared-prompt "
          f"row), {torch.get_num_threads()} threads, median of {args.repeats} turns "
          f"({time.perf_counter() - started:.0f} s in all)")
    print(f"{'unit':34s} {'s / pair':>9s} {'forwards':>9s}")
    for name, seconds in times.items():
        print(f"{name:34s} {seconds / len(pairs):9.3f} {seconds / unit:9.2f}")
    per_pair = times["forecast, SGD + AdamW"] / len(pairs)
    verify = times["verify (both steps)"] / len(pairs)
    print(f"64 pairs: forecast {64 * per_pair / 60:.1f} min, verification {64 * verify / 60:.1f} min more "
          "(at this machine's speed now)")


if __name__ == "__main__":
    main()
