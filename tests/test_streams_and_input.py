"""Output problems end as Unix tools end (a reader that left: quiet, 141; stdout closed or full: one line, 2; an
encoding that lacks a character: escaped), the environment's refusals (a read-only cache) are one line and exit 2,
and `--data` is read once (a pipe, a FIFO), its SHA-256 from those bytes. In-process, no model."""
import errno
import hashlib
import io
import json
import os
import sys
import threading
import time

import pytest

from learning_dynamics.validate.ldyn import SIGPIPE_EXIT, main
from test_fuzz_cli import RUN, call, make_run_dir, stubbed  # noqa: F401  (stubbed is a fixture)

SQUEEZE = ["theory", "squeeze", "--probs", "0.5,0.3,0.2", "--negative", "2"]


class _Gone(io.RawIOBase):
    """A stdout whose reader has left: every write is a broken pipe."""

    def writable(self):
        return True

    def write(self, data):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")


def _streams(monkeypatch, stdout, encoding="utf-8"):
    err = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(err, encoding=encoding, write_through=True))
    return err


def test_a_reader_that_left_ends_quietly_with_sigpipes_status(monkeypatch):
    err = _streams(monkeypatch, io.TextIOWrapper(io.BufferedWriter(_Gone()), encoding="utf-8"))
    assert main(SQUEEZE) == SIGPIPE_EXIT == 141
    assert err.getvalue() == b""


@pytest.mark.parametrize("stdout, line", [(None, "stdout is closed"), ("/dev/full", "No space left on device")])
def test_a_closed_or_full_stdout_is_one_line_and_exit_2(stdout, line, monkeypatch):
    if stdout == "/dev/full" and not os.path.exists(stdout):
        pytest.skip("no /dev/full here")
    out = open(stdout, "w") if stdout else None
    err = _streams(monkeypatch, out)
    try:
        code, said = main(SQUEEZE), err.getvalue().decode()
    finally:
        monkeypatch.undo()
        if out is not None:
            try:
                out.close()
            except OSError:
                pass
    assert (code, said) == (2, f"ldyn: error: cannot write the output: {line}\n")


def test_a_terminal_that_cannot_encode_gets_escapes_and_file_names_their_bytes(monkeypatch, tmp_path):
    """PYTHONIOENCODING=ascii (é escaped), and LC_ALL=C with PYTHONUTF8=0 (argv's undecodable bytes arrive as
    surrogates and go out as the bytes they were)."""
    err = _streams(monkeypatch, io.TextIOWrapper(io.BytesIO(), encoding="ascii"), encoding="ascii")
    for name, shown in (("é.jsonl", b"\\xe9.jsonl"), ("\udcc3\udca9.jsonl", b"\xc3\xa9.jsonl")):
        assert main(RUN + [str(tmp_path / "o"), "--data", str(tmp_path / "nope" / name)]) == 2
        assert shown + b": no such file" in err.getvalue(), err.getvalue()


def test_a_fifo_is_read_when_its_writer_comes_and_refused_without_one(tmp_path, monkeypatch):
    from learning_dynamics.theory.errors import UserError
    from learning_dynamics.validate.data import data_file
    monkeypatch.setattr(data_file, "FIFO_WAIT_SECONDS", 5.0)
    fifo = tmp_path / "pairs.fifo"
    os.mkfifo(fifo)
    text = b'{"prompt": "q", "chosen": "a", "rejected": "b"}\n'

    def write_later():
        time.sleep(0.2)
        with open(fifo, "wb") as f:
            f.write(text)

    writer = threading.Thread(target=write_later)
    writer.start()
    read = data_file.read_once(fifo)
    writer.join()
    assert read.raw == text and read.sha256 == hashlib.sha256(text).hexdigest()
    assert data_file.read_once(fifo) is read   # read once: a second use does not wait for another writer
    monkeypatch.setattr(data_file, "FIFO_WAIT_SECONDS", 0.1)
    other = tmp_path / "silent.fifo"
    os.mkfifo(other)
    started = time.perf_counter()
    with pytest.raises(UserError, match="silent.fifo: a FIFO that nobody wrote to within 0.1 s"):
        data_file.read_once(other)
    assert time.perf_counter() - started < 5


def test_a_changed_file_is_read_again(tmp_path):
    from learning_dynamics.validate.data import data_file
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"one\n")
    assert data_file.read_once(path).raw == b"one\n"
    path.write_bytes(b"two, longer\n")
    assert data_file.read_once(path).raw == b"two, longer\n"
def test_data_from_a_pipe_is_read_once_and_fingerprinted_from_those_bytes(stubbed, tmp_path, capsys):
    import hashlib
    import threading
    from learning_dynamics.validate import identity
    text = "".join(json.dumps({"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}"}) + "\n" for i in range(9))
    read, write = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write, text.encode()), os.close(write)))
    writer.start()   # `--data <(cat pairs.jsonl)`: a pipe can be read once only
    try:
        code, err = call(RUN + [str(tmp_path / "run"), "--data", f"/dev/fd/{read}"], capsys)
    finally:
        writer.join()
        os.close(read)
    assert code == 0, err   # the model load (stubbed) was reached: the pipe was read, split and fingerprinted
    data = identity.read(tmp_path / "run")["fingerprints"]["data"]
    assert data["sha256"] == hashlib.sha256(text.encode()).hexdigest() and data["n_pairs"] == 9


def test_a_cache_that_cannot_be_written_is_one_line_naming_ldyn_cache(stubbed, tmp_path, capsys, monkeypatch):
    import errno
    from learning_dynamics.validate.training import model
    cache = model.cache_dir()

    def read_only(*args, **kwargs):   # what mkdir raises in a read-only HOME (root ignores chmod, so it is raised)
        raise PermissionError(errno.EACCES, "Permission denied", str(cache / "converted"))

    monkeypatch.setattr(model, "load_model", read_only)
    code, err = call(RUN + [str(tmp_path / "run")], capsys)
    assert code == 2 and err.strip() == f"ldyn: error: {cache / 'converted'}: Permission denied; set LDYN_CACHE " \
        "to a writable folder for the model cache", err


def test_a_read_only_run_folder_is_one_line_naming_the_file(stubbed, tmp_path, capsys, monkeypatch):
    """`validate report` rebuilds each run's report inside its folder; a folder it may not write (chmod is no
    refusal for root, so the refusal is raised where the file is created) ends in one line naming the file."""
    from learning_dynamics.sim.common import io as sim_io
    run = make_run_dir(tmp_path / "run", report=False)
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(run)) and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(sim_io.os, "open", read_only)
    code, err = call(["validate", "report", str(run), "--out", str(tmp_path / "summary")], capsys)
    assert code == 2 and err.strip() == f"ldyn: error: {run / 'report.json'}: Permission denied", err
