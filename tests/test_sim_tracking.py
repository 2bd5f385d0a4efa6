"""The shared tracking table: atomic per-step chunks, resume, and the series it feeds to theory."""
import os

import numpy as np
import pytest

from learning_dynamics.sim.common import tracking
from learning_dynamics.sim.common.tracking import COLUMNS, TrackingTable, read_chunk, series_from_table, steps_of


def make_rows(step_seed, prompts=("2", "10"), probes=("chosen", "rejected", "other_chosen")):
    rng = np.random.default_rng(step_seed)
    return [{"prompt_id": p, "probe": probe, "logp_sum": float(rng.normal(-10, 3)),
             "n_tokens": int(rng.integers(3, 9)), "entropy_mean": float(rng.random()),
             "sqnorm_mean": float(rng.random()), "argmax_logp_sum": float(-rng.random())}
            for p in prompts for probe in probes]


def test_one_chunk_per_step_read_back_bit_for_bit(tmp_path):
    table = TrackingTable(tmp_path / "t")
    written = {step: make_rows(step) for step in (0, 5, 10)}
    for step, rows in written.items():
        table.append(step, rows)
    assert sorted(os.listdir(tmp_path / "t")) == ["step_000000000.csv", "step_000000005.csv",
                                                  "step_000000010.csv"]  # no temp files left behind
    back = table.read()
    assert [r["step"] for r in back] == [0] * 6 + [5] * 6 + [10] * 6
    for step, rows in written.items():
        got = [r for r in back if r["step"] == step]
        for want, have in zip(rows, got):
            assert have["logp_sum"] == want["logp_sum"]          # repr keeps every bit
            assert have["logp_mean"] == want["logp_sum"] / want["n_tokens"]
            assert have["prompt_id"] == want["prompt_id"] and have["probe"] == want["probe"]


def test_rewriting_a_step_replaces_its_chunk(tmp_path):
    table = TrackingTable(tmp_path)
    table.append(3, make_rows(1))
    table.append(3, make_rows(2))
    rows = table.read()
    assert len(rows) == 6 and rows[0]["logp_sum"] == make_rows(2)[0]["logp_sum"]


def test_a_crash_mid_write_keeps_earlier_chunks_and_leaves_no_partial_one(tmp_path, monkeypatch):
    table = TrackingTable(tmp_path)
    table.append(0, make_rows(0))

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        table.append(1, make_rows(1))
    monkeypatch.undo()
    assert table.completed_steps() == [0]
    assert sorted(os.listdir(tmp_path)) == ["step_000000000.csv"]
    assert len(table.read()) == 6


def test_resume_sees_completed_steps_and_fresh_starts_over(tmp_path):
    TrackingTable(tmp_path).append(0, make_rows(0))
    TrackingTable(tmp_path).append(20, make_rows(1))
    resumed = TrackingTable(tmp_path)
    assert resumed.completed_steps() == [0, 20]
    resumed.append(40, make_rows(2))
    assert resumed.completed_steps() == [0, 20, 40]
    assert TrackingTable(tmp_path, fresh=True).completed_steps() == []


def test_bad_rows_and_foreign_files_are_refused(tmp_path):
    table = TrackingTable(tmp_path)
    bad = make_rows(0)
    del bad[0]["entropy_mean"]
    with pytest.raises(ValueError, match="lacks"):
        table.append(0, bad)
    assert table.completed_steps() == []
    foreign = tmp_path / "step_000000001.csv"
    foreign.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="schema"):
        read_chunk(foreign)


def test_series_shape_order_and_greedy(tmp_path):
    table = TrackingTable(tmp_path)
    for step in (0, 10, 20, 30):
        table.append(step, make_rows(step))
    rows = table.read()
    series = series_from_table(rows)
    assert list(steps_of(rows)) == [0, 10, 20, 30]
    assert series["logps/chosen"].shape == (4, 2)
    # prompt ids sort numerically ("2" before "10"), evaluations by step
    want = [r["logp_sum"] for r in rows if r["probe"] == "chosen" and r["prompt_id"] == "10"]
    np.testing.assert_array_equal(series["logps/chosen"][:, 1], want)
    # y*'s log-prob is the argmax column of probe "chosen"
    np.testing.assert_array_equal(series["logps/greedy"], series["argmax/chosen"])
    assert {"entropy/chosen", "sqnorm/chosen", "n_tokens/rejected"} <= set(series)


def test_a_missing_cell_is_an_error_unless_asked_to_keep_nan(tmp_path):
    table = TrackingTable(tmp_path)
    table.append(0, make_rows(0))
    table.append(1, make_rows(1)[:-1])  # one (prompt, probe) missing at step 1
    rows = table.read()
    with pytest.raises(ValueError, match="missing"):
        series_from_table(rows)
    series = series_from_table(rows, require_complete=False)
    assert np.isnan(series["logps/other_chosen"][1, 1]) and not np.isnan(series["logps/chosen"]).any()


def _dpo_verdicts_of_a_table(tmp_path, chosen_drift, rejected_drift):
    """DPO verdicts of a tracking table whose y+ and y- move linearly by the given nats per step."""
    from learning_dynamics.theory.predictions import evaluate_run

    table = TrackingTable(tmp_path)
    prompts = [str(i) for i in range(12)]
    for step in range(3):
        rows = make_rows(step, prompts=prompts, probes=("chosen", "rejected"))
        for r in rows:
            drift = (chosen_drift if r["probe"] == "chosen" else rejected_drift) * step
            r["logp_sum"] = -10.0 + drift + 0.1 * int(r["prompt_id"])
        table.append(step, rows)
    return {r["id"]: r["verdict"] for r in evaluate_run(series_from_table(table.read()), "dpo", level="lm")}


def test_theory_evaluates_the_series_of_a_table(tmp_path):
    """End to end: a table whose y- falls and y+ rises gives the verdicts that say so."""
    verdicts = _dpo_verdicts_of_a_table(tmp_path, chosen_drift=2.0, rejected_drift=-5.0)
    assert verdicts["P09a"] == "fails"   # y+ rose: "y+ ends lower" is refuted
    assert verdicts["P09b"] == "fails"   # y- fell faster, but P09b needs both to fall


def test_theory_evaluates_a_table_where_both_fall_y_minus_faster(tmp_path):
    verdicts = _dpo_verdicts_of_a_table(tmp_path, chosen_drift=-1.0, rejected_drift=-5.0)
    assert verdicts["P09a"] == "holds"
    assert verdicts["P09b"] == "holds"


def test_probe_plot_writes_one_panel_per_probe(tmp_path):
    from learning_dynamics.sim.common.probe_plots import plot_probe_curves

    table = TrackingTable(tmp_path / "t")
    for step in (0, 10, 20):
        table.append(step, make_rows(step))
    series = series_from_table(table.read())
    path = plot_probe_curves(series, tmp_path / "p.png", "test", steps=[0, 10, 20],
                             keys=["logps/chosen", "logps/rejected", "logps/greedy"])
    assert path.exists() and path.stat().st_size > 1000
    with pytest.raises(ValueError):
        plot_probe_curves(series, tmp_path / "q.png", "test", keys=["logps/nothing"])


def test_columns_are_the_spec_schema():
    assert COLUMNS == ("step", "prompt_id", "probe", "logp_sum", "logp_mean", "n_tokens", "entropy_mean",
                       "sqnorm_mean", "argmax_logp_sum")
    assert tracking.FLOAT_COLUMNS == ("logp_sum", "logp_mean", "entropy_mean", "sqnorm_mean",
                                      "argmax_logp_sum")
