"""`ldyn sim lm`, the command: the claims the toy LM's runs are judged on (the catalogue's and the
position-class ones), the run summaries, the figures and the CLI. The experiment itself is sim/lm.py."""
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from learning_dynamics.sim.common.io import json_ready, writable_folder
from learning_dynamics.sim import lm
from learning_dynamics.sim.lm import ALGOS, JUDGED, POSITION_CLASSES, QUICK, SUPPORTED, LMConfig
from learning_dynamics.theory.algorithms import CONTROL
from learning_dynamics.sim.common.style import add_format_option
from learning_dynamics.theory import arguments as arg
from learning_dynamics.theory.statistics import bootstrap_ci, verdict_from_ci
from learning_dynamics.theory.predictions import evaluate_comparison, evaluate_run
from learning_dynamics.theory.predictions import CATALOGUE
from learning_dynamics.theory.evaluators import squeeze_index
from learning_dynamics.sim.common.probe_plots import plot_comparison, plot_probe_curves
from learning_dynamics.sim.common.style import algorithm_label
from learning_dynamics.sim.common.io import atomic_write_json


# --------------------------------------------------------------------------- claims

POSITION_CLAIMS = {
    "LM-POS-entropy": "In off-policy DPO the mean token entropy falls more at y-'s positions after "
                      "y+ and y- diverge than at their shared-prefix positions (where the pull-up "
                      "and push-down cancel).",
    "LM-POS-argmax": "In off-policy DPO the per-token log-prob of the argmax (y*'s share) rises more "
                     "at y-'s positions after the divergence than at the shared-prefix positions.",
}


def _position_change(series, cls, stat):
    """Per prompt, end - start of the class's mean entropy or mean argmax log-prob per token."""
    if stat == "entropy":
        curve = series[f"entropy/{cls}"]
    else:
        curve = series[f"argmax/{cls}"] / np.maximum(series[f"n_tokens/{cls}"], 1)
    return curve[-1] - curve[0]


def position_claims(series, seed=0) -> list:

    rows = []
    for claim_id, stat, sign in (("LM-POS-entropy", "entropy", -1.0), ("LM-POS-argmax", "argmax", 1.0)):
        after = _position_change(series, "pos:rejected_after", stat)
        shared = _position_change(series, "pos:shared", stat)
        effect, ci = bootstrap_ci(lambda a, s: sign * (np.mean(a) - np.mean(s)), [after, shared], seed=seed)
        rows.append({"id": claim_id, "claim": POSITION_CLAIMS[claim_id], "verdict": verdict_from_ci(ci),
                     "effect": effect, "ci": list(ci), "n": int(after.size),
                     "unit": "nats of entropy" if stat == "entropy" else "nats per token",
                     "detail": f"mean change at rejected-only positions {np.mean(after):+.4f}, "
                               f"at shared-prefix positions {np.mean(shared):+.4f}"})
    return rows


def evaluate_claims(series, seed=0) -> list:
    """Every catalogue prediction these runs can test, plus the position-class claims."""

    claims = []
    for algo in JUDGED:
        if algo in series:  # the DPO run is judged against SFT on the same pairs where a claim needs a control
            claims += [dict(row, run=algo) for row in evaluate_run(series[algo], algo, level="lm", seed=seed,
                                                                   control=series.get(CONTROL))]
    pairs = _compared(series)
    claims += [dict(row, run=" vs ".join(pairs)) for row in evaluate_comparison(pairs, level="lm", seed=seed)]
    if "dpo" in series:
        claims += [dict(row, run="dpo") for row in position_claims(series["dpo"], seed=seed)]
    for row in claims:
        row["holds"] = row["verdict"] == "holds"
    return claims


def _compared(series) -> dict:
    """The runs the catalogue's two-run predictions compare (off-policy DPO, on-policy DPO, extend), in run order."""

    names = {algo for p in CATALOGUE if p.scope == "compare" for algo in p.applies_to}
    return {k: v for k, v in series.items() if k in names}


def run_summary(series, steps) -> dict:
    """Mean over prompts at the first, highest and last evaluation, per tracked key, and the
    squeeze index of theory.predictions (y*'s gain minus the mean change of the other probes)."""

    summary = {"steps": [int(s) for s in steps], "squeeze_index": float(np.mean(squeeze_index(series)))}
    for key, curve in sorted(series.items()):
        if key.startswith(("logps/", "entropy/")):
            mean = np.nanmean(curve, axis=1)
            summary[key] = {"start": float(mean[0]), "end": float(mean[-1]),
                            "max": float(mean.max()), "argmax_eval": int(np.argmax(mean))}
    return summary


# --------------------------------------------------------------------------- figures

def draw_figures(out: Path, series, steps) -> list:


    figures = []
    for run in [r for r in JUDGED if r in series]:  # the other runs: comparison.png
        title = f"{algorithm_label(run)} on $y^+$ (toy LM)" if run == CONTROL else f"{algorithm_label(run)} (toy LM)"
        path = plot_probe_curves(series[run], out / f"probes_{run}.png", title, steps=steps[run])
        figures.append(path.name)
    compared = _compared(series)
    if len(compared) > 1:
        path = plot_comparison(compared, out / "comparison.png", "squeezing: off-policy vs on-policy vs extend",
                               keys=("logps/chosen", "logps/rejected", "logps/greedy", "logps/other_chosen",
                                     "logps/irrelevant", "entropy/chosen"),
                               steps_by_run={k: steps[k] for k in compared})
        figures.append(path.name)
    if "dpo" in series:
        path = plot_comparison({"dpo": series["dpo"]}, out / "positions.png",
                               "off-policy DPO by position class: entropy and argmax log-prob per token",
                               keys=tuple(f"entropy/{c}" for c in POSITION_CLASSES)
                               + tuple(f"argmax_per_token/{c}" for c in POSITION_CLASSES),
                               steps_by_run={"dpo": steps["dpo"]}, derived=_per_token_argmax)
        figures.append(path.name)
    return figures


def _per_token_argmax(series, key):
    cls = key.split("/", 1)[1]
    return series[f"argmax/{cls}"] / np.maximum(series[f"n_tokens/{cls}"], 1)


# --------------------------------------------------------------------------- CLI

def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "lm", help="toy language model: SFT and DPO tracked with the paper's probe taxonomy",
        description="Pretrain a tiny transformer on a synthetic QA language, then run SFT, off-policy "
                    "DPO, on-policy DPO and 'extend' (SFT on y+ and y-, then DPO), tracking every probe "
                    "type; evaluate the paper's predictions and draw one panel per probe type.",
        epilog="example: ldyn sim lm --out ./ldyn-out/sim/lm --seed 0 --json")
    p.add_argument("--out", type=arg.path, default="ldyn-out/sim/lm", help="output folder (default ./ldyn-out/sim/lm)")
    add_format_option(p)
    p.add_argument("--seed", type=arg.SEED, default=0, help="random seed (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON summary object on stdout")
    p.add_argument("--algo", nargs="+", choices=SUPPORTED, default=list(ALGOS), metavar="ALGO",
                   help=f"runs to make, any of {', '.join(SUPPORTED)} (default: {' '.join(ALGOS)})")
    p.add_argument("--quick", action="store_true",
                   help="fewer pretraining and finetuning steps (the tests' setting, same code path)")
    p.set_defaults(func=handle)


def _check_args(args) -> Path:
    arg.check_seed(args.seed)
    return writable_folder(args.out)


def handle(args) -> int:
    import json


    out = _check_args(args)
    algos = [a for a in SUPPORTED if a in args.algo]  # canonical order, no duplicates
    config = QUICK if args.quick else LMConfig()
    series, steps, pretrain_info = lm.run_experiment(out, args.seed, algos, config, _progress)
    claims = evaluate_claims(series, seed=args.seed)
    figures = draw_figures(out, series, steps)
    summary = json_ready(decimals=4, obj={
        "experiment": "sim lm", "seed": args.seed, "quick": bool(args.quick), "algos": algos,
        "config": asdict(config), "model": pretrain_info, "claims": claims,
        "counts": {v: sum(c["verdict"] == v for c in claims) for v in ("holds", "fails", "inconclusive")},
        "runs": {run: run_summary(series[run], steps[run]) for run in series},
        "figures": figures,
    })
    atomic_write_json(out / "summary.json", summary)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        _print_report(summary, out)
    return 0


def _progress(iterable, desc):
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, file=sys.stderr, leave=False, mininterval=0.5)


def _print_report(summary, out):
    print(f"toy LM (seed {summary['seed']}): {summary['counts']['holds']} claims hold, "
          f"{summary['counts']['fails']} fail, {summary['counts']['inconclusive']} inconclusive")
    for c in summary["claims"]:
        print(f"  {c['id']:15s} {c['verdict']:12s} effect {c['effect']:+9.4f} "
              f"[{c['ci'][0]:+.4f}, {c['ci'][1]:+.4f}] {c['unit']:10s} {c['run']}: {c['claim']}")
    print(f"figures and summary.json in {out}")
