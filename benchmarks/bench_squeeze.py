"""Exact and first-order one-step squeeze on 10^4 distributions of V = 4096 (float64),
timed against one plain numpy softmax over the same array (the floor).

Run: python benchmarks/bench_squeeze.py [--n 10000] [--vocab 4096] [--repeat 5]
Target: each ratio <= 3. Threads are whatever numpy uses (set OMP_NUM_THREADS=2
to mimic the 2-core CI machine). Not a timed test: it only prints.
"""
import argparse
import time

import numpy as np

from learning_dynamics.theory.squeeze import exact_dlogp, first_order_dlogp


def plain_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def best_time(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--eta", type=float, default=0.1)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    z = 3.0 * rng.standard_normal((args.n, args.vocab))
    p = plain_softmax(z)
    k = rng.integers(0, args.vocab, args.n)
    exact_dlogp(p[:2], k[:2], args.eta)          # lambdify once, outside the timing
    first_order_dlogp(p[:2], k[:2], args.eta)

    floor = best_time(lambda: plain_softmax(z), args.repeat)
    rows = [("numpy softmax (floor)", floor)]
    for sign in (-1, 1):
        name = "negative" if sign < 0 else "positive"
        rows.append((f"exact_dlogp ({name})", best_time(lambda: exact_dlogp(p, k, args.eta, sign), args.repeat)))
        rows.append((f"first_order_dlogp ({name})",
                     best_time(lambda: first_order_dlogp(p, k, args.eta, sign), args.repeat)))
    print(f"batch {args.n} x V {args.vocab} float64, eta {args.eta}, best of {args.repeat}")
    for name, t in rows:
        print(f"  {name:<30} {t * 1e3:9.1f} ms   ratio to softmax {t / floor:5.2f}")
    worst = max(t for _, t in rows[1:]) / floor
    print(f"worst ratio {worst:.2f} (target <= 3): {'OK' if worst <= 3 else 'ABOVE TARGET'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
