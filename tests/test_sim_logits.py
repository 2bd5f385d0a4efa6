"""`ldyn sim logits`: the --json contract, every applicable step-level theorem held on every
case, determinism, the qualitative claims of the multi-step runs, and one-line errors."""
import json

import pytest

from learning_dynamics.validate.ldyn import main

CONTRACT = {"theorems", "algorithms", "theory_comparison", "squeeze_onpolicy_vs_offpolicy", "figures",
            "settings", "all_applicable_theorems_held"}


def run_json(capsys, out, *extra):
    code = main(["sim", "logits", "--quick", "--json", "--out", str(out), *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = [line for line in captured.out.splitlines() if line.strip()]
    assert len(lines) == 1, "--json must print exactly one JSON object"
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("logits")
    with pytest.MonkeyPatch.context():
        import io
        import contextlib
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(io.StringIO()):
            code = main(["sim", "logits", "--quick", "--json", "--out", str(out)])
    assert code == 0
    return out, json.loads(buffer.getvalue())


def test_json_contract(quick):
    out, s = quick
    assert CONTRACT <= set(s)
    for row in s["theorems"]:
        assert {"id", "claim", "cases", "held_fraction"} <= set(row)
    assert (out / "summary.json").exists()
    assert json.loads((out / "summary.json").read_text()) == s


def test_every_logits_level_theorem_is_evaluated_with_its_catalogue_claim(quick):
    from learning_dynamics.theory.predictions import CATALOGUE

    expected = {p.id: p.claim for p in CATALOGUE if p.scope == "step" and "logits" in p.levels}
    rows = {row["id"]: row for row in quick[1]["theorems"]}
    assert set(rows) == set(expected)
    for pid, claim in expected.items():
        assert rows[pid]["claim"] == claim
        assert rows[pid]["applies"], f"{pid} has no evaluator or no applicable case"
        assert rows[pid]["cases"] >= 100, pid


def test_every_applicable_theorem_held_on_every_case(quick):
    failed = {r["id"]: (r["held_fraction"], r["detail"]) for r in quick[1]["theorems"]
              if r["applies"] and r["held_fraction"] != 1.0}
    assert not failed
    assert quick[1]["all_applicable_theorems_held"]


def test_trajectories_match_theory_one_step_and_flow(quick):
    c = quick[1]["theory_comparison"]
    assert max(c["one_step_max_abs_err"].values()) < 1e-10
    # Euler steps approach the gradient flow as O(eta): 10x smaller eta, ~10x smaller error
    assert c["flow_max_abs_err_prob"]["eta=0.01"] < 2e-3
    assert 5 < c["flow_err_ratio_eta_x10"] < 20


def test_off_policy_negative_squeezes(quick):
    neg = quick[1]["algorithms"]["negative"]
    assert neg["dlogp_minus"] < 0 and neg["frac_minus_fell"] == 1.0
    assert neg["dlogp_ystar"] > 0 and neg["frac_ystar_rose"] == 1.0          # P02, step after step
    assert neg["dentropy"] < 0
    assert neg["dlogp_plus"] < 0                                              # everything else falls


def test_on_policy_negatives_squeeze_less(quick):
    a = quick[1]["algorithms"]
    assert a["negative-onpolicy"]["dlogp_ystar"] < a["negative"]["dlogp_ystar"]
    assert a["negative-onpolicy"]["dentropy"] > a["negative"]["dentropy"]
    assert a["onpolicy-dpo"]["dentropy"] > a["dpo"]["dentropy"]             # less entropy lost
    assert a["extend"]["dentropy"] > a["dpo"]["dentropy"]
    assert a["dpo"]["dentropy"] < 0 and a["dpo"]["dlogp_minus"] < 0


def test_sft_raises_y_plus_and_flattens_the_top_competitor(quick):
    sft = quick[1]["algorithms"]["sft"]
    assert sft["dlogp_plus"] > 0 and sft["frac_plus_fell"] == 0.0
    assert sft["dlogp_ystar"] < 0                                             # P07 over many steps


def test_figures_written(quick):
    out, s = quick
    for name in ("squeeze_bars.png", "offpolicy_vs_onpolicy.png"):
        assert (out / name).stat().st_size > 10_000
    assert set(s["figures"].values()) == {"squeeze_bars.png", "offpolicy_vs_onpolicy.png"}


def test_deterministic_for_a_seed(quick, tmp_path, capsys):
    again = run_json(capsys, tmp_path, "--seed", "0")
    assert again == quick[1]
    other = run_json(capsys, tmp_path / "s1", "--seed", "1", "--runs", "50", "--steps", "5")
    assert other["seed"] == 1 and other["algorithms"] != quick[1]["algorithms"]


@pytest.mark.parametrize("args, fragment", [
    (["--runs", "0"], "--runs"),
    (["--vocab", "1"], "--vocab"),
    (["--vocab", "2"], "--vocab"),
    (["--lr", "nan"], "--lr"),
    (["--beta", "inf"], "--beta"),
    (["--seed", "-1"], "--seed"),
    (["--runs", "abc"], "--runs"),
])
def test_bad_arguments_give_one_line_and_exit_2(args, fragment, tmp_path, capsys):
    try:
        code = main(["sim", "logits", "--quick", "--out", str(tmp_path), *args])
    except SystemExit as exit_:                      # argparse's own type errors
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and fragment in err and "error" in err


def test_unwritable_out_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["sim", "logits", "--quick", "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ldyn: error:") and err.count("\n") == 0


def test_help_has_an_example(capsys):
    assert main(["sim", "logits", "--help"]) == 0
    assert "example: ldyn sim logits" in capsys.readouterr().out
