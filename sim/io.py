"""Atomic file writes (a crash mid-write never leaves a half-written log or summary) and output folders."""
import json
import os
import secrets
import tempfile
from pathlib import Path


def atomic_write_text(path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _create_temp(path: Path):
    """A new temp file beside `path`, created with mode 0666 less the umask, like any file the user makes.

    (tempfile.mkstemp would make it 0600, and os.replace keeps that mode on the final file.)
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file beside {path}")


def atomic_write_json(path, obj, sort_keys: bool = True) -> Path:
    """sort_keys=False where the order of keys carries meaning (it is kept when read back)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys, allow_nan=False) + "\n")


def atomic_savefig(fig, path) -> Path:
    """Save a matplotlib figure through a temp file in the chosen format (sim.style.save), then close it."""
    from learning_dynamics.sim.style import save

    return save(fig, path)


def writable_folder(out) -> Path:
    """Create `out` and prove it is writable now, not after a minute of training."""
    from learning_dynamics.theory.errors import UserError

    if not str(out).strip():
        raise UserError("--out is empty; give a folder (. for the working directory)")
    out = Path(out)
    try:
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {str(out)!r} exists and is not a folder; give a folder path")
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise UserError(f"cannot write to --out {str(out)!r} ({err.strerror or err}); choose a writable folder") from None
    return out


def read_json(path, default=None, expect=None):
    """A JSON file this toolkit wrote, read back; `default` when it is missing.

    A damaged file (truncated, garbled, empty, or holding another type than `expect`) raises
    CorruptFile naming it, never a JSONDecodeError traceback.
    """
    from learning_dynamics.theory.errors import CorruptFile

    path = Path(path)
    if not path.exists():
        return default
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CorruptFile(path, "not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise CorruptFile(path, "empty" if not err.doc.strip() else f"invalid JSON at line {err.lineno}") from None
    except OSError as err:
        raise CorruptFile(path, err.strerror or str(err)) from None
    if expect is not None and not isinstance(value, expect):
        raise CorruptFile(path, f"holds a JSON {_JSON_TYPES.get(type(value), 'value')}, "
                                f"not an {_JSON_TYPES.get(expect, expect.__name__)}")
    return value


_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}
