"""File writing shared by every layer above theory/: atomic writes (a crash mid-write never leaves a
half-written log, checkpoint or figure under the real name), JSON-ready numbers, output folders."""
import json
import math
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from learning_dynamics.theory.errors import CorruptFile, UserError
# torch loads inside the functions that need them, so importing this module stays light (ldyn --help)


@contextmanager
def atomic_path(path, directory: bool = False):
    """Yield a temporary path beside `path` to write; on success it replaces `path` in one step.

    With `directory=True` the temporary is a folder, and an existing target folder is kept
    (another process finished first: both wrote the same content).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{path.name}.tmp"))
    else:
        fd, name = _create_temp(path)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory and path.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def atomic_write_text(path, text: str) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


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
        except OSError as err:  # a read-only folder: name the file that could not be written, not the temp
            raise type(err)(err.errno, err.strerror, str(path)) from None
    raise FileExistsError(f"cannot create a temporary file beside {path}")


def atomic_write_json(path, obj, sort_keys: bool = True) -> Path:
    """sort_keys=False where the order of keys carries meaning (it is kept when read back)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys, allow_nan=False) + "\n")


def atomic_torch_save(obj, path) -> Path:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def json_ready(obj, significant=None, decimals=None, drop=()):
    """Plain-Python JSON values: numpy scalars unwrapped, NaN/inf as null, keys in `drop` removed.

    `significant` rounds floats to that many significant digits (last-bit differences between
    BLAS paths are not results), `decimals` to that many decimals (readable summaries).
    """
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in drop}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, (np.bool_, bool)):
            return bool(value)
        if isinstance(value, (np.integer, int)):
            return int(value)
        if isinstance(value, (np.floating, float)):
            value = float(value)
            if not math.isfinite(value):
                return None
            if significant is not None:
                return float(f"{value:.{significant}g}")
            return round(value, decimals) if decimals is not None else value
        return value
    return clean(obj)


def writable_folder(out, name: str = "--out") -> Path:
    """Create `out` and prove it is writable now, not after a minute of training; `name`: what the user called
    it (the CLI's --out, or a Python argument such as `ProbeMonitor(out=...)`)."""
    if not str(out).strip():
        raise UserError(f"{name} is empty; give a folder (. for the working directory)")
    out = Path(out)
    try:
        if out.exists() and not out.is_dir():
            raise UserError(f"{name} {str(out)!r} exists and is not a folder; give a folder path")
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise UserError(f"cannot write to {name} {str(out)!r} ({err.strerror or err}); choose a writable folder") from None
    return out


def read_json(path, default=None, expect=None):
    """A JSON file this toolkit wrote, read back; `default` when it is missing.

    A damaged file (truncated, garbled, empty, or holding another type than `expect`) raises
    CorruptFile naming it, never a JSONDecodeError traceback.
    """
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
