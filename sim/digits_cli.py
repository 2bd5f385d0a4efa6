"""`ldyn sim digits`, the command: its parser, its handler and the printed summary (sim/digits.py runs it)."""
import argparse
import json

from learning_dynamics.sim import digits
from learning_dynamics.sim.digits import DEFAULT_OUT
from learning_dynamics.sim.common.style import add_format_option
from learning_dynamics.theory import arguments as arg


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "digits", help="eNTK, AKG check, influence and squeezing on a real digit classifier",
        description="Train a small MLP on scikit-learn's 8x8 digits, compute its eNTK two ways, check "
                    "dlog pi = -eta A K G against real SGD steps, measure class-to-class influence "
                    "against eNTK similarity, and the squeezing of negative steps. Writes PNG figures "
                    "and summary.json to --out.",
        epilog="example: ldyn sim digits --out ./ldyn-out/sim/digits --seed 0 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=arg.path, default=DEFAULT_OUT, help=f"output folder (default ./{DEFAULT_OUT})")
    add_format_option(p)
    p.add_argument("--seed", type=arg.SEED, default=0, help="model init and batch order (default 0)")
    p.add_argument("--json", action="store_true", help="print only the JSON summary on stdout")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run of the same code (tests)")
    p.add_argument("--epochs", type=arg.POSITIVE_INT, help="training epochs (default 40; quick 15)")
    p.add_argument("--n-ntk", type=arg.POSITIVE_INT, help="images per side of the eNTK comparison (default 64)")
    p.add_argument("--n-squeeze", type=arg.POSITIVE_INT, help="held-out images given a negative step (default 540)")
    p.set_defaults(func=handle)


def handle(args) -> int:
    summary = digits.run_digits(args.out, seed=args.seed, preset="quick" if args.quick else "default",
                         progress=True, epochs=args.epochs, n_ntk=args.n_ntk, n_squeeze=args.n_squeeze)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(human_summary(summary, args.out))
    return 0


def human_summary(s: dict, out) -> str:
    pair = s["influence_paper_pair"]
    return "\n".join([
        f"digits MLP ({s['n_params']} params): test accuracy {s['test_accuracy']:.3f} "
        f"(train {s['train_accuracy']:.3f})",
        f"eNTK, jacobian contraction vs NTK-vector products: max relative difference {s['ntk_max_rel_diff']:.2e}",
        f"AKG: Pearson r {s['akg_pearson_r']:.6f} at eta {s['akg_eta']:.3g}; error ~ eta^{s['akg_error_slope']:.2f}",
        f"influence vs eNTK similarity: Spearman {s['influence_spearman_offdiag']:.2f} (off-diagonal); "
        f"most-similar class lifted more than least-similar for "
        f"{s['influence_most_vs_least_similar']['fraction_ordered']:.0%} of classes",
        f"  learning {pair['learned']}: dlog p({pair['learned']}|{pair['observed'][0]}s) {pair['dlogp'][0]:+.4f}, "
        f"dlog p({pair['learned']}|{pair['observed'][1]}s) {pair['dlogp'][1]:+.4f}; "
        f"eNTK predicts this order: {pair['entk_predicts_order']}",
        f"negative step on the least likely class ({s['squeeze_n_images']} images): wrong class falls "
        f"{s['squeeze_wrong_falls']:.1%}, top class rises {s['squeeze_top_rises']:.1%}; "
        f"threshold precision {s['squeeze_precision']:.3f} recall {s['squeeze_recall']:.3f}",
        f"figures and summary.json in {out}"])
