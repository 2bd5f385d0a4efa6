"""A verdict is judged only in the regime its claim is about (theory.regime), pooled over seeds with a hierarchical
bootstrap, and the primary family is Holm-corrected (theory.statistics, validate.judge.pooling)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learning_dynamics.theory import predictions
from learning_dynamics.theory import regime as regimes
from learning_dynamics.theory.statistics import bootstrap, grouped_by, holm, verdict_from_p


def _dpo_series(margins, n_prompts=10, seed=0):
    """Series whose probe pairs reach the given mean DPO margins (in log-prob units) at successive evaluations."""
    rng = np.random.default_rng(seed)
    chosen0, rejected0 = -rng.uniform(20, 40, n_prompts), -rng.uniform(30, 60, n_prompts)
    chosen = np.stack([chosen0 + m / 2 for m in margins])
    rejected = np.stack([rejected0 - m / 2 for m in margins])
    return {"logps/chosen": chosen, "logps/rejected": rejected}


def test_the_force_on_a_dpo_pair_is_its_sigma_minus_u_over_a_half():
    margins = [0.0, 5.0, 20.0, 60.0]
    curve = regimes.force_curve(_dpo_series(margins), "dpo", {"beta": 0.1})
    expected = 1 / (1 + np.exp(0.1 * np.array(margins))) / 0.5
    np.testing.assert_allclose(curve, np.repeat(expected[:, None], 10, axis=1), rtol=1e-12)
    assert regimes.force_curve({"logps/chosen": np.zeros((2, 3))}, "sft", {})[1, 0] == 1.0   # SFT never tires
    assert regimes.force_curve(_dpo_series(margins), "pg", {}) is None                       # a group's: untracked


def test_a_claim_is_read_where_the_force_was_still_active_and_not_tested_after_a_large_first_step():
    series = _dpo_series([0.0, 5.0, 20.0, 60.0])
    active = regimes.measure(series, [0, 1, 2, 4], "dpo", {"beta": 0.1}, first_step_error=0.03)
    assert active.first_order and active.active_until == 2        # sigma(-6) / 0.5 < 0.2 at the last step
    last, reason = regimes.gate(active, predictions.SQUEEZE_REGIME)
    assert (last, reason) == (2, None)
    assert regimes.gate(active, frozenset({"first order"})) == (3, None)     # SFT's claims read to the end
    large = regimes.measure(series, [0, 1, 2, 4], "dpo", {"beta": 0.1}, first_step_error=0.28)
    last, reason = regimes.gate(large, predictions.SQUEEZE_REGIME)
    assert last is None and "not tested" in reason and "28%" in reason
    saturated = regimes.measure(_dpo_series([0.0, 80.0, 90.0]), [0, 8, 16], "dpo", {"beta": 0.1},
                                first_step_error=0.05)
    assert regimes.gate(saturated, predictions.SQUEEZE_REGIME)[0] is None
    assert regimes.Regime.from_dict(active.as_dict()) == active


def test_evaluate_run_marks_claims_outside_the_regime_not_tested_and_reads_the_rest_at_the_active_end():
    series = _dpo_series([0.0, 5.0, 20.0, 60.0], n_prompts=12)
    for key in ("greedy", "chosen_rephrase", "test_response", "irrelevant", "random_tokens"):
        series[f"logps/{key}"] = series["logps/chosen"] + np.arange(4)[:, None] * (1.0 if key == "greedy" else -1.0)
    regime = regimes.measure(series, [0, 1, 2, 4], "dpo", {"beta": 0.1}, first_step_error=0.03)
    rows = {r["id"]: r for r in predictions.evaluate_run(series, "dpo", regime=regime)}
    assert rows["P09a"]["verdict"] == "fails" and "read at step 2" in rows["P09a"]["detail"]
    # y+ rose by 10 nats by step 2: read there, the fall of y+ is -10 (y+ = start + m/2)
    assert rows["P09a"]["effect"] == pytest.approx(-10.0)
    bad = regimes.measure(series, [0, 1, 2, 4], "dpo", {"beta": 0.1}, first_step_error=0.5)
    rows = {r["id"]: r for r in predictions.evaluate_run(series, "dpo", regime=bad)}
    assert {r["verdict"] for r in rows.values()} == {"not tested"}


def test_holm_matches_its_definition_and_stays_monotone():
    p = [0.01, 0.04, 0.03, 0.005, None]
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02, None])
    assert verdict_from_p(0.3, 0.02) == "holds" and verdict_from_p(-0.3, 0.02) == "fails"
    assert verdict_from_p(0.3, 0.2) == "inconclusive"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=8))
def test_holm_never_lowers_a_p_value_and_keeps_their_order(values):
    adjusted = holm(values)
    assert all(a >= v - 1e-15 and a <= 1.0 for a, v in zip(adjusted, values))
    order = np.argsort(values, kind="stable")
    assert all(adjusted[order[i]] <= adjusted[order[i + 1]] + 1e-15 for i in range(len(values) - 1))


def test_the_hierarchical_interval_carries_the_spread_between_seeds():
    rng = np.random.default_rng(0)
    # three seeds whose means differ by far more than the prompt noise within a seed
    values = np.concatenate([rng.normal(mean, 0.1, 30) for mean in (0.2, 1.0, 1.8)])
    labels = np.repeat([0, 1, 2], 30)
    point, flat, _ = bootstrap(np.mean, [values], seed=1)
    with grouped_by(labels):
        point_h, nested, p = bootstrap(np.mean, [values], seed=1)
    assert point == point_h
    assert (nested[1] - nested[0]) > 3 * (flat[1] - flat[0])
    assert p is not None and 0 < p <= 1
