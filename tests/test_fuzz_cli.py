"""Fuzz `ldyn`: whatever a user types and whatever is left on disk, the answer is exit 0 or 2, never a traceback.

Two parts, both through `main(argv)` in-process:
  * generated argument vectors for every subcommand, built from each flag's own
    name and from values that have broken parsers before (huge, negative,
    non-finite, empty, comma lists, paths to files of the wrong kind);
  * copies of a run directory (written by the real writers) with one file
    truncated, garbled, emptied or replaced by random bytes, then
    `ldyn validate report` on it; a few are resumed with `ldyn validate run`.

Work that would train or load a model is replaced by a stub that raises
`WouldRun` once every argument has been checked (the checks are what is fuzzed);
`theory squeeze`/`derive` and `validate report` run for real.
"""
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from learning_dynamics.validate.ldyn import main

FAST = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class WouldRun(BaseException):
    """Raised where real work (a model, a simulation) would start: every argument was accepted."""


def _would_run(*args, **kwargs):
    raise WouldRun


@pytest.fixture
def stubbed(monkeypatch, tmp_path_factory):
    from learning_dynamics.sim import digits, lm, logits, tour
    from learning_dynamics.validate.training import model
    from learning_dynamics.validate.judge import report
    for module, name in ((logits, "make_problem"), (digits, "load_split"), (lm, "run_experiment"),
                         (tour, "print_key_derivations"), (model, "load_model")):
        monkeypatch.setattr(module, name, _would_run)
    monkeypatch.setattr(report, "_figures", lambda *a, **k: [])  # figures are written, never read back
    work = tmp_path_factory.mktemp("fuzz-cwd")
    monkeypatch.chdir(work)  # "." and relative paths land here, never in the repository
    return work


def call(argv, capsys):
    """(exit code, stderr) of `ldyn argv`; WouldRun counts as an accepted command (0)."""
    try:
        code = main([str(a) for a in argv])
    except WouldRun:
        code = 0
    captured = capsys.readouterr()
    return code, captured.err


def assert_clean(argv, code, err):
    assert "Traceback" not in err, (argv, err)
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        lines = [line for line in err.strip().splitlines() if "warning" not in line.lower()]
        assert len(lines) == 1 and lines[0].startswith("ldyn") and "error" in lines[0], (argv, err)


# --------------------------------------------------------------------------- argument vectors

NUMBERS = ["0", "1", "-1", "2", "-4", "7", "1e38", "1e100", "1e308", "1e309", "-1e-3", "1e-320", "nan", "inf",
           "-inf", "0.5", "1.5", "1180591620717411303424", "4294967295", "4294967296", "3.7", "", " ", "abc",
           "1,2", "-1,2", "0x10", "1_000", "٣", "+5", "--", "1e3", "1000.0001"]
LISTS = ["0.5,0.5", "0.6,0.3,0.05,0.05", "-1,2", "-1,-2,3e-1", "0,1", "1,0,0", "1.0", "0.5,abc", "0.5,nan",
         "1,inf", "0.7,0.7", "", ",", "1,,2", "-0.2,1.2", "1e-320,1", "1e308,-1e308", "0.5, 0.5", "-.5,.5",
         "1e-3,0.999", "-1e3,1e3", "0.25,0.25,0.25,0.25"]
WORDS = ["", " ", "x", "dpo", "sft", "smoke", "default", "cpu", "cuda", "cuda:7", "tiny-random", "smollm2",
         "org/name", "-", "--fresh", "é", "../..", "/dev/null", "/proc/nope/x", "png", "pdf", "svg", "jpg",
         "float32", "float64"]
PATHS = ["{tmp}/out", "{tmp}/afile", "{tmp}/missing/deep/dir", "{tmp}/bad.jsonl", "{tmp}/empty.jsonl",
         "{tmp}/one-prompt.jsonl", "/proc/nope", "", " ", ".", "{tmp}/afile/sub", "{run}"]

FLAGS = {  # subcommand -> {flag: kind}; a kind of None is a switch
    ("tour",): {"--out": "path", "--format": "word"},
    ("theory", "derive"): {"--latex": None},
    ("theory", "squeeze"): {"--probs": "list", "--logits": "list", "--negative": "number", "--positive": "number",
                            "--lr": "number", "--json": None},
    ("sim", "logits"): {"--out": "path", "--format": "word", "--seed": "number", "--runs": "number", "--vocab": "number",
                        "--steps": "number", "--lr": "number", "--beta": "number", "--json": None, "--quick": None},
    ("sim", "digits"): {"--out": "path", "--format": "word", "--seed": "number", "--epochs": "number", "--n-ntk": "number",
                        "--n-squeeze": "number", "--json": None, "--quick": None},
    ("sim", "lm"): {"--out": "path", "--format": "word", "--seed": "number", "--algo": "word", "--json": None, "--quick": None},
    ("validate", "run"): {"--out": "path", "--format": "word", "--preset": "word", "--algo": "word", "--model": "word",
                          "--data": "path", "--steps": "number", "--device": "word", "--lr": "number",
                          "--beta": "number", "--batch-pairs": "number", "--eval-every": "number",
                          "--n-probe": "number", "--seed": "number", "--checkpoint-every": "number",
                          "--fresh": None, "--first-order": None, "--quiet": None},
    ("validate", "check"): {"--first-order": None, "--out": "path", "--format": "word", "--model": "word", "--device": "word",
                            "--preset": "word", "--seed": "number", "--quiet": None, "--algo": "word",
                            "--lr": "number", "--batch-pairs": "number", "--n-probe": "number",
                            "--squeeze-pairs": "number", "--sweep-prompts": "number", "--dtype": "word",
                            "--k-steps": "list", "--moving-probes": "number"},
    ("validate", "report"): {"DIR": "path", "--out": "path", "--format": "word"},
    ("validate", "pages"): {"--reports": "path", "--docs": "path", "--check": None},
    ("validate", "forecast"): {"--out": "path", "--format": "word", "--data": "path", "--n-pairs": "number",
                               "--preset": "word", "--model": "word", "--algo": "word", "--device": "word",
                               "--lr": "number", "--beta": "number", "--batch-pairs": "number", "--seed": "number",
                               "--verify": None, "--train-steps": "number", "--from-run": "path", "--filter": None,
                               "--quiet": None},
}
POOLS = {"number": NUMBERS, "list": LISTS, "word": WORDS, "path": PATHS}
# values that pass argparse, drawn half of the time so that the checks past it (settings, data, folders) are
# reached as often as argparse's own
PLAUSIBLE = {"number": ["0", "1", "2", "3", "4", "0.001", "0.5", "7"], "list": ["0.5,0.5", "-1,2", "0.2,0.3,0.5"],
             "word": ["dpo", "sft", "ipo", "smoke", "cpu", "tiny-random"], "path": ["{tmp}/out", "{run}", "{tmp}/bad.jsonl",
                                                                           "{tmp}/one-prompt.jsonl"]}
# flags a working command needs, added most of the time so that the checks past argparse are reached too
USUAL = {("validate", "run"): ["--preset", "smoke", "--quiet", "--out", "{tmp}/out"],
         ("validate", "check"): ["--first-order", "--preset", "smoke", "--device", "cpu", "--out", "{tmp}/out"],
         ("validate", "report"): ["{run}"],
         ("validate", "forecast"): ["--preset", "smoke", "--quiet", "--out", "{tmp}/out"],
         ("theory", "squeeze"): ["--probs", "0.5,0.3,0.2", "--negative", "2"],
         ("sim", "logits"): ["--quick"], ("sim", "digits"): ["--quick"], ("sim", "lm"): ["--quick"]}


def one_in(n):  # hypothesis leans to small integers, so `integers(0, n) == 0` would fire far more than 1/n
    return st.sampled_from([False] * (n - 1) + [True])


@st.composite
def argv_for(draw, command):
    flags = FLAGS[command]
    argv = list(command)
    if command in USUAL and not draw(one_in(4)):
        argv += USUAL[command]
    for flag in draw(st.lists(st.sampled_from(sorted(flags)), max_size=4)):
        kind = flags[flag]
        if kind is None:
            argv.append(flag)
            continue
        value = draw(st.sampled_from(POOLS[kind] if draw(st.booleans()) else PLAUSIBLE[kind]))
        if draw(one_in(5)):  # mangle a value now and then
            value = draw(st.sampled_from(["-" + value, value + value, value[: len(value) // 2]]))
        if flag == "DIR":
            argv.append(value)
        elif draw(one_in(4)):
            argv.append(f"{flag}={value}")
        else:
            argv += [flag, value]
    if draw(one_in(10)):
        argv.insert(draw(st.integers(0, len(argv))), draw(st.sampled_from(["--bogus", "-x", "--help", "extra"])))
    return argv


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The paths the pools name: a plain file, malformed and degenerate JSONL data, and a run directory."""
    root = tmp_path_factory.mktemp("fuzz-files")
    (root / "afile").write_text("not a folder\n")
    (root / "bad.jsonl").write_text('{"prompt": "hi", "chosen": "hello"\n')
    (root / "empty.jsonl").write_text("")
    (root / "one-prompt.jsonl").write_text("".join(
        json.dumps({"prompt": "same", "chosen": f"yes {i}", "rejected": f"no {i}"}) + "\n" for i in range(6)))
    pairs = [{"prompt": f"What is {i} plus {i}?", "chosen": f"It is {2 * i}.", "rejected": f"It is {2 * i + 1}."}
             for i in range(12)]
    jsonl = lambda rows: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)  # noqa: E731
    (root / "good.jsonl").write_text(jsonl(pairs))
    (root / "same.jsonl").write_text(jsonl(dict(p, rejected=p["chosen"]) for p in pairs))
    (root / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + jsonl(pairs).encode())
    (root / "separators.jsonl").write_text(jsonl(dict(p, prompt=p["prompt"] + "\u2028\u0085 ok") for p in pairs))
    (root / "surrogate.jsonl").write_text(jsonl(pairs).replace("plus 3", "plus \\ud800"))
    run = make_run_dir(root / "run")
    return {"tmp": root, "run": run}


def _fill(argv, files):
    return [a.replace("{tmp}", str(files["tmp"])).replace("{run}", str(files["run"])) for a in argv]


ARGV_COUNTS = {("theory", "squeeze"): 90, ("validate", "run"): 60, ("validate", "check"): 25,
               ("validate", "report"): 30, ("validate", "forecast"): 25, ("validate", "pages"): 15, ("sim", "logits"): 35, ("sim", "digits"): 25,
               ("sim", "lm"): 25,
               ("tour",): 10, ("theory", "derive"): 4}
assert sum(ARGV_COUNTS.values()) >= 300


@pytest.mark.parametrize("command", sorted(ARGV_COUNTS), ids=" ".join)
def test_generated_argument_vectors_end_in_0_or_2_without_a_traceback(command, stubbed, files, capsys):
    @settings(FAST, max_examples=ARGV_COUNTS[command])
    @given(argv_for(command))
    def check(argv):
        argv = _fill(argv, files)
        assert_clean(argv, *call(argv, capsys))

    check()


# --------------------------------------------------------------------------- corrupted run directories

PROBES = ("chosen", "rejected", "chosen_rephrase", "rejected_rephrase", "chosen_format", "rejected_format",
          "other_chosen", "test_response", "irrelevant", "chosen_shuffled", "random_tokens", "initial_sample")


def make_run_dir(root: Path, algo: str = "dpo", run_id: str = None, seed: int = 0, report: bool = True) -> Path:
    """A finished smoke-preset run's files, written by the writers a run uses, with made-up numbers; with a
    run_id, as a run writes them now (run.json, the tracking manifest, the id in run_info and checkpoint)."""
    import torch

    from learning_dynamics.sim.common.io import atomic_write_json
    from learning_dynamics.sim.common.tracking import TrackingTable
    from learning_dynamics.validate.presets import settings_for
    from learning_dynamics.validate.judge.report import write_report

    from learning_dynamics.validate.training.precision import resolve
    s = settings_for("smoke", algo=algo)
    s = s.with_changes(precision=resolve(s.precision, s.device).name)   # as a run settles `auto`
    atomic_write_json(root / "settings.json", s.as_dict())
    stamp = {} if run_id is None else {"run_id": run_id}
    if run_id is not None:
        atomic_write_json(root / "run.json", {"run_id": run_id, "fingerprints": FINGERPRINTS})
    rng = np.random.default_rng(seed)
    probes = [{"prompt_id": str(i), "prompt": f"question {i}", "prompt_ids": [1, 20 + i, 2],
               "texts": {p: f"{p} {i}" for p in PROBES}, "ids": {p: [30 + i, 40, 2] for p in PROBES}}
              for i in range(s["n_probe"])]
    atomic_write_json(root / "probes.json", probes, sort_keys=False)
    table = TrackingTable(root / "tracking", run_id=run_id)
    for step in range(0, s["steps"] + 1, s["eval_every"]):
        table.append(step, [{"prompt_id": str(i), "probe": p, "logp_sum": -rng.uniform(5, 50), "n_tokens": 3,
                             "entropy_mean": rng.uniform(1, 9), "sqnorm_mean": rng.uniform(0, 1),
                             "argmax_logp_sum": -rng.uniform(0, 5)} for i in range(s["n_probe"]) for p in PROBES])
        atomic_write_json(root / "generations" / f"step_{step:09d}.json",
                          [{"prompt_id": str(i), "text": "a b c", "n_tokens": 3, "distinct2": rng.uniform(),
                            "rep4": rng.uniform()} for i in range(s["gen_prompts"])])
    log = [{"step": t, "phase": "main", "loss": 0.69 - 0.01 * t, "grad_norm": 1.0} for t in range(s["steps"])]
    atomic_write_json(root / "train_log.json", log)
    atomic_write_json(root / "run_info.json", {"model": "tiny-random", "device": "cpu", "n_train_pairs": 48,
                                               **stamp, **({"fingerprints": FINGERPRINTS} if run_id else {})})
    (root / "state").mkdir()
    torch.save({"model": {}, "optimizer": {}, "step": s["steps"], "phase": "done", "pairs": [], "log": log, **stamp},
               root / "state" / "checkpoint.pt")
    if report:
        write_report(root)
    return root


# what run.json and run_info.json record of a run made with make_run_dir(run_id=...)
FINGERPRINTS = {"code": {"version": "0.1.0", "commit": "abc1234", "dirty": False},
                "data": {"name": "pairs.jsonl", "sha256": "11" * 32, "n_pairs": 48},
                "model": {"name": "tiny-random", "sha256": "22" * 32}}


KINDS = ("truncated", "garbled", "empty", "random bytes")


def corrupt(path: Path, kind: str, rng: random.Random) -> None:
    data = path.read_bytes()
    if kind == "truncated":
        data = data[: rng.randrange(max(len(data), 1))]
    elif kind == "garbled":
        data = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        data = bytes(data)
    elif kind == "empty":
        data = b""
    else:
        data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 400)))
    path.write_bytes(data)


def run_files(run: Path) -> list:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("pristine") / "run")


def test_the_run_directory_has_every_kind_of_file_a_run_writes(pristine):
    names = run_files(pristine)
    for expected in ("settings.json", "probes.json", "tracking/step_000000000.csv", "generations/step_000000000.json",
                     "train_log.json", "run_info.json", "state/checkpoint.pt", "report.json", "report.md",
                     "curves.png"):
        assert expected in names


def test_corrupted_run_directories_end_in_0_or_2_without_a_traceback(pristine, tmp_path_factory, capsys,
                                                                     monkeypatch):
    from learning_dynamics.validate.judge import report
    monkeypatch.setattr(report, "_figures", lambda *a, **k: [])  # figures are written, never read back
    names = run_files(pristine)
    seen = {"codes": set(), "n": 0}

    @settings(FAST, max_examples=60)
    @given(st.sampled_from(names), st.sampled_from(KINDS), st.integers(0, 2**32 - 1))
    def check(name, kind, seed):
        run = tmp_path_factory.mktemp("corrupt") / "run"
        shutil.copytree(pristine, run)
        corrupt(run / name, kind, random.Random(seed))
        argv = ["validate", "report", str(run), "--out", str(run.parent)]
        code, err = call(argv, capsys)
        assert_clean(argv + [f"({kind} {name})"], code, err)
        if code == 2 and name.endswith((".json", ".csv")) and name not in ("report.json", "train_log.json"):
            assert name.split("/")[-1] in err or "tracking" in err, err  # the line names the damaged file
        seen["codes"].add(code)
        seen["n"] += 1

    check()
    assert seen["n"] >= 50 and seen["codes"] == {0, 2}


@pytest.mark.parametrize("name, kind", [("state/checkpoint.pt", "random bytes"), ("state/checkpoint.pt", "truncated"),
                                        ("state/checkpoint.pt", "empty"), ("probes.json", "truncated"),
                                        ("settings.json", "garbled")])
def test_resuming_a_corrupted_run_names_the_file_and_suggests_fresh(name, kind, pristine, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(pristine, run)
    (run / "report.json").unlink()  # unfinished: a rerun resumes from the checkpoint
    before, rng = (run / name).read_bytes(), random.Random(0)
    while (run / name).read_bytes() == before or (name == "settings.json" and _still_valid(run / name)):
        (run / name).write_bytes(before)
        corrupt(run / name, kind, rng)
    argv = ["validate", "run", "--preset", "smoke", "--algo", "dpo", "--quiet", "--out", str(run)]
    code, err = call(argv, capsys)
    assert_clean(argv, code, err)
    assert code == 2 and str(run / name) in err and "corrupt" in err and "--fresh" in err, err


def _still_valid(path):
    try:
        json.loads(path.read_text())
        return True
    except (ValueError, UnicodeDecodeError):
        return False


def test_umask_is_respected(tmp_path):
    from learning_dynamics.sim.common.io import atomic_write_json
    old = os.umask(0o027)
    try:
        path = atomic_write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640


# --------------------------------------------------------------------------- issue 26: every case, one by one

RUN = ["validate", "run", "--preset", "smoke", "--quiet", "--out"]
CHECK = ["validate", "check", "--first-order", "--preset", "smoke", "--device", "cpu", "--out"]
# (argv, the words its one error line must hold; None: accepted, the work would start)
CASES = [
    (RUN + ["{tmp}/o1", "--data", "{tmp}/same.jsonl"], "every one of its 12 pairs has chosen equal to rejected"),
    (RUN + ["{tmp}/o2", "--data", "{tmp}/surrogate.jsonl"], "surrogate.jsonl:4: \"prompt\" holds a lone surrogate"),
    (RUN + ["{tmp}/o3", "--data", "{tmp}/bom.jsonl"], None),
    (RUN + ["{tmp}/o4", "--data", "{tmp}/separators.jsonl"], None),
    (RUN + ["{tmp}/o5", "--data", "{tmp}/good.jsonl", "--batch-pairs", "100000"], "--batch-pairs 100000 is more than"),
    (RUN + ["{tmp}/o6", "--data", "{tmp}/good.jsonl", "--n-probe", "40"], "40 probe pairs asked"),
    (RUN + ["{tmp}/o7", "--steps", "99999999999999999999"], "--steps: 99999999999999999999 is out of range"),
    (RUN + ["{tmp}/o8", "--data", "{tmp}/fifo"], "a FIFO that nobody wrote to"),
    (CHECK + ["{tmp}/c1", "--algo", "pg"], "argument --algo: invalid choice: 'pg'"),
    (CHECK + ["{tmp}/c2", "--k-steps", "1,,5"], "'1,,5' has an empty item"),
    (CHECK + ["{tmp}/c3", "--sweep-prompts", "5", "--n-probe", "2"], "--sweep-prompts 5 is more than the 2"),
    (CHECK + ["{run}"], "holds a run (settings.json)"),
    (["sim", "logits", "--vocab", "1000000"], "--vocab: 1000000 is out of range"),
    (["sim", "logits", "--vocab", "2"], "--vocab: 2 is out of range"),
]


@pytest.mark.parametrize("argv, words", CASES, ids=[" ".join(c[0][1:3] + c[0][-2:]) for c in CASES])
def test_each_bad_input_of_issue_26_is_one_line_and_exit_2(argv, words, stubbed, files, capsys, monkeypatch):
    from learning_dynamics.validate.data import data_file
    monkeypatch.setattr(data_file, "FIFO_WAIT_SECONDS", 0.1)
    if not (files["tmp"] / "fifo").exists():
        os.mkfifo(files["tmp"] / "fifo")
    argv = _fill(argv, files)
    code, err = call(argv, capsys)
    assert_clean(argv, code, err)
    assert (code, words and words in err) == ((2, True) if words else (0, None)), err
    if words and words.startswith("every one"):
        assert not (files["tmp"] / "o1" / "settings.json").exists()   # refused before the folder is touched
