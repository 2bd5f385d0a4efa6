"""The `ldyn` console script.

It lives in the top layer because only `validate/` may import all three layers
(theory <- sim <- validate). Every handler returns an exit code; a `UserError`
anywhere becomes one line on stderr and exit code 2, never a traceback; anything
else (a bug) becomes one line and exit code 1 (LDYN_TRACEBACK=1 re-raises it).
"""
import argparse
import os
import re
import sys
import traceback
from pathlib import Path

from learning_dynamics.sim.style import add_format_option
from learning_dynamics.theory import arguments as arg
from learning_dynamics.theory.errors import UserError


# argparse takes "-1,2" for an option (its default only knows "-1" and "-.5"); a comma list or an exponent
# that starts with a minus sign is a value, so `--logits -1,2` and `--lr -1e-3` reach our own checks
NEGATIVE_NUMBERS = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?(,\s*-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)*$")


class OneLineParser(argparse.ArgumentParser):
    """argparse prints a usage block on error; users asked for one clear line.

    Subparsers are made of this same class, so both rules hold for every subcommand.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBERS

    def error(self, message: str):
        # the same "ldyn: error:" as every other bad input, and where the flags are explained
        self.exit(2, f"ldyn: error: {message} (see {self.prog} --help)\n")


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
    tour.add_argument("--out", type=arg.path, default="ldyn-out", help="output folder (default ./ldyn-out)")
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a flag argparse rejected (2): a code like any other
        return 0 if exit_.code is None else exit_.code
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
    except Exception as err:  # noqa: BLE001  (a bug, not bad input: still one line, exit 1, no traceback)
        if os.environ.get("LDYN_TRACEBACK"):
            raise
        where = traceback.extract_tb(err.__traceback__)[-1]
        print(f"ldyn: internal error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
              f"(at {Path(where.filename).name}:{where.lineno}; please report it, with LDYN_TRACEBACK=1 "
              "for the traceback)", file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
