"""`ldyn sim logits`: run every algorithm and theorem check, write figures and summary.json."""
import argparse
import json
import math
import sys

import numpy as np

from learning_dynamics.sim.common.io import json_ready, writable_folder
from learning_dynamics.sim.common.style import add_format_option
from learning_dynamics.theory import algorithms as registry
from learning_dynamics.theory import arguments as arg
from learning_dynamics.theory.errors import UserError
from learning_dynamics.sim.logits import (
    DEFAULT_BETA, DEFAULT_LR, DEFAULT_OUT, LIMITS, PRESETS, SIMULATED, compare_flow,
    compare_one_step, run_algorithm, summarize_series)
from learning_dynamics.sim import logits
from learning_dynamics.sim.logits_theorems_dynamics import evaluate_theorems
from learning_dynamics.sim.logits_figures import plot_curves, plot_squeeze_bars
from learning_dynamics.sim.common.io import atomic_write_json
# tqdm loads inside the functions that need them, so importing this module stays light (ldyn --help)


def run_logits(out=DEFAULT_OUT, seed=0, preset="default", progress=True, runs=None, vocab=None,
               steps=None, lr=DEFAULT_LR, beta=DEFAULT_BETA):
    """Run every algorithm and every theorem check; write figures and summary.json; return the summary."""
    import time

    from tqdm import tqdm

    settings = dict(PRESETS[preset])
    for name, value in (("runs", runs), ("vocab", vocab), ("steps", steps)):
        if value is not None:
            settings[name] = value
    validate_settings(settings, seed, lr, beta)
    out = writable_folder(out)
    start = time.perf_counter()
    R, V, S = settings["runs"], settings["vocab"], settings["steps"]
    master = np.random.default_rng(seed)
    seeds = master.integers(0, 2 ** 63, 6)
    problem = logits.make_problem(np.random.default_rng(seeds[0]), R, V)
    curves, algorithms = {}, {}
    with np.errstate(over="ignore", under="ignore"):
        for i, name in enumerate(tqdm(SIMULATED, desc="algorithms", file=sys.stderr, disable=not progress,
                                      leave=False)):
            rng = np.random.default_rng([seeds[1], i])
            curves[name] = run_algorithm(name, problem, S, lr, beta, rng)
            algorithms[name] = summarize_series(curves[name])
        comparisons = {**compare_one_step(np.random.default_rng(seeds[2]), min(R, 200), V, min(S, 50), lr),
                       **compare_flow(np.random.default_rng(seeds[3]), min(R, 20), V, horizon=5.0)}
    theorems = evaluate_theorems(np.random.default_rng(seeds[4]), R, V, S, beta, progress)
    figures = {"squeeze_bars": plot_squeeze_bars(out / "squeeze_bars.png").name,
               "offpolicy_vs_onpolicy": plot_curves(out / "offpolicy_vs_onpolicy.png", curves).name}
    off, on = algorithms["dpo"], algorithms["onpolicy-dpo"]
    summary = {
        "experiment": "logits", "seed": seed, "preset": preset,
        "settings": {**settings, "lr": lr, "beta": beta, "dtype": "float64",
                     "hyper_parameters": {a: registry.hyper_parameters(a, kl_beta=beta) for a in registry.ALGORITHMS}},
        "algorithms": algorithms,
        "squeeze_onpolicy_vs_offpolicy": {
            "ystar_gain_offpolicy": off["dlogp_ystar"], "ystar_gain_onpolicy": on["dlogp_ystar"],
            "entropy_drop_offpolicy": -off["dentropy"], "entropy_drop_onpolicy": -on["dentropy"],
            "ystar_gain_extend": algorithms["extend"]["dlogp_ystar"],
            "entropy_drop_extend": -algorithms["extend"]["dentropy"]},
        "theory_comparison": comparisons,
        "theorems": theorems,
        "all_applicable_theorems_held": all(t["held_fraction"] == 1.0 for t in theorems if t.get("applies")),
        "figures": figures,
        "tolerance_note": "held_fraction = held / cases over the cases that apply; a case whose predicted effect is below "
                          "float64 round-off (256 eps x logit magnitude) is counted in excluded, as is a case outside the theorem's premise",
        "elapsed_s": round(time.perf_counter() - start, 2),
    }
    atomic_write_json(out / "summary.json", _deterministic(summary))
    return summary


def _deterministic(summary):
    """The JSON is the same for the same seed: no wall-clock fields, floats to 12 significant digits."""
    return json_ready(summary, significant=12, drop=("elapsed_s",))


def validate_settings(settings, seed, lr, beta):
    for name, most in LIMITS.items():
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= most:
            raise UserError(f"--{name} must be an integer from 1 to {most} (got {value!r})")
    if settings["vocab"] < 3:
        raise UserError(f"--vocab must be at least 3: y+, y- and y* are distinct labels (got {settings['vocab']})")
    if settings["runs"] * settings["vocab"] > 50_000_000:
        raise UserError("--runs x --vocab must be at most 5e7 (memory); lower one of them")
    arg.check_seed(seed)
    for flag, value in (("--lr", lr), ("--beta", beta)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value <= 1e3:
            raise UserError(f"{flag} must be a finite number in (0, 1000] (got {value!r})")


# =========================================================================== CLI

def add_parser(subparsers):
    p = subparsers.add_parser(
        "logits", help="squeezing and multi-step dynamics on free logits and a linear head; theorem checks",
        description="Simulate SFT, negative gradients, DPO (one shared and two kernel-coupled contexts), IPO, "
                    "SimPO, on-policy DPO, policy gradient and 'extend' on many random softmax "
                    "distributions; compare with theory's one-step and gradient-flow predictions; check every "
                    "step-level theorem of the catalogue on random cases. Writes PNG figures and "
                    "summary.json to --out.",
        epilog="example: ldyn sim logits --out ./ldyn-out/sim/logits --seed 0 --runs 1000 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=arg.path, default=DEFAULT_OUT, help=f"output folder (default ./{DEFAULT_OUT})")
    add_format_option(p)
    p.add_argument("--seed", type=arg.SEED, default=0, help="random seed (default 0)")
    p.add_argument("--runs", type=arg.integer(1, LIMITS["runs"], "a number of runs"), help="random starting distributions / theorem cases (default 1000; quick 200)")
    p.add_argument("--vocab", type=arg.integer(3, LIMITS["vocab"], "a number of labels"),
                   help=f"number of labels V, 3 to {LIMITS['vocab']} (default 50; quick 30)")
    p.add_argument("--steps", type=arg.integer(1, LIMITS["steps"], "a number of steps"), help="steps per algorithm (default 200; quick 60)")
    p.add_argument("--lr", type=arg.LR, default=DEFAULT_LR, help=f"step size eta (default {DEFAULT_LR})")
    p.add_argument("--beta", type=arg.BETA, default=DEFAULT_BETA, help=f"DPO/IPO beta (default {DEFAULT_BETA})")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run of the same code (tests)")
    p.set_defaults(func=handle)


def handle(args):
    summary = run_logits(args.out, seed=args.seed, preset="quick" if args.quick else "default",
                         progress=sys.stderr is not None and sys.stderr.isatty(), runs=args.runs, vocab=args.vocab,
                         steps=args.steps, lr=args.lr, beta=args.beta)
    if args.json:
        print(json.dumps(_deterministic(summary), sort_keys=True, allow_nan=False))
    else:
        print(human_summary(summary, args.out))
    return 0


def human_summary(s, out):
    lines = [f"free logits / linear head: {s['settings']['runs']} runs, V = {s['settings']['vocab']}, "
             f"{s['settings']['steps']} steps, eta = {s['settings']['lr']}, beta = {s['settings']['beta']} "
             f"({s['elapsed_s']} s)",
             f"{'algorithm':14} {'dlog pi(y+)':>12} {'dlog pi(y-)':>12} {'dlog pi(y*)':>12} {'d entropy':>10}"]
    for name, a in s["algorithms"].items():
        lines.append(f"{name:14} {a['dlogp_plus']:+12.3f} {a['dlogp_minus']:+12.3f} {a['dlogp_ystar']:+12.3f} "
                     f"{a['dentropy']:+10.3f}")
    c = s["theory_comparison"]
    lines.append("trajectory vs theory one-step formulas, max |diff|: " + ", ".join(
        f"{k} {v:.1e}" for k, v in c["one_step_max_abs_err"].items()))
    lines.append("trajectory vs theory gradient flow, max |dpi|: " + ", ".join(
        f"{k} {v:.1e}" for k, v in c["flow_max_abs_err_prob"].items()))
    lines.append(f"{'theorem':8} {'cases':>7} {'held':>7} {'excl.':>7}  claim")
    for t in s["theorems"]:
        held = "n/a" if t["held_fraction"] is None else f"{t['held_fraction']:.3f}"
        lines.append(f"{t['id']:8} {t['cases']:7d} {held:>7} {t.get('excluded', 0):7d}  {t['claim']}")
    lines.append(f"figures and summary.json in {out}")
    return "\n".join(lines)
