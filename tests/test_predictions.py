"""The prediction catalogue: complete, pointing at real theory, and its verdicts can go every way."""
import importlib
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from learning_dynamics.theory import evaluators as E
from learning_dynamics.theory import predictions as P
from learning_dynamics.theory import statistics as S


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


SFT_LIKE = {"chosen": 6.0, "rejected": -1.0, "greedy": 1.0, "entropy": -0.1, **{p: 1.0 for p in P.OTHER_PROBES}}


def test_a_dpo_like_run_satisfies_the_dpo_predictions_against_its_sft_control():
    control = make_series(SFT_LIKE, seed=5)
    got = verdicts(P.evaluate_run(make_series(DPO_LIKE), "dpo", control=control))
    for pid in ("P09a", "P09b", "P09c", "P09d", "P10"):
        assert got[pid] == "holds", (pid, got)
    assert got["P17"] == "inconclusive"  # generations were not tracked


def test_without_a_control_the_squeeze_and_entropy_claims_are_not_judged():
    rows = {r["id"]: r for r in P.evaluate_run(make_series(DPO_LIKE), "dpo")}
    for pid in ("P09c", "P10"):
        assert rows[pid]["verdict"] == "inconclusive" and not rows[pid]["control"]
        assert rows[pid]["effect"] > 0 and "no control" in rows[pid]["detail"]


def test_a_squeeze_no_larger_than_sfts_is_not_a_squeeze():
    """SFT raises y* by as much as the run does: against the control the effect is ~0, not 'holds'."""
    same = dict(DPO_LIKE, greedy=SFT_LIKE["greedy"])
    row = next(r for r in P.evaluate_run(make_series(same), "dpo", control=make_series(SFT_LIKE, seed=5))
               if r["id"] == "P09c")
    assert row["verdict"] != "holds" and row["control"]
    assert row["ci"][0] <= 0 <= row["ci"][1] or row["ci"][1] < 0


def test_the_opposite_run_fails_them():
    flipped = {k: -v for k, v in DPO_LIKE.items()}
    got = verdicts(P.evaluate_run(make_series(flipped), "dpo", control=make_series({}, seed=5)))
    for pid in ("P09a", "P09c", "P09d", "P10"):
        assert got[pid] == "fails", (pid, got)


def test_p09b_needs_both_to_fall():
    """An SFT-like run raises y+ and lowers y-: the gap is positive, but y+ does not fall."""
    row = next(r for r in P.evaluate_run(make_series(SFT_LIKE), "dpo") if r["id"] == "P09b")
    assert row["verdict"] == "fails" and "fall of y+" in row["detail"].split(";")[0]
    assert row["ci"][1] < 0   # the printed interval is the failing part's


def test_one_probe_that_rises_fails_the_all_probes_claim():
    drifts = dict(DPO_LIKE, irrelevant=+3.0)
    row = next(r for r in P.evaluate_run(make_series(drifts), "dpo") if r["id"] == "P09d")
    assert row["verdict"] == "fails" and "decided by irrelevant" in row["detail"]
    assert row["ci"][1] < 0


def test_the_printed_interval_is_the_one_that_decided_the_verdict():
    drifts = dict(DPO_LIKE, irrelevant=0.0)   # one probe does not move: inconclusive, decided by it
    row = next(r for r in P.evaluate_run(make_series(drifts), "dpo") if r["id"] == "P09d")
    assert row["verdict"] == "inconclusive" and "decided by irrelevant" in row["detail"]
    assert row["ci"][0] <= 0 <= row["ci"][1]


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


def _rows(rows, basis):
    return {r["id"]: r for r in rows if r["basis"] == basis}


def test_comparison_is_paired_and_directional():
    strong = make_series(DPO_LIKE, seed=1)
    weak = make_series({k: v / 4 for k, v in DPO_LIKE.items()}, seed=2)
    rows = P.evaluate_comparison({"dpo": strong, "onpolicy-dpo": weak, "extend": strong})
    steps = _rows(rows, "equal exposure")
    assert steps["P14"]["verdict"] == "holds" and steps["P14"]["effect"] > 0
    assert steps["P15"]["verdict"] == "inconclusive"  # same squeeze in both runs
    assert _rows(rows, "matched margin")["P15b"]["verdict"] == "inconclusive"
    # at matched margin only the part read on untrained probes: y* is read on y+'s contexts, a training target
    assert set(_rows(rows, "matched margin")) == {"P14b", "P15b"}
    rows = P.evaluate_comparison({"dpo": weak, "onpolicy-dpo": strong})
    assert _rows(rows, "equal exposure")["P14"]["verdict"] == "fails"


def test_matched_margin_can_reverse_an_equal_steps_comparison():
    """The other run barely moves (margin 1/8 of the reference's) but its other probes fall hard for its margin
    (half the reference's fall): at equal exposure the reference squeezes more, at the margin both reach the
    other squeezes more."""
    reference = make_series(DPO_LIKE, n_evals=9, seed=1)
    slow = {k: v / 8 for k, v in DPO_LIKE.items()}
    slow.update({p: DPO_LIKE[p] / 2 for p in P.OTHER_PROBES})
    other = make_series(slow, n_evals=9, seed=2)
    for s in (reference, other):
        for probe in list(P.PROBES) + ["chosen"]:
            s[f"n_tokens/{probe}"] = np.full_like(s["logps/chosen"], 1.0)
        s["argmax/chosen"] = s["logps/greedy"]
    rows = P.evaluate_comparison({"dpo": reference, "extend": other})
    assert _rows(rows, "equal exposure")["P15b"]["verdict"] == "holds"
    matched = _rows(rows, "matched margin")["P15b"]
    assert matched["verdict"] == "fails" and "margin first reaches" in matched["detail"]


def _with_token_counts(series):
    for probe in list(P.PROBES) + ["chosen"]:
        series[f"n_tokens/{probe}"] = np.full_like(series["logps/chosen"], 1.0)
    series["argmax/chosen"] = series["logps/greedy"]
    return series


def test_the_squeeze_parts_are_judged_apart():
    """The composite index can hold while one part fails: the other run raises y* more (P14a fails) but its
    other probes rise instead of falling (P14b holds by more), so the index says the other squeezes less."""
    reference = _with_token_counts(make_series(DPO_LIKE, n_evals=6, seed=1))
    other_drift = dict(DPO_LIKE, greedy=8.0, **{p: +6.0 for p in P.OTHER_PROBES})
    other = _with_token_counts(make_series(other_drift, n_evals=6, seed=2))
    compared = P.evaluate_comparison({"dpo": reference, "onpolicy-dpo": other})
    rows = _rows(compared, "equal exposure")
    assert rows["P14"]["verdict"] == "holds", rows["P14"]
    assert rows["P14a"]["verdict"] == "fails" and rows["P14a"]["ci"][1] < 0, rows["P14a"]
    assert rows["P14b"]["verdict"] == "holds", rows["P14b"]
    # the index is y*'s gain plus the others' fall: the parts add up
    assert rows["P14"]["effect"] == pytest.approx(rows["P14a"]["effect"] + rows["P14b"]["effect"])
    assert _rows(compared, "matched margin")["P14b"]["verdict"] == "holds"


def test_the_squeeze_index_reads_no_training_target():
    """y_{j != i} is another prompt's y+: DPO and SFT push it directly, so it must not move the index."""
    from learning_dynamics.theory import probes
    from learning_dynamics.theory.squeeze_measures import squeeze_index

    assert "other_chosen" in probes.OTHER and "other_chosen" not in probes.OTHER_UNTRAINED
    assert all(probes.get(p).trained is None for p in probes.OTHER_UNTRAINED)
    series = _with_token_counts(make_series(DPO_LIKE, seed=4))
    before = squeeze_index(series)
    series["logps/other_chosen"] = series["logps/other_chosen"] + np.linspace(0, 50, 5)[:, None]
    assert np.array_equal(squeeze_index(series), before)
    series["logps/irrelevant"] = series["logps/irrelevant"] + np.linspace(0, 50, 5)[:, None]
    assert np.all(squeeze_index(series) < before)


def test_matched_margin_interval_carries_the_matching():
    """Prompts whose margins differ widely move the matched point when resampled: the interval of the
    matched comparison is wider than the one that holds each run's matched evaluation fixed."""
    from learning_dynamics.theory.squeeze_measures import at_margin, margin_curve, squeeze_part_curve

    rng = np.random.default_rng(3)
    reference = _with_token_counts(make_series(DPO_LIKE, n_evals=4, seed=1))
    other = _with_token_counts(make_series({k: v / 2 for k, v in DPO_LIKE.items()}, n_evals=4, seed=2))
    # heavy-tailed margins: a few prompts carry most of the reference's margin
    reference["logps/rejected"] = reference["logps/rejected"] - np.linspace(0, 1, 4)[:, None] * rng.exponential(
        30.0, 40)
    row = _rows(P.evaluate_comparison({"dpo": reference, "onpolicy-dpo": other}), "matched margin")["P14b"]
    target = min(margin_curve(s).mean(axis=1).max() for s in (reference, other))
    fixed = [np.array([at_margin(margin_curve(s).mean(axis=1), squeeze_part_curve(s, "others")[:, j], target)
                       for j in range(40)]) for s in (reference, other)]
    _, fixed_ci = S.bootstrap_ci(lambda a, b: np.mean(a) - np.mean(b), fixed)
    assert row["effect"] == pytest.approx(np.mean(fixed[0]) - np.mean(fixed[1]))
    assert row["ci"][1] - row["ci"][0] > fixed_ci[1] - fixed_ci[0]
    assert "resamples prompts before matching" in row["detail"]


def test_dose_response_reads_the_initial_dose():
    rng = np.random.default_rng(3)
    n = 60
    series = make_series(DPO_LIKE, n_prompts=n)
    for probe in list(P.PROBES):
        series[f"n_tokens/{probe}"] = np.full_like(series["logps/chosen"], 10.0)
    series["argmax/chosen"] = series["logps/greedy"]
    dose = rng.normal(-3.0, 1.0, n)                       # initial per-token log pi(y-)
    series["logp_mean/rejected"] = np.tile(dose, (5, 1))
    series["entropy/rejected"] = np.tile(rng.normal(2.0, 0.3, n), (5, 1))
    ramp = np.linspace(0, 1, 5)[:, None]
    series["argmax/chosen"] = series["argmax/chosen"] + ramp * (-20.0 * dose)[None, :]  # smaller pi(y-): more y*
    rows = {r["id"]: r for r in P.evaluate_run(series, "dpo")}
    assert rows["P06r"]["verdict"] == "holds" and rows["P06r"]["effect"] > 0.5
    assert rows["P05r"]["verdict"] == "inconclusive"   # entropy unrelated to the squeeze here
    series["argmax/chosen"] = series["argmax/chosen"] - 2 * ramp * (-20.0 * dose)[None, :]
    assert {r["id"]: r for r in P.evaluate_run(series, "dpo")}["P06r"]["verdict"] == "fails"


def test_shared_prefix_and_top_token_mass():
    n = 30
    series = make_series(DPO_LIKE, n_prompts=n)
    ramp = np.linspace(0, 1, 5)[:, None]
    series["n_tokens/shared_prefix"] = np.tile(np.r_[np.full(20, 2.0), np.zeros(10)], (5, 1))
    series["n_tokens/rejected"] = np.full((5, n), 10.0)
    series["entropy/shared_prefix"] = 2.0 + 0.01 * np.random.default_rng(0).normal(size=(5, n))
    series["entropy/rejected"] = (2.0 * 2 + 8 * (2.0 - ramp)) / 10   # only y-'s own positions sharpen
    series["mass/tv"] = ramp * np.full(n, 0.4)
    series["mass/top_gain"] = ramp * np.full(n, 0.3) + 0.01 * np.random.default_rng(1).normal(size=(5, n))
    control = {"mass/tv": ramp * np.full(n, 0.4), "mass/top_gain": ramp * np.full(n, 0.1)}  # SFT: share 1/4
    rows = {r["id"]: r for r in P.evaluate_run(series, "dpo", control=control)}
    assert rows["P08r"]["verdict"] == "holds" and rows["P08r"]["n"] == 20
    assert rows["P18r"]["verdict"] == "holds" and abs(rows["P18r"]["effect"] - 0.5) < 0.02  # 3/4 - 1/4
    assert {r["id"]: r for r in P.evaluate_run(series, "dpo")}["P18r"]["verdict"] == "inconclusive"
    series["mass/top_gain"] = ramp * np.full(n, 0.05)
    assert {r["id"]: r for r in P.evaluate_run(series, "dpo", control=control)}["P18r"]["verdict"] == "fails"


def test_top_token_share_is_compared_where_both_runs_moved_the_same_mass():
    """The control moves twice the mass and its share grows late: at equal steps both shares are 3/4,
    where both moved 0.4 the control's share is 1/4, so the run's excess is +1/2 there."""
    n = 30
    ramp = np.linspace(0, 1, 5)[:, None]
    noise = 0.005 * np.random.default_rng(2).normal(size=(5, n))
    series = make_series(DPO_LIKE, n_prompts=n)
    series.update({"mass/tv": ramp * np.full(n, 0.4), "mass/top_gain": ramp * np.full(n, 0.3) + noise})
    control = {"mass/tv": ramp * np.full(n, 0.8),
               "mass/top_gain": np.array([0, 0.05, 0.1, 0.35, 0.6])[:, None] * np.ones(n) + noise}
    row = {r["id"]: r for r in P.evaluate_run(series, "dpo", control=control)}["P18r"]
    assert row["verdict"] == "holds" and abs(row["effect"] - 0.5) < 0.02, row
    assert "reaches 0.4" in row["detail"] and "at equal steps +0.75" in row["detail"]


def test_a_shared_prefix_on_too_few_prompts_is_not_judged():
    n = 30
    series = make_series(DPO_LIKE, n_prompts=n)
    ramp = np.linspace(0, 1, 5)[:, None]
    with_prefix = E.MIN_SUBSET_PROMPTS - 1
    series["n_tokens/shared_prefix"] = np.tile(np.r_[np.full(with_prefix, 2.0), np.zeros(n - with_prefix)], (5, 1))
    series["n_tokens/rejected"] = np.full((5, n), 10.0)
    series["entropy/shared_prefix"] = np.full((5, n), 2.0)
    series["entropy/rejected"] = (2.0 * 2 + 8 * (2.0 - ramp)) / 10 + np.zeros((5, n))
    row = {r["id"]: r for r in P.evaluate_run(series, "dpo")}["P08r"]
    assert row["verdict"] == "inconclusive" and row["n"] == with_prefix and "at least" in row["detail"]


def _repetition(start, end, n_evals=3):
    """gen/rep4_prefix [n_evals, n_prompts], moving linearly from start to end (nan: too short)."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    return np.linspace(0, 1, n_evals)[:, None] * (end - start) + start


def test_repetition_is_judged_on_length_matched_prefixes_against_the_control():
    n = 12
    rng = np.random.default_rng(4)
    series = make_series(DPO_LIKE, n_prompts=n)
    control = make_series(SFT_LIKE, n_prompts=n, seed=5)
    series["gen/rep4_prefix"] = _repetition(np.zeros(n), 0.3 + 0.02 * rng.normal(size=n))
    control["gen/rep4_prefix"] = _repetition(np.zeros(n), 0.05 + 0.02 * rng.normal(size=n))
    row = {r["id"]: r for r in P.evaluate_run(series, "dpo", control=control)}["P17"]
    assert row["verdict"] == "holds" and abs(row["effect"] - 0.25) < 0.05 and row["n"] == n
    control["gen/rep4_prefix"] = _repetition(np.zeros(n), 0.6 + 0.02 * rng.normal(size=n))
    assert {r["id"]: r for r in P.evaluate_run(series, "dpo", control=control)}["P17"]["verdict"] == "fails"
    # the control's answers got too short to compare on most prompts: not judged, however large the rise
    short = control["gen/rep4_prefix"].copy()
    short[-1, : n - E.MIN_SUBSET_PROMPTS + 1] = np.nan
    control["gen/rep4_prefix"] = short
    row = {r["id"]: r for r in P.evaluate_run(series, "dpo", control=control)}["P17"]
    assert row["verdict"] == "inconclusive" and row["n"] == E.MIN_SUBSET_PROMPTS - 1


def _repeated(series, second_copy_rise, n_once=10, n_added=20, seed=0):
    """The repeated sample's curves on top of the initial sample's: the second copy (n_added tokens) gains
    `second_copy_rise` nats from start to end, while both responses fall with the initial sample."""
    n_evals, n = series["logps/initial_sample"].shape
    ramp = np.linspace(0, 1, n_evals)[:, None]
    noise = 0.05 * np.random.default_rng(seed).normal(size=(n_evals, n))
    series = dict(series, **{"n_tokens/initial_sample": np.full((n_evals, n), float(n_once)),
                             "n_tokens/sample_repeated": np.full((n_evals, n), float(n_once + n_added))})
    series["logps/sample_repeated"] = series["logps/initial_sample"] - 30.0 + ramp * second_copy_rise + noise
    return series


def test_repeating_its_own_sample_is_judged_per_token_against_the_control():
    n, drifts = 12, dict(DPO_LIKE, sample_repeated=-40.0)     # both probes fall; the second copy rises
    series = _repeated(make_series(drifts, n_prompts=n), 10.0)
    control = _repeated(make_series(SFT_LIKE, n_prompts=n, seed=5), 2.0, seed=1)
    row = {r["id"]: r for r in P.evaluate_run(series, "dpo", control=control)}["P17r"]
    assert row["verdict"] == "holds" and row["control"] and abs(row["effect"] - (10.0 - 2.0) / 20) < 0.02
    assert row["ci"][0] > 0 and row["n"] == n
    control = _repeated(control, 16.0, seed=2)
    row = {r["id"]: r for r in P.evaluate_run(series, "dpo", control=control)}["P17r"]
    assert row["verdict"] == "fails" and abs(row["effect"] - (10.0 - 16.0) / 20) < 0.02 and row["ci"][1] < 0
    raw = {r["id"]: r for r in P.evaluate_run(series, "ipo")}["P17r"]   # no control: the raw change, not judged
    assert raw["verdict"] == "inconclusive" and abs(raw["effect"] - 0.5) < 0.02 and "no control" in raw["detail"]
    older = {k: v for k, v in series.items() if k != "n_tokens/sample_repeated"}   # a run made before the probe
    for run, ctrl in ((older, control), (series, older)):
        row = {r["id"]: r for r in P.evaluate_run(run, "dpo", control=ctrl)}["P17r"]
        assert row["verdict"] == "inconclusive" and "not tracked" in row["detail"]
    assert "P17r" not in {r["id"] for r in P.evaluate_run(series, "sft")}
    assert "sample_repeated" not in P.OTHER_PROBES and P.BY_ID["P17r"].probes == ("initial_sample", "sample_repeated")


def test_prefix_repetition_counts_repeated_four_grams_of_the_first_words_only():
    from learning_dynamics.validate.data.repetition import prefix_repetition
    assert np.isnan(prefix_repetition("too short to judge", n_words=12))
    assert prefix_repetition("a b c d a b c d a b c d", n_words=12) == 5 / 9
    assert prefix_repetition("one two three four five six seven eight nine ten eleven twelve a b c d a b c d",
                             n_words=12) == 0.0


@settings(max_examples=40, deadline=None)
@given(st.floats(-5, 5), st.floats(0.05, 2.0), st.integers(5, 60), st.integers(0, 10_000))
def test_bootstrap_interval_contains_its_point_and_verdict_matches(shift, scale, n, seed):
    values = np.random.default_rng(seed).normal(shift, scale, n)
    point, (lo, hi) = S.bootstrap_ci(np.mean, [values], n_boot=300, seed=seed)
    assert lo <= point <= hi
    verdict = S.verdict_from_ci((lo, hi))
    assert verdict == ("holds" if lo > 0 else "fails" if hi < 0 else "inconclusive")


def test_fraction_outcome_holds_only_without_exceptions():
    assert S.fraction_outcome(np.ones(50, bool)).verdict == "holds"
    one_miss = np.ones(50, bool)
    one_miss[3] = False
    out = S.fraction_outcome(one_miss)
    assert out.verdict == "fails" and out.ci[0] < out.effect < out.ci[1]


def test_precision_recall():
    pr = S.precision_recall(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool))
    assert pr["precision"] == pytest.approx(0.5) and pr["recall"] == pytest.approx(0.5)


def test_unknown_id_is_a_user_error():
    from learning_dynamics.theory.errors import UserError
    with pytest.raises(UserError):
        P.get("P99")
    assert P.get("P01").id == "P01"


def test_an_sft_run_controls_only_runs_that_start_from_the_same_model():
    from learning_dynamics.validate.presets import settings_for
    from learning_dynamics.validate.judge.report import is_control_for
    sft = settings_for("smoke", algo="sft")
    assert is_control_for(sft, settings_for("smoke", algo="dpo"))
    assert not is_control_for(sft, settings_for("smoke", algo="extend"))   # tracked after its SFT phase
    assert not is_control_for(sft, settings_for("smoke", algo="dpo", seed=1))
    assert not is_control_for(settings_for("smoke", algo="dpo"), settings_for("smoke", algo="ipo"))
