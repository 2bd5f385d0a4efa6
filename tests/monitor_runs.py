"""TRL runs with a ProbeMonitor on the tiny random Llama, shared by tests/test_validate_monitor.py and the
two-process run it launches:  accelerate launch --multi_gpu --num_processes 2 tests/monitor_runs.py OUT BATCH
(use_cpu=True in the training arguments: two CPU processes over gloo)."""
import sys

STEPS, EVERY, N_PROBE = 2, 1, 4
# fp32 scoring pinned: the equality tests compare with TRL's and the checkpoint's float32 log-probs, and `auto` picks
# bf16 on a CPU with AMX
MONITOR = dict(every=EVERY, n_probe=N_PROBE, max_response_tokens=16, gen_prompts=2, gen_tokens=8, eval_batch=16,
               live_report=False, precision="fp32")


def preference_rows(n: int = 24) -> list:
    from learning_dynamics.validate.data.data import default_dataset
    rows = default_dataset(seed=0, n_probe=N_PROBE)["train"][:n]
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]


def _common(out, batch, report_to=()):
    return dict(output_dir=str(out) + "-trainer", max_steps=STEPS, per_device_train_batch_size=batch,
                learning_rate=1e-3, logging_steps=1, report_to=list(report_to), save_strategy="no", use_cpu=True,
                seed=0, disable_tqdm=True, activation_checkpointing=False)  # TRL's default bf16=True: trains in bf16 autocast


def _tiny():
    from learning_dynamics.validate.training.model import load_model
    return load_model("tiny-random")


def dpo(out, batch: int = 4, **monitor):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from learning_dynamics.validate.monitor.monitor import ProbeMonitor
    rows = preference_rows()
    loaded = _tiny()
    trainer = DPOTrainer(model=loaded.model, args=DPOConfig(max_length=64, **_common(out, batch)),
                         train_dataset=Dataset.from_list(rows), processing_class=loaded.tokenizer)
    trainer.add_callback(ProbeMonitor(rows, out=out, **dict(MONITOR, **monitor)))
    trainer.train()
    return trainer


def sft(out, batch: int = 4, data: str = "pairs", report_to=(), **monitor):
    """SFT on prompt/completion chat rows; the monitor reads the preference pairs (data="pairs") or the
    trainer's own rows as TRL's `messages` (data="messages")."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from learning_dynamics.validate.monitor.monitor import ProbeMonitor
    rows = preference_rows()
    loaded = _tiny()
    chat = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "completion": [{"role": "assistant", "content": r["chosen"]}]} for r in rows]
    probe_data = rows if data == "pairs" else [{"messages": r["prompt"] + r["completion"]} for r in chat]
    trainer = SFTTrainer(model=loaded.model, args=SFTConfig(max_length=64, **_common(out, batch, report_to)),
                         train_dataset=Dataset.from_list(chat), processing_class=loaded.tokenizer)
    trainer.add_callback(ProbeMonitor(probe_data, out=out, **dict(MONITOR, **monitor)))
    trainer.train()
    return trainer


def grpo(out, batch: int = 4, prompt_only: bool = False, report_to=(), **monitor):
    """GRPO on the pairs' prompts; the monitor reads the pairs, or (prompt_only) the trainer's own rows."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from learning_dynamics.validate.monitor.monitor import ProbeMonitor
    rows = preference_rows()
    loaded = _tiny()

    def length_reward(completions, **kwargs):
        return [-float(len(c)) for c in completions]

    prompts = [{"prompt": r["prompt"]} for r in rows]
    trainer = GRPOTrainer(model=loaded.model, reward_funcs=length_reward,
                          args=GRPOConfig(num_generations=2, max_completion_length=4, **_common(out, batch, report_to)),
                          train_dataset=Dataset.from_list(prompts), processing_class=loaded.tokenizer)
    trainer.add_callback(ProbeMonitor(prompts if prompt_only else rows, out=out, **dict(MONITOR, **monitor)))
    trainer.train()
    return trainer


# one pair, one step, float32: the monitor's step-0 numbers against the ones TRL logs for that step
EQUAL = dict(every=1, n_probe=1, gen_prompts=0, max_response_tokens=8, track_mass=False, live_report=False,
             precision="fp32")


def as_chat(rows) -> list:
    """Preference rows in TRL's conversational format."""
    return [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]


def float32_args(config_class, out, **extra):
    """One step of one row in float32 on the CPU (TRL's default bf16 off), logged at that step."""
    return config_class(output_dir=str(out) + "-trainer", max_steps=1, per_device_train_batch_size=1,
                        learning_rate=1e-3, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                        bf16=False, seed=0, disable_tqdm=True, **extra)


def one_pair(trainer_class, config_class, rows, out, monitor=None, **config):
    """A trainer on the monitor's first probe row only (ProbeMonitor(rows, n_probe=1).train_rows[:1])."""
    from datasets import Dataset

    from learning_dynamics.validate.monitor.monitor import ProbeMonitor
    monitor = monitor or ProbeMonitor(rows, out=out, **EQUAL)
    loaded = _tiny()
    trainer = trainer_class(model=loaded.model, args=float32_args(config_class, out, **config),
                            train_dataset=Dataset.from_list(monitor.train_rows[:1]), processing_class=loaded.tokenizer)
    trainer.add_callback(monitor)
    return trainer


if __name__ == "__main__":
    dpo(sys.argv[1], batch=int(sys.argv[2]))
