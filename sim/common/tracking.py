"""The probe tracking table, shared by `ldyn sim lm` and validate's real-model runs.

One row per (evaluation step, prompt, probe) with the columns of SPEC.md:

    step, prompt_id, probe, logp_sum, logp_mean, n_tokens, entropy_mean,
    sqnorm_mean, argmax_logp_sum

Storage is one CSV *chunk* per evaluation step (`step_000000120.csv`), each
written atomically (temp file + fsync + rename, sim.common.io). A crash therefore
loses at most the evaluation in flight, never corrupts an earlier one, and a
resumed run asks `completed_steps()` which evaluations it can skip. `read()`
merges the chunks in step order; `series_from_table` turns the rows into the
[n_evals, n_prompts] arrays that theory.predictions evaluates.

A table made with a `run_id` (validate's runs) also keeps `manifest.json`: the run id and the SHA-256 of every
chunk it wrote, updated before the chunk itself. Reading such a table refuses a chunk the manifest does not
list with those bytes (another run's chunk copied in), and a manifest of another run; `completed_steps()`
counts only this run's chunks, so a resumed run evaluates a foreign step again, over it.
"""
import csv
import hashlib
import io
import math
import re
from pathlib import Path

import numpy as np

from learning_dynamics.sim.common.io import atomic_write_text
from learning_dynamics.theory.errors import CorruptFile
from learning_dynamics.sim.common.io import read_json
from learning_dynamics.sim.common.io import atomic_write_json
from learning_dynamics.theory.errors import UserError

COLUMNS = ("step", "prompt_id", "probe", "logp_sum", "logp_mean", "n_tokens", "entropy_mean",
           "sqnorm_mean", "argmax_logp_sum")
FLOAT_COLUMNS = ("logp_sum", "logp_mean", "entropy_mean", "sqnorm_mean", "argmax_logp_sum")
_CHUNK = re.compile(r"^step_(\d+)\.csv$")
MANIFEST = "manifest.json"


def _chunk_name(step: int) -> str:
    return f"step_{int(step):09d}.csv"


def _format(value) -> str:
    # repr keeps every bit of a float, so a table read back is the table written
    return repr(float(value)) if isinstance(value, (float, np.floating)) else str(value)


class TrackingTable:
    """A folder of per-step CSV chunks.

    `fresh=True` removes chunks left by an earlier run (a new run must not merge
    with a stale one); the default keeps them, which is how a run resumes.
    """

    def __init__(self, directory, fresh: bool = False, run_id: str = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id
        if fresh:
            for path in self._chunk_paths():
                path.unlink()
            (self.directory / MANIFEST).unlink(missing_ok=True)

    def _chunk_paths(self):
        return sorted(p for p in self.directory.iterdir() if _CHUNK.match(p.name))

    def completed_steps(self) -> list:
        return sorted(int(_CHUNK.match(p.name).group(1)) for p in self._chunk_paths() if self._ours(p))

    def _manifest(self) -> dict:
        """{chunk name: sha256} this run wrote; {} without a run id (nothing to check)."""
        if self.run_id is None:
            return {}
        path = self.directory / MANIFEST
        manifest = read_json(path, {"run_id": self.run_id, "chunks": {}}, expect=dict)
        if manifest.get("run_id") != self.run_id or not isinstance(manifest.get("chunks"), dict):
            raise CorruptFile(path, f"it belongs to another run (run id {manifest.get('run_id')}, not "
                                    f"{self.run_id})", "remove tracking/ or rerun with --fresh to start over")
        return manifest["chunks"]

    def _ours(self, path: Path) -> bool:
        return self.run_id is None or self._manifest().get(path.name) == _sha256(path.read_bytes())

    def _record(self, name: str, text: str) -> None:
        if self.run_id is not None:
            chunks = dict(self._manifest(), **{name: _sha256(text.encode("utf-8"))})
            atomic_write_json(self.directory / MANIFEST, {"run_id": self.run_id, "chunks": chunks})

    def append(self, step: int, rows) -> Path:
        """Write one evaluation's rows (dicts with COLUMNS, `step` filled in) as one chunk.

        Rewriting a step replaces its chunk whole: re-running an evaluation after
        a crash is idempotent.
        """
        if int(step) < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows:
            row = dict(row, step=int(step))
            if "logp_mean" not in row:
                row["logp_mean"] = row["logp_sum"] / max(row["n_tokens"], 1)
            missing = [c for c in COLUMNS if c not in row]
            if missing:
                raise ValueError(f"tracking row lacks {missing}")
            writer.writerow([_format(row[c]) for c in COLUMNS])
        self._record(_chunk_name(step), buffer.getvalue())   # first: a crash between leaves no unlisted chunk
        return atomic_write_text(self.directory / _chunk_name(step), buffer.getvalue())

    def read(self) -> list:
        """All rows of all chunks, in step order, values typed back; a chunk of another run is refused."""
        rows = []
        for path in self._chunk_paths():
            if not self._ours(path):
                raise UserError(f"{path} was not written by this run (run id {self.run_id}: tracking/{MANIFEST} "
                                "does not list it with these bytes); remove it, or rerun the run's command to "
                                "evaluate that step again")
            rows.extend(read_chunk(path))
        return rows

    def write_merged(self, path) -> Path:
        """One CSV with every row (for people and spreadsheets; chunks stay the source)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in self.read():
            writer.writerow([_format(row[c]) for c in COLUMNS])
        return atomic_write_text(path, buffer.getvalue())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_chunk(path) -> list:
    """One chunk's rows; a truncated, garbled or empty chunk raises CorruptFile naming it and the line."""

    step = int(_CHUNK.match(Path(path).name).group(1)) if _CHUNK.match(Path(path).name) else None
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None:
                raise CorruptFile(path, "empty")
            if tuple(reader.fieldnames) != COLUMNS:
                raise CorruptFile(path, f"its header is not the tracking schema {','.join(COLUMNS)}")
            rows = []
            for row in reader:
                try:
                    rows.append(_typed(row, step))
                except (TypeError, ValueError) as err:
                    raise CorruptFile(path, f"line {reader.line_num}: {err}") from None
            return rows
    except UnicodeDecodeError:
        raise CorruptFile(path, "not UTF-8 text") from None
    except csv.Error as err:
        raise CorruptFile(path, f"not CSV: {err}") from None


def _typed(row: dict, step=None) -> dict:
    if None in row:
        raise ValueError(f"more cells than the {len(COLUMNS)} columns")
    if None in row.values():
        filled = sum(v is not None for v in row.values())
        raise ValueError(f"{filled} of {len(COLUMNS)} cells (a truncated row?)")
    out = {"step": int(row["step"]), "prompt_id": row["prompt_id"], "probe": row["probe"],
           "n_tokens": int(row["n_tokens"])}
    if step is not None and out["step"] != step:
        raise ValueError(f"step {out['step']} in the chunk of step {step}")
    for column in FLOAT_COLUMNS:
        try:
            out[column] = float(row[column])
        except ValueError:
            raise ValueError(f"{column} {row[column]!r} is not a number") from None
    return out


def steps_of(rows) -> np.ndarray:
    """The evaluation steps present in the rows, ascending."""
    return np.array(sorted({int(r["step"]) for r in rows}), dtype=np.int64)


def series_from_table(rows, require_complete: bool = True) -> dict:
    """The rows as theory.predictions' `series`: key -> array [n_evals, n_prompts].

    Keys, for every probe p present: "logps/p" (logp_sum), "logp_mean/p",
    "entropy/p", "sqnorm/p", "argmax/p" (argmax_logp_sum), "n_tokens/p"; and "logps/greedy",
    the log-prob of y* = the argmax_logp_sum of probe "chosen". Prompts are
    ordered by id (numeric ids numerically). A missing (step, prompt, probe)
    cell raises unless `require_complete=False`, which leaves it NaN: a half
    table must not silently pass for a full one.
    """
    rows = list(rows)
    if not rows:
        return {}
    steps = steps_of(rows)
    prompts = sorted({str(r["prompt_id"]) for r in rows}, key=prompt_sort_key)
    probes = sorted({r["probe"] for r in rows})
    step_index = {int(s): i for i, s in enumerate(steps)}
    prompt_index = {p: i for i, p in enumerate(prompts)}
    fields = {"logps": "logp_sum", "logp_mean": "logp_mean", "entropy": "entropy_mean",
              "sqnorm": "sqnorm_mean", "argmax": "argmax_logp_sum"}
    fields["n_tokens"] = "n_tokens"
    arrays = {(f, p): np.full((len(steps), len(prompts)), np.nan) for f in fields for p in probes}
    for r in rows:
        i, j = step_index[int(r["step"])], prompt_index[str(r["prompt_id"])]
        for name, column in fields.items():
            arrays[(name, r["probe"])][i, j] = float(r[column])
    series = {f"{name}/{probe}": a for (name, probe), a in arrays.items()}
    if "chosen" in probes and "greedy" not in probes:
        series["logps/greedy"] = series["argmax/chosen"].copy()
    if require_complete:
        holes = [k for k, a in series.items() if k.startswith("logps/") and np.isnan(a).any()]
        if holes:
            raise ValueError(f"tracking table has missing (step, prompt) cells for {holes[:3]}; "
                             "pass require_complete=False to keep them as NaN")
    return series


def prompt_sort_key(prompt_id: str):
    try:
        return (0, float(prompt_id), prompt_id)
    except ValueError:
        return (1, math.inf, prompt_id)
