"""The eNTK of the digits MLP on 256 x 256 real digit pairs by both implementations.

Prints, from one run: each implementation's time (best of --repeats, after a warm-up),
their ratio, and their agreement, in float64 (the precision the experiment checks in)
and in float32 (the training precision). The machine is shared: read the ratio, not
the seconds.

    python benchmarks/bench_ntk.py [--pairs 256] [--repeats 3]
"""
import argparse
import time

import torch

from learning_dynamics.sim import digits, ntk


def best_time(fn, repeats: int):
    fn()                                             # warm-up: vmap/jvp tracing, allocator
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=256, help="images per side (default 256)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=digits.PRESETS["default"]["hidden"])
    args = parser.parse_args()

    data = digits.load_split()
    torch.manual_seed(0)
    model = digits.make_mlp(args.hidden)             # kernel cost does not depend on training
    x_obs, x_upd = data["test_x"][:args.pairs], data["train_x"][:args.pairs]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"eNTK of a {n_params}-parameter MLP on {len(x_obs)} x {len(x_upd)} digit pairs "
          f"({len(x_obs) * len(x_upd)} blocks of 10 x 10), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'dtype':8} {'jacobian contraction':>22} {'NTK-vector products':>21} {'ratio vps/jac':>14} "
          f"{'max rel diff':>13}")
    for dtype in (torch.float64, torch.float32):
        apply_fn, params = ntk.functionalize(model.to(dtype))
        a, b = x_obs.to(dtype), x_upd.to(dtype)
        t_jac, k_jac = best_time(lambda: ntk.entk_jacobian_contraction(apply_fn, params, a, b, chunk_size=64),
                                 args.repeats)
        t_vps, k_vps = best_time(lambda: ntk.entk_ntk_vector_products(apply_fn, params, a, b, chunk_size=16),
                                 args.repeats)
        print(f"{str(dtype).split('.')[-1]:8} {t_jac:>20.3f} s {t_vps:>19.3f} s {t_vps / t_jac:>14.2f} "
              f"{ntk.max_relative_difference(k_jac, k_vps):>13.2e}")


if __name__ == "__main__":
    main()
