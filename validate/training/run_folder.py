"""The run folder of `ldyn validate run` (and of `run --first-order` and the TRL monitor): what a run writes into
it, and how a run starts in it, resumed or fresh."""
from pathlib import Path

from learning_dynamics.sim.common.io import atomic_write_json, read_json
from learning_dynamics.sim.common.style import FORMATS
from learning_dynamics.theory.errors import UserError
from learning_dynamics.validate import identity
from learning_dynamics.validate.presets import RESUMABLE_CHANGES, Settings


def prepare_out(out: Path, settings: Settings, fresh: bool) -> None:
    """Make the run folder: a resume must ask for the same settings (but those RESUMABLE_CHANGES), --fresh clears
    what an earlier run wrote; the run id is given (validate.identity) and settings.json written."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "settings.json"
    if path.exists() and not fresh:
        previous = read_json(path, expect=dict)
        changed = sorted(k for k in set(previous) | set(settings)
                         if previous.get(k) != settings.get(k) and k not in RESUMABLE_CHANGES)
        if changed:
            k = changed[0]
            raise UserError(f"{out} holds a run with other settings ({k}: {previous.get(k)!r} there, "
                            f"{settings.get(k)!r} now); use another --out or pass --fresh")
    elif fresh:
        clear_run(out)
    identity.begin(out, fresh)
    atomic_write_json(path, dict(settings))  # Settings, or the TRL monitor's flat dict


# everything a run (and `run --first-order`, and the TRL monitor) writes into its folder, for --fresh
RUN_FOLDERS = ("tracking", "generations", "mass", "state")
RUN_FILES = ("train_log.json", "probes.json", "design.json", "report.json", "report.md", "stopped.json",
             "run_info.json", identity.RUN_FILE, "first_order.json", "first_order.partial.json", "first_order.md", "first_step.json")
RUN_FIGURES = ("curves", "first_order_scatter", "first_order_slope", "token_squeeze", "k_step_curves",
               "kernel_drift")


def clear_run(out: Path) -> None:
    for sub in RUN_FOLDERS:
        for f in (out / sub).glob("*") if (out / sub).is_dir() else ():
            f.unlink()
    for name in RUN_FILES + tuple(f"{stem}.{fmt}" for stem in RUN_FIGURES for fmt in FORMATS):
        (out / name).unlink(missing_ok=True)
