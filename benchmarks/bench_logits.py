"""Steps per second of the free-logit simulator (`ldyn sim logits`) at V = 49152, 1000 runs.

The simulator is float64 numpy throughout (the theorem checks need it); this times its own
step loop, `sim.logits.run_algorithm`, on a [runs, V] state (1000 x 49152 float64 = 393 MB
per array), after building the starting problem (not timed). For each algorithm: best of
--repeats runs of --steps steps, reported as steps per second and ns per (run x label).

    python benchmarks/bench_logits.py [--vocab 49152] [--runs 1000] [--steps 3] [--repeats 2]
"""
import argparse
import time

import numpy as np

from learning_dynamics.sim import logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--algorithms", default="negative,sft,dpo-shared,dpo",
                        help="comma-separated (dpo: two contexts, twice the state)")
    args = parser.parse_args()

    start = time.perf_counter()
    problem = logits.make_problem(np.random.default_rng(0), args.runs, args.vocab)
    print(f"free-logit simulator, float64, {args.runs} runs x V = {args.vocab} "
          f"({args.runs * args.vocab * 8 / 2 ** 20:.0f} MiB per [runs, V] array); "
          f"problem built in {time.perf_counter() - start:.1f} s")
    print(f"{'algorithm':12} {'contexts':>8} {'steps/s':>9} {'s/step':>8} {'ns/(run*label*ctx)':>19}")
    for name in args.algorithms.split(","):
        contexts = 2 if name in logits.PAIR_ALGORITHMS else 1
        best = float("inf")
        for _ in range(args.repeats):
            rng = np.random.default_rng(1)
            t0 = time.perf_counter()
            logits.run_algorithm(name, problem, args.steps, logits.DEFAULT_LR, logits.DEFAULT_BETA, rng)
            # run_algorithm also measures the state steps + 1 times; count those as part of a step
            best = min(best, (time.perf_counter() - t0) / args.steps)
        per = best / (args.runs * args.vocab * contexts) * 1e9
        print(f"{name:12} {contexts:8d} {1 / best:9.2f} {best:8.3f} {per:19.2f}")


if __name__ == "__main__":
    main()
