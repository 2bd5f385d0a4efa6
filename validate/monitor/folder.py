"""The probe monitor's folder holds one run and never loses it.

A folder is the same run when its settings (validate.monitor.monitor's, less those a resumed run may change) and its
data and model fingerprints (validate.provenance) are the ones of the run starting now. The same run is
resumed: a trainer resumed from a checkpoint at step k keeps every evaluation up to k (the later ones are
redone), and one that starts again at step 0 over evaluations made after step 0 is refused, since carrying on
would mix two trainings' curves. Another run is refused in one line naming the folder and what differs;
`overwrite=True` replaces it, deleting only the files the monitor writes (a user's own file in the folder stays).
"""
from pathlib import Path

from learning_dynamics.sim.common.io import atomic_write_json, read_json
from learning_dynamics.theory.errors import UserError
from learning_dynamics.validate import provenance
from learning_dynamics.validate.monitor.reporters import reporters

FILES = ("run.json", "tracking/manifest.json", "settings.json", "probes.json", "design.json", "run_info.json", "train_log.json", "report.json",
         "report.md", "stopped.json", "curves.png", "curves.pdf", "curves.svg")
CHUNKS = {"tracking": "csv", "generations": "json", "mass": "json"}
# settings that do not change what the monitor computes
VOLATILE = ("live_report",)


def _identity(settings: dict, prints: dict) -> dict:
    same = {k: v for k, v in settings.items() if k not in VOLATILE}
    for kind in ("data", "model"):
        part = (prints or {}).get(kind) or {}
        same[f"{kind} fingerprint"] = part.get("sha256") or part.get("config_sha256")
    return same


def difference(out: Path, settings: dict, prints: dict):
    """What differs between the run in `out` and this one ("lr: 0.001 there, 0.0001 now"), or None."""
    previous = read_json(out / "settings.json", {}, expect=dict)
    info = read_json(out / "run_info.json", {}, expect=dict)
    before, now = _identity(previous, info.get("fingerprints")), _identity(settings, prints)
    changed = [k for k in now if before.get(k) != now[k]] + [k for k in before if k not in now]
    if not changed:
        return None
    k = changed[0]
    return f"{k}: {before.get(k)!r} there, {now.get(k)!r} now"


def _chunk_paths(out: Path):
    for sub, suffix in CHUNKS.items():
        yield from sorted((out / sub).glob(f"step_*.{suffix}")) if (out / sub).is_dir() else ()


def clear(out: Path) -> None:
    """Delete the monitor's own files (overwrite=True); anything else in `out` stays."""
    for path in [out / name for name in FILES] + list(_chunk_paths(out)):
        path.unlink(missing_ok=True)


def _step(path: Path) -> int:
    return int(path.stem.split("_")[1])


def open_run(out: Path, settings: dict, prints: dict, start_step: int, overwrite: bool) -> None:
    """Make `out` ready for the run starting at `start_step` (main process): new, resumed, or replaced."""
    previous = read_json(out / "settings.json", None, expect=dict)
    if previous is not None and previous.get("preset") != "monitor":
        raise UserError(f"ProbeMonitor: {out} holds a run of `ldyn validate run`; give ProbeMonitor another out")
    if overwrite:
        clear(out)
    elif previous is not None:
        differs = difference(out, settings, prints)
        if differs:
            raise UserError(f"ProbeMonitor: {out} holds another run ({differs}); pass overwrite=True to replace "
                            "it, or give another out")
        later = [_step(p) for p in _chunk_paths(out) if p.parent.name == "tracking" and _step(p) > start_step]
        if start_step == 0 and later:
            raise UserError(f"ProbeMonitor: {out} holds this run's evaluations up to step {max(later)} and the "
                            "trainer starts again at step 0; resume the trainer from its checkpoint "
                            "(trainer.train(resume_from_checkpoint=True)), pass overwrite=True to start over, or "
                            "give another out")
        for path in _chunk_paths(out):   # resumed at step k: the evaluations after k are made again
            if _step(path) > start_step:
                path.unlink()
    elif any(_chunk_paths(out)):
        raise UserError(f"ProbeMonitor: {out} holds tracking files but no settings.json; pass overwrite=True to "
                        "replace them, or give another out")
    atomic_write_json(out / "settings.json", dict(settings))


def run_info(monitor, state, unwrapped) -> dict:
    """run_info.json at the end of a monitored run: what ran, where, how long, with the start's provenance."""
    import time

    wall = time.perf_counter() - monitor.train_started
    spent = monitor.seconds["evaluate"] + monitor.seconds["report"]
    dataset = getattr(monitor.trainer, "train_dataset", None)
    s, procs = monitor.settings, monitor.procs
    return {
        "model": s["model"], "model_source": s["model"], "trainer": s["trainer"],
        "n_params": sum(p.numel() for p in unwrapped.parameters()) if unwrapped is not None else None,
        "device": s["device"], "processes": procs.world, "distributed": procs.kind,
        "trainer_mixed_precision": str(getattr(procs.accelerator, "mixed_precision", None)),
        "scoring_precision": {"fp32": "float32"}.get(monitor.precision.name, monitor.precision.name),
        "precision": monitor.precision.as_dict(), "tokenization": monitor.encoder.rule,
        "data_format": monitor.data_format, "reporters": reporters(monitor.trainer),
        "steps_trained": state.global_step, "n_train_pairs": len(dataset) if hasattr(dataset, "__len__") else None,
        "n_probe_prompts": len(monitor.probes), "n_probe_sequences": len(monitor.sequences),
        "evaluations": monitor.evaluations, "probe_build_seconds": round(monitor.seconds["build"], 3),
        "monitor_seconds": round(spent, 3), "train_wall_seconds": round(wall, 3),
        # the monitor's share of the training loop's wall time, probe build excluded (paid once)
        "monitor_overhead_ratio": round(spent / max(wall - spent, 1e-9), 4),
        "versions": provenance.versions(libraries=("trl",)), **monitor.provenance}
