"""ProbeMonitor: `ldyn validate run`'s probe tracking inside your own transformers or TRL training run.

    trainer.add_callback(ProbeMonitor("pairs.jsonl", every=50, out="runs/my-dpo"))

When training starts, the monitor builds the probe set that `ldyn validate run --data pairs.jsonl` builds
(the probe types that need generation use the trainer's model as it is at that moment, step 0 of a new
run). Every `every` optimizer steps, and after the last one, it scores the whole set with the trainer's
current model (unwrapped, in eval mode, under inference mode, in ldyn's precision whatever mixed precision
the trainer uses, through validate.scoring, the functions `ldyn validate run` evaluates with, then back to
the mode it was in) and writes into `out` the run directory that `ldyn validate run` writes: settings.json,
probes.json, design.json, tracking/, generations/, mass/, run_info.json (with validate.provenance's
command, fingerprints and versions), curves.png, report.json and report.md, with the verdicts of the
trainer's algorithm. `ldyn validate report` rebuilds and merges it like any other run. The means over
probe prompts go into the trainer's own logs (`probes/logps/chosen`, `probes/logps/y_star`,
`probes/entropy`, ...), so they reach `report_to`. A run whose loss or probe log-probs become non-finite,
or whose model collapses to uniform (validate.health), is stopped, with stopped.json and the reason.

Several processes: under data parallelism every process scores a strided share of the probe sequences,
the main process gathers the rows and writes; nothing is written twice. Under FSDP or DeepSpeed ZeRO-3
no process holds the whole model, so every process takes part in gathering the full weights
(accelerator.get_state_dict) and the main process scores them alone in a replica (written, not tested here).
"""
import contextlib
import math
import time
from pathlib import Path

from transformers import TrainerCallback

from learning_dynamics.theory.errors import UserError
from learning_dynamics.validate.trainers import Processes, find_trainer, frozen_copy, infer_algo, ldyn_precision


def _trl_row(record) -> dict:
    """A checked record back in TRL's preference format (chat prompts get chat responses)."""
    if isinstance(record["prompt"], str):
        return {k: record[k] for k in ("prompt", "chosen", "rejected")}
    return {"prompt": record["prompt"], **{k: [{"role": "assistant", "content": record[k]}]
                                           for k in ("chosen", "rejected")}}


@contextlib.contextmanager
def _evaluating(model):
    """Eval mode, inference mode and ldyn's precision for the block (yields its autocast); the model's own
    mode afterwards."""
    import torch
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), ldyn_precision(model) as autocast:
            yield autocast
    finally:
        model.train(was_training)


def _positive_ints(**values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"ProbeMonitor: {name} must be a positive integer, got {value!r}")


class ProbeMonitor(TrainerCallback):
    """Track the probe set of `ldyn validate run` during a transformers/TRL run; see the module docstring.

    probe_data: TRL preference data (a JSONL path, a list of dicts or a `datasets.Dataset`; "prompt",
        "chosen", "rejected", plain strings or chat messages). As with `ldyn validate run --data`, the
        first tenth (at most 50 rows) is the held-out split, and the next `n_probe` rows are the probe
        prompts: pass your training data to probe trained-on pairs, as the paper does.
        `train_rows` holds the rows after the held-out split, in TRL's format, to train on exactly the split
        `ldyn validate run` trains on.
    every: optimizer steps between evaluations (and one after the last step).
    algo: the algorithm whose predictions are judged; inferred from the trainer class and its loss_type.
    track_mass: keep a frozen copy of the model as it is at step 0 (one more model in memory) to track how far
        y+'s next-token distributions move and into which token (mass/, P18r), as `ldyn validate run` does.
    live_report: rewrite curves.png and report.json/.md after every evaluation, not only at the end.
    """

    def __init__(self, probe_data, every: int = 100, out="runs/probe-monitor", algo=None, n_probe: int = 32,
                 eval_batch: int = 64, max_prompt_tokens: int = 96, max_response_tokens: int = 48,
                 gen_prompts: int = 8, gen_tokens: int = 48, seed: int = 0, track_mass: bool = True,
                 live_report: bool = True):
        from learning_dynamics.sim.io import writable_folder
        from learning_dynamics.validate import data
        from learning_dynamics.validate.algorithms import ALGORITHMS
        from learning_dynamics.validate import session
        _positive_ints(every=every, n_probe=n_probe, eval_batch=eval_batch, max_prompt_tokens=max_prompt_tokens,
                       max_response_tokens=max_response_tokens, gen_tokens=gen_tokens)
        if isinstance(gen_prompts, bool) or not isinstance(gen_prompts, int) or gen_prompts < 0:
            raise UserError(f"ProbeMonitor: gen_prompts must be an integer >= 0, got {gen_prompts!r}")
        if algo is not None and algo not in ALGORITHMS:
            raise UserError(f"ProbeMonitor: unknown algo {algo!r}; choose one of {', '.join(ALGORITHMS)}")
        self.data_for_fingerprint = probe_data
        if isinstance(probe_data, (str, Path)):
            self.source = str(probe_data)
            self.records = data.load_preference_jsonl(probe_data)
        else:
            from learning_dynamics.validate.provenance import data_fingerprint
            self.records = data.preference_records(probe_data, source="ProbeMonitor probe_data")
            # the rows' hash in the name: `ldyn validate report` pairs runs (SFT controls) by equal data
            digest = data_fingerprint(probe_data)["sha256"][:16]
            self.source = f"in-memory {type(probe_data).__name__} of {len(self.records)} rows, sha256 {digest}"
        self.options = dict(n_probe=n_probe, eval_batch=eval_batch, max_prompt_tokens=max_prompt_tokens,
                            max_response_tokens=max_response_tokens, gen_prompts=gen_prompts,
                            gen_tokens=gen_tokens, seed=seed, n_train=None, data=self.source)
        # the same split as `ldyn validate run --data`: bad data fails here, before any training
        self.splits = session.examples(self.options, rows=self.records)
        self.train_rows = [_trl_row(r) for r in self.records[len(self.splits.test):]]
        self.every, self.algo, self.track_mass, self.live_report = every, algo, track_mass, live_report
        self.out = writable_folder(out)
        self.history = []          # metrics when no trainer is in reach to log them
        self.seconds = {"build": 0.0, "evaluate": 0.0, "report": 0.0}
        self.evaluations, self.stopped, self.reference, self.replica = 0, None, None, None

    # ------------------------------------------------------------------ callback events

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        from learning_dynamics.validate import probes as probe_set
        from learning_dynamics.validate.encode import Encoder
        self.trainer = find_trainer(self)
        if self.trainer is not None:
            model, processing_class = self.trainer.model, self.trainer.processing_class
        if model is None or processing_class is None:
            raise UserError("ProbeMonitor needs the trainer's model and tokenizer (processing_class)")
        self.tokenizer = getattr(processing_class, "tokenizer", processing_class)  # a processor holds one
        if self.tokenizer.pad_token_id is None:
            raise UserError("ProbeMonitor: the tokenizer has no pad token; set tokenizer.pad_token first")
        self.procs = Processes.of(self.trainer)
        names = [c.__name__ for c in type(self.trainer).__mro__] if self.trainer is not None else []
        self.settings = self._settings(args, state, model, self.algo or infer_algo(names, args), names)
        self.encoder = Encoder(self.tokenizer, self.options["max_prompt_tokens"], self.options["max_response_tokens"])
        self.eos = probe_set.eos_ids(self.tokenizer)
        self.first_step = state.global_step  # > 0: resumed from a checkpoint, the step-0 model is gone
        if self.first_step and self.track_mass:
            self._say("resumed run: mass tracking (P18r) needs the step-0 model and stops here")
        started = time.perf_counter()
        probes = self.procs.broadcast(self._prepare(state) if self.procs.is_main else None)  # None: build now
        if probes is None:
            split = self.splits
            with self._scoring_model(model) as (module, _):
                if module is not None and self.procs.is_main:
                    with _evaluating(module):
                        probes = probe_set.build_probe_set(module, self.tokenizer, self.encoder, split.probe, split.train,
                                                           split.test, self.settings, progress=self._say,
                                                           irrelevant=split.irrelevant)
            probes = self.procs.broadcast(probes)
        self.probes, self.sequences = probes, probe_set.tracked_sequences(probes)
        if self.procs.is_main:
            self._write_start(probes, model)
        self.seconds["build"] += time.perf_counter() - started
        self.train_started = time.perf_counter()
        if state.global_step not in self.done:
            self._evaluate(state.global_step, model, control)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if (step % self.every == 0 or step >= state.max_steps) and step not in self.done and not self.stopped:
            self._evaluate(step, self.trainer.model if self.trainer is not None else model, control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        from learning_dynamics.validate import health
        loss = (logs or {}).get("loss")
        if isinstance(loss, (int, float)) and not self.stopped:
            reason = health.diverged(state.global_step, float(loss), (logs or {}).get("grad_norm"))
            if reason:
                self._stop(state.global_step, reason, control)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if step not in self.done and not self.stopped:  # stopped early: the curves end where training did
            self._evaluate(step, self.trainer.model if self.trainer is not None else model, control)
        if self.procs.is_main:
            self._write_run_info(state, model)
            self._write_report()

    # ------------------------------------------------------------------ the work

    def _settings(self, args, state, model, algo, names) -> dict:
        unwrapped = self.procs.unwrap(model)
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * self.procs.world
        return dict(self.options, algo=algo, preset="monitor", trainer=names[0] if names else "a transformers Trainer",
                    loss_type=getattr(args, "loss_type", None),
                    model=str(getattr(unwrapped.config, "_name_or_path", "") or type(unwrapped).__name__),
                    device=str(next(unwrapped.parameters()).device.type), steps=int(state.max_steps),
                    eval_every=self.every, batch_pairs=int(batch), lr=float(args.learning_rate),
                    # DPO's beta; GRPO's `beta` is its KL coefficient, another quantity
                    beta=getattr(args, "beta", None) if algo in ("dpo", "ipo") else None)

    def _prepare(self, state):
        """Main process: set up `out`; the probe set to reuse on a resumed run, or None."""
        from learning_dynamics.sim.io import read_json
        from learning_dynamics.sim.tracking import TrackingTable
        from learning_dynamics.validate import identity
        from learning_dynamics.validate.run import _prepare_out
        previous = read_json(self.out / "settings.json", {}, expect=dict)
        if previous and previous.get("preset") != "monitor":
            raise UserError(f"{self.out} holds a run of `ldyn validate run`; give ProbeMonitor another out")
        # a run that starts at step 0 starts over: earlier curves in `out` would mix with the new ones
        _prepare_out(self.out, self.settings, fresh=state.global_step == 0)
        self.table = TrackingTable(self.out / "tracking", run_id=identity.run_id(self.out))
        for step in self.table.completed_steps():   # resumed from a checkpoint: later evaluations are redone
            if step > state.global_step:
                for sub, suffix in (("tracking", "csv"), ("generations", "json"), ("mass", "json")):
                    (self.out / sub / f"step_{step:09d}.{suffix}").unlink(missing_ok=True)
        return read_json(self.out / "probes.json", None, expect=list)

    @property
    def done(self) -> set:
        if not hasattr(self, "_done"):
            self._done = set(self.procs.broadcast(self.table.completed_steps() if self.procs.is_main else []))
        return self._done

    def _say(self, message: str) -> None:
        if getattr(self, "procs", None) is None or self.procs.is_main:
            print(f"ProbeMonitor: {message}", flush=True)

    @contextlib.contextmanager
    def _scoring_model(self, model):
        """(module to score with or None, whether every process scores a share); every process enters."""
        if not self.procs.sharded:
            yield self.procs.unwrap(model), True
            return
        # FSDP / ZeRO-3 (untested here): every process takes part in the gather; the main one scores a replica
        state = self.procs.full_state_dict(self.trainer.model_wrapped)
        if self.procs.is_main:
            if self.replica is None:
                from transformers import AutoModelForCausalLM
                self.replica = AutoModelForCausalLM.from_config(self.procs.unwrap(model).config)
                self.replica.to(self.procs.accelerator.device)
            self.replica.load_state_dict(state)
        yield (self.replica if self.procs.is_main else None), False

    def _evaluate(self, step, model, control) -> None:
        from learning_dynamics.validate.scoring import greedy_generations, mass_records, score_rows
        started = time.perf_counter()
        pad, s = self.tokenizer.pad_token_id, self.settings
        share, rows, mass, records = [], [], [], None
        with self._scoring_model(model) as (module, shared):
            if module is not None:
                if self.track_mass and self.reference is None and step == 0 == self.first_step:
                    self.reference = frozen_copy(module)
                rank, world = (self.procs.rank, self.procs.world) if shared else (0, 1)
                share = list(range(rank, len(self.sequences), world))
                mine = [self.sequences[i] for i in share]
                device = next(module.parameters()).device
                with _evaluating(module) as autocast:
                    rows = score_rows(module, mine, pad, device, s["eval_batch"], autocast)
                    if self.reference is not None:
                        mass = mass_records(module, self.reference, mine, pad, device, autocast)
                    if self.procs.is_main:
                        self.log_vocab = math.log(module.get_output_embeddings().weight.shape[0])
                        if s["gen_prompts"]:
                            records = greedy_generations(module, self.probes[:s["gen_prompts"]], self.tokenizer,
                                                         self.eos, pad, s, autocast)
        rows = [row for _, row in sorted(self.procs.gather(list(zip(share, rows))), key=lambda pair: pair[0])]
        if len(rows) != len(self.sequences):
            raise RuntimeError(f"ProbeMonitor gathered {len(rows)} of {len(self.sequences)} probe rows at step {step}")
        order = {p["prompt_id"]: i for i, p in enumerate(self.probes)}
        mass = sorted(self.procs.gather(mass), key=lambda r: order[r["prompt_id"]])
        self.done.add(step)
        self.evaluations += 1
        self._log(self.metrics(rows), step)
        reason = None
        if self.procs.is_main:
            from learning_dynamics.sim.io import atomic_write_json
            self.table.append(step, rows)
            if records is not None:
                atomic_write_json(self.out / "generations" / f"step_{step:09d}.json", records)
            if mass:
                atomic_write_json(self.out / "mass" / f"step_{step:09d}.json", mass)
            reason = self._health(step, rows)
        self.seconds["evaluate"] += time.perf_counter() - started
        reason = self.procs.broadcast(reason)
        if reason:
            self._stop(step, reason, control)
        elif self.procs.is_main and self.live_report and len(self.done) > 1:
            self._write_report()

    def _health(self, step, rows):
        """Main process: why the run must stop (validate.health, as `ldyn validate run` judges), or None."""
        from learning_dynamics.sim.tracking import read_chunk
        from learning_dynamics.validate import health
        if not all(math.isfinite(r["logp_sum"]) for r in rows):
            return f"probe log-probs became non-finite at step {step}"
        gap = health.entropy_gap(rows, self.log_vocab)
        if not hasattr(self, "initial_gap"):
            first = self.table.directory / "step_000000000.csv"
            self.initial_gap = gap if step == 0 else (
                health.entropy_gap(read_chunk(first), self.log_vocab) if first.exists() else None)
        return health.uniform(step, gap, self.initial_gap, self.log_vocab) if step else None

    def _stop(self, step, reason, control) -> None:
        """Stop the trainer, keep every file, record why; the report marks every verdict inconclusive."""
        control.should_training_stop = True
        self.stopped = reason
        if self.procs.is_main:
            from learning_dynamics.sim.io import atomic_write_json
            atomic_write_json(self.out / "stopped.json", {"step": int(step), "reason": reason})
            self._say(f"{reason}; stopping the run, every verdict in {self.out} is inconclusive")

    def _log(self, metrics: dict, step: int) -> None:
        """A log entry of its own at this step, through transformers' Trainer.log: the reporters (report_to)
        see it, and a TRL trainer's own log() is bypassed so that its batch metrics keep their averaging."""
        if self.trainer is not None:
            from transformers import Trainer
            should_log = self.trainer.control.should_log
            Trainer.log(self.trainer, dict(metrics))
            # its on_log event clears should_log, which would drop the trainer's own loss log of this step
            self.trainer.control.should_log = should_log
        else:
            self.history.append(dict(metrics, step=step))

    @staticmethod
    def metrics(rows) -> dict:
        """Means over probe prompts under TRL-style names: probes/logps/<probe>, probes/logps/y_star,
        probes/entropy (mean token entropy on y+'s contexts)."""
        import numpy as np
        by_probe = {}
        for r in rows:
            if r["probe"] != "shared_prefix":  # an auxiliary sequence (P08r's positions), often empty
                by_probe.setdefault(r["probe"], []).append(r)
        out = {f"probes/logps/{p}": float(np.mean([r["logp_sum"] for r in rs])) for p, rs in sorted(by_probe.items())}
        if "chosen" in by_probe:
            out["probes/logps/y_star"] = float(np.mean([r["argmax_logp_sum"] for r in by_probe["chosen"]]))
            out["probes/entropy"] = float(np.mean([r["entropy_mean"] for r in by_probe["chosen"]]))
        return out

    def _write_report(self) -> None:
        from learning_dynamics.validate.report import write_report
        started = time.perf_counter()
        write_report(self.out)
        self.seconds["report"] += time.perf_counter() - started

    def _trained_pairs(self):
        """The pairs the trainer trains on when its dataset holds preference pairs, else probe_data's split."""
        from learning_dynamics.validate.data import preference_records
        dataset = getattr(self.trainer, "train_dataset", None)
        if {"prompt", "chosen", "rejected"} <= set(getattr(dataset, "column_names", None) or ()):
            try:
                pairs = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in dataset]
                return preference_records(pairs, source="the trainer's train_dataset"), "the trainer's train_dataset"
            except UserError:
                pass
        return self.splits.train, "probe_data after its held-out rows (the trainer's train_dataset has no pairs)"

    def _write_start(self, probes, model) -> None:
        """probes.json, design.json, and run_info.json's command and fingerprints (validate.provenance); the
        numbers follow at the end (report.json counts a run complete only once run_info.json has them)."""
        from learning_dynamics.sim.io import atomic_write_json
        from learning_dynamics.validate import design, provenance
        atomic_write_json(self.out / "probes.json", probes, sort_keys=False)  # the probe order is the row order
        trained, source = self._trained_pairs()
        atomic_write_json(self.out / "design.json", dict(design.measure(probes, trained), train_source=source))
        self.provenance = {"run_id": self.table.run_id, "reproduce": provenance.current_command(),
                           "fingerprints": provenance.fingerprints(self.data_for_fingerprint, self.procs.unwrap(model))}
        atomic_write_json(self.out / "run_info.json", {**self.provenance, "partial": True})

    def _scoring_precision(self) -> str:
        import contextlib

        import torch

        from learning_dynamics.validate.scoring import scoring_autocast
        fp32 = scoring_autocast(torch.device(self.settings["device"])) is contextlib.nullcontext
        return "float32" if fp32 else "bf16 autocast"

    def _write_run_info(self, state, model) -> None:
        from learning_dynamics.sim.io import atomic_write_json
        from learning_dynamics.validate import provenance
        unwrapped = self.procs.unwrap(model)
        wall = time.perf_counter() - self.train_started
        monitor = self.seconds["evaluate"] + self.seconds["report"]
        dataset = getattr(self.trainer, "train_dataset", None)
        atomic_write_json(self.out / "train_log.json", [h for h in state.log_history if "loss" in h])
        atomic_write_json(self.out / "run_info.json", {
            "model": self.settings["model"], "model_source": self.settings["model"], "trainer": self.settings["trainer"],
            "n_params": sum(p.numel() for p in unwrapped.parameters()) if unwrapped is not None else None,
            "device": self.settings["device"], "processes": self.procs.world, "distributed": self.procs.kind,
            "trainer_mixed_precision": str(getattr(self.procs.accelerator, "mixed_precision", None)),
            "scoring_precision": self._scoring_precision(),
            "steps_trained": state.global_step, "n_train_pairs": len(dataset) if hasattr(dataset, "__len__") else None,
            "n_probe_prompts": len(self.probes), "n_probe_sequences": len(self.sequences),
            "evaluations": self.evaluations, "probe_build_seconds": round(self.seconds["build"], 3),
            "monitor_seconds": round(monitor, 3), "train_wall_seconds": round(wall, 3),
            # the monitor's share of the training loop's wall time, probe build excluded (paid once)
            "monitor_overhead_ratio": round(monitor / max(wall - monitor, 1e-9), 4),
            "versions": provenance.versions(libraries=("trl",)), **self.provenance})
