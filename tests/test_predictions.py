"""The prediction catalogue: complete, pointing at real theory, and its verdicts can go every way."""
import importlib
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from learning_dynamics.theory import predictions as P


def test_ids_are_unique_and_every_paper_item_is_covered():
    ids = [p.id for p in P.CATALOGUE]
    assert len(ids) == len(set(ids))
    items = {p.paper_item for p in P.CATALOGUE}
    missing = {str(i) for i in range(1, 21)} - items
    assert not missing, f"paper-notes section 5 items without a prediction: {sorted(missing)}"


def test_every_formula_points_at_an_existing_theory_function():
    for prediction in P.CATALOGUE:
        for ref in re.findall(r"theory\.[a-z_]+(?:\.[A-Za-z_]+)?", prediction.formula):
            parts = ref.split(".")
            module = importlib.import_module("learning_dynamics." + ".".join(parts[:2]))
            if len(parts) == 3:
                assert hasattr(module, parts[2]), f"{prediction.id}: {ref} does not exist"


def test_run_and_compare_predictions_are_evaluable():
    for prediction in P.CATALOGUE:
        if prediction.scope in ("run", "compare"):
            assert prediction.evaluate is not None and prediction.applies_to, prediction.id
        assert prediction.scope in ("step", "run", "compare")


def make_series(drifts: dict, n_evals=5, n_prompts=40, noise=0.3, seed=0):
    """Curves that move linearly by `drifts[probe]` nats from start to end, plus noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, n_evals)[:, None]
    series = {}
    for probe in P.PROBES:
        start = rng.normal(-60.0, 5.0, n_prompts)
        series[f"logps/{probe}"] = start + ramp * drifts.get(probe, 0.0) + rng.normal(0, noise, (n_evals, n_prompts))
    series["entropy/chosen"] = 2.0 + ramp * drifts.get("entropy", 0.0) + rng.normal(0, 0.01, (n_evals, n_prompts))
    return series


DPO_LIKE = {"chosen": -3.0, "rejected": -12.0, "greedy": 4.0, "entropy": -0.5,
            **{p: -5.0 for p in P.OTHER_PROBES}}


def verdicts(rows):
    return {r["id"]: r["verdict"] for r in rows}


def test_a_dpo_like_run_satisfies_the_dpo_predictions():
    got = verdicts(P.evaluate_run(make_series(DPO_LIKE), "dpo"))
    for pid in ("P09a", "P09b", "P09c", "P09d", "P10"):
        assert got[pid] == "holds", (pid, got)
    assert got["P17"] == "inconclusive"  # generations were not tracked


def test_the_opposite_run_fails_them():
    flipped = {k: -v for k, v in DPO_LIKE.items()}
    got = verdicts(P.evaluate_run(make_series(flipped), "dpo"))
    for pid in ("P09a", "P09c", "P09d", "P10"):
        assert got[pid] == "fails", (pid, got)


def test_one_probe_that_rises_fails_the_all_probes_claim():
    drifts = dict(DPO_LIKE, irrelevant=+3.0)
    row = next(r for r in P.evaluate_run(make_series(drifts), "dpo") if r["id"] == "P09d")
    assert row["verdict"] == "fails" and "irrelevant" in row["detail"]


def test_noise_alone_is_inconclusive():
    got = verdicts(P.evaluate_run(make_series({}, noise=1.0), "sft"))
    assert set(got.values()) <= {"inconclusive", "fails"}
    assert got["P12d"] == "inconclusive"


def test_rise_then_fall_needs_an_interior_peak():
    n = 7
    hump = {"rejected": 0.0}
    series = make_series(hump, n_evals=n)
    bump = 4.0 * np.sin(np.linspace(0, np.pi, n))[:, None] - np.linspace(0, 2, n)[:, None]
    series["logps/rejected"] = series["logps/rejected"] + bump
    row = next(r for r in P.evaluate_run(series, "sft") if r["id"] == "P13a")
    assert row["verdict"] == "holds"
    series["logps/rejected"] = series["logps/rejected"] - 2 * bump  # a dip, then recovery
    row = next(r for r in P.evaluate_run(series, "sft") if r["id"] == "P13a")
    assert row["verdict"] == "fails"


def test_comparison_is_paired_and_directional():
    strong = make_series(DPO_LIKE, seed=1)
    weak = make_series({k: v / 4 for k, v in DPO_LIKE.items()}, seed=2)
    rows = {r["id"]: r for r in P.evaluate_comparison({"dpo": strong, "onpolicy-dpo": weak, "extend": strong})}
    assert rows["P14"]["verdict"] == "holds" and rows["P14"]["effect"] > 0
    assert rows["P15"]["verdict"] == "inconclusive"  # same squeeze in both runs
    rows = {r["id"]: r for r in P.evaluate_comparison({"dpo": weak, "onpolicy-dpo": strong})}
    assert rows["P14"]["verdict"] == "fails"


@settings(max_examples=40, deadline=None)
@given(st.floats(-5, 5), st.floats(0.05, 2.0), st.integers(5, 60), st.integers(0, 10_000))
def test_bootstrap_interval_contains_its_point_and_verdict_matches(shift, scale, n, seed):
    values = np.random.default_rng(seed).normal(shift, scale, n)
    point, (lo, hi) = P.bootstrap_ci(np.mean, [values], n_boot=300, seed=seed)
    assert lo <= point <= hi
    verdict = P.verdict_from_ci((lo, hi))
    assert verdict == ("holds" if lo > 0 else "fails" if hi < 0 else "inconclusive")


def test_fraction_outcome_holds_only_without_exceptions():
    assert P.fraction_outcome(np.ones(50, bool)).verdict == "holds"
    one_miss = np.ones(50, bool)
    one_miss[3] = False
    out = P.fraction_outcome(one_miss)
    assert out.verdict == "fails" and out.ci[0] < out.effect < out.ci[1]


def test_precision_recall():
    pr = P.precision_recall(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool))
    assert pr["precision"] == pytest.approx(0.5) and pr["recall"] == pytest.approx(0.5)


def test_unknown_id_is_a_user_error():
    from learning_dynamics.theory.errors import UserError
    with pytest.raises(UserError):
        P.get("P99")
    assert P.get("P01").id == "P01"
