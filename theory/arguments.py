"""Argument types for every `ldyn` flag that takes a number: a value out of range is rejected when parsed.

argparse turns the `argparse.ArgumentTypeError` these raise into one line and
exit code 2 before any work starts (no model load, no folder created). The
library functions keep their own checks for callers that bypass the CLI; the
ranges live here once so that every subcommand agrees on them.
"""
import argparse
import math
from learning_dynamics.theory.errors import UserError

# numpy's legacy and torch's generators both accept this range; larger seeds overflow torch.manual_seed
SEED_MAX = 2**32 - 1
# a step number names its tracking chunk with 9 digits (sim.common.tracking: step_000000120.csv), so no run goes past this
STEP_MAX = 10**9 - 1
# AdamW and plain SGD both move weights by about lr per step; far above this every weight is noise,
# and near 1e38 torch's float32 step size overflows (see issue 14)
LR_MAX = 1e3


def integer(low: int = None, high: int = None, what: str = "an integer"):
    """An argparse type: an int in [low, high] (either end open when None)."""

    def parse(text: str) -> int:
        try:
            value = int(str(text).strip(), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is out of range: give {what} {_span(low, high)}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


def real(low: float = None, high: float = None, low_open: bool = False, what: str = "a number"):
    """An argparse type: a finite float in [low, high] ((low, high] with low_open)."""

    def parse(text: str) -> float:
        try:
            value = float(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not finite: give {what}")
        below = low is not None and (value <= low if low_open else value < low)
        if below or (high is not None and value > high):
            left = "(" if low_open else "["
            raise argparse.ArgumentTypeError(
                f"{text} is out of range: give {what} in {left}{_g(low)}, {_g(high)}]")
        return value

    parse.__name__ = what
    return parse


def _g(x):
    return "inf" if x is None else f"{x:g}"


def _span(low, high):
    return f">= {low}" if high is None else f"from {low} to {high}"


def integer_list(low: int = None, high: int = None, what: str = "integers"):
    """An argparse type: comma-separated ints, each in [low, high]; an empty item (`1,,5`) is refused, not skipped."""
    one = integer(low, high, what)

    def parse(text: str) -> list:
        items = str(text).split(",")
        if any(not item.strip() for item in items):
            raise argparse.ArgumentTypeError(f"{text!r} has an empty item: give {what} separated by single commas, "
                                             "such as 1,5,20")
        return [one(item) for item in items]

    parse.__name__ = what
    return parse


SEED = integer(0, SEED_MAX, "a seed")
STEPS = integer(1, STEP_MAX, "a number of steps")
POSITIVE_INT = integer(1, None, "an integer")
NON_NEGATIVE_INT = integer(0, None, "an integer")
LR = real(0.0, LR_MAX, low_open=True, what="a learning rate")
BETA = real(0.0, 1e3, low_open=True, what="a beta")
STEP_SIZE = real(0.0, None, low_open=True, what="a finite step size > 0")


def check_seed(seed) -> None:
    """The same range for library callers (raises UserError)."""
    import numbers

    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= SEED_MAX:
        raise UserError(f"--seed must be an integer from 0 to {SEED_MAX}, got {seed!r}")


def path(text: str) -> str:
    """An argparse type for a file or folder: an empty string would silently mean the working directory."""
    if not str(text).strip():
        raise argparse.ArgumentTypeError("an empty path; give a file or folder name (. for the working directory)")
    return text


def absolute_path(text: str) -> str:
    """A file a run records (--data): absolute, so that the run's reproduce command works from any folder.

    os.path.abspath, not resolve(): a link such as /dev/fd/63 (`--data <(cat pairs.jsonl)`) stays as given.
    """
    import os
    return os.path.abspath(path(text))
