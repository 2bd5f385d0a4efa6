"""Every figure of sim/ and validate/ drawn from small inputs of the smoke preset's shapes, each held
to tests/figure_audit.py (conftest applies it to every save of the session, so the smoke runs of
test_sim_*, test_validate_run and test_validate_model are held to it too), and the audit itself shown
to catch each defect it names."""
import json

import numpy as np
import pytest
from figure_audit import problems

from learning_dynamics.sim.common import style


def test_the_audit_names_each_defect():
    plt = style.pyplot()
    fig, axes = plt.subplots(1, 3)                  # no constrained layout
    drawn, = axes[0].plot([0, 1], [0, 1], label="drawn")
    axes[0].legend(handles=[drawn, plt.Line2D([], [], label="not drawn")])
    axes[1].set_title("y_{j != i}")
    axes[2].plot([0, 1], [1, 0])
    axes[2].set_xlabel("step"), axes[2].set_ylabel("log-prob. (nats)")
    axes[2].set_title("a title far too long for its panel " * 6)
    found = "\n".join(problems(fig))
    plt.close(fig)
    for defect in ("axes 1 ('y_{j != i}'): empty panel", "axes 0 ('untitled'): no x-axis label",
                   "no y-axis label", "legend ['drawn', 'not drawn'] does not match the lines ['drawn']",
                   "raw symbol", "runs past the figure's edge", "not laid out by constrained layout"):
        assert defect in found, (defect, found)


def test_a_figure_in_style_passes():
    fig, ax = style.figure()
    ax.plot([0, 1], [0, 1], label="$y^+$")
    ax.set_xlabel("step"), ax.set_ylabel("log-prob. (nats)"), ax.legend()
    assert problems(fig) == []
    style.pyplot().close(fig)


def _series(keys, n_evals=4, n_prompts=3, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(-20, 2, (n_evals, n_prompts)).cumsum(axis=0) for k in keys}


def test_sim_figures(tmp_path):
    from learning_dynamics.sim import digits_figures as digits
    from learning_dynamics.sim import logits_figures as logits
    from learning_dynamics.sim.common.probe_plots import PANELS, plot_comparison, plot_probe_curves

    rng = np.random.default_rng(0)
    curves = {name: {key: rng.normal(0, 1, (5, 3)).cumsum(axis=0) for key in ("plus", "minus", "ystar", "entropy")}
              for name in ("negative", "negative-onpolicy", "dpo", "onpolicy-dpo", "extend")}
    summary = {"influence": rng.normal(0, 0.01, (10, 10)).tolist(), "similarity": rng.normal(0, 9, (10, 10)).tolist(),
               "influence_spearman_offdiag": 0.9, "akg_eta": 0.02, "akg_pearson_r": 0.99999,
               "akg_etas": [1e-3, 1e-2, 1e-1], "akg_errors": [1e-6, 1e-4, 1e-2], "akg_error_slope": 2.0}
    predicted = rng.normal(0, 0.01, (20, 10))
    pi = np.array([0.001, 0.002, 0.9, 0.05, 0.01, 0.003, 0.004, 0.02, 0.005, 0.005])
    keys = [k for k, _ in PANELS]
    steps = np.arange(0, 40, 10)
    written = [
        logits.plot_squeeze_bars(tmp_path / "squeeze_bars.png"),
        logits.plot_curves(tmp_path / "offpolicy_vs_onpolicy.png", curves),
        digits.plot_influence(summary, tmp_path / "influence_vs_entk.png"),
        digits.plot_akg(summary, (predicted, predicted + 1e-5), tmp_path / "akg_predicted_vs_actual.png"),
        digits.plot_negative_step({"pi": pi / pi.sum(), "change": np.r_[np.zeros(5), -3.0, np.zeros(4)] + 0.01,
                                   "wrong": 5, "eta": 0.005}, np.eye(8), tmp_path / "negative_step_bars.png"),
        plot_probe_curves(_series(keys), tmp_path / "probes.png", "off-policy DPO", steps=steps),
        plot_comparison({run: _series(keys[:6], seed=i) for i, run in enumerate(("dpo", "onpolicy-dpo", "extend"))},
                        tmp_path / "comparison.png", "three runs", keys=keys[:6] + ["logps/not_tracked"],
                        steps_by_run={"dpo": steps}),
    ]
    assert all(path.stat().st_size > 10_000 for path in written)


def test_verdict_forest_plot_groups_every_prediction_and_colours_each_verdict(tmp_path):
    from learning_dynamics.validate.judge.verdict_figure import plot_verdicts

    rows = [dict(id="P09a", claim="Off-policy DPO ends with log pi(y+) below its start.", algo="dpo",
                 verdict="holds", effect=8.9, ci=[6.8, 11.1], unit="nats"),
            dict(id="P09a", claim="Off-policy DPO ends with log pi(y+) below its start.", algo="simpo",
                 verdict="fails", effect=-3.9, ci=[-5.2, -2.6], unit="nats"),
            dict(id="P12b", claim="Under SFT, y_{j != i} gains more than a fluent irrelevant response.", algo="sft",
                 verdict="inconclusive", effect=0.8, ci=[-0.4, 2.1], unit="nats"),
            dict(id="P17", claim="Long off-policy DPO raises repetition.", algo="dpo", verdict="inconclusive",
                 effect=None, ci=None, unit="repeated 4-gram fraction")]
    captured = {}
    save = style.save

    def keep(fig, path):
        captured["fig"] = fig
        return save(fig, path)

    style.save, saved = keep, style.save
    try:
        path = plot_verdicts(rows, tmp_path / "verdicts.png")
    finally:
        style.save = saved
    fig = captured["fig"]
    assert path.exists()
    units = [ax for ax in fig.axes if ax.get_xlabel()]
    assert [ax.get_xlabel().split(";")[0] for ax in units] == ["effect (nats)", "effect (repeated 4-gram fraction)"]
    nats = units[0]
    assert [t.get_text() for t in nats.get_yticklabels()] == ["dpo", "simpo", "sft"]
    headers = [t.get_text() for t in nats.texts]
    assert headers[0].startswith("P09a: Off-policy DPO ends with $\\log\\pi$($y^+$)") and "$y_{j\\neq i}$" in headers[1]
    points = {tuple(line.get_xdata()): line.get_color() for line in nats.lines if line.get_marker() == "o"}
    assert points == {(8.9,): style.VERDICT_COLORS["holds"], (-3.9,): style.VERDICT_COLORS["fails"],
                      (0.8,): style.VERDICT_COLORS["inconclusive"]}
    cis = sorted(tuple(line.get_xdata()) for line in nats.lines if line.get_marker() == "None" and
                 len(line.get_xdata()) == 2 and line.get_ydata()[0] == line.get_ydata()[1])
    assert cis == [(-5.2, -2.6), (-0.4, 2.1), (6.8, 11.1)]
    assert any(list(line.get_xdata()) == [0, 0] for line in nats.lines)        # the zero line
    assert "n/a" in [t.get_text() for t in units[1].texts]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["holds", "fails", "inconclusive"]


def test_vector_output_on_request(tmp_path):
    from learning_dynamics.sim.logits_figures import plot_squeeze_bars

    style.use_format("svg")
    try:
        path = plot_squeeze_bars(tmp_path / "squeeze_bars.png")
    finally:
        style.use_format("png")
    assert path.name == "squeeze_bars.svg" and "<svg" in path.read_text()[:2000]

