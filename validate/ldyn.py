"""The `ldyn` console script.

It lives in the top layer because only `validate/` may import all three layers
(theory <- sim <- validate). Every handler returns an exit code; a `UserError`
anywhere becomes one line on stderr and exit code 2, never a traceback.
"""
import argparse
import sys

from learning_dynamics.sim.style import add_format_option
from learning_dynamics.theory.errors import UserError


class OneLineParser(argparse.ArgumentParser):
    """argparse prints a usage block on error; users asked for one clear line."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from learning_dynamics.theory import cli as theory_cli
    from learning_dynamics.sim import cli as sim_cli
    from learning_dynamics.validate import cli as validate_cli

    parser = OneLineParser(
        prog="ldyn",
        description="Force analysis of LLM finetuning: derive (theory), simulate (sim), "
                    "validate on a real model (validate).",
        epilog="start with: ldyn tour")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tour = sub.add_parser("tour", help="a short guided tour: key derivations and figures",
                          description="Print the key derivations and write the key figures.",
                          epilog="example: ldyn tour --out ./ldyn-out")
    tour.add_argument("--out", default="ldyn-out", help="output folder (default ./ldyn-out)")
    add_format_option(tour)
    tour.set_defaults(func=_tour)
    theory_cli.register(sub)
    sim_cli.register(sub)
    validate_cli.register(sub)
    return parser


def _tour(args) -> int:
    from learning_dynamics.sim.tour import run_tour
    return run_tour(args.out)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if hasattr(args, "format"):
            from learning_dynamics.sim.style import use_format
            use_format(args.format)
        code = args.func(args)
    except UserError as err:
        print(f"ldyn: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ldyn: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
