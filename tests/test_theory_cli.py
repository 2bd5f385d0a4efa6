"""`ldyn theory squeeze` and `ldyn theory derive`: the contract other layers script against."""
import json
import subprocess
import sys

import numpy as np
import pytest

from learning_dynamics.validate.ldyn import main

KEYS = {"index", "p", "dlogp_first_order", "dlogp_exact", "rises_first_order", "rises_exact"}


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_contract(capsys):
    code, out, err = run(capsys, "theory", "squeeze", "--probs", "0.6,0.3,0.05,0.05", "--negative", "3",
                         "--lr", "0.5", "--json")
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert set(doc) == {"label", "sign", "eta", "threshold", "labels"}
    assert (doc["label"], doc["sign"], doc["eta"]) == (3, "negative", 0.5)
    assert doc["threshold"] == pytest.approx(0.405)
    assert [set(row) for row in doc["labels"]] == [KEYS] * 4
    assert [row["rises_exact"] for row in doc["labels"]] == [True, False, False, False]
    assert doc["labels"][1]["dlogp_first_order"] == pytest.approx(-0.0525)


def test_default_lr_and_positive_and_logits(capsys):
    code, out, _ = run(capsys, "theory", "squeeze", "--logits", "0,1,2", "--positive", "0", "--json")
    doc = json.loads(out)
    p = np.exp([0, 1, 2]) / np.exp([0, 1, 2]).sum()
    assert code == 0 and doc["labels"][2]["p"] == pytest.approx(p[2])
    first = 0.1 * ((p ** 2).sum() - p[0] - p[2])                    # default eta = 0.1
    assert doc["labels"][2]["dlogp_first_order"] == pytest.approx(first)


def test_table_output(capsys):
    code, out, _ = run(capsys, "theory", "squeeze", "--probs", "0.5,0.5", "--negative", "0")
    assert code == 0
    for column in KEYS | {"threshold"}:
        assert column in out


@pytest.mark.parametrize("argv, needle", [
    (["--probs", "0.6,0.3", "--negative", "0"], "sum"),
    (["--probs", "1.2,-0.2", "--negative", "0"], ">= 0"),
    (["--probs", "0.5,nan", "--negative", "0"], "finite"),
    (["--logits", "1,inf", "--negative", "0"], "finite"),
    (["--probs", "0.5,abc", "--negative", "0"], "not a number"),
    (["--probs", "0.5,0.5", "--negative", "2"], "out of range"),
    (["--probs", "0.5,0.5", "--positive", "-1"], "out of range"),
    (["--probs", "1.0", "--negative", "0"], "at least 2"),
    (["--probs", "0.5,0.5", "--negative", "0", "--lr", "0"], "--lr"),
    (["--probs", "0.5,0.5", "--negative", "0", "--lr", "-1"], "--lr"),
    (["--probs", "0.5,0.5", "--negative", "0", "--lr", "inf"], "--lr"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, needle):
    code, out, err = run(capsys, "theory", "squeeze", *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ldyn") and needle in lines[0], err
    assert "Traceback" not in err and out == ""


def test_argparse_errors_exit_2(capsys):
    assert main(["theory", "squeeze", "--probs", "0.5,0.5"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_subprocess_contract_and_derive():
    exe = [sys.executable, "-m", "learning_dynamics.validate.ldyn"]
    bad = subprocess.run(exe + ["theory", "squeeze", "--probs", "0.7,0.7", "--negative", "0"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    derive = subprocess.run(exe + ["theory", "derive"], capture_output=True, text=True)
    assert derive.returncode == 0 and "||A||_F^2" in derive.stdout and "dpo" in derive.stdout
    latex = subprocess.run(exe + ["theory", "derive", "--latex"], capture_output=True, text=True)
    assert latex.returncode == 0 and "\\frac" in latex.stdout
