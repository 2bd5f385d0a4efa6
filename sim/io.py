"""Atomic file writes (a crash mid-write never leaves a half-written log or summary) and output folders."""
import json
import os
import tempfile
from pathlib import Path


def atomic_write_text(path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def atomic_write_json(path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def atomic_savefig(fig, path) -> Path:
    """Save a matplotlib figure through a temp file in the chosen format (sim.style.save), then close it."""
    from learning_dynamics.sim.style import save

    return save(fig, path)


def writable_folder(out) -> Path:
    """Create `out` and prove it is writable now, not after a minute of training."""
    from learning_dynamics.theory.errors import UserError

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
