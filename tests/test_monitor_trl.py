"""ProbeMonitor tracks what the trainer trains: the log-probs TRL's own trainers compute (same tokenization),
every TRL data format (a probe type the data cannot build is skipped with its reason), one run per folder, one
line before training for what would fail later, and the figures and verdicts in TensorBoard and W&B.
Tiny random Llama (real tokenizer and chat template), float32 on the CPU, one or two steps."""
import json
import re
from pathlib import Path

import pytest

import monitor_runs
from learning_dynamics.theory.errors import UserError

USER, ASSISTANT = ({"role": "user", "content": "What is two plus two?"},
                   {"role": "assistant", "content": "Four."})


def _step_zero(trainer) -> dict:
    return next(h for h in trainer.state.log_history if h["step"] == 0 and "probes/logps/chosen" in h)


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "conversational"])
def test_dpo_probe_logps_equal_the_logps_trl_logs(tmp_path, chat):
    """One pair, one step in float32: TRL logs logps/chosen|rejected of the step-0 model for it."""
    from trl import DPOConfig, DPOTrainer
    rows = monitor_runs.preference_rows(3)
    rows = monitor_runs.as_chat(rows) if chat else rows
    trainer = monitor_runs.one_pair(DPOTrainer, DPOConfig, rows, tmp_path / "dpo", max_length=64)
    trainer.train()
    mine, theirs = _step_zero(trainer), next(h for h in trainer.state.log_history if "logps/chosen" in h)
    for probe in ("chosen", "rejected"):
        assert mine[f"probes/logps/{probe}"] == pytest.approx(theirs[f"logps/{probe}"], abs=1e-4)
    probe, row = json.loads((tmp_path / "dpo" / "probes.json").read_text())[0], trainer.train_dataset[0]
    assert probe["prompt_ids"] == row["prompt_ids"] and probe["ids"]["chosen"] == row["chosen_ids"]
    decode = trainer.processing_class.decode
    if chat:  # the completion ends with the template's end of turn and the newline after it
        assert decode(probe["ids"]["chosen"][-2:]) == "<|im_end|>\n"
    else:     # raw text: no chat template, no system prompt, then eos
        assert decode(probe["prompt_ids"]) == rows[1]["prompt"]
        assert decode(probe["ids"]["chosen"]) == rows[1]["chosen"] + "<|im_end|>"
    design = json.loads((tmp_path / "dpo" / "design.json").read_text())
    assert design["tokenization"].startswith("DPOTrainer's own") and design["skipped_probes"] == {}


@pytest.mark.parametrize("kind", ["plain", "conversational", "text"])
def test_sft_completion_logp_equals_the_trainers_tokenized_completion(tmp_path, kind):
    """SFT's y+ is the completion (for `text` rows: every token after the first, which is what SFT trains): its
    log-prob from TRL's own tokenized row (labels: the completion mask)."""
    import torch
    from trl import SFTConfig, SFTTrainer
    pairs = monitor_runs.preference_rows(3)
    rows = {"plain": [{"prompt": r["prompt"], "completion": r["chosen"]} for r in pairs],
            "conversational": [{"prompt": [dict(USER, content=r["prompt"])],
                                "completion": [dict(ASSISTANT, content=r["chosen"])]} for r in pairs],
            "text": [{"text": f"{r['prompt']} {r['chosen']}"} for r in pairs]}[kind]
    trainer = monitor_runs.one_pair(SFTTrainer, SFTConfig, rows, tmp_path / "sft", max_length=64)
    row = trainer.train_dataset[0]
    ids, labels = torch.tensor(row["input_ids"]), torch.tensor(row["labels"])
    with torch.no_grad():
        logits = trainer.model(input_ids=ids[None]).logits[0, :-1].float()
    token_logps = torch.log_softmax(logits, -1).gather(-1, ids[1:, None])[:, 0]
    expected = float(token_logps[labels[1:] != -100].sum())
    trainer.train()
    assert _step_zero(trainer)["probes/logps/chosen"] == pytest.approx(expected, abs=1e-4)
    report = json.loads((tmp_path / "sft" / "report.json").read_text())
    assert set(report["design"]["skipped_probes"]) == {"rejected", "rejected_rephrase", "rejected_format"}
    lacks = "prompt-completion" if kind != "text" else "language modeling (text)"
    assert report["design"]["skipped_probes"]["rejected"] == f"needs y- (a rejected response), which {lacks} data lacks"
    p13a = next(r for r in report["predictions"] if r["id"] == "P13a")   # SFT: y- rises then falls
    assert p13a["verdict"] == "inconclusive" and "rejected not built: needs y-" in p13a["inconclusive_reason"]
    assert "Probe types not built" in (tmp_path / "sft" / "report.md").read_text()


def test_every_trl_format_is_read_into_probe_records(tmp_path):
    from learning_dynamics.validate.data import trl_formats
    q, a, b = USER["content"], "Four.", "Five."
    chat = [USER]
    cases = [
        ({"prompt": q, "chosen": a, "rejected": b}, "explicit preference", {"prompt": q, "chosen": a, "rejected": b}),
        ({"prompt": chat, "chosen": [ASSISTANT], "rejected": [dict(ASSISTANT, content=b)]}, "explicit preference",
         {"prompt": chat, "chosen": a, "rejected": b}),
        ({"chosen": chat + [ASSISTANT], "rejected": chat + [dict(ASSISTANT, content=b)]}, "implicit preference",
         {"prompt": chat, "chosen": a, "rejected": b}),
        ({"chosen": f"Q: {q} A: {a}", "rejected": f"Q: {q} A: Nine."}, "implicit preference",  # TRL's rule
         {"prompt": f"Q: {q} A:", "chosen": f" {a}", "rejected": " Nine."}),
        ({"prompt": q, "completion": a}, "prompt-completion", {"prompt": q, "chosen": a}),
        ({"prompt": chat, "completion": [ASSISTANT]}, "prompt-completion", {"prompt": chat, "chosen": a}),
        ({"messages": chat + [ASSISTANT]}, "language modeling (messages)", {"prompt": chat, "chosen": a}),
        ({"conversations": [{"from": "user", "value": q}, {"from": "assistant", "value": a}]},
         "language modeling (messages)", {"prompt": chat, "chosen": a}),
        ({"text": "The sky is blue."}, "language modeling (text)", {"prompt": "", "chosen": "The sky is blue."}),
        ({"prompt": q}, "prompt-only", {"prompt": q}),
        ({"prompt": chat}, "prompt-only", {"prompt": chat}),
    ]
    for row, fmt, record in cases:
        assert trl_formats.read([row], "rows") == ([record], fmt), row
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row, *_ in cases[4:6]))
    rows, records, fmt = trl_formats.load(path, "unused")
    assert rows == [c[0] for c in cases[4:6]] and fmt == "prompt-completion" and len(records) == 2
    only = trl_formats.skipped([{"prompt": q}], "prompt-only")
    assert {"chosen", "rejected", "greedy", "other_chosen"} <= set(only) and "initial_sample" not in only
    assert only["chosen"] == "needs y+ (a chosen response), which prompt-only data lacks"
    for rows, message in [([{"prompt": q, "completion": a}, {"prompt": q}], "rows[1]: a prompt-only row among"),
                          ([{"prompt": q, "completion": a, "label": True}], "unpaired preference data"),
                          ([{"question": q}], "not a TRL data format"),
                          ([{"messages": chat}], "must end with an assistant message"),
                          ([{"chosen": "abc", "rejected": "xyz"}], "share no prompt")]:
        with pytest.raises(UserError, match=re.escape(message)) as err:
            trl_formats.read(rows, "rows")
        assert "\n" not in str(err.value)


def test_the_folder_holds_one_run_resumed_refused_or_replaced(tmp_path):
    from learning_dynamics.sim.common.io import atomic_write_json
    from learning_dynamics.validate.monitor.folder import open_run
    out = tmp_path / "run"
    settings, prints = {"preset": "monitor", "lr": 1e-3}, {"data": {"sha256": "d1"}, "model": {"sha256": "m1"}}
    open_run(out, settings, prints, 0, overwrite=False)
    atomic_write_json(out / "run_info.json", {"fingerprints": prints})
    for sub, suffix in (("tracking", "csv"), ("generations", "json")):
        for step in (0, 4, 8):
            (out / sub).mkdir(exist_ok=True)
            (out / sub / f"step_{step:09d}.{suffix}").write_text("x")
    (out / "tracking" / "mine.txt").write_text("a user's own file")
    for other, differs in [({"lr": 1e-4}, "lr: 0.001 there, 0.0001 now"),
                           ({"data": {"sha256": "d2"}}, "data fingerprint: 'd1' there, 'd2' now")]:
        with pytest.raises(UserError, match="holds another run") as err:
            open_run(out, dict(settings, **{k: v for k, v in other.items() if k == "lr"}),
                     dict(prints, **{k: v for k, v in other.items() if k != "lr"}), 0, overwrite=False)
        assert str(out) in str(err.value) and differs in str(err.value) and "overwrite=True" in str(err.value)
    with pytest.raises(UserError, match="evaluations up to step 8 and the trainer starts again at step 0"):
        open_run(out, settings, prints, 0, overwrite=False)
    assert len(list((out / "tracking").glob("step_*.csv"))) == 3   # nothing was lost
    open_run(out, settings, prints, 4, overwrite=False)               # resumed from the step-4 checkpoint
    assert sorted(p.name for p in (out / "generations").iterdir()) == ["step_000000000.json", "step_000000004.json"]
    open_run(out, dict(settings, lr=1e-4), prints, 0, overwrite=True)
    assert not list((out / "tracking").glob("step_*")) and (out / "tracking" / "mine.txt").exists()
    assert json.loads((out / "settings.json").read_text())["lr"] == 1e-4


def test_a_rerun_into_a_finished_runs_folder_is_refused_before_training(tmp_path):
    from trl import DPOConfig, DPOTrainer
    rows, out = monitor_runs.preference_rows(3), tmp_path / "dpo"
    monitor_runs.one_pair(DPOTrainer, DPOConfig, rows, out, max_length=64).train()
    before = sorted(p.name for p in (out / "tracking").iterdir())
    again = monitor_runs.one_pair(DPOTrainer, DPOConfig, rows, out, max_length=64)
    with pytest.raises(UserError, match=f"ProbeMonitor: {out} holds this run's evaluations up to step 1"):
        again.train()
    assert again.state.global_step == 0 and sorted(p.name for p in (out / "tracking").iterdir()) == before


def test_a_model_with_fewer_embeddings_than_tokens_is_one_line_before_training(tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from learning_dynamics.validate.monitor.monitor import ProbeMonitor
    rows, loaded = monitor_runs.preference_rows(3), monitor_runs._tiny()
    loaded.model.resize_token_embeddings(1000)
    args = monitor_runs.float32_args(DPOConfig, tmp_path / "small", max_length=64)
    trainer = DPOTrainer(model=loaded.model, args=args, train_dataset=Dataset.from_list(rows[1:2]),
                         processing_class=loaded.tokenizer)
    trainer.add_callback(ProbeMonitor(rows, out=tmp_path / "small", **monitor_runs.EQUAL))
    with pytest.raises(UserError, match="the model's vocabulary has 1000 tokens but the tokenizer has 49152") as err:
        trainer.train()
    assert "\n" not in str(err.value) and trainer.state.global_step == 0


def test_grpo_on_prompt_only_data_shows_its_figure_and_verdicts_in_tensorboard(tmp_path):
    """Prompt-only data: no y+, so the probes built from it are skipped and the verdicts reading them
    inconclusive with that reason; the curves and the verdict table reach TensorBoard at each evaluation."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    trainer = monitor_runs.grpo(tmp_path / "grpo", prompt_only=True, report_to=["tensorboard"], live_report=True)
    report = json.loads((tmp_path / "grpo" / "report.json").read_text())
    assert "chosen" in report["design"]["skipped_probes"] and report["design"]["data_format"] == "prompt-only"
    assert all(r["verdict"] == "inconclusive" and "chosen not built" in r["inconclusive_reason"]
               for r in report["predictions"])
    images, texts, scalars = [], [], set()
    for folder in sorted({p.parent for p in Path(trainer.args.output_dir).rglob("events.out.tfevents*")}):
        events = EventAccumulator(str(folder), size_guidance={"images": 0, "tensors": 0})
        events.Reload()
        tags = events.Tags()
        images += events.Images("probes/curves") if "probes/curves" in tags["images"] else []
        texts += events.Tensors("probes/verdicts/text_summary") if "probes/verdicts/text_summary" in tags["tensors"] \
            else []
        scalars |= set(tags["scalars"])
    assert sorted({i.step for i in images}) == list(range(1, monitor_runs.STEPS + 1))   # each report, the last too
    assert all(i.encoded_image_string[:4] == b"\x89PNG" for i in images)
    assert "P10" in texts[-1].tensor_proto.string_val[0].decode()
    assert "train/probes/logps/initial_sample" in scalars
    assert json.loads((tmp_path / "grpo" / "run_info.json").read_text())["reporters"] == ["tensorboard"]


def test_sft_on_messages_data_logs_its_figure_and_verdict_table_to_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed (it is optional: a `monitor` extra user's choice)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monitor_runs.sft(tmp_path / "sft", data="messages", report_to=["wandb"], live_report=True)
    report = json.loads((tmp_path / "sft" / "report.json").read_text())
    assert report["design"]["data_format"] == "language modeling (messages)"
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    curves = [p for p in files if "probes" in p.parts and p.name.startswith("curves_") and p.suffix == ".png"]
    tables = [p for p in files if "probes" in p.parts and p.name.startswith("verdicts_") and
              p.name.endswith(".table.json")]
    assert curves and tables, sorted(str(p.relative_to(tmp_path)) for p in files)
    table = json.loads(tables[-1].read_text())
    assert table["columns"][:4] == ["id", "claim", "judged", "verdict"]
    assert {row[0] for row in table["data"]} == {r["id"] for r in report["predictions"]}
