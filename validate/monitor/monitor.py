"""ProbeMonitor: `ldyn validate run`'s probe tracking inside your own transformers or TRL training run.

    trainer.add_callback(ProbeMonitor("pairs.jsonl", every=50, out="runs/my-dpo"))

When training starts, the monitor builds the probe set that `ldyn validate run --data pairs.jsonl` builds
(the probe types that need generation use the trainer's model as it is at that moment, step 0 of a new
run), from data in any TRL format (validate.data.trl_formats: a probe type the data cannot build is skipped with
its reason), tokenized as the trainer tokenizes (validate.monitor.trl_tokens), so that a probe's log-prob is the
quantity the trainer trains. The folder holds one run (validate.monitor.folder: the same run is resumed,
another refused, `overwrite=True` replaces it). Every `every` optimizer steps, and after the last one, it scores the whole set with the trainer's
current model (unwrapped, in eval mode, under inference mode, in ldyn's precision whatever mixed precision
the trainer uses, through validate.measure.scoring, the functions `ldyn validate run` evaluates with, then back to
the mode it was in) and writes into `out` the run directory that `ldyn validate run` writes: settings.json,
probes.json, design.json, tracking/, generations/, mass/, run_info.json (with validate.provenance's
command, fingerprints and versions), curves.png, report.json and report.md, with the verdicts of the
trainer's algorithm. `ldyn validate report` rebuilds and merges it like any other run. The means over
probe prompts go into the trainer's own logs (`probes/logps/chosen`, `probes/logps/y_star`,
`probes/entropy`, ...), so they reach `report_to`. A run whose loss or probe log-probs become non-finite,
or whose model collapses to uniform (validate.training.health), is stopped, with stopped.json and the reason. The
curves figure and the verdict table also go to the trainer's TensorBoard and W&B (validate.monitor.reporters).

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

from learning_dynamics.theory import algorithms
from learning_dynamics.theory.errors import UserError
from learning_dynamics.validate.training.precision import PRECISIONS, in_precision, resolve
from learning_dynamics.validate.monitor.trainers import (Processes, find_trainer, frozen_copy, fsdp_not_applied, infer_algo,
                                                 ldyn_precision)
from learning_dynamics.sim.common.io import writable_folder
from learning_dynamics.validate.training import session
from learning_dynamics.validate.data import trl_formats
from learning_dynamics.validate.provenance import data_fingerprint
from learning_dynamics.validate.training.encode import Encoder
from learning_dynamics.validate.monitor.trl_tokens import trainer_encoder
from learning_dynamics.validate.data.trl_formats import anchor_unprompted
from learning_dynamics.validate.training import health
from learning_dynamics.sim.common.io import read_json
from learning_dynamics.sim.common.tracking import TrackingTable
from learning_dynamics.validate import identity, provenance
from learning_dynamics.validate.monitor import folder as monitor_folder
from learning_dynamics.validate.measure.scoring import greedy_generations, mass_records, score_rows
from learning_dynamics.sim.common.io import atomic_write_json
from learning_dynamics.sim.common.tracking import read_chunk
from learning_dynamics.validate.monitor.reporters import publish
from learning_dynamics.validate.judge.report import write_report
from learning_dynamics.validate.data import design
from learning_dynamics.validate.data.trl_formats import trained_records
from learning_dynamics.validate.monitor.folder import run_info
# torch loads inside the functions that need them, so importing this module stays light (ldyn --help)


@contextlib.contextmanager
def _evaluating(model, precision=None):
    """Eval mode, inference mode and ldyn's precision for the block (yields its autocast); the model's own
    mode afterwards."""
    import torch
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), ldyn_precision(model, precision) as autocast:
            yield autocast
    finally:
        model.train(was_training)


def _positive_ints(**values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"ProbeMonitor: {name} must be a positive integer, got {value!r}")


def _attempt(make, *args):
    """(None, make(*args)), or (its UserError's line, None): the main process's failure, to broadcast."""
    try:
        return None, make(*args)
    except UserError as err:
        return str(err), None


def _check_vocabulary(model, tokenizer) -> None:
    """A token id past the model's embedding would end in an IndexError mid-run: one line before training."""
    embedding = model.get_input_embeddings()
    rows = getattr(embedding, "num_embeddings", None) or model.config.get_text_config().vocab_size
    if rows < len(tokenizer):
        raise UserError(f"ProbeMonitor: the model's vocabulary has {rows} tokens but the tokenizer has {len(tokenizer)}, "
                        "so some token ids have no embedding; use the model's own tokenizer, or resize the model with "
                        "model.resize_token_embeddings(len(tokenizer)) before training")


class ProbeMonitor(TrainerCallback):
    """Track the probe set of `ldyn validate run` during a transformers/TRL run; see the module docstring.

    probe_data: TRL data (a JSONL path, a list of dicts or a `datasets.Dataset`) in any format the DPO, SFT and
        GRPO trainers read: preference (explicit or implicit prompt), prompt-completion, language modeling
        (`messages` or `text`), prompt-only; plain strings or chat messages. As with `ldyn validate run --data`,
        the first tenth (at most 50 rows) is the held-out split, and the next `n_probe` rows are the probe
        prompts: pass your training data to probe trained-on responses, as the paper does. `train_rows` holds
        the rows after the held-out split, as given, to train on exactly the split `ldyn validate run` trains on.
    every: optimizer steps between evaluations (and one after the last step).
    out: the run's folder. A folder holding the same run (same settings, data and model) is resumed; one holding
        another run is refused; overwrite=True replaces it (only the monitor's own files are deleted).
    algo: the algorithm whose predictions are judged; inferred from the trainer class and its loss_type.
    max_prompt_tokens: cuts prompts only when no TRL trainer is in reach (a TRL trainer's own max_length cuts
        otherwise); max_response_tokens: the length of generated probes (rephrases, samples), and the cut of a
        response without a TRL trainer.
    track_mass: keep a frozen copy of the model as it is at step 0 (one more model in memory) to track how far
        y+'s next-token distributions move and into which token (mass/, P18r), as `ldyn validate run` does.
    live_report: rewrite curves.png and report.json/.md (and send them to report_to) after every evaluation,
        not only at the end.
    """

    def __init__(self, probe_data, every: int = 100, out="runs/probe-monitor", algo=None, n_probe: int = 32,
                 eval_batch: int = 64, max_prompt_tokens: int = 96, max_response_tokens: int = 48,
                 gen_prompts: int = 8, gen_tokens: int = 48, seed: int = 0, track_mass: bool = True,
                 live_report: bool = True, overwrite: bool = False, precision: str = "auto"):
        _positive_ints(every=every, n_probe=n_probe, eval_batch=eval_batch, max_prompt_tokens=max_prompt_tokens,
                       max_response_tokens=max_response_tokens, gen_tokens=gen_tokens)
        if precision not in PRECISIONS:
            raise UserError(f"ProbeMonitor: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if isinstance(gen_prompts, bool) or not isinstance(gen_prompts, int) or gen_prompts < 0:
            raise UserError(f"ProbeMonitor: gen_prompts must be an integer >= 0, got {gen_prompts!r}")
        if algo is not None and algo not in algorithms.REGISTRY:
            raise UserError(f"ProbeMonitor: unknown algo {algo!r}; choose one of {', '.join(algorithms.ALGORITHMS)}")
        rows, self.records, self.data_format = trl_formats.load(probe_data, "ProbeMonitor probe_data")
        self.data_for_fingerprint = probe_data if isinstance(probe_data, (str, Path)) else rows
        if isinstance(probe_data, (str, Path)):
            self.source = str(probe_data)
        else:
            # the rows' hash in the name: `ldyn validate report` pairs runs (SFT controls) by equal data
            digest = data_fingerprint(rows)["sha256"][:16]
            self.source = f"in-memory {type(probe_data).__name__} of {len(rows)} rows, sha256 {digest}"
        self.options = dict(n_probe=n_probe, eval_batch=eval_batch, max_prompt_tokens=max_prompt_tokens,
                            max_response_tokens=max_response_tokens, gen_prompts=gen_prompts,
                            gen_tokens=gen_tokens, seed=seed, n_train=None, data=self.source)
        self.requested_precision = precision   # settled on the trainer's device when training starts
        # the same split as `ldyn validate run --data`: bad data fails here, before any training
        self.splits = session.examples(self.options, rows=self.records)
        self.train_rows = rows[len(self.splits.test):]
        self.skipped = trl_formats.skipped(self.records, self.data_format)
        self.every, self.algo, self.track_mass, self.live_report = every, algo, track_mass, live_report
        self.overwrite = overwrite
        self.out = writable_folder(out, "ProbeMonitor out")
        self.history = []          # metrics when no trainer is in reach to log them
        self.seconds = {"build": 0.0, "evaluate": 0.0, "report": 0.0}
        self.evaluations, self.stopped, self.reference, self.replica = 0, None, None, None

    # ------------------------------------------------------------------ callback events

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        from learning_dynamics.validate.data import probes as probe_set
        self.trainer = find_trainer(self)
        if self.trainer is not None:
            model, processing_class = self.trainer.model, self.trainer.processing_class
        if model is None or processing_class is None:
            raise UserError("ProbeMonitor needs the trainer's model and tokenizer (processing_class)")
        self.tokenizer = getattr(processing_class, "tokenizer", processing_class)  # a processor holds one
        if self.tokenizer.pad_token_id is None:
            raise UserError("ProbeMonitor: the tokenizer has no pad token; set tokenizer.pad_token first")
        self.procs = Processes.of(self.trainer)
        if fsdp_not_applied(args, self.procs):
            self._say(fsdp_not_applied(args, self.procs))
        _check_vocabulary(self.procs.unwrap(model), self.tokenizer)
        names = [c.__name__ for c in type(self.trainer).__mro__] if self.trainer is not None else []
        self.settings = self._settings(args, state, model, self.algo or infer_algo(names, args), names)
        base = Encoder(self.tokenizer, self.options["max_prompt_tokens"], self.options["max_response_tokens"])
        self.encoder = trainer_encoder(self.trainer, self.tokenizer, base)
        self.eos = probe_set.eos_ids(self.tokenizer)
        self.first_step = state.global_step  # > 0: resumed from a checkpoint, the step-0 model is gone
        if self.first_step and self.track_mass:
            self._say("resumed run: mass tracking (P18r) needs the step-0 model and stops here")
        started = time.perf_counter()
        # None: build now; a UserError on the main process stops every process with its line
        failed, probes = self.procs.broadcast(_attempt(self._prepare, state, model) if self.procs.is_main else None)
        if failed:
            raise UserError(failed)
        if probes is None:
            with self._scoring_model(model) as (module, _):
                if module is not None and self.procs.is_main:
                    with _evaluating(module):
                        probes = self._build(module)
            probes = self.procs.broadcast(probes)
        self.probes, self.sequences = probes, probe_set.tracked_sequences(probes)
        if self.procs.is_main:
            self._write_start(probes, model)
        self.seconds["build"] += time.perf_counter() - started
        self.train_started = time.perf_counter()
        if state.global_step not in self.done:
            self._evaluate(state.global_step, model, control)

    def _build(self, module):
        """Main process: the probe set of the held-out split, in the trainer's tokenization."""
        from learning_dynamics.validate.data import probes as probe_set
        split = self.splits
        return probe_set.build_probe_set(module, self.tokenizer, self.encoder, anchor_unprompted(split.probe, self.encoder),
                                         split.train, split.test, self.settings, progress=self._say,
                                         irrelevant=split.irrelevant)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if (step % self.every == 0 or step >= state.max_steps) and step not in self.done and not self.stopped:
            self._evaluate(step, self.trainer.model if self.trainer is not None else model, control)

    def on_log(self, args, state, control, logs=None, **kwargs):
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
            self._write_report(step)

    # ------------------------------------------------------------------ the work

    def _settings(self, args, state, model, algo, names) -> dict:
        unwrapped = self.procs.unwrap(model)
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * self.procs.world
        self.precision = resolve(self.requested_precision, next(unwrapped.parameters()).device)
        return dict(self.options, algo=algo, preset="monitor", trainer=names[0] if names else "a transformers Trainer",
                    loss_type=getattr(args, "loss_type", None),
                    model=str(getattr(unwrapped.config, "_name_or_path", "") or type(unwrapped).__name__),
                    device=str(next(unwrapped.parameters()).device.type), steps=int(state.max_steps),
                    eval_every=self.every, batch_pairs=int(batch), lr=float(args.learning_rate),
                    precision=self.precision.name,
                    beta=getattr(args, "beta", None) if algorithms.get(algo).trl_beta else None)

    def _prepare(self, state, model):
        """Main process: set up `out` (validate.monitor.folder); the probe set to reuse on a resumed run, or None."""
        fingerprints = provenance.fingerprints(self.data_for_fingerprint, self.procs.unwrap(model))
        fresh = self.overwrite or read_json(self.out / "settings.json", None, expect=dict) is None
        monitor_folder.open_run(self.out, self.settings, fingerprints, state.global_step, self.overwrite)
        identity.begin(self.out, fresh=fresh)
        self.table = TrackingTable(self.out / "tracking", run_id=identity.run_id(self.out))
        self.provenance = {"run_id": self.table.run_id, "reproduce": provenance.current_command(),
                           "fingerprints": fingerprints}
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
        started = time.perf_counter()
        pad, s = self.tokenizer.pad_token_id, self.settings
        share, rows, mass, records = [], [], [], None
        with self._scoring_model(model) as (module, shared):
            if module is not None:
                has_chosen = "chosen" not in self.skipped   # P18r's mass moves on y+'s contexts
                if self.track_mass and has_chosen and self.reference is None and step == 0 == self.first_step:
                    self.reference = frozen_copy(module)
                rank, world = (self.procs.rank, self.procs.world) if shared else (0, 1)
                share = list(range(rank, len(self.sequences), world))
                mine = [self.sequences[i] for i in share]
                device = next(module.parameters()).device
                module = in_precision(module, self.precision)
                with _evaluating(module, self.precision) as autocast:
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
            self._write_report(step)

    def _health(self, step, rows):
        """Main process: why the run must stop (validate.training.health, as `ldyn validate run` judges), or None."""
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

    def _write_report(self, step: int) -> None:
        """report.json/.md and curves.png, then the figure and the verdicts to the trainer's reporters."""
        started = time.perf_counter()
        report = write_report(self.out)
        if getattr(self, "published", None) != step:   # the end's report repeats the last evaluation's verdicts
            self.published = step
            publish(self.trainer, self.trainer.args if self.trainer else None, self.out, report, step)
        self.seconds["report"] += time.perf_counter() - started

    def _write_start(self, probes, model) -> None:
        """probes.json, design.json (with the data format, the tokenization and the probe types skipped), and
        run_info.json's command and fingerprints (validate.provenance); the numbers follow at the end (report.json
        counts a run complete only once run_info.json has them)."""
        atomic_write_json(self.out / "probes.json", probes, sort_keys=False)  # the probe order is the row order
        trained = trained_records(getattr(self.trainer, "train_dataset", None))
        source = "the trainer's train_dataset" if trained else "probe_data after its held-out rows"
        atomic_write_json(self.out / "design.json", dict(
            design.measure(probes, trained or self.splits.train), train_source=source, data_format=self.data_format,
            tokenization=self.encoder.rule, skipped_probes=self.skipped))
        atomic_write_json(self.out / "run_info.json", {**self.provenance, "partial": True})

    def _write_run_info(self, state, model) -> None:
        atomic_write_json(self.out / "train_log.json", [h for h in state.log_history if "loss" in h])
        atomic_write_json(self.out / "run_info.json", run_info(self, state, self.procs.unwrap(model)))
