"""`ldyn validate run/report` on the smoke preset: a tiny random Llama with the real tokenizer and
chat template, through the same code path as a GPU run (2 CPU cores, seconds per run)."""
import json
import os

import numpy as np
import pytest

from learning_dynamics.theory.predictions import VERDICTS
from learning_dynamics.theory.algorithms import ALGORITHMS
from learning_dynamics.validate.ldyn import main
from learning_dynamics.validate.presets import PRESETS
from learning_dynamics.validate.training.session import is_evaluation_step

SMOKE = PRESETS["smoke"]
N_PROBES = 13  # probe types with a response (y* is scored from y+)
N_TRACKED = N_PROBES + 1  # and the shared prefix of y+ and y- (P08r; may be empty)


def run(out, *extra):
    return main(["validate", "run", "--preset", "smoke", "--quiet", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every algorithm once on the smoke preset."""
    root = tmp_path_factory.mktemp("runs")
    codes = {algo: run(root / algo, "--algo", algo) for algo in ALGORITHMS}
    return root, codes


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_every_algorithm_writes_a_complete_report(runs, algo):
    root, codes = runs
    assert codes[algo] == 0
    report = json.loads((root / algo / "report.json").read_text())
    for key in ("model", "device", "algo", "data", "settings", "seed", "versions", "first_order", "predictions"):
        assert key in report, key
    assert report["algo"] == algo and report["device"] == "cpu" and report["complete"]
    for row in report["predictions"]:
        assert row["verdict"] in VERDICTS and set(row) >= {"id", "claim", "verdict", "effect", "ci"}
    assert (root / algo / "curves.png").stat().st_size > 10_000
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("report.json", "report.md", "settings.json", "tracking/step_000000000.csv", "curves.png"):
        assert (root / algo / name).stat().st_mode & 0o777 == 0o666 & ~umask, name  # the user's umask
    assert "| id | prediction | judged | verdict |" in (root / algo / "report.md").read_text() or not report["predictions"]


def test_evaluations_come_early_and_then_every_eval_every_steps():
    assert [s for s in range(25) if is_evaluation_step(s, 8)] == [0, 1, 2, 4, 8, 16, 24]
    assert [s for s in range(61) if is_evaluation_step(s, 20)] == [0, 1, 2, 4, 8, 16, 20, 40, 60]
    assert [s for s in range(4) if is_evaluation_step(s, 1)] == [0, 1, 2, 3]


def test_tracking_table_has_every_step_prompt_and_probe(runs):
    from learning_dynamics.sim.common.tracking import TrackingTable
    rows = TrackingTable(runs[0] / "dpo" / "tracking").read()
    steps = [s for s in range(SMOKE["steps"] + 1) if is_evaluation_step(s, SMOKE["eval_every"])]
    assert steps == [0, 1, 2, 4]  # every eval_every steps, and the early powers of two
    assert len(rows) == len(steps) * SMOKE["n_probe"] * N_TRACKED
    assert sorted({r["step"] for r in rows}) == steps
    assert all(r["logp_sum"] < 0 and r["n_tokens"] > 0 for r in rows if r["probe"] != "shared_prefix")


def test_every_response_ends_with_the_templates_end_of_turn(runs):
    """Random-token probes and on-policy samples end with <|im_end|> (id 2), like every other probe."""
    import torch
    root, _ = runs
    probes = json.loads((root / "dpo" / "probes.json").read_text())
    assert {tuple(p["ids"][k][-1:]) for p in probes for k in p["ids"]} == {(2,)}
    pairs = torch.load(root / "onpolicy-dpo" / "state" / "checkpoint.pt", weights_only=False)["pairs"]
    samples = [p["sample"] for p in pairs if "sample" in p]
    assert samples and all(s[-1] == 2 and 1 not in s[-1:] for s in samples)


def test_the_repeated_sample_is_the_initial_sample_twice_and_scored_as_such(runs):
    """sample_repeated = initial_sample's ids without the end of turn, a newline (id 198), the same ids, <|im_end|>;
    its log-prob minus the sample's is the second copy's log-prob, scored over exactly the tokens it adds."""
    from learning_dynamics.sim.common.tracking import TrackingTable
    from learning_dynamics.theory.evaluators import second_copy_logp
    from learning_dynamics.validate.judge.report import load_series
    root, _ = runs
    for p in json.loads((root / "dpo" / "probes.json").read_text()):
        said = p["ids"]["initial_sample"][:-1]
        assert p["ids"]["sample_repeated"] == said + [198] + said + [2]
    rows = {(r["step"], r["prompt_id"], r["probe"]): r for r in TrackingTable(root / "dpo" / "tracking").read()}
    for (step, prompt, probe), r in rows.items():
        if probe == "sample_repeated":
            once = rows[(step, prompt, "initial_sample")]
            assert r["n_tokens"] == 2 * once["n_tokens"] and r["logp_sum"] < once["logp_sum"]
    series, _ = load_series(root / "dpo")
    assert second_copy_logp(series).shape == series["logps/initial_sample"].shape
    assert np.all(second_copy_logp(series) < 0)


def test_the_run_measures_probe_target_overlap(runs):
    root, _ = runs
    report = json.loads((root / "dpo" / "report.json").read_text())
    overlap = {p: c["any"] for p, c in report["design"]["overlap"].items() if c["any"]}
    assert overlap == {"other_chosen": SMOKE["n_probe"]}    # only the probe that is a target by design
    assert "## Data design" in (root / "dpo" / "report.md").read_text() and not report["caveats"]


def test_dpo_run_reports_the_dpo_predictions_and_the_merge_compares_runs(runs, tmp_path):
    root, _ = runs
    ids = {r["id"] for r in json.loads((root / "dpo" / "report.json").read_text())["predictions"]}
    assert {"P09a", "P09b", "P09c", "P09d", "P10", "P17", "P17r"} <= ids
    assert main(["validate", "report", str(root / "dpo"), str(root / "onpolicy-dpo"), str(root / "extend"),
                 str(root / "sft"), "--out", str(tmp_path)]) == 0
    merged = json.loads((tmp_path / "summary.json").read_text())
    compared = {(r["id"], r["basis"]) for r in merged["predictions"] if " vs " in r["algo"]}
    assert compared == {(p, "equal exposure") for p in ("P14", "P14a", "P14b", "P15", "P15a", "P15b")} | \
        {("P14b", "matched margin"), ("P15b", "matched margin")}
    # extend's curves start after its SFT phase: an SFT run from the initial model is no control for it
    assert merged["controls"] == {"dpo": {"sft": "sft"}, "onpolicy-dpo": {"sft": "sft"}}
    p09c = {r["run"]: r for r in merged["predictions"] if r["id"] == "P09c"}
    assert p09c["dpo"]["control"] == "sft" and "minus in the SFT control" in p09c["dpo"]["detail"]
    assert not p09c["extend"]["control"] and p09c["extend"]["verdict"] == "inconclusive"
    assert "No control (its curves start after its own SFT phase" in (root / "extend" / "report.md").read_text()
    p17r = {r["run"]: r for r in merged["predictions"] if r["id"] == "P17r"}
    assert p17r["dpo"]["control"] == "sft" and "minus in the SFT control" in p17r["dpo"]["detail"]
    assert np.isfinite(p17r["dpo"]["effect"]) and "P17r" in (root / "dpo" / "report.md").read_text()


def test_a_run_without_a_matching_control_says_why(runs, tmp_path):
    """An SFT run of another length is no control: the report names it and the setting that differs."""
    import shutil
    root, _ = runs
    for name in ("dpo", "sft"):
        shutil.copytree(root / name, tmp_path / name)
    settings = json.loads((tmp_path / "sft" / "settings.json").read_text())
    (tmp_path / "sft" / "settings.json").write_text(json.dumps(dict(settings, steps=settings["steps"] + 2)))
    assert main(["validate", "report", str(tmp_path / "dpo"), str(tmp_path / "sft")]) == 0
    steps = settings["steps"]
    assert f"No control (`sft` is no control for it (steps {steps + 2} there, {steps} here))" in \
        (tmp_path / "dpo" / "report.md").read_text()
    assert (tmp_path / "summary.md").exists()   # several runs without --out: the folder that holds them


def test_the_merge_keys_runs_by_directory_not_algorithm(runs, tmp_path):
    """Two runs of one algorithm (here the same run under two names) both keep their verdicts."""
    import shutil
    root, _ = runs
    for name in ("a", "b"):
        shutil.copytree(root / "dpo", tmp_path / name / "dpo")
    assert main(["validate", "report", str(tmp_path / "a" / "dpo"), str(tmp_path / "b" / "dpo"),
                 "--out", str(tmp_path)]) == 0
    merged = json.loads((tmp_path / "summary.json").read_text())
    assert set(merged["runs"]) == {"a/dpo", "b/dpo"}
    assert {r["run"] for r in merged["predictions"]} == {"a/dpo", "b/dpo"}


def test_an_interrupted_run_resumes_to_the_same_numbers(runs, tmp_path, monkeypatch):
    from learning_dynamics.sim.common.tracking import TrackingTable
    from learning_dynamics.validate.training import algorithms
    real = algorithms.step_loss
    calls = {"n": 0}

    def dies_at_step_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(algorithms, "step_loss", dies_at_step_three)
    assert run(tmp_path, "--algo", "dpo") == 130
    assert not (tmp_path / "report.json").exists()
    monkeypatch.setattr(algorithms, "step_loss", real)
    assert run(tmp_path, "--algo", "dpo") == 0
    resumed = TrackingTable(tmp_path / "tracking").read()
    straight = TrackingTable(runs[0] / "dpo" / "tracking").read()
    key = lambda r: (r["step"], r["prompt_id"], r["probe"])  # noqa: E731
    assert [key(r) for r in resumed] == [key(r) for r in straight]  # rows keep their order after a resume
    resumed, straight = {key(r): r for r in resumed}, {key(r): r for r in straight}
    assert resumed.keys() == straight.keys()
    for k, row in resumed.items():
        assert row["logp_sum"] == pytest.approx(straight[k]["logp_sum"], rel=1e-4, abs=1e-4), k


def test_user_data_in_trl_chat_format(tmp_path, capsys):
    data = tmp_path / "prefs.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}],
             "chosen": [{"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}],
             "rejected": [{"role": "assistant", "content": f"{i} plus {i} is {2 * i + 1}."}]} for i in range(14)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert run(tmp_path / "run", "--algo", "sft", "--data", str(data)) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["data"] == data.name and {r["id"] for r in report["predictions"]} >= {"P12d", "P12a"}
    before = report["fingerprints"]["data"]["sha256"]
    data.write_text("\n".join(json.dumps(r) for r in rows[::-1]) + "\n")   # same name, other contents
    err = one_line_error(capsys, ["validate", "run", "--preset", "smoke", "--quiet", "--out", str(tmp_path / "run"),
                                  "--algo", "sft", "--data", str(data)])
    assert f"trained on other data (data sha256 {before[:16]} there, " in err and "--fresh" in err
    assert json.loads((tmp_path / "run" / "report.json").read_text())["fingerprints"]["data"]["sha256"] == before


def one_line_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("ldyn: error:") and "Traceback" not in err
    return err


def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys):
    base = ["validate", "run", "--preset", "smoke", "--quiet"]
    assert "no such" in one_line_error(capsys, base + ["--out", str(tmp_path / "a"), "--data", "/nope.jsonl"]).lower()
    one_line_error(capsys, base + ["--out", str(tmp_path / "b"), "--steps", "0"])
    one_line_error(capsys, base + ["--out", str(tmp_path / "c"), "--lr", "nan"])
    one_line_error(capsys, base + ["--out", str(tmp_path / "d"), "--model", str(tmp_path / "missing-model")])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "chosen": "hello"}\n')
    assert "bad.jsonl" in one_line_error(capsys, base + ["--out", str(tmp_path / "e"), "--data", str(bad)])
    import torch
    if not torch.cuda.is_available():
        assert "cuda" in one_line_error(capsys, base + ["--out", str(tmp_path / "f"), "--device", "cuda"])


def test_changed_settings_on_an_existing_run_are_refused(runs, capsys):
    err = one_line_error(capsys, ["validate", "run", "--preset", "smoke", "--quiet", "--algo", "dpo",
                                  "--out", str(runs[0] / "dpo"), "--lr", "0.5"])
    assert "--fresh" in err


def test_collapse_stops_with_one_line_keeps_the_logs_and_no_verdict_is_drawn(tmp_path, capsys):
    argv = ["validate", "run", "--preset", "smoke", "--quiet", "--algo", "sft", "--out", str(tmp_path), "--lr", "1000"]
    err = one_line_error(capsys, argv)
    assert "collapsed to a uniform distribution at step 2" in err and "logs kept" in err and "--fresh" in err
    assert [r["step"] for r in json.loads((tmp_path / "train_log.json").read_text())] == [0, 1]
    assert len(list((tmp_path / "tracking").glob("step_*.csv"))) == 3  # steps 0, 1 and 2, where it collapsed
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["stopped"]["step"] == 2 and not report["complete"] and report["predictions"]
    for row in report["predictions"]:
        assert row["verdict"] == "inconclusive" and "collapsed" in row["inconclusive_reason"]
    assert "Stopped at step 2" in (tmp_path / "report.md").read_text()
    assert one_line_error(capsys, argv) == err  # the same command again says the same, without training


def test_rerunning_a_finished_run_rebuilds_its_report_without_training(runs, monkeypatch):
    from learning_dynamics.validate.training import run as run_module
    monkeypatch.setattr(run_module, "train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    before = json.loads((runs[0] / "sft" / "report.json").read_text())["predictions"]
    assert run(runs[0] / "sft", "--algo", "sft", "--checkpoint-every", "3") == 0  # checkpointing may change
    assert json.loads((runs[0] / "sft" / "report.json").read_text())["predictions"] == before


def test_dpo_is_judged_against_its_pull_only_control_first_and_every_run_records_its_regime(runs, tmp_path):
    """The counterfactual control differs from DPO in the negative gradient only: it is the first control, read at
    equal steps; SFT follows, labelled. Every run measures its first step's first-order error and its force."""
    root, _ = runs
    assert main(["validate", "report", str(root / "dpo"), str(root / "dpo-pull-only"), str(root / "sft"),
                 "--out", str(tmp_path)]) == 0
    merged = json.loads((tmp_path / "summary.json").read_text())
    assert merged["controls"]["dpo"] == {"dpo-pull-only": "dpo-pull-only", "sft": "sft"}
    p09c = [r for r in merged["predictions"] if r["id"] == "P09c" and r["run"] == "dpo"]
    assert [r["control"] for r in p09c] == ["dpo-pull-only", "sft"]
    assert p09c[0]["primary_control"] and not p09c[1]["primary_control"]
    assert "pull only control" in p09c[0]["detail"] and "SFT control" in p09c[1]["detail"]
    for algo in ("dpo", "dpo-pull-only", "sft"):
        regime = json.loads((root / algo / "report.json").read_text())["regime"]
        assert (root / algo / "first_step.json").exists()
        assert 0 <= regime["first_step_error"] < regime["thresholds"]["first_order"]     # smoke: lr 1e-4
        assert regime["force"][0] == pytest.approx(1.0) and len(regime["visits"]) == len(regime["steps"])
    pull = json.loads((root / "dpo-pull-only" / "train_log.json").read_text())
    assert all(np.isfinite(r["loss"]) for r in pull)
