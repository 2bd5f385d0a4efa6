"""`ldyn sim digits`: every claim the experiment reports, asserted on one short seeded run,
plus the CLI's --json contract and its one-line errors."""
import json

import pytest

from learning_dynamics.sim.digits import run_digits
from learning_dynamics.validate.ldyn import main


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    return out, run_digits(out, seed=0, preset="quick", progress=False)


def test_classifier_learns_real_digits(quick):
    _, summary = quick
    assert summary["test_accuracy"] > 0.9
    assert summary["n_train"] + summary["n_test"] == 1797


def test_two_entk_implementations_agree(quick):
    assert quick[1]["ntk_max_rel_diff"] < 1e-5


def test_akg_predicts_one_sgd_step_to_first_order(quick):
    summary = quick[1]
    assert summary["akg_pearson_r"] > 0.99
    assert abs(summary["akg_error_slope"] - 2) < 0.2


def test_entk_similarity_predicts_class_influence(quick):
    summary = quick[1]
    assert summary["influence_spearman_offdiag"] > 0.5
    assert summary["influence_spearman_rows_mean"] > 0.5
    assert summary["influence_most_vs_least_similar"]["fraction_ordered"] >= 0.8
    for pair in ("influence_paper_pair", "influence_pair_for_4"):
        assert summary[pair]["entk_predicts_order"], summary[pair]
    # The most eNTK-similar class to 4 is lifted, the least similar pushed down.
    lifted, pushed = summary["influence_pair_for_4"]["dlogp"]
    assert lifted > 0 > pushed


def test_negative_step_squeezes_mass_into_the_top_class(quick):
    summary = quick[1]
    assert summary["squeeze_wrong_falls"] == 1.0
    assert summary["squeeze_top_rises"] >= 0.95
    assert summary["squeeze_others_fall"] >= 0.9
    assert summary["squeeze_top_mass_gain"] > 0


def test_threshold_predicts_the_rising_set_and_the_full_entk_explains_the_misses(quick):
    scores = quick[1]["squeeze_scores"]
    assert quick[1]["squeeze_precision"] >= 0.9
    assert quick[1]["squeeze_recall"] >= 0.5
    # What K = c I misses comes from off-diagonal eNTK couplings: the full K(x, x) recovers it.
    assert scores["entk_full"]["recall"] > scores["threshold"]["recall"]
    assert scores["entk_full"]["accuracy"] > scores["threshold"]["accuracy"]


def test_figures_and_summary_are_written(quick):
    out, summary = quick
    for name in summary["figures"].values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))


def test_cli_json_is_one_object_and_the_same_for_the_same_seed(quick, tmp_path, capsys):
    code = main(["sim", "digits", "--quick", "--json", "--seed", "0", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0
    summary = json.loads(captured.out)                    # fails on any extra stdout
    for key in ("test_accuracy", "ntk_max_rel_diff", "akg_pearson_r", "akg_error_slope", "influence",
                "squeeze_precision", "squeeze_recall"):
        assert key in summary
    assert len(summary["influence"]) == 10 and all(len(row) == 10 for row in summary["influence"])
    assert summary == json.loads(json.dumps(quick[1]))   # deterministic for a seed


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--n-squeeze", "-3"], ["--n-ntk", "100000"],
                                  ["--seed", "-1"]])
def test_bad_arguments_give_one_line_and_exit_2(argv, tmp_path, capsys):
    assert main(["sim", "digits", "--quick", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ldyn: error:") and "\n" not in err


def test_unwritable_out_is_a_user_error(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["sim", "digits", "--quick", "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--out" in err and "\n" not in err
