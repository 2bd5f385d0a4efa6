"""The `ldyn` console script.

It lives in the top layer because only `validate/` may import all three layers
(theory <- sim <- validate). Every handler returns an exit code; a `UserError`
anywhere becomes one line on stderr and exit code 2, never a traceback; anything
else (a bug) becomes one line and exit code 1 (LDYN_TRACEBACK=1 re-raises it).
"""
import argparse
import codecs
import errno
import os
import re
import sys
import traceback
from pathlib import Path

from learning_dynamics.sim.common.style import add_format_option
from learning_dynamics.theory import arguments as arg
from learning_dynamics.theory.errors import UserError
from learning_dynamics.theory import cli as theory_cli
from learning_dynamics.sim import cli as sim_cli
from learning_dynamics.validate.cli import group as validate_cli
from learning_dynamics.sim.common.style import use_format
from learning_dynamics.validate.training.model import cache_dir


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
    _tolerant_streams()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a flag argparse rejected (2): a code like any other
        return _flushed(0 if exit_.code is None else exit_.code)
    try:
        if hasattr(args, "format"):
            use_format(args.format)
        code = args.func(args)
        return _flushed(int(code or 0))
    except UserError as err:
        return _fail(f"ldyn: error: {err}")
    except KeyboardInterrupt:
        return _fail("ldyn: interrupted", 130)
    except BrokenPipeError:
        return _reader_left()
    except OSError as err:
        if _output_failed(err) or err.errno in ENVIRONMENT_ERRNOS:
            return _fail(f"ldyn: error: {_environment_problem(err)}")
        return _internal_error(err)
    except Exception as err:  # noqa: BLE001  (a bug, not bad input: still one line, exit 1, no traceback)
        return _internal_error(err)


def _internal_error(err) -> int:
    if os.environ.get("LDYN_TRACEBACK"):
        raise err
    where = traceback.extract_tb(err.__traceback__)[-1]
    return _fail(f"ldyn: internal error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
                 f"(at {Path(where.filename).name}:{where.lineno}; please report it, with LDYN_TRACEBACK=1 "
                 "for the traceback)", 1)


# --------------------------------------------------------------------------- stdout and stderr
# Output problems end as Unix tools end: a reader that left (`ldyn ... | head -1`) ends the program quietly
# with 128 + SIGPIPE, the status of a tool the signal killed; a closed or full stdout is one line on stderr and
# exit 2; text the terminal's encoding cannot show is escaped, never a UnicodeEncodeError.

SIGPIPE_EXIT = 128 + 13
# errors of the machine around the program (a read-only folder, a full disk, a file where a folder should be):
# the user can fix them, so they are one line and exit 2 like bad input
ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                      errno.EISDIR, errno.ENAMETOOLONG}


def _tolerant_streams() -> None:
    """Text the locale cannot encode (LC_ALL=C, PYTHONIOENCODING=ascii) is escaped instead of failing."""
    codecs.register_error("ldyn-escape", _escape)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="ldyn-escape")
            except (ValueError, OSError):
                pass


def _escape(err: UnicodeError):
    """A file name's undecodable bytes (surrogates, from a non-UTF-8 locale) go out as the bytes they were;
    any other character the encoding lacks as a backslash escape."""
    if not isinstance(err, UnicodeEncodeError):
        raise err
    text = err.object[err.start:err.end]
    if all("\udc80" <= c <= "\udcff" for c in text):
        return bytes(ord(c) - 0xDC00 for c in text), err.end
    return codecs.backslashreplace_errors(err)


def _flushed(code: int) -> int:
    """Flush stdout here, where a failure can still be reported, not in the interpreter's exit."""
    if sys.stdout is None:  # started with stdout closed (`ldyn ... >&-`)
        return _fail("ldyn: error: cannot write the output: stdout is closed") if code == 0 else code
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return _reader_left()
    except OSError as err:
        return _fail(f"ldyn: error: {_environment_problem(err)}")
    return code


def _output_failed(err: OSError) -> bool:
    return err.filename is None and err.errno in (errno.ENOSPC, errno.EBADF, errno.EIO)


def _environment_problem(err: OSError) -> str:
    what = os.strerror(err.errno) if err.errno else str(err)
    if err.filename is None:
        return f"cannot write the output: {what}" if _output_failed(err) else what
    name = os.fsdecode(err.filename)
    hint = ""
    try:
        if Path(name).resolve().is_relative_to(cache_dir().resolve()):
            hint = "; set LDYN_CACHE to a writable folder for the model cache"
    except (OSError, ValueError, RuntimeError):
        pass
    return f"{name}: {what}{hint}"


def _reader_left() -> int:
    """The reader of stdout went away: nothing more can be said there, and the exit flush must not try."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, AttributeError, ValueError):
        pass
    return SIGPIPE_EXIT


def _fail(line: str, code: int = 2) -> int:
    """One line on stderr; a stderr that cannot take it (closed, full) leaves only the exit code."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except (OSError, ValueError):
        _reader_left()
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):
        pass
    return code


if __name__ == "__main__":
    sys.exit(main())
