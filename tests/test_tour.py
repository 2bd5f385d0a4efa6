"""`ldyn tour`: prints the derivations and the worked example, writes the figures, exits 0.
The digit classifier is replaced by a stub (it has its own tests) and the free-logit run
uses its quick preset, so this stays a light check."""
import matplotlib

matplotlib.use("Agg")


def test_tour_writes_its_figures(tmp_path, capsys, monkeypatch):
    from learning_dynamics.sim import digits as sim_digits, tour as sim_tour
    from learning_dynamics.sim.common import style

    def fake_digits(out, preset="default", progress=True, **_):
        assert preset == "quick"
        fig, ax = style.figure()
        ax.plot([0, 1], [0, 1])
        ax.set_xlabel("predicted"), ax.set_ylabel("actual")
        style.save(fig, out / "akg_predicted_vs_actual.png")
        return {"figures": {"akg": "akg_predicted_vs_actual.png"}, "test_accuracy": 0.97,
                "ntk_max_rel_diff": 1e-15, "akg_pearson_r": 0.9999, "akg_error_slope": 2.0,
                "squeeze_top_rises": 1.0, "squeeze_precision": 1.0, "squeeze_recall": 0.7}

    monkeypatch.setattr(sim_digits, "run_digits", fake_digits)
    assert sim_tour.run_tour(tmp_path, logits_preset="quick", progress=False) == 0
    out = capsys.readouterr().out
    assert "AKG" in out and "threshold" in out                     # derivations + worked example
    assert "17/17" in out or "step-level theorems held" in out
    for path in ("sim/logits/squeeze_bars.png", "sim/logits/offpolicy_vs_onpolicy.png",
                 "sim/digits/akg_predicted_vs_actual.png", "sim/logits/summary.json"):
        assert (tmp_path / path).exists(), path
        assert str(tmp_path / path) in out or path.endswith(".json")


def test_tour_command_is_wired(monkeypatch, tmp_path):
    from learning_dynamics.sim import tour as sim_tour
    from learning_dynamics.validate.ldyn import main

    seen = {}
    monkeypatch.setattr(sim_tour, "run_tour", lambda out: seen.setdefault("out", out) and 0)
    assert main(["tour", "--out", str(tmp_path)]) == 0
    assert seen["out"] == str(tmp_path)
