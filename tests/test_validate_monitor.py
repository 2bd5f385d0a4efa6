"""ProbeMonitor inside TRL's DPO, SFT and GRPO trainers on the tiny random Llama (real tokenizer and chat
template, loaded by validate.training.model), on one process and on two (accelerate, gloo, CPU).

TRL is the `trl` extra, which the test command installs: without it these tests fail, they do not skip."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import monitor_runs
from learning_dynamics.theory.errors import UserError
from learning_dynamics.validate.ldyn import main

HERE = Path(__file__).resolve().parent
N_PROBES = 14  # probe types with a response per prompt (y* is scored from y+), and the shared prefix of y+ and y-
EVAL_STEPS = list(range(0, monitor_runs.STEPS + 1, monitor_runs.EVERY))


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("monitor") / "dpo"
    trainer = monitor_runs.dpo(out)
    return out, trainer


def _tracking(out):
    from learning_dynamics.sim.common.tracking import TrackingTable
    return TrackingTable(Path(out) / "tracking").read()


def test_dpo_run_writes_the_run_directory_of_ldyn_validate_run(dpo_run, tmp_path):
    out, trainer = dpo_run
    report = json.loads((out / "report.json").read_text())
    assert report["algo"] == "dpo" and report["complete"] and report["steps"] == EVAL_STEPS
    assert {"P09a", "P09b", "P09c", "P09d", "P10", "P17", "P17r"} <= {r["id"] for r in report["predictions"]}
    assert report["settings"]["trainer"] == "DPOTrainer" and report["settings"]["loss_type"] == ["sigmoid"]
    data_hash = report["fingerprints"]["data"]["sha256"][:16]  # runs on other in-memory rows never pair up in a merge
    assert report["settings"]["data"] == f"in-memory list of 24 rows, sha256 {data_hash}"
    rows = _tracking(out)
    assert len(rows) == len(EVAL_STEPS) * monitor_runs.N_PROBE * N_PROBES
    assert all(r["logp_sum"] < 0 and r["n_tokens"] > 0 for r in rows if r["probe"] != "shared_prefix")  # often empty
    assert (out / "curves.png").stat().st_size > 10_000
    # the user's own command and the fingerprints (validate.provenance) stand in for an ldyn command
    assert report["reproduce"] and report["fingerprints"]["data"]["n_pairs"] == len(monitor_runs.preference_rows())
    assert "Reproduce: `" in (out / "report.md").read_text()
    chunks = [f"step_{s:09d}.json" for s in EVAL_STEPS]
    assert sorted(p.name for p in (out / "generations").iterdir()) == chunks
    assert sorted(p.name for p in (out / "mass").iterdir()) == chunks
    assert {"gen/distinct2_fixed", "gen/rep4_fixed"} <= set(report["summary"])  # fixed-length generations (P17)
    mass = json.loads((out / "mass" / chunks[-1]).read_text())
    assert [m["prompt_id"] for m in mass] == [str(i) for i in range(monitor_runs.N_PROBE)]
    assert all(0 < m["tv_mean"] < 1 for m in mass)  # the trained model moved away from its step-0 copy
    assert all(m["tv_mean"] == 0 for m in json.loads((out / "mass" / chunks[0]).read_text()))
    assert report["design"]["n_probe_prompts"] == monitor_runs.N_PROBE and "P18r" in {r["id"] for r in report["predictions"]}
    assert report["versions"]["trl"] and report["run"]["processes"] == 1
    assert [h["step"] for h in json.loads((out / "train_log.json").read_text())] == list(range(1, monitor_runs.STEPS + 1))
    # the monitor's curves go into the trainer's own logs, at the steps they were measured
    logged = [h for h in trainer.state.log_history if "probes/logps/chosen" in h]
    assert [h["step"] for h in logged] == EVAL_STEPS
    assert {"probes/logps/y_star", "probes/entropy", "probes/logps/rejected"} <= set(logged[0])
    start = [r["logp_sum"] for r in rows if r["step"] == 0 and r["probe"] == "chosen"]
    assert logged[0]["probes/logps/chosen"] == pytest.approx(sum(start) / len(start), abs=1e-9)
    assert trainer.model.training  # the monitor handed the model back in training mode
    markdown = (out / "report.md").read_text()   # no throughput the monitor did not measure; how to read an effect
    assert "throughput" not in markdown and "a positive value is the direction the prediction states" in markdown
    assert "No control (no control run was given with it)" in markdown
    # `ldyn validate report` rebuilds and merges it like a run of its own: into --out, or into the run itself
    assert main(["validate", "report", str(out), "--out", str(tmp_path)]) == 0
    assert {r["id"] for r in json.loads((tmp_path / "summary.json").read_text())["predictions"]} >= {"P09a"}
    assert main(["validate", "report", str(out)]) == 0
    assert (out / "summary.md").exists() and (out / "verdicts.png").exists()
    assert not (out.parent / "summary.md").exists()


def test_tracked_logps_equal_ldyn_scoring_of_the_same_checkpoint(dpo_run, tmp_path):
    """The trained model, saved and reloaded through validate.training.model, scored, generated from and compared with
    the step-0 model by validate.measure.scoring in ldyn's precision (float32 on a CPU), although TRL trained it in
    bf16 autocast (DPOConfig's default): the monitor scores in ldyn's precision, not the trainer's."""
    import contextlib

    from learning_dynamics.validate.training.model import load_model
    from learning_dynamics.validate.data.probes import eos_ids, tracked_sequences
    from learning_dynamics.validate.measure.scoring import greedy_generations, mass_records, score_rows
    out, trainer = dpo_run
    assert trainer.args.bf16 and trainer.accelerator.mixed_precision == "bf16"
    trainer.save_model(str(tmp_path / "checkpoint"))
    loaded = load_model(str(tmp_path / "checkpoint"))
    probes = json.loads((out / "probes.json").read_text())
    sequences, pad, fp32 = tracked_sequences(probes), loaded.tokenizer.pad_token_id, contextlib.nullcontext
    mine = score_rows(loaded.model, sequences, pad, loaded.model.device, 7, fp32)
    tracked = {(r["prompt_id"], r["probe"]): r for r in _tracking(out) if r["step"] == monitor_runs.STEPS}
    assert len(tracked) == len(mine)
    for r in mine:
        for column in ("logp_sum", "entropy_mean", "argmax_logp_sum"):
            assert tracked[(r["prompt_id"], r["probe"])][column] == pytest.approx(r[column], abs=1e-5)
    last = f"step_{monitor_runs.STEPS:09d}.json"
    settings = json.loads((out / "settings.json").read_text())
    generated = greedy_generations(loaded.model, probes[:settings["gen_prompts"]], loaded.tokenizer,
                                   eos_ids(loaded.tokenizer), pad, settings, fp32)
    assert json.loads((out / "generations" / last).read_text()) == generated
    # the trainer's model still has accelerate's bf16 forward (which model.generate goes through):
    # ldyn_precision is what makes the monitor's forward passes float32
    import torch

    from learning_dynamics.validate.monitor.trainers import ldyn_precision
    model = trainer.accelerator.unwrap_model(trainer.model)
    ids = torch.tensor([sequences[0][2] + sequences[0][3]])
    with torch.inference_mode():
        reference = loaded.model(input_ids=ids).logits
        as_trained = model(input_ids=ids).logits
        with ldyn_precision(model):
            as_scored = model(input_ids=ids).logits
    assert (as_trained - reference).abs().max() > 1e-3 and (as_scored - reference).abs().max() < 1e-5
    moved = mass_records(loaded.model, monitor_runs._tiny().model, sequences, pad, loaded.model.device, fp32)
    for a, b in zip(json.loads((out / "mass" / last).read_text()), moved):
        assert a["prompt_id"] == b["prompt_id"] and a["tv_mean"] == pytest.approx(b["tv_mean"], abs=1e-6)


@pytest.mark.parametrize("name, algo, ids", [("sft", "sft", {"P12d", "P11", "P12a"}), ("grpo", "pg", {"P09c", "P10"})])
def test_sft_and_grpo_runs_get_their_algorithms_verdicts(tmp_path, name, algo, ids):
    trainer = getattr(monitor_runs, name)(tmp_path / name)
    report = json.loads((tmp_path / name / "report.json").read_text())
    assert report["algo"] == algo and report["complete"] and report["steps"] == EVAL_STEPS
    assert {r["id"] for r in report["predictions"]} >= ids
    assert [h["step"] for h in trainer.state.log_history if "probes/entropy" in h] == EVAL_STEPS


def test_two_processes_write_one_report_equal_to_the_one_process_run(dpo_run, tmp_path):
    one, _ = dpo_run
    two = tmp_path / "dpo2"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    # accelerate 1.15 runs `launch --cpu` as one process; --multi_gpu starts two, and the trainer's use_cpu=True
    # makes them MULTI_CPU processes talking over gloo
    launched = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                               "2", "--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no",
                               str(HERE / "monitor_runs.py"), str(two), "2"],
                              capture_output=True, text=True, env=env, timeout=600)
    assert launched.returncode == 0, launched.stderr[-3000:]
    info = json.loads((two / "run_info.json").read_text())
    assert info["processes"] == 2 and info["distributed"] == "MULTI_CPU"
    assert info["trainer_mixed_precision"] == "bf16" and info["scoring_precision"] == "float32"
    assert launched.stdout.count("ProbeMonitor: generating") == 1  # the main process built the probe set once
    assert json.loads((two / "probes.json").read_text()) == json.loads((one / "probes.json").read_text())
    a, b = _tracking(one), _tracking(two)
    assert [(r["step"], r["prompt_id"], r["probe"], r["n_tokens"]) for r in a] == \
           [(r["step"], r["prompt_id"], r["probe"], r["n_tokens"]) for r in b]
    for x, y in zip(a, b):
        for column in ("logp_sum", "entropy_mean", "argmax_logp_sum"):
            if x["step"] == 0:  # one model, its probe set scored in two shares: the same numbers up to float32
                # rounding (each share packs its prompts' responses into other batches: measured ~1e-7 relative)
                assert x[column] == pytest.approx(y[column], rel=1e-6, abs=1e-5)
            else:  # the same 4-pair batches trained in bf16 autocast as 2 + 2: rounding (measured ~2e-5)
                assert x[column] == pytest.approx(y[column], rel=1e-4)
    for chunk in (one / "mass").iterdir():  # gathered from both processes, in prompt order
        ma, mb = json.loads(chunk.read_text()), json.loads((two / "mass" / chunk.name).read_text())
        assert [m["prompt_id"] for m in ma] == [m["prompt_id"] for m in mb]
        # the moved mass is a small difference (~0.01) of two distributions: the 2 + 2 rounding shows at ~1e-3 of it
        assert [m["tv_mean"] for m in mb] == pytest.approx([m["tv_mean"] for m in ma], rel=1e-2, abs=1e-9)
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (one, two))
    assert rb["complete"] and rb["steps"] == ra["steps"] and rb["settings"] == ra["settings"]
    assert [(r["id"], r["verdict"]) for r in rb["predictions"]] == [(r["id"], r["verdict"]) for r in ra["predictions"]]
    assert not [p for p in two.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]


def test_bad_probe_data_fails_in_one_line_before_training(tmp_path):
    from learning_dynamics.validate.monitor.monitor import ProbeMonitor
    good = monitor_runs.preference_rows(8)
    cases = [
        ([dict(good[0], chosen=None)] + good[1:], 'ProbeMonitor probe_data[0]: "chosen" must be a non-empty string'),
        ([{k: v for k, v in good[1].items() if k != "rejected"}] + good, "probe_data[0]: missing key 'rejected'"),
        ([dict(good[0], prompt=[{"role": "assistant", "content": "hi"}])] + good, "must end with a user message"),
        (tmp_path / "missing.jsonl", "missing.jsonl: no such file"),
        (good[:2], "need at least 3 preference pairs"),
        ("{not a path", "no such file"),
    ]
    for data, message in cases:
        with pytest.raises(UserError) as err:
            ProbeMonitor(data, out=tmp_path / "out")
        assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="every must be a positive integer"):
        ProbeMonitor(good, every=0, out=tmp_path / "out")


def test_the_algorithm_comes_from_the_trainer_and_its_loss_type():
    from trl import DPOConfig, GRPOConfig, KTOConfig, SFTConfig

    from learning_dynamics.validate.monitor.monitor import infer_algo
    args = dict(output_dir="unused", report_to=[], use_cpu=True)
    assert infer_algo(["DPOTrainer"], DPOConfig(**args)) == "dpo"
    assert infer_algo(["DPOTrainer"], DPOConfig(loss_type="ipo", **args)) == "ipo"
    assert infer_algo([], SFTConfig(**args)) == "sft"  # no trainer in reach: its config names it
    assert infer_algo(["MyGRPO", "GRPOTrainer"], GRPOConfig(**args)) == "pg"
    assert infer_algo(["KTOTrainer"], KTOConfig(**args)) == "kto"
    with pytest.raises(UserError, match="loss_type=\\['hinge'\\] has no algorithm"):
        infer_algo(["DPOTrainer"], DPOConfig(loss_type="hinge", **args))
    from transformers import TrainingArguments
    with pytest.raises(UserError, match="pass ProbeMonitor"):
        infer_algo(["Trainer"], TrainingArguments(**args))


def test_an_unknown_loss_type_stops_the_run_before_its_first_step(tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from learning_dynamics.validate.monitor.monitor import ProbeMonitor
    rows = monitor_runs.preference_rows()
    loaded = monitor_runs._tiny()
    trainer = DPOTrainer(model=loaded.model, args=DPOConfig(loss_type="hinge", max_length=64,
                                                            **monitor_runs._common(tmp_path / "hinge", 4)),
                         train_dataset=Dataset.from_list(rows), processing_class=loaded.tokenizer)
    trainer.add_callback(ProbeMonitor(rows, out=tmp_path / "hinge", **monitor_runs.MONITOR))
    with pytest.raises(UserError, match="pass ProbeMonitor"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_a_diverged_loss_stops_the_run_and_says_why(tmp_path, capsys):
    """validate.training.health's divergence check on the trainer's logged loss: stopped.json, and the trainer told to stop."""
    from transformers import TrainerControl, TrainerState

    from learning_dynamics.validate.monitor.monitor import ProbeMonitor
    from learning_dynamics.validate.monitor.trainers import Processes
    monitor = ProbeMonitor(monitor_runs.preference_rows(8), out=tmp_path / "out")
    monitor.procs = Processes()
    control, state = TrainerControl(), TrainerState(global_step=3)
    monitor.on_log(None, state, control, logs={"loss": 0.69, "grad_norm": 1.0})
    assert not control.should_training_stop and not (tmp_path / "out" / "stopped.json").exists()
    monitor.on_log(None, state, control, logs={"loss": float("nan")})
    assert control.should_training_stop
    assert json.loads((tmp_path / "out" / "stopped.json").read_text()) == {"step": 3, "reason": "the loss became nan at step 3"}
    assert "the loss became nan at step 3; stopping the run" in capsys.readouterr().out

