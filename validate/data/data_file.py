"""`--data` read once: its bytes and their SHA-256 come from the same read.

A run reads its data file at the start, and every later use (the split, the fingerprint in run_info.json and in
the checkpoint) takes those bytes, so a pipe (`--data <(cat pairs.jsonl)`) works like a file, and the
fingerprint is that of what was trained on even if the file changes during the run.

    read_once("pairs.jsonl") -> DataBytes(path="/abs/pairs.jsonl", raw=b"...", sha256="...")

A FIFO is read as soon as a writer opens it; with no writer within FIFO_WAIT_SECONDS it is refused in one line
instead of blocking for ever. A regular file is read again only when it changed (size, mtime or inode).
"""
import hashlib
import os
import select
import stat
from dataclasses import dataclass
from pathlib import Path

from learning_dynamics.theory.errors import UserError

FIFO_WAIT_SECONDS = 30.0
EXPECTED = "expected TRL preference JSONL: prompt, chosen, rejected"


@dataclass(frozen=True)
class DataBytes:
    path: str          # absolute, as given (symlinks such as /dev/fd/63 kept)
    raw: bytes
    sha256: str


_READ = {}   # absolute path -> (identity of what was read, DataBytes)


def read_once(path) -> DataBytes:
    """The bytes of `path`, read on first use in this process (again only if a regular file changed)."""
    where = os.path.abspath(os.fspath(path))
    info = _stat(path)
    identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns) if stat.S_ISREG(info.st_mode) else None
    known = _READ.get(where)
    if known is not None and (identity is None or known[0] == identity):
        return known[1]
    raw = _read_fifo(path) if stat.S_ISFIFO(info.st_mode) else _read_file(path)
    data = DataBytes(where, raw, hashlib.sha256(raw).hexdigest())
    _READ[where] = (identity, data)
    return data


def _stat(path) -> os.stat_result:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file ({EXPECTED})") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or type(err).__name__})") from None
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"{path}: is a directory, not a JSONL file")
    return info


def _read_file(path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or type(err).__name__})") from None


def _read_fifo(path) -> bytes:
    """Wait for a writer (at most FIFO_WAIT_SECONDS), then read to its end."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)   # a plain open would block until a writer comes
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or type(err).__name__})") from None
    try:
        poll = select.poll()
        poll.register(fd, select.POLLIN)
        if not poll.poll(int(FIFO_WAIT_SECONDS * 1000)):
            raise UserError(f"{path}: a FIFO that nobody wrote to within {FIFO_WAIT_SECONDS:g} s; start its "
                            "writer first, or pass a file")
        os.set_blocking(fd, True)
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)
