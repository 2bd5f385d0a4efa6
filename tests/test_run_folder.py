"""A run folder holds one run (validate.identity, sim.common.tracking's manifest): files of another run are refused in
one line, --fresh clears everything a run wrote, a report merges a folder given twice once and marks a run that
did not finish, and a stopped run's report carries the fingerprints it started with. No model is loaded."""
import json
import shutil

import pytest
import torch

from learning_dynamics.sim.common.tracking import TrackingTable
from learning_dynamics.theory.errors import CorruptFile, UserError
from learning_dynamics.validate import identity
from learning_dynamics.validate.presets import settings_for
from learning_dynamics.validate.judge.report import write_report
from learning_dynamics.validate.training.run_folder import RUN_FILES, prepare_out
from learning_dynamics.validate.judge.summary import merge
from test_fuzz_cli import FINGERPRINTS, make_run_dir

ROWS = [{"prompt_id": "0", "probe": "chosen", "logp_sum": -3.0, "n_tokens": 3, "entropy_mean": 2.0,
         "sqnorm_mean": 0.1, "argmax_logp_sum": -1.0}]


@pytest.fixture(autouse=True)
def no_figures(monkeypatch):
    """Figures are drawn from the same series and tested elsewhere; here they only cost time."""
    from learning_dynamics.validate.judge import report, summary
    monkeypatch.setattr(report, "_figures", lambda *a, **k: [])
    monkeypatch.setattr(summary, "_verdict_figure", lambda *a, **k: None)


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    from learning_dynamics.validate.judge import report
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report, "_figures", lambda *a, **k: [])
        return make_run_dir(tmp_path_factory.mktemp("ours") / "run", run_id="a" * 32)


@pytest.fixture
def run(ours, tmp_path):
    shutil.copytree(ours, tmp_path / "run")
    return tmp_path / "run"


def test_the_manifest_refuses_a_chunk_of_another_run_and_skips_it_on_resume(tmp_path):
    mine, other = TrackingTable(tmp_path / "mine", run_id="1" * 32), TrackingTable(tmp_path / "other", run_id="2" * 32)
    mine.append(0, ROWS)
    other.append(0, [dict(ROWS[0], logp_sum=-9.0)])
    other.append(2, ROWS)
    assert mine.completed_steps() == [0] and len(mine.read()) == 1
    shutil.copy(other.directory / "step_000000000.csv", mine.directory)     # over a chunk of ours
    with pytest.raises(UserError, match="step_000000000.csv was not written by this run"):
        mine.read()
    assert mine.completed_steps() == []        # a resumed run evaluates the step again, over the copy
    mine.append(0, ROWS)
    shutil.copy(other.directory / "step_000000002.csv", mine.directory)     # a step this run has not reached
    with pytest.raises(UserError, match="step_000000002.csv was not written by this run"):
        mine.read()
    assert mine.completed_steps() == [0]
    (mine.directory / "step_000000002.csv").unlink()
    assert mine.read()[0]["logp_sum"] == -3.0
    shutil.copy(other.directory / "manifest.json", mine.directory / "manifest.json")
    with pytest.raises(CorruptFile, match="belongs to another run"):
        mine.read()
    assert len(TrackingTable(tmp_path / "mine").read()) == 1   # no run id (a folder made before them): no check
    assert len(TrackingTable(tmp_path / "other").read()) == 2


def test_a_resume_with_other_data_or_model_is_refused_naming_both(tmp_path, monkeypatch):
    from learning_dynamics.validate import provenance
    out = tmp_path / "run"
    out.mkdir()
    identity.begin(out, fresh=False)
    prints = json.loads(json.dumps(FINGERPRINTS))
    monkeypatch.setattr(provenance, "fingerprints", lambda data=None, model=None: prints)
    settings = settings_for("smoke")
    identity.check_trained_on(out, settings)
    (out / "probes.json").write_text("[]")   # the run has written results: it is no longer free to change
    prints["data"] = dict(prints["data"], sha256="33" * 32)
    with pytest.raises(UserError, match="other data \\(data sha256 1111111111111111 there, 3333333333333333 now"):
        identity.check_trained_on(out, settings)
    prints["data"], prints["model"] = FINGERPRINTS["data"], {"name": "other", "sha256": "44" * 32}
    with pytest.raises(UserError, match="other model .*2222222222222222 there, 4444444444444444 now"):
        identity.check_trained_on(out, settings)
    prints["model"] = FINGERPRINTS["model"]
    assert identity.check_trained_on(out, settings)["fingerprints"] == FINGERPRINTS


def test_a_checkpoint_names_its_run(run, tmp_path):
    state = torch.load(run / "state" / "checkpoint.pt", weights_only=False)
    identity.check_stamp(run, state, "checkpoint.pt")
    identity.check_checkpoint_file(run, run / "state" / "checkpoint.pt")
    torch.save(dict(state, run_id="b" * 32), run / "state" / "checkpoint.pt")
    with pytest.raises(UserError, match="belongs to another run \\(run id b{32}"):
        identity.check_stamp(run, dict(state, run_id="b" * 32), "checkpoint.pt")
    with pytest.raises(UserError, match="does not name this folder's run a{32}"):
        identity.check_checkpoint_file(run, run / "state" / "checkpoint.pt")


@pytest.mark.parametrize("name, change", [("run_info.json", "run id"), ("state/checkpoint.pt", "run id"),
                                          ("tracking/step_000000002.csv", "bytes")])
def test_a_report_refuses_a_file_of_another_run(name, change, run, tmp_path):
    other = make_run_dir(tmp_path / "other", run_id="c" * 32, seed=1, report=False)
    shutil.copy(other / name, run / name)
    with pytest.raises(UserError, match="another run|not written by this run|does not name"):
        write_report(run)


def test_fresh_clears_everything_the_run_wrote(run):
    before = identity.run_id(run)
    prepare_out(run, settings_for("smoke", algo="sft"), fresh=True)
    left = sorted(p.name for p in run.rglob("*") if p.is_file())
    assert left == ["run.json", "settings.json"], left
    assert identity.run_id(run) not in (None, before)
    assert not {f for f in RUN_FILES if (run / f).exists()} - {"run.json"}


def test_a_folder_given_twice_counts_once_and_a_killed_run_is_marked_incomplete(run, tmp_path, monkeypatch):
    for name in ("run_info.json", "report.json", "tracking/step_000000004.csv"):   # killed after step 2
        (run / name).unlink()
    monkeypatch.chdir(run.parent)
    merged = merge(["run", "./run/", str(run), str(run.parent / "." / "run")], tmp_path)
    assert list(merged["runs"]) == ["run"] and merged["status"] == {"run": "incomplete: tracked to step 2 of 4"}
    single = json.loads((run / "report.json").read_text())["predictions"]
    assert len(merged["predictions"]) == len(single) > 0
    assert "**`run` is incomplete**" in (tmp_path / "summary.md").read_text()


def test_a_stopped_run_reports_the_fingerprints_it_started_with(tmp_path):
    dpo = make_run_dir(tmp_path / "dpo", run_id="d" * 32, report=False)
    sft = make_run_dir(tmp_path / "sft", algo="sft", run_id="e" * 32, report=False)
    (dpo / "run_info.json").unlink()                       # a stopped run writes no run_info.json
    (dpo / "stopped.json").write_text(json.dumps({"step": 2, "reason": "the loss became nan at step 2"}))
    merged = merge([str(dpo), str(sft)], tmp_path)
    assert merged["warning"] is None and merged["fingerprints"]["dpo"] == FINGERPRINTS
    assert merged["status"]["dpo"].startswith("stopped at step 2") and merged["controls"] == {"dpo": {"sft": "sft"}}


def test_runs_of_several_seeds_are_pooled_and_the_primary_claims_holm_corrected(tmp_path):
    runs = []
    for algo in ("dpo", "sft"):
        for seed in (0, 1):
            d = make_run_dir(tmp_path / f"s{seed}" / algo, algo=algo, seed=seed, report=False)
            settings = json.loads((d / "settings.json").read_text())
            (d / "settings.json").write_text(json.dumps(dict(settings, seed=seed)))
            runs.append(str(d))
    merged = merge(runs, tmp_path)
    pooled = [r for r in merged["predictions"] if r.get("pooled")]
    assert {r["run"] for r in pooled} == {"dpo (2 seeds)", "sft (2 seeds)"}
    assert all(r["seeds"] == [0, 1] for r in pooled)
    primary = [r for r in merged["predictions"] if r.get("role") == "primary"]
    assert primary and all(r.get("pooled") for r in primary)       # the family is the pooled rows where there are
    assert all(r["p_holm"] is None or r["p_holm"] >= r["p_value"] for r in primary)
    assert all(r["control"] == "sft" for r in pooled if r["id"] in ("P09c", "P10") and r.get("primary_control"))


@pytest.mark.parametrize("error, verdict", [(0.3, "not tested"), (0.05, None)])
def test_a_run_takes_its_first_step_from_a_check_that_took_the_same_step(tmp_path, error, verdict):
    from learning_dynamics.validate.measure.regime import FIRST_STEP
    run = make_run_dir(tmp_path / "run", report=False)
    settings = json.loads((run / "settings.json").read_text())
    check = {"settings": settings, "trajectory": {"adamw_first_step": {"relative_error": error, "pearson_r": 0.9,
                                                                       "actual": [1.0, 2.0, 3.0]}}}
    (tmp_path / "check").mkdir()
    (tmp_path / "check" / "first_order.json").write_text(json.dumps(check))
    (run / FIRST_STEP).write_text(json.dumps({"measured_by": "../check/first_order.json", "why": "same run"}))
    report = write_report(run)
    assert report["regime"]["first_step"]["relative_error"] == error and report["regime"]["first_order"] == (error < .1)
    p09a = next(r for r in report["predictions"] if r["id"] == "P09a")
    assert (p09a["verdict"] == "not tested") == (verdict == "not tested")
    assert "by the first-order check `../check/first_order.json`" in (run / "report.md").read_text()
    check["settings"] = dict(settings, lr=settings["lr"] * 2)          # a check that took another first step
    (tmp_path / "check" / "first_order.json").write_text(json.dumps(check))
    with pytest.raises(CorruptFile, match="took another first step"):
        write_report(run)
