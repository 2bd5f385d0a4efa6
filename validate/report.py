"""Turn a run directory's logs into verdicts: report.json, report.md and the figures.

Every run-level prediction of theory.predictions that the run's algorithm
supports is evaluated on the tracked curves (effect, bootstrap CI over prompts,
verdict). `merge` adds the two-run comparisons (on-policy vs off-policy, extend
vs DPO) across run directories.
"""
import math
from pathlib import Path

import numpy as np

from learning_dynamics.sim.io import atomic_write_json, atomic_write_text, read_json
from learning_dynamics.sim.tracking import TrackingTable, series_from_table, steps_of
from learning_dynamics.theory import predictions
from learning_dynamics.theory.errors import CorruptFile, UserError
from learning_dynamics.validate import provenance


def _clean(obj):
    """JSON without NaN: a missing number is null."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _read_json(path: Path, default=None, expect=dict):
    return read_json(path, default, expect)


REQUIRED_SETTINGS = ("algo", "seed", "steps", "model", "device", "data", "lr", "beta", "batch_pairs")


def load_settings(run_dir: Path) -> dict:
    """settings.json of a run, checked as a run's settings (a garbled one is named, not a KeyError)."""
    from learning_dynamics.validate.presets import PRESETS, check
    path = Path(run_dir) / "settings.json"
    settings = read_json(path, expect=dict)
    if settings is None:
        raise UserError(f"{run_dir} has no settings.json; is it a run directory?")
    missing = [k for k in REQUIRED_SETTINGS if k not in settings]
    if missing or settings.get("preset") not in PRESETS:
        raise CorruptFile(path, f"no {missing[0] if missing else 'known preset'}")
    try:  # settings added after this run was made fall back to its preset
        check({**PRESETS[settings["preset"]], **settings})
    except (UserError, TypeError, KeyError) as err:
        raise CorruptFile(path, str(err).replace("--", "")) from None
    return settings


def load_series(run_dir: Path):
    """(series, steps) of a run: probe curves plus the generation statistics."""
    rows = TrackingTable(run_dir / "tracking").read()
    if not rows:
        raise UserError(f"{run_dir} has no tracking table (tracking/step_*.csv); is it a run directory?")
    try:
        series = series_from_table(rows)
    except ValueError as err:  # a chunk lost rows or prompts: the table does not add up
        raise CorruptFile(run_dir / "tracking", str(err).split(";")[0]) from None
    steps = steps_of(rows)
    paths = [run_dir / "generations" / f"step_{int(s):09d}.json" for s in steps]
    generations = [_read_json(path, expect=list) for path in paths]
    if all(g for g in generations):
        odd = next((path for path, g in zip(paths, generations) if len(g) != len(generations[0])), None)
        if odd is not None:
            raise CorruptFile(odd, f"holds another number of generations than {paths[0].name}")
        for key in ("distinct2", "rep4"):
            series[f"gen/{key}"] = np.stack([_generation_stat(path, g, key) for path, g in zip(paths, generations)])
    return series, steps


def _generation_stat(path, records, key) -> np.ndarray:
    try:
        values = np.array([float(r[key]) for r in records], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise CorruptFile(path, f"a generation record has no numeric {key!r}") from None
    return values


def _figures(run_dir: Path, series, steps, algo: str) -> list:
    from learning_dynamics.sim.probe_plots import plot_probe_curves
    from learning_dynamics.sim.style import algorithm_label
    path = plot_probe_curves(series, run_dir / "curves.png",
                             f"{algorithm_label(algo)}: log-probability of each probe type", steps=steps)
    return [path.name]


def read_stopped(run_dir) -> dict:
    """{"step", "reason"} of a run that stopped because it diverged or collapsed, else None."""
    path = Path(run_dir) / "stopped.json"
    stopped = read_json(path, expect=dict)
    if stopped is not None and not (isinstance(stopped.get("reason"), str) and isinstance(stopped.get("step"), int)):
        raise CorruptFile(path, "no step and reason")
    return stopped


def _inconclusive(rows, stopped) -> list:
    """A stopped run's numbers are kept, but no verdict is drawn from a diverged or collapsed model."""
    why = f"run stopped: {stopped['reason']}"
    return [dict(r, verdict="inconclusive", inconclusive_reason=why,
                 detail=f"{why}; {r['detail']}" if r.get("detail") else why) for r in rows]


def _unevaluated_rows(algo) -> list:
    nan = float("nan")
    return [{"id": p.id, "claim": p.claim, "verdict": "inconclusive", "effect": nan, "ci": [nan, nan], "n": 0,
             "unit": p.effect_unit, "detail": ""} for p in predictions.CATALOGUE
            if p.scope == "run" and algo in p.applies_to and "llm" in p.levels]


def write_report(run_dir) -> dict:
    run_dir = Path(run_dir)
    settings = load_settings(run_dir)
    info = _read_json(run_dir / "run_info.json", {})
    stopped = read_stopped(run_dir)
    algo = settings["algo"]
    if stopped and not list((run_dir / "tracking").glob("step_*.csv")):
        series, steps, rows, figures = {}, np.array([], dtype=np.int64), _unevaluated_rows(algo), []
    else:
        series, steps = load_series(run_dir)
        with np.errstate(all="ignore"):  # a stopped run's last evaluation may hold non-finite log-probs
            rows = predictions.evaluate_run(series, algo, level="llm", seed=settings["seed"])
        figures = _figures(run_dir, series, steps, algo)
    if stopped:
        rows = _inconclusive(rows, stopped)
    first_order = _read_json(run_dir / "first_order.json")
    if first_order:
        figures += [f for f in first_order.get("figures", []) if isinstance(f, str)]
    complete = bool(len(steps)) and int(steps[-1]) >= settings["steps"] and bool(info) and not stopped
    shown = provenance.public_settings(settings)
    # the command and fingerprints are those of the code that trained (run_info.json), not of a later rebuild
    made = {k: info[k] for k in ("reproduce", "reproduce_error") if k in info} if "reproduce" in info else \
        provenance.safely(provenance.run_command, settings, run_dir, first_order=bool(first_order))
    report = _clean({
        "complete": complete, "stopped": stopped,
        "model": info.get("model", settings["model"]), "device": info.get("device", settings["device"]),
        "algo": algo, "data": shown["data"] or provenance.DEFAULT_DATA, "settings": shown,
        "seed": settings["seed"], **made, "fingerprints": info.get("fingerprints"),
        # a report rebuilt later on another machine keeps the versions of the machine that trained
        "versions": info.get("versions") or provenance.versions(),
        "run": {k: v for k, v in info.items() if k not in ("fingerprints", "reproduce", "reproduce_error")},
        "steps": steps.tolist(),
        "first_order": first_order, "predictions": rows, "figures": figures,
        "summary": {key: {"start": float(np.nanmean(series[key][0])), "end": float(np.nanmean(series[key][-1]))}
                    for key in sorted(series) if key.startswith(("logps/", "entropy/chosen", "gen/"))},
    })
    atomic_write_json(run_dir / "report.json", report)
    atomic_write_text(run_dir / "report.md", markdown(report))
    return report


def _fmt(x, digits=3):
    return "n/a" if x is None else f"{x:.{digits}g}"


def prediction_table(rows, with_algo: bool = False) -> str:
    head = "| " + ("run | " if with_algo else "") + "id | prediction | verdict | effect | 95% CI |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ci = r.get("ci") or [None, None]
        unit = f" {r['unit']}" if r.get("unit") else ""
        lines.append("| " + (f"{r['algo']} | " if with_algo else "") +
                     f"{r['id']} | {r['claim']} | **{r['verdict']}** | {_fmt(r['effect'])}{unit} | "
                     f"[{_fmt(ci[0])}, {_fmt(ci[1])}] |")
    return "\n".join(lines)


def reproduce_line(report: dict) -> str:
    """report.md's account of how to make the report again: the command, then the fingerprints."""
    command = (f"Reproduce: `{report['reproduce']}`" if report.get("reproduce") else
               f"Reproduce: not expressible as one command ({report.get('reproduce_error', 'unknown settings')})")
    prints = report.get("fingerprints")
    return command + ("\n\n" + provenance.describe(prints) if prints else
                      "\n\nFingerprints: none recorded (a run made before they existed).")


def markdown(report: dict) -> str:
    s = report["settings"]
    run = report.get("run") or {}
    parts = [f"# {report['algo']} on {report['model']}", "",
             f"Device: {report['device']}; preset `{s['preset']}`; {s['steps']} steps of {s['batch_pairs']} pairs, "
             f"lr {s['lr']}, beta {s['beta']}, seed {report['seed']}; "
             f"{run.get('n_train_pairs', '?')} training pairs, {run.get('n_probe_prompts', '?')} probe prompts; "
             f"training throughput {run.get('train_tokens_per_second', '?')} tokens/s.", "",
             *([] if not report.get("stopped") else [
                 f"**Stopped at step {report['stopped']['step']}:** {report['stopped']['reason']}. Every verdict "
                 "below is inconclusive: a diverged or collapsed model tests no prediction.", ""]),
             *([] if report.get("complete", True) or report.get("stopped") else [
                 f"**Incomplete run:** tracked to step {report['steps'][-1]} of {s['steps']}; the process stopped "
                 "before the end (verdicts below are over the steps it reached).", ""]),
             reproduce_line(report), "",
             "## Predictions", "", prediction_table(report["predictions"]) if report["predictions"] else
             "(no run-level prediction of the catalogue concerns this algorithm)", ""]
    fo = report.get("first_order")
    if fo:
        parts += ["## First-order (eNTK) check", "",
                  f"Pearson r {_fmt(fo.get('pearson_r'), 4)}, error slope {_fmt(fo.get('error_slope'))} "
                  f"(theory: 2) over eta {fo.get('etas')}", ""]
    curves = next((f for f in report.get("figures", []) if f.startswith("curves.")), "curves.png")
    parts += ["## Probe curves", "", f"![probe curves]({curves})", ""]
    return "\n".join(parts)


def _merge_warning(prints: dict):
    differ = provenance.differing_fingerprints(prints)
    return f"merging runs made with {differ}" if differ else None


def _verdict_figure(rows, out: Path):
    """The forest plot of every verdict beside summary.md (None when no row has an effect)."""
    from learning_dynamics.validate.verdict_figure import plot_verdicts
    if not any(r.get("effect") is not None for r in rows):
        return None
    return plot_verdicts(rows, out / "verdicts.png")


def merge(run_dirs, out) -> dict:
    """One report over several runs: each run's verdicts plus the two-run comparisons."""
    runs, checks = {}, []
    for d in map(Path, run_dirs):
        if not (d / "settings.json").exists() and (d / "first_order.json").exists():
            checks.append(dict(_read_json(d / "first_order.json"), algo=f"check ({d.name})"))
            continue
        runs_report = _read_json(d / "report.json")
        report = runs_report if runs_report and "predictions" in runs_report else write_report(d)
        runs[report["algo"]] = (d, report)
    prints = {d.name: rep.get("fingerprints") or {} for d, rep in runs.values()}
    for d in map(Path, run_dirs):
        if not (d / "settings.json").exists() and (d / "first_order.json").exists():
            prints[d.name] = _read_json(d / "first_order.json").get("fingerprints") or {}
    if not runs:
        raise UserError("no run directory among the arguments (each needs settings.json and tracking/)")
    series_by_algo = {algo: load_series(d)[0] for algo, (d, _) in runs.items()}
    seed = next(iter(runs.values()))[1]["seed"]
    compare = predictions.evaluate_comparison(series_by_algo, level="llm", seed=seed)
    rows = [dict(r, algo=algo) for algo, (_, rep) in runs.items() for r in rep["predictions"]]
    rows += [dict(r, algo=" vs ".join(predictions.get(r["id"]).applies_to)) for r in compare]
    first_order = checks + [dict(rep["first_order"], algo=algo) for algo, (_, rep) in runs.items()
                            if rep.get("first_order")]
    devices = {rep["device"] for _, rep in runs.values()}
    out = Path(out)
    merged = _clean({"runs": {a: str(d) for a, (d, _) in runs.items()}, "predictions": rows,
                     "first_order": first_order, "versions": provenance.versions(), "fingerprints": prints,
                     "warning": _merge_warning(prints),
                     "model": sorted({rep["model"] for _, rep in runs.values()}),
                     "device": sorted(devices - {"cuda"} if devices - {"cuda", "cpu"} else devices)})
    atomic_write_json(out / "summary.json", merged)
    figure = _verdict_figure(rows, out)
    lines = ["# Verdicts over all runs", "", f"Model: {', '.join(merged['model'])}; device: "
             f"{', '.join(merged['device'])}.", "", prediction_table(rows, with_algo=True), ""]
    if figure:
        lines += [f"![every verdict: effect and 95% CI per run]({figure.name})", ""]
    for fo in first_order:
        lines.append(f"First-order check, {fo['algo']}: Pearson r {_fmt(fo.get('pearson_r'), 6)}, "
                     f"error slope {_fmt(fo.get('error_slope'))} (theory: 2), on {fo.get('n_probe_sequences')} "
                     "probe responses.")
        squeeze = (fo.get("token_squeeze") or {}).get("rejected_only")
        if squeeze and squeeze.get("positions"):
            shared = fo["token_squeeze"]["shared"]
            lines.append(f"Token-level squeeze: at {squeeze['positions']} rejected-only positions the top "
                         f"token other than y-'s rises at {_fmt(squeeze['argmax_rises'], 2)} of them (shared-prefix "
                         f"positions: {_fmt(shared.get('argmax_rises'), 2)} of {shared.get('positions')}); theory's "
                         f"first-order rising set has precision {_fmt(squeeze['precision'], 2)} and recall "
                         f"{_fmt(squeeze['recall'], 2)} against the measured one.")
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    return merged
