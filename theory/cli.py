"""`ldyn theory ...`: print the derivations, or one squeeze step for a given distribution.

Heavy imports (sympy) happen inside the handlers so that `ldyn --help` stays fast.
"""
import argparse
from learning_dynamics.theory import arguments as arg
from learning_dynamics.theory.derive import print_derivations
from learning_dynamics.theory.squeeze_report import squeeze_command


def register(subparsers) -> None:
    theory = subparsers.add_parser(
        "theory", help="derivations and the squeezing effect, analytically",
        description="Formulas derived by sympy from each loss; one-step squeeze predictions.")
    sub = theory.add_subparsers(dest="theory_command", required=True, metavar="COMMAND")

    derive = sub.add_parser(
        "derive", help="print every derivation (softmax calculus, AKG, G terms, squeeze, flow)",
        description="Print the sympy derivations of every formula the toolkit uses.",
        epilog="example: ldyn theory derive --latex")
    derive.add_argument("--latex", action="store_true", help="print LaTeX instead of pretty text")
    derive.set_defaults(func=_derive)

    squeeze = sub.add_parser(
        "squeeze", help="one gradient step on a label of a softmax: who rises, who falls",
        description="Exact and first-order change of log p for every label after one "
                    "negative (or positive) gradient step on label K of free logits.",
        epilog="example: ldyn theory squeeze --probs 0.6,0.3,0.05,0.05 --negative 3 --lr 0.5")
    source = squeeze.add_mutually_exclusive_group(required=True)
    source.add_argument("--probs", metavar="P1,P2,...", help="probabilities (sum to 1 within 1e-6)")
    source.add_argument("--logits", metavar="Z1,Z2,...", help="logits (any finite reals; negative ones too: --logits -1,2)")
    direction = squeeze.add_mutually_exclusive_group(required=True)
    direction.add_argument("--negative", type=arg.NON_NEGATIVE_INT, metavar="K", help="push label K down (0-based)")
    direction.add_argument("--positive", type=arg.NON_NEGATIVE_INT, metavar="K", help="pull label K up (0-based)")
    squeeze.add_argument("--lr", type=arg.STEP_SIZE, default=0.1, metavar="ETA",
                         help="step size, any finite eta > 0 (default 0.1)")
    squeeze.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    squeeze.set_defaults(func=_squeeze)


def _derive(args: argparse.Namespace) -> int:
    print_derivations(latex=args.latex)
    return 0


def _squeeze(args: argparse.Namespace) -> int:
    return squeeze_command(args)
