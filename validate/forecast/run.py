"""`ldyn validate forecast`: before training, which preference pairs will push their chosen answer down.

    from learning_dynamics.validate.forecast.run import forecast
    result = forecast("pairs.jsonl", model="smollm2", algo="dpo", out="forecast")   # or pairs=[{...}, ...]
    result["summary"]            # "k of N pairs are forecast to lower their chosen answer; ..."
    [r for r in result["pairs"] if r["displacing"]]

Per pair (validate.forecast.steps): the exact first-order change of log pi(y+), log pi(y-) and log pi(y*) from one
step on that pair alone (a plain SGD step, per unit learning rate, and the first AdamW step at --lr), CHES and its
length-normalised form, and cheap proxies. `verify`: the real steps, and how well each predictor ranks and flags
the pairs whose y+ actually falls (validate.forecast.report). `train_steps`: the forecast again after that many
AdamW steps over the pairs, and how much of the run's fall of y+ the pairs flagged at step 0 hold.
Finished parts (the step-0 forecast and the verification, pair by pair) stay in forecast.parts.json: the same
command resumes after an interruption, and one with more options (--verify, --train-steps) or a newer report
writer reuses them while the settings and the pairs are the same.
"""
import functools
import hashlib
import json
import time
from pathlib import Path

from learning_dynamics.sim.common.io import atomic_write_json, json_ready
from learning_dynamics.theory.errors import UserError
from learning_dynamics.validate.presets import FORECAST_PAIRS as DEFAULT_PAIRS
from learning_dynamics.validate.data import data
from learning_dynamics.validate.presets import TRAJECTORY_ALGOS, settings_for
from learning_dynamics.sim.common.io import writable_folder
from learning_dynamics.sim.common.io import read_json
from learning_dynamics.validate import provenance
from learning_dynamics.validate.training import session
from learning_dynamics.validate.presets import PRESETS
from learning_dynamics.theory.errors import CorruptFile
# torch, tqdm load inside the functions that need them, so importing this module stays light (ldyn --help)

PARTS = "forecast.parts.json"


def select_pairs(pairs, n_pairs=None) -> tuple:
    """(TRL records, data setting): a JSONL path, in-memory rows, or None for the built-in pairs; the first n_pairs."""
    if pairs is None:
        records, data_setting = [dict(r) for r in _builtin_pairs()], None
        n_pairs = n_pairs or DEFAULT_PAIRS
    elif isinstance(pairs, (str, Path)):
        records, data_setting = data.load_preference_jsonl(pairs), str(pairs)
    else:
        records, data_setting = data.preference_records(pairs), None
    if n_pairs is not None:
        if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or n_pairs < 1:
            raise UserError(f"--n-pairs must be a positive integer, got {n_pairs!r}")
        records = records[:n_pairs]
    if len(records) < 2:
        raise UserError(f"a forecast ranks pairs: need at least 2 preference pairs, found {len(records)}")
    return records, data_setting


@functools.lru_cache(maxsize=1)
def _builtin_pairs() -> tuple:
    """The built-in data's training pairs (`ldyn validate run`'s split); building them takes a second."""
    return tuple(data.default_dataset(seed=0)["train"])


def forecast_settings(preset="cpu", **overrides):
    """The run settings a forecast reads (model, device, algo, lr, beta, seed, batch size, token limits)."""
    settings = settings_for(preset, **overrides)
    if not settings.algorithm.steps_on_dataset_alone:
        raise UserError(f"--algo {settings.algo} cannot be forecast: it needs samples of the policy or a batch of its "
                        f"own (GRPO groups, on-policy DPO, KTO); choose one of {', '.join(TRAJECTORY_ALGOS)}")
    return settings


def forecast(pairs=None, model=None, algo="dpo", n_pairs=None, *, preset="cpu", device=None, lr=None, beta=None,
             seed=None, batch_pairs=None, verify=False, train_steps=0, from_run=None, out=None, filter=False,
             quiet=False, progress=print) -> dict:
    """Forecast, per preference pair, the one-step change of log pi(y+), log pi(y-), log pi(y*); see the module doc.

    pairs: a TRL preference JSONL path, rows (dicts with prompt/chosen/rejected, plain or conversational), or None
    (the built-in pairs, 64 by default). model: what `--model` takes ('smollm2', a local HF folder, a .gguf file).
    train_steps: then train that many AdamW steps over the pairs and forecast again; from_run: instead, forecast again
    at the weights of an `ldyn validate run` folder's checkpoint (state/checkpoint.pt; same model and initial weights).
    out: a folder for forecast.json/.csv/.md, the figure and (filter=True) filtered.jsonl; None writes nothing.
    Returns forecast.json's content: "pairs" (one record each), "summary", "verification", "across_training".
    """
    records, data_setting = select_pairs(pairs, n_pairs)
    settings = forecast_settings(preset, model=model, device=device, algo=algo, lr=lr, beta=beta, seed=seed,
                                 batch_pairs=batch_pairs, data=data_setting)
    if isinstance(train_steps, bool) or not isinstance(train_steps, int) or train_steps < 0:
        raise UserError(f"--train-steps must be a non-negative integer, got {train_steps!r}")
    if from_run is not None:
        run_checkpoint(from_run, settings, train_steps)     # a bad folder fails before the model loads
        from_run = str(from_run)
    if out is not None:
        out = Path(writable_folder(out))
    options = {"n_pairs": len(records), "verify": bool(verify), "train_steps": train_steps, "from_run": from_run,
               "filter": bool(filter)}
    fingerprint_data = data_setting or (None if pairs is None else records)   # None: the built-in pairs
    result = _compute(settings, records, options, out, progress if not quiet else (lambda *_: None), quiet,
                      fingerprint_data)
    result["data_records"] = records
    if out is not None:
        from learning_dynamics.validate.forecast.report import write_outputs
        write_outputs(result, out)
    return result


def run_checkpoint(run_dir, settings, train_steps=0) -> Path:
    """The checkpoint of an `ldyn validate run` folder trained from the forecast's model; one clear line if not."""
    run_dir = Path(run_dir)
    if train_steps:
        raise UserError("give --train-steps or --from-run, not both: each names the later weights")
    path = run_dir / "state" / "checkpoint.pt"
    if not path.is_file():
        raise UserError(f"{run_dir}: no state/checkpoint.pt (a run folder of `ldyn validate run`, which keeps its "
                        "checkpoint with --checkpoint-every)")
    trained = read_json(run_dir / "settings.json", {}, expect=dict).get("model")
    if trained != settings.model:
        raise UserError(f"{run_dir} trained --model {trained!r}; the forecast loads {settings.model!r}: give the "
                        "run's model, so both start from the same weights")
    return path


class Parts:
    """Finished parts of a forecast in --out/forecast.parts.json, valid while the settings and pairs match."""

    def __init__(self, out, key: str):
        self.path = None if out is None else Path(out) / PARTS
        self.key, self.done = key, {}
        if self.path is not None and self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
            except (OSError, ValueError):
                saved = {}
            if isinstance(saved, dict) and saved.get("key") == key and isinstance(saved.get("parts"), dict):
                self.done = saved["parts"]

    def keep(self, name: str, value) -> None:
        self.done[name] = json_ready(value)
        if self.path is not None:
            atomic_write_json(self.path, {"key": self.key, "parts": self.done})


def _key(settings, records) -> str:
    """What the step-0 forecast and the verification depend on (the options only choose which parts run)."""
    text = json.dumps([dict(settings), records], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _each_pair(name, parts, pairs, compute, quiet):
    """compute(i, pair) for every pair with a tqdm bar, resuming from the pairs `parts` already holds."""
    from tqdm.auto import tqdm
    done = list(parts.done.get(name, []))
    for i in tqdm(range(len(done), len(pairs)), initial=len(done), total=len(pairs), desc=name, disable=quiet):
        done.append(compute(i, pairs[i]))
        parts.keep(name, done)
    return done


class _Job:
    """One forecast's model, pairs and settings, and its parts: the step-0 forecast, the verification, the run."""

    def __init__(self, settings, loaded, records, parts: Parts, quiet: bool):
        from learning_dynamics.validate.training.algorithms import hyper_parameters
        self.settings, self.model, self.pad_id, self.parts, self.quiet = settings, loaded.model, loaded.pad_id, parts, \
            quiet
        self.device = next(loaded.model.parameters()).device
        self.pairs = loaded.tokenize(records)
        self.hyper = hyper_parameters(settings.algorithm, settings)

    def forecast(self, name: str, reference=None, adamw: bool = True) -> list:
        from learning_dynamics.validate.forecast import steps
        s = self.settings
        return [dict(r) for r in _each_pair(name, self.parts, self.pairs, lambda i, pair: steps.forecast_pair(
            self.model, pair, s.algorithm, self.hyper, self.pad_id, self.device, s.lr, s.weight_decay,
            None if reference is None else reference[i], adamw), self.quiet)]   # copies: kept parts stay as made

    def verify(self, step0: list) -> dict:
        """The real steps, their changes merged into the step-0 records, and every predictor judged."""
        from learning_dynamics.validate.measure import first_order
        from learning_dynamics.validate.forecast import report as forecast_report
        from learning_dynamics.validate.forecast import steps
        eta, saved = steps.sgd_eta(step0), first_order.snapshot(self.model)
        actual = _each_pair("verify", self.parts, self.pairs, lambda i, pair: steps.verify_pair(
            self.model, pair, self.settings, self.pad_id, self.device, eta, saved), self.quiet)
        del saved
        for record, changes in zip(step0, actual):
            record.update(changes)
        return forecast_report.verification(step0, eta, self.settings.lr)

    def across_training(self, step0: list, steps_to_train: int, lap, progress) -> dict:
        """Train, forecast again at the trained weights (the trained weights are not kept: a resumed run retrains)."""
        from learning_dynamics.validate.forecast import report as forecast_report
        from learning_dynamics.validate.forecast import steps
        reference = [(r["logp_chosen"], r["logp_rejected"]) for r in step0]
        log = steps.train(self.model, self.pairs, self.settings, steps_to_train, self.pad_id, self.device, reference,
                          None if self.quiet else progress)
        lap("train")
        self.parts.done.pop("forecast_later", None)
        later = self.forecast("forecast_later", reference, adamw=False)
        lap("forecast_later")
        s = self.settings
        return forecast_report.across_training(step0, later, {"steps": len(log), "lr": s.lr, "batch_pairs":
                                                              s.batch_pairs, "train_log": log, "source": None})

    def at_checkpoint(self, step0: list, run_dir: str, lap) -> dict:
        """The forecast again at a run's checkpoint, and the change of y+ from the initial weights to it."""
        from learning_dynamics.validate.forecast import report as forecast_report
        import torch
        path = run_checkpoint(run_dir, self.settings)
        try:
            state = torch.load(path, map_location=self.device, weights_only=False)
            self.model.load_state_dict(state["model"])
            steps, log = int(state["step"]), list(state["log"])
        except Exception as err:  # noqa: BLE001  (torch.load raises a dozen unrelated types for a damaged file)
            raise CorruptFile(path, f"cannot load its weights into the model: {str(err).strip()[:100]}",
                              "give the folder of a finished run of this model") from None
        run = read_json(Path(run_dir) / "settings.json", {}, expect=dict)
        lap("load_checkpoint")
        reference = [(r["logp_chosen"], r["logp_rejected"]) for r in step0]
        self.parts.done.pop("forecast_later", None)
        later = self.forecast("forecast_later", reference, adamw=False)
        lap("forecast_later")
        return forecast_report.across_training(step0, later, {"steps": steps, "lr": run.get("lr"), "batch_pairs":
                                                              run.get("batch_pairs"), "train_log": log,
                                                              "source": str(run_dir)})


def _compute(settings, records, options, out, progress, quiet, fingerprint_data) -> dict:
    """Load the model, forecast every pair, then the verification and the later forecast when asked."""
    import torch
    from learning_dynamics.validate.measure import first_order
    from learning_dynamics.validate.forecast import report as forecast_report
    from learning_dynamics.validate.forecast.steps import PREDICTORS
    started, seconds = time.perf_counter(), {}

    def lap(name):
        seconds[name] = round(time.perf_counter() - started - sum(seconds.values()), 1)

    device = session.device(settings.device)
    loaded = session.load(settings, device, progress=progress, dtype=torch.float32)
    job = _Job(settings, loaded, records, Parts(out, _key(settings, records)), quiet)
    lap("load")
    result = {"verification": None, "across_training": None}
    with first_order.exact_math(job.model):
        step0 = job.forecast("forecast")
        lap("forecast")
        if options["verify"]:
            result["verification"] = job.verify(step0)
            lap("verify")
        if options["train_steps"]:
            result["across_training"] = job.across_training(step0, options["train_steps"], lap, progress)
        elif options["from_run"]:
            result["across_training"] = job.at_checkpoint(step0, options["from_run"], lap)
    for i, record in enumerate(step0):
        record["index"] = i
    result.update(
        model=loaded.info.name, device=str(device), algo=settings.algo, n_pairs=len(step0), pairs=step0,
        predictors=[{"name": p.name, "label": p.label, "flags": p.flags, "optimizer": p.optimizer} for p in PREDICTORS],
        summary=forecast_report.summary_line(step0, result["verification"]),
        seconds=round(time.perf_counter() - started, 1), seconds_by_part=seconds,
        settings=provenance.public_settings(settings), options=options,
        **provenance.safely(forecast_command, settings, options, out),
        fingerprints=provenance.fingerprints(fingerprint_data, settings.model), versions=provenance.versions())
    return result


def forecast_command(settings, options, out) -> str:
    """`ldyn validate forecast ...` that repeats this forecast (into a fresh folder beside `out`)."""
    values = dict(provenance.public_settings(settings), **options)
    if values["data"] is None and options["n_pairs"] == DEFAULT_PAIRS:
        values["n_pairs"] = None          # the built-in data's default
    values.setdefault("format", provenance.figure_format())
    return provenance.reproduce_command(("validate", "forecast"), values, PRESETS[settings.preset],
                                        provenance.reproduce_out(out or "forecast"), always=("preset", "algo"))
