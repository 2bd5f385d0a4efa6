"""`ldyn validate check --first-order`: how far the first-order (AKG) picture carries on a real model.

Writes first_order.json (read by validate.judge.report), report.md and figures into --out:

1. one plain SGD step on a training pair, swept over eta until the relative
   error passes 100%, for the y+ push, the y- push and the DPO step (their sum;
   validate.measure.first_order): per eta Pearson r, relative error, sign agreement, and
   the error slope in the eta^2 regime;
2. the token-level squeeze after a DPO-shaped step (validate.measure.token_squeeze),
   pooled over the whole vocabulary and over the top tokens, and the
   equal-shift test at shared-prefix positions;
3. AdamW's real update, k steps with a frozen kernel and the kernel's drift
   (P20) along a short training run (validate.measure.trajectory);
4. the same sweep on a coarse grid for each of the first --sweep-pairs probe prompts' pairs
   (validate.measure.pair_sweep): where it breaks, as a median and an interval over pairs;
5. the per-token channels of the DPO step of part 2 (validate.measure.token_channels).

Probes are built in float32; parts 1, 2, 4 and 5 run in float64 (--dtype float32 trades their small-eta floor for
half the time); part 3 in float32, as a CPU training run would. The report is validate.check.report's, the
figures validate.check.figures'.
"""
import time
from pathlib import Path

import numpy as np

from learning_dynamics.sim.common.io import atomic_write_json, atomic_write_text, json_ready
from learning_dynamics.validate.check.report import by_probe_type, report_markdown  # noqa: F401 (public here too)
# the sizes per preset live in validate.presets (the flags' help reads them too)
from learning_dynamics.validate.data.probes import said_once
from learning_dynamics.validate.presets import N_PROBE_PROMPTS, N_SQUEEZE_PAIRS, SWEEP_PAIRS, SWEEP_PROMPTS
from learning_dynamics.theory.errors import UserError
from learning_dynamics.validate.measure import first_order
from learning_dynamics.validate.presets import Settings
from learning_dynamics.validate.measure import trajectory
from learning_dynamics.validate.training import session
from learning_dynamics.validate.training.precision import in_precision, resolve
from learning_dynamics.validate.measure import first_order, pair_sweep, token_squeeze, trajectory
from learning_dynamics.validate.data.probes import build_probe_set
from learning_dynamics.validate.measure.first_order import STEP_KINDS
from learning_dynamics.validate.check import figures as check_figures
from learning_dynamics.validate.measure import first_order, token_channels, token_squeeze
from learning_dynamics.validate import provenance
SQUEEZE_NATS = 0.5                                 # token step: lowers L = lp(y-) - lp(y+) by this, to first order
# probe sequences per forward or jvp on a CPU (a prompt's responses stay together, so up to 12): smaller
# batches pad less and stay in cache (benchmarks/bench_check_cpu.py); on a GPU the preset's eval batch, at most
# 64 (forward AD's memory)
CPU_BATCH = 8


def sweep_probe_set(probes: list, sweep_prompts=None, preset: str = "default") -> list:
    """The probe prompts (each with all its probe types) the eta sweep reads: the first `sweep_prompts`."""
    n = SWEEP_PROMPTS[preset] if sweep_prompts is None else sweep_prompts
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"--sweep-prompts must be a positive integer, got {sweep_prompts!r}")
    return probes[:n]


def run_checks(settings, out, quiet: bool = False, progress=print, command=("validate", "check"),
               n_probe=None, squeeze_pairs=None, k_steps=None, report_name="report.md", dtype="float64",
               moving_probes=None, sweep_prompts=None, sweep_pairs=None) -> dict:
    """command: the ldyn command whose report holds this check (`run --first-order` embeds it in the run's).

    settings: validate.presets.Settings (or its flat dict); the set-up is `ldyn validate run`'s (validate.training.session).
    """
    settings, out = Settings.of(settings), Path(out)
    sizes = check_sizes(settings.preset, n_probe, squeeze_pairs, k_steps, dtype, moving_probes, sweep_prompts,
                        sweep_pairs)
    out.mkdir(parents=True, exist_ok=True)
    clock = Clock()
    setup = _set_up(settings, sizes, progress)
    clock.lap("load")
    with first_order.exact_math(setup["model"]):
        parts = _measure(setup, settings, sizes, out, clock, progress=progress, quiet=quiet)
    result = _result(setup, settings, sizes, parts, clock, out, command)
    atomic_write_json(out / "first_order.json", result)
    atomic_write_text(out / report_name, report_markdown(result))
    (out / "first_order.partial.json").unlink(missing_ok=True)
    return {"first_order": result, "token_squeeze": result["token_squeeze"]}


class Clock:
    """Wall seconds of each part of the check, in order."""

    def __init__(self):
        self.started, self.seconds = time.perf_counter(), {}

    def lap(self, name: str) -> None:
        self.seconds[name] = round(time.perf_counter() - sum(self.seconds.values()) - self.started, 1)

    @property
    def total(self) -> float:
        return time.perf_counter() - self.started


def check_sizes(preset, n_probe=None, squeeze_pairs=None, k_steps=None, dtype="float64", moving_probes=None,
                sweep_prompts=None, sweep_pairs=None) -> dict:
    """The check's own sizes, by the names of the flags that set them (provenance writes them back)."""
    n_probe = n_probe or N_PROBE_PROMPTS[preset]
    sweep_pairs = SWEEP_PAIRS[preset] if sweep_pairs is None else sweep_pairs
    if isinstance(sweep_pairs, bool) or not isinstance(sweep_pairs, int) or sweep_pairs < 1:
        raise UserError(f"--sweep-pairs must be a positive integer, got {sweep_pairs!r}")
    return {"n_probe": n_probe, "sweep_prompts": len(sweep_probe_set(range(n_probe), sweep_prompts, preset)),
            "squeeze_pairs": squeeze_pairs or N_SQUEEZE_PAIRS[preset],
            "k_steps": ",".join(map(str, sorted(set(k_steps or trajectory.K_STEPS[preset])))), "dtype": dtype,
            "moving_probes": trajectory.MOVING_PROBES if moving_probes is None else moving_probes,
            "sweep_pairs": min(sweep_pairs, n_probe)}   # clamped to the probe prompts, whose pairs they are


def _set_up(settings, sizes, progress) -> dict:
    """The model (float32), the runs' own split, the token-level pairs and the batch size."""
    import torch
    device = session.device(settings.device)
    # probes are built (sampled) in float32, at half the cost of float64, or in bf16 where --precision settles on
    # it (their texts feed no jvp: every number is then measured in the check's own dtype)
    loaded = session.load(settings, device, progress=progress, dtype=torch.float32)
    # the runs' own split, so that the k-step run trains on the preset's training pairs whatever the check's
    # sizes; the token-level pairs are the first probe pairs of a split that sets that many aside
    examples = session.examples(settings, n_probe=max(sizes["n_probe"], settings.n_probe), encoder=loaded.encoder)
    squeeze_examples = (examples.probe if sizes["squeeze_pairs"] <= len(examples.probe)
                        else session.examples(settings, n_probe=sizes["squeeze_pairs"], encoder=loaded.encoder).probe)
    precision = resolve(settings.precision, device)
    # the sampler is copied here, before exact_math patches the model's RMSNorm forwards (a copy would share them)
    return {"loaded": loaded, "model": loaded.model, "pad_id": loaded.pad_id, "device": device,
            "precision": precision, "sampler": in_precision(loaded.model, precision), "examples": examples, "squeeze_examples": squeeze_examples[:sizes["squeeze_pairs"]],
            "batch": CPU_BATCH if device.type == "cpu" else min(settings.eval_batch, 64)}


def _measure(setup, settings, sizes, out, clock, progress, quiet) -> dict:
    """Every part of the check, inside exact_math; a crash after the sweep keeps it in first_order.partial.json."""
    import torch
    loaded, model, examples = setup["loaded"], setup["model"], setup["examples"]
    args = (setup["pad_id"], setup["device"], setup["batch"])
    probes = build_probe_set(setup.pop("sampler"), loaded.tokenizer, loaded.encoder, examples.probe[:sizes["n_probe"]],
                             examples.train, examples.test, settings, progress=progress,
                             irrelevant=examples.irrelevant)
    model.to(getattr(torch, sizes["dtype"]))
    sequences, names = said_once(probes)
    sweep_sequences, sweep_names = said_once(sweep_probe_set(probes, sizes["sweep_prompts"]))
    pairs = loaded.tokenize(setup["squeeze_examples"])
    clock.lap("probes")
    steps = first_order.check_pair_steps(model, pairs[0], sweep_sequences, sweep_names, *args,
                                         progress=None if quiet else progress)
    progress(_sweep_line(steps, len(sweep_sequences), len(sequences)))
    clock.lap("eta_sweep")
    atomic_write_json(out / "first_order.partial.json", json_ready({"steps": steps, "seconds_by_part": clock.seconds,
                                                                    "sweep_probe_names": sweep_names}))
    over_pairs = pair_sweep.sweep_pairs(model, loaded.tokenize(examples.probe[:sizes["sweep_pairs"]]), probes,
                                        *args, seed=settings.seed, progress=None if quiet else progress)
    clock.lap("pair_sweep")
    records = [token_squeeze.check_pair(model, pair, SQUEEZE_NATS, *args[:2], channels=True) for pair in pairs]
    clock.lap("token_squeeze")
    model.float()   # the training run in float32, as on a CPU
    run = trajectory.run_trajectory(model, loaded.tokenize(examples.train), sequences, names, settings, *args,
                                    [int(k) for k in sizes["k_steps"].split(",")], progress=progress,
                                    moving_probes=sizes["moving_probes"])
    clock.lap("trajectory")
    return {"probes": probes, "sequences": sequences, "names": names, "sweep_sequences": sweep_sequences,
            "sweep_names": sweep_names, "steps": steps, "pair_sweep": over_pairs, "records": records, "run": run,
            "n_pairs": len(pairs)}


def _sweep_line(steps, n_swept, n_all) -> str:
    return ("first order: r " + " / ".join(f"{steps[k]['pearson_r']:.4f}" for k in STEP_KINDS)
            + ", slope " + " / ".join(f"{steps[k]['error_slope']:.2f}" for k in STEP_KINDS)
            + f" ({' / '.join(STEP_KINDS)} step); factored and dense jvp differ by "
            f"{steps['positive']['jvp_methods_max_rel_diff']:.1e}; {n_swept} of {n_all} probe responses")


def _result(setup, settings, sizes, parts, clock, out, command) -> dict:
    """first_order.json's content (figures drawn into `out`)."""
    import torch
    device, steps, run = setup["device"], parts["steps"], parts["run"]
    channels = token_channels.summarise([r["channels"] for r in parts["records"]],
                                        [r["kind"] for r in parts["records"]])
    figures = check_figures.draw_all(parts, channels, out)
    headline = [steps[k] for k in first_order.PUSHES]
    result = json_ready({
        "model": setup["loaded"].info.name,
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
        "dtype": sizes["dtype"],
        "precision": dict(setup["precision"].as_dict(), used_for="sampling the probe texts only; every jvp, sweep "
                          f"and the k-step run in {sizes['dtype']} / float32"),
        "n_probe_prompts": sizes["n_probe"], "n_probe_sequences": len(parts["sequences"]),
        "n_sweep_prompts": sizes["sweep_prompts"], "n_sweep_sequences": len(parts["sweep_sequences"]),
        "n_squeeze_pairs": parts["n_pairs"], "seconds": clock.total, "seconds_by_part": clock.seconds,
        # headline numbers: the mean over the positive and negative pushes, in the linear regime
        "pearson_r": float(np.mean([s["pearson_r"] for s in headline])),
        "error_slope": float(np.mean([s["error_slope"] for s in headline])),
        "etas": {k: v["etas"] for k, v in steps.items()},
        "steps": {k: {kk: vv for kk, vv in v.items() if kk not in ("predicted", "actual")} for k, v in steps.items()},
        "pair_sweep": parts["pair_sweep"], "probe_names": parts["names"], "sweep_probe_names": parts["sweep_names"],
        "trajectory": run, "P20": run["P20"], "token_channels": channels,
        "figures": [f.name for f in figures], "settings": provenance.public_settings(settings), "check_sizes": sizes,
        **(provenance.safely(provenance.check_command, dict(settings, **sizes), out)
           if command == ("validate", "check") else
           provenance.safely(provenance.run_command, settings, out, first_order=True)),
        "fingerprints": provenance.fingerprints(settings.data, settings.model),
        "versions": provenance.versions()})
    result["token_squeeze"] = json_ready(token_squeeze.summarise(parts["records"]))
    return result
