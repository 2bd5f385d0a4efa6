"""A run folder holds one run: a run id, and the fingerprints of what the run trains on.

run.json is written when a run folder is made (or made again with --fresh):

    {"run_id": "3f2a...", "fingerprints": {"code": ..., "data": ..., "model": ...}, "settings_sha256": "..."}

The id goes into every file that could be mixed up with another run's: the checkpoint, the tracking chunks'
manifest (sim.common.tracking), run_info.json and report.json; a file that names another id, or none where this run
would have written one, is refused in one line. The fingerprints are those of the first start; a resume whose
data or model differ is refused naming both, before anything is written. Folders made before run ids existed
have no run.json and are read as before.

    identity.begin(out, fresh)                     # validate.training.run_folder.prepare_out: the run id
    identity.check_trained_on(out, settings)      # before the model loads: same data and model as recorded
    identity.stamp(out)                           # {"run_id", "fingerprints", ...} for a checkpoint
    identity.check_stamp(out, saved, path)        # a checkpoint read back
    identity.check_folder(run_dir)                # validate.judge.report: run_info.json and the checkpoint are ours
"""
import hashlib
import json
import uuid
import zipfile
from pathlib import Path

from learning_dynamics.sim.common.io import atomic_write_json, read_json
from learning_dynamics.theory.errors import CorruptFile, UserError
from learning_dynamics.validate.presets import RESUMABLE_CHANGES
from learning_dynamics.validate import provenance

RUN_FILE = "run.json"
FRESH_REMEDY = "rerun with --fresh to start over, or use another --out"


def begin(out: Path, fresh: bool) -> None:
    """A new run id when the folder holds no run yet or starts over; a legacy folder (settings, no run.json)
    stays without one."""
    path = Path(out) / RUN_FILE
    if (Path(out) / "first_order.json").exists() and not (Path(out) / "settings.json").exists():
        raise UserError(f"{out} holds a first-order check (`ldyn validate check`), not a run; give the run "
                        "another --out")
    if fresh or not path.exists() and not (Path(out) / "settings.json").exists():
        atomic_write_json(path, {"run_id": uuid.uuid4().hex})
    elif path.exists():
        read(out)   # a damaged run.json is named now, not halfway through the run


def read(out) -> dict:
    """run.json of a run folder ({} for a folder made before run ids)."""
    path = Path(out) / RUN_FILE
    record = read_json(path, {}, expect=dict)
    if record and not isinstance(record.get("run_id"), str):
        raise CorruptFile(path, "no run_id")
    return record


def run_id(out):
    return read(out).get("run_id")


def settings_sha256(settings) -> str:
    """Of what changes the computation: the settings a resumed run may change are left out."""
    values = {k: v for k, v in dict(settings).items() if k not in RESUMABLE_CHANGES}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def _results_written(out: Path) -> bool:
    return (out / "probes.json").exists() or (out / "state" / "checkpoint.pt").exists() or \
        any((out / "tracking").glob("step_*.csv"))


def check_trained_on(out, settings) -> dict:
    """Record the data and model fingerprints at the first start; on a resume, refuse different ones."""
    out = Path(out)
    record = read(out)
    if not record:
        return {}
    prints = provenance.fingerprints(settings["data"], settings["model"])
    before = record.get("fingerprints")
    if before and _results_written(out):
        for kind in ("data", "model"):
            was, now = _hash(before.get(kind)), _hash(prints.get(kind))
            if was != now:
                raise UserError(f"{out} holds a run trained on other {kind} ({kind} sha256 {was} there, {now} "
                                f"now: {_name(prints.get(kind))}); resume with the same {kind}, or {FRESH_REMEDY}")
        return record
    record = dict(record, fingerprints=prints, settings_sha256=settings_sha256(settings))
    atomic_write_json(out / RUN_FILE, record)
    return record


def _hash(part) -> str:
    part = part or {}
    value = part.get("sha256") or part.get("config_sha256") or part.get("hub_id")
    return str(value)[:16] if value else "unknown"


def _name(part) -> str:
    return str((part or {}).get("name", "?"))


def stamp(out) -> dict:
    """What a checkpoint records of its run: the run id and the fingerprints it was trained on."""
    record = read(out)
    return {k: record[k] for k in ("run_id", "fingerprints", "settings_sha256") if k in record}


def check_stamp(out, saved: dict, path) -> None:
    """A file read back (a checkpoint, run_info.json, report.json) carries this run's id, if the run has one."""
    expected = run_id(out)
    if expected is None:
        return
    found = saved.get("run_id") if isinstance(saved, dict) else None
    if found != expected:
        raise UserError(f"{path} belongs to another run (run id {found or 'none'}; this folder's run is "
                        f"{expected}); remove it, or {FRESH_REMEDY}")


def check_checkpoint_file(out, path: Path) -> None:
    """The checkpoint names this run, read without loading torch: torch.save writes a zip whose pickle holds
    the run id as text."""
    expected = run_id(out)
    if expected is None or not path.exists():
        return
    try:
        with zipfile.ZipFile(path) as archive:
            pickled = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            found = pickled is not None and expected.encode() in archive.read(pickled)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise CorruptFile(path, f"not a checkpoint ({type(err).__name__})") from None
    if not found:
        raise UserError(f"{path} belongs to another run (it does not name this folder's run {expected}); "
                        f"remove it, or {FRESH_REMEDY}")


def check_folder(run_dir, info: dict) -> None:
    """For a report: run_info.json and the checkpoint belong to the folder's run (the tracking chunks are checked
    as they are read, sim.common.tracking)."""
    run_dir = Path(run_dir)
    if info:
        check_stamp(run_dir, info, run_dir / "run_info.json")
    check_checkpoint_file(run_dir, run_dir / "state" / "checkpoint.pt")
