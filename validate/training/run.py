"""`ldyn validate run`: finetune a real causal LM and track every probe as it learns.

A run directory holds everything, written atomically as it is made:
    settings.json          what was asked (a resumed run must ask the same)
    probes.json            the probe set (texts and token ids)
    tracking/step_*.csv    one chunk per evaluation (sim.common.tracking's schema)
    generations/step_*.json greedy generations (natural and fixed length) and their repetition statistics,
                           at the first and the last evaluation (what P17 compares)
    mass/step_*.json       per probe prompt, how far y+'s next-token distributions moved and into the top token
    design.json            which probe texts are also training targets (validate.data.design)
    train_log.json         per-step losses and metrics under TRL's names
    state/checkpoint.pt    model, optimizer and data state, to resume
    stopped.json           only when training diverged or collapsed (validate.training.health): step and reason
    curves.png, report.json, report.md   (validate.judge.report)
"""
import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from learning_dynamics.sim.common.io import atomic_write_json, read_json
from learning_dynamics.sim.common.tracking import TrackingTable, read_chunk
from learning_dynamics.theory.errors import CorruptFile, UserError
from learning_dynamics.validate.training import algorithms as algos
from learning_dynamics.validate.training import health, session
from learning_dynamics.validate import identity
from learning_dynamics.validate.measure import regime
from learning_dynamics.validate.presets import Settings
# the forward passes that `ldyn validate run` and the TRL monitor (validate.monitor.monitor) share
from learning_dynamics.validate.measure.scoring import greedy_generations, mass_records
from learning_dynamics.validate.measure.scoring import score_rows as _score_rows
from learning_dynamics.validate.judge.report import write_report
from learning_dynamics.validate.training.forward import sequence_logps
from learning_dynamics.validate.training.generate import generate
from learning_dynamics.sim.common.io import atomic_torch_save
from learning_dynamics.validate.training.precision import TrainingWeights
from learning_dynamics.validate.data import design
from learning_dynamics.validate import provenance
from learning_dynamics.validate.data import probes as probe_set
from learning_dynamics.validate.judge.report import read_stopped, write_report
from learning_dynamics.validate.training.precision import resolve
from learning_dynamics.validate.training.run_folder import RUN_FILES, RUN_FIGURES, RUN_FOLDERS, prepare_out  # noqa: F401
# tqdm loads inside the functions that need them, so importing this module stays light (ldyn --help)


CPU_JVP_BATCH = 8      # probe sequences per jvp on a CPU (validate.check.run.CPU_BATCH: small batches stay in cache)


class RunStopped(UserError):
    """Training diverged or collapsed: one line, non-zero exit, the logs stay on disk."""

    def __init__(self, out, stopped: dict):
        super().__init__(f"{stopped['reason']}; stopped, logs kept in {out}, every verdict in its report is "
                         "inconclusive (lower --lr or check the data, then rerun with --fresh)")


# --------------------------------------------------------------------------- state

@dataclass
class RunState:
    """What training and evaluation share while a run trains."""
    settings: Settings
    out: Path
    loaded: session.Loaded          # model, tokenizer, encoder, autocast
    device: object                  # torch.device
    ref_model: object               # the frozen reference (for extend: the model after its SFT phase)
    table: TrackingTable
    sequences: list                 # every tracked (prompt_id, probe, prompt_ids, response_ids)
    gen_prompts: list               # the probe records whose greedy generations are logged
    eos: list                       # ids that stop a generation
    end_of_turn: list               # ids that end an assistant turn (appended to samples)
    log_vocab: float                # log |V|: the entropy of the uniform distribution
    quiet: bool = False
    progress: Callable = print
    log: Optional[list] = None      # per-step metrics so far
    initial_gap: Optional[float] = None
    evals: int = 0
    tokens_per_second: float = 0.0

    @property
    def pad_id(self) -> int:
        return self.loaded.pad_id

    def score(self, model, sequences, batch_size=None, scorer=None) -> list:
        return _score_rows(model, sequences, self.pad_id, self.device, batch_size or self.settings.eval_batch,
                           self.loaded.autocast, scorer)


def _probe_set(out: Path, loaded, examples, settings, progress) -> list:
    """The run's probes: read from probes.json on a resume, else built and written there."""
    probes_path = out / "probes.json"
    model = loaded.model
    if probes_path.exists():
        return probe_set.read_probe_set(probes_path, model.get_input_embeddings().weight.shape[0])
    with loaded.autocast():
        probes = probe_set.build_probe_set(model, loaded.tokenizer, loaded.encoder, examples.probe, examples.train,
                                           examples.test, settings, progress=progress,
                                           irrelevant=examples.irrelevant)
    atomic_write_json(probes_path, probes, sort_keys=False)  # the probe order is the tracking row order
    return probes


# --------------------------------------------------------------------------- evaluation

def evaluate(model, step, state: RunState, generations: bool = True) -> None:
    """Score every probe sequence, and (`generations`) a few greedy generations; each lands in its own atomic
    file."""
    model.eval()
    rows = state.score(model, state.sequences)
    bad = [r for r in rows if not math.isfinite(r["logp_sum"])]
    state.table.append(step, rows)
    gap = health.entropy_gap(rows, state.log_vocab)
    if step == 0 or state.initial_gap is None:
        state.initial_gap = _initial_gap(state) if step else gap
    if generations:
        records = greedy_generations(model, state.gen_prompts, state.loaded.tokenizer, state.eos, state.pad_id,
                                     state.settings, state.loaded.autocast)
        atomic_write_json(state.out / "generations" / f"step_{step:09d}.json", records)
    _track_mass(model, step, state)
    model.train()
    if bad:
        _stop(state, step, f"probe log-probs became non-finite at step {step}")
    if step:
        reason = health.uniform(step, gap, state.initial_gap, state.log_vocab)
        if reason:
            _stop(state, step, reason)


def _initial_gap(state: RunState):
    """The entropy gap of the first evaluation, read back when a run resumed past it."""
    first = state.table.directory / "step_000000000.csv"
    return health.entropy_gap(read_chunk(first), state.log_vocab) if first.exists() else None


def _stop(state: RunState, step, reason) -> None:
    """Keep every log, record why, write the report (all verdicts inconclusive), and stop with one line."""
    out = state.out
    if state.log is not None:
        _write_log(out, state.log)
    stopped = {"step": int(step), "reason": reason}
    atomic_write_json(out / "stopped.json", stopped)
    if list((out / "tracking").glob("step_*.csv")):
        write_report(out)
    raise RunStopped(out, stopped)


def _track_mass(model, step, state: RunState) -> None:
    atomic_write_json(state.out / "mass" / f"step_{step:09d}.json",
                      mass_records(model, state.ref_model, state.sequences, state.pad_id, state.device,
                                   state.loaded.autocast))


# --------------------------------------------------------------------------- training

def _summed_logps(model, batch) -> dict:
    import torch
    with torch.no_grad():
        return {"logp_sum": sequence_logps(model, batch)[0].float().cpu()}


def _reference_logps(pairs, keys, state: RunState) -> None:
    """Fill ref_<key> for each pair, once, with the frozen reference model (no entropy or ||pi||^2 pass)."""
    sequences = [(i, key, p["prompt"], p[key]) for key in keys for i, p in enumerate(pairs)]   # one pass: a
    for (i, key, _, _), row in zip(sequences, state.score(state.ref_model, sequences, scorer=_summed_logps)):
        pairs[i][f"ref_{key}"] = row["logp_sum"]                                   # pair's prompt is run once


def _draw_samples(model, pairs, indices, step, state: RunState) -> None:
    """On-policy responses of the current model for the pairs the next steps will use."""
    s, algorithm = state.settings, state.settings.algorithm
    k = 1 if algorithm.negative == "policy" else s.n_samples
    prompts = [pairs[i]["prompt"] for i in indices for _ in range(k)]
    model.eval()
    with state.loaded.autocast():   # room left for the end of turn, appended below
        new = generate(model, prompts, state.eos, state.pad_id, max(s.max_response_tokens - len(state.end_of_turn), 1),
                       sample=True, seed=s.seed * 100003 + step, batch_size=s.eval_batch)
    model.train()
    for n, i in enumerate(indices):
        responses = [tuple(r) + tuple(state.end_of_turn) for r in new[n * k:(n + 1) * k]]
        pairs[i]["samples"] = responses
        pairs[i]["sample"] = responses[0]
    if algorithm.negative == "policy" and algorithm.requires_reference:
        _reference_logps([pairs[i] for i in indices], ("sample",), state)


def _save_state(path: Path, weights, step, phase, pairs, log) -> None:
    """The checkpoint names its run and the data, model and settings it was trained on (validate.identity)."""
    atomic_torch_save({**weights.state_dict(), "step": step, "phase": phase, "pairs": pairs, "log": log,
                       **identity.stamp(path.parent.parent)}, path)


def train(state: RunState, model, pairs) -> None:
    from tqdm.auto import tqdm

    s, out, algorithm = state.settings, state.out, state.settings.algorithm
    weights = TrainingWeights(model, state.loaded.precision, lr=s.lr, weight_decay=s.weight_decay)
    sft_steps = warmup_steps(s, len(pairs)) if algorithm.warmup == "sft-both" else 0
    total = sft_steps + s.steps
    state_path = out / "state" / "checkpoint.pt"
    start, log = _resume_or_start(state, state_path, weights, pairs, total)
    state.log = log
    done = set(state.table.completed_steps())
    tracked = lambda step: step - sft_steps  # noqa: E731  (extend tracks its DPO phase from 0)
    model.train()
    bar = tqdm(range(start, total), initial=start, total=total, desc=f"{s.algo} ({s.preset})", disable=state.quiet)
    tokens, clock = 0, time.perf_counter()
    for step in bar:
        phase = "sft" if step < sft_steps else "main"
        if algorithm.warmup and step == sft_steps and "ref_chosen" not in pairs[0]:
            state.ref_model.load_state_dict(model.state_dict())  # DPO's reference is the model after SFT
            _reference_logps(pairs, ("chosen", "rejected"), state)
        evaluates = session.is_evaluation_step(tracked(step), s.eval_every)
        if phase == "main" and evaluates and tracked(step) not in done:
            # greedy generations feed P17, which compares the first and the last evaluation only
            evaluate(model, tracked(step), state, generations=tracked(step) == 0)
            _maybe_checkpoint(state, state_path, weights, step, phase, pairs)
        # the main phase takes the batches of a run without a warm-up, in the same order (extend's DPO phase is
        # DPO's, batch for batch); the warm-up phase goes through the pairs from the start of the order too
        order_step = tracked(step) if phase == "main" else step
        indices = session.batch_indices(order_step, len(pairs), s.batch_pairs, s.seed)
        if algorithm.requires_samples and step % s.sample_every == 0:
            upcoming = sorted({i for t in range(order_step, min(order_step + s.sample_every, tracked(total)))
                               for i in session.batch_indices(t, len(pairs), s.batch_pairs, s.seed)})
            _draw_samples(model, pairs, upcoming, step, state)
        metrics, n_tokens, grad_norm = _optimizer_step(state, model, weights, [pairs[i] for i in indices], step,
                                                       phase, tracked(step))
        tokens += n_tokens
        log.append({"step": step, "phase": phase, **{k: round(v, 6) for k, v in metrics.items()},
                    "grad_norm": round(grad_norm, 6)})
        reason = health.frozen(log)
        if reason:
            _stop(state, step, reason)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{tokens / (time.perf_counter() - clock):.0f}")
    if tracked(total) not in done:
        evaluate(model, tracked(total), state)
    _write_log(out, log)
    if s.checkpoint_every or state_path.exists():
        _save_state(state_path, weights, total, "done", pairs, log)
    state.tokens_per_second = tokens / max(time.perf_counter() - clock, 1e-9)


def _resume_or_start(state: RunState, state_path: Path, weights, pairs, total: int) -> tuple:
    """(first step, training log): from the checkpoint when there is one, else from 0 (with the reference's
    log-probs of the pairs, for an algorithm that needs them from the start)."""
    algorithm = state.settings.algorithm
    if state_path.exists():
        start, log = _load_state(state_path, weights, pairs, state.device)
        state.progress(f"resuming {state.out} at step {start} of {total}")
        return start, log
    if algorithm.requires_reference and not algorithm.warmup:
        _reference_logps(pairs, ("chosen", "rejected"), state)
    return 0, []


def _optimizer_step(state: RunState, model, weights, batch, step: int, phase: str, tracked_step: int) -> tuple:
    """One optimizer step on `batch`, stopped on divergence; the first tracked step's first-order prediction is
    made across it. (metrics, tokens, grad norm)."""
    s = state.settings
    with state.loaded.autocast():
        loss, metrics, n_tokens = algos.step_loss(s.algorithm, phase, model, batch, s,
                                                  state.pad_id, state.device, reference=state.ref_model)
    reason = health.diverged(step, loss.item())
    if reason:
        _stop(state, step, reason)
    weights.zero_grad()
    loss.backward()
    grad_norm = weights.grad_norm()   # nothing clipped; a non-finite norm stops before the weights take it
    reason = health.diverged(step, loss.item(), grad_norm)
    if reason:
        _stop(state, step, reason)
    first_step = phase == "main" and tracked_step == 0 and not (state.out / regime.FIRST_STEP).exists()
    theta0 = weights.parameters_fp32() if first_step else None
    weights.step()
    if first_step:
        _predict_first_step(state, model, theta0, weights.parameters_fp32(), step)
        del theta0
    return metrics, n_tokens, grad_norm


def warmup_steps(settings, n_pairs: int) -> int:
    """Steps of a warm-up phase (extend's SFT on y+ and y-): as set, or one epoch, so that it covers every pair."""
    return settings.extend_sft_steps or max(n_pairs // settings.batch_pairs, 1)


def _predict_first_step(state: RunState, model, theta0, theta1, step) -> None:
    """The regime check's first-order prediction of the first tracked step (validate.measure.regime)."""
    batch = CPU_JVP_BATCH if state.device.type == "cpu" else min(state.settings.eval_batch, 64)
    state.progress("first step: predicting every probe's change to first order (one jvp along the update)")
    rows = regime.predict_first_step(model, theta0, theta1, state.sequences, state.pad_id, state.device, batch)
    regime.write_first_step(state.out, step, rows)


def _load_state(path: Path, weights, pairs, device):
    """Restore a checkpoint in place; (step, log). A damaged one is named, never an unpickling traceback."""
    import torch
    try:
        state = torch.load(path, map_location=device, weights_only=False)
        weights.load_state_dict(state)
        start, log, saved_pairs = int(state["step"]), list(state["log"]), list(state["pairs"])
    except Exception as err:  # noqa: BLE001  (torch.load raises a dozen unrelated types for a damaged file)
        problem = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise CorruptFile(path, "empty" if path.stat().st_size == 0 else f"cannot restore it: {problem}") from None
    identity.check_stamp(path.parent.parent, state, path)
    if len(saved_pairs) != len(pairs):
        raise CorruptFile(path, f"holds {len(saved_pairs)} training pairs, the run has {len(pairs)}")
    pairs[:] = saved_pairs
    return start, log


def _maybe_checkpoint(state: RunState, path, weights, step, phase, pairs):
    every = state.settings.checkpoint_every
    state.evals += 1
    _write_log(state.out, state.log)
    if every and state.evals % every == 0:
        _save_state(path, weights, step, phase, pairs, state.log)


def _write_log(out: Path, log) -> None:
    atomic_write_json(out / "train_log.json", log)


# --------------------------------------------------------------------------- the command

def run(settings, out, fresh: bool = False, quiet: bool = False, progress=print, first_order: bool = False) -> dict:
    """Train, track, and write the report; returns report.json's content.

    settings: validate.presets.Settings (or its flat dict). first_order: the caller runs the first-order
    check on this run afterwards (it joins the reproduce command).
    """
    import torch

    settings, out = Settings.of(settings), Path(out)
    device = session.device(settings.device)
    # `auto` is settled once, where the run starts: a resume on other hardware asks for the same precision
    settings = settings.with_changes(precision=resolve(settings.precision, device).name)
    examples = session.examples(settings)  # bad data fails before the folder is touched and the slow load
    prepare_out(out, settings, fresh)
    identity.check_trained_on(out, settings)  # a run goes on with the data and model it started with
    try:
        done = read_json(out / "report.json", {}, expect=dict)
    except CorruptFile:  # report.json is rebuilt from the logs; a damaged one is not worth a stop
        done = {}
    if done.get("complete") and done.get("run_id") == identity.run_id(out):  # done: rebuilt from the logs
        return write_report(out)
    stopped = read_stopped(out)
    if stopped:  # the same command again would stop the same way
        if list((out / "tracking").glob("step_*.csv")):
            write_report(out)
        raise RunStopped(out, stopped)
    torch.manual_seed(settings.seed)
    started = time.perf_counter()
    loaded = session.load(settings, device, progress=progress)
    examples = session.examples(settings, encoder=loaded.encoder)  # and drops pairs equal once tokenized
    model, tokenizer = loaded.model, loaded.tokenizer
    probes = _probe_set(out, loaded, examples, settings, progress)
    atomic_write_json(out / "design.json", design.measure(probes, examples.train))
    reference = copy.deepcopy(model).to(loaded.precision.weights_dtype).eval().requires_grad_(False)
    table = TrackingTable(out / "tracking", run_id=identity.run_id(out))
    state = RunState(settings, out, loaded, device, ref_model=reference,
                     table=table, sequences=probe_set.tracked_sequences(probes),
                     gen_prompts=probes[:settings.gen_prompts], eos=probe_set.eos_ids(tokenizer),
                     end_of_turn=probe_set.end_of_turn_ids(tokenizer),
                     log_vocab=math.log(model.get_output_embeddings().weight.shape[0]), quiet=quiet, progress=progress)
    pairs = loaded.tokenize(examples.train)
    train(state, model, pairs)
    info = {"run_id": table.run_id, "model": loaded.info.name, "model_source": loaded.info.source,
            "n_params": loaded.info.n_params,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "precision": loaded.precision.as_dict(),
            "load_seconds": round(loaded.seconds, 2), "train_tokens_per_second": round(state.tokens_per_second, 1),
            "wall_seconds": round(time.perf_counter() - started, 2), "n_train_pairs": len(pairs),
            "n_probe_prompts": len(probes), "versions": provenance.versions(),
            "fingerprints": provenance.fingerprints(settings.data, settings.model),
            **provenance.safely(provenance.run_command, settings, out, first_order=first_order)}
    atomic_write_json(out / "run_info.json", info)
    return write_report(out)
