"""Turn a run directory's logs into verdicts: report.json, report.md and the figures.

Every run-level prediction of theory.predictions that the run's algorithm
supports is evaluated on the tracked curves (effect, bootstrap CI over prompts,
verdict). validate.judge.summary merges several run directories and adds the two-run
comparisons (on-policy vs off-policy, extend vs DPO).
"""
from pathlib import Path

import numpy as np

from learning_dynamics.sim.common.io import atomic_write_json, atomic_write_text, json_ready, read_json
from learning_dynamics.sim.common.tracking import TrackingTable, series_from_table, steps_of
from learning_dynamics.theory import predictions
from learning_dynamics.theory import algorithms
from learning_dynamics.theory.algorithms import CONTROL
from learning_dynamics.theory.errors import CorruptFile, UserError
from learning_dynamics.validate import identity, provenance
from learning_dynamics.validate.judge import report_notes
from learning_dynamics.validate.data import probe_quality
from learning_dynamics.validate.data.repetition import prefix_repetition
from learning_dynamics.validate.presets import PRESETS, check
from learning_dynamics.sim.common.tracking import prompt_sort_key
from learning_dynamics.validate.measure.regime import measure_run
from learning_dynamics.sim.common.probe_plots import plot_probe_curves
from learning_dynamics.sim.common.style import algorithm_label
from learning_dynamics.validate.data.design import overlapping


def _read_json(path: Path, default=None, expect=dict):
    return read_json(path, default, expect)


REQUIRED_SETTINGS = ("algo", "seed", "steps", "model", "device", "data", "lr", "beta", "batch_pairs")


def load_settings(run_dir: Path) -> dict:
    """settings.json of a run, checked as a run's settings (a garbled one is named, not a KeyError)."""
    path = Path(run_dir) / "settings.json"
    settings = read_json(path, expect=dict)
    if settings is None:
        raise UserError(f"{run_dir} has no settings.json; is it a run directory?")
    missing = [k for k in REQUIRED_SETTINGS if k not in settings]
    # a ProbeMonitor run (preset "monitor", validate.monitor.monitor) was trained by the user's own script: what it
    # does not record (None: SFT and GRPO have no DPO beta) or ldyn has no flag for (an mps or xpu device)
    # is checked as the default preset's
    monitor = settings.get("preset") == "monitor"
    base = PRESETS["default"] if monitor else PRESETS.get(settings.get("preset"))
    if missing or base is None:
        raise CorruptFile(path, f"no {missing[0] if missing else 'known preset'}")
    try:  # settings added after this run was made fall back to its preset
        check({**base, **{k: v for k, v in settings.items() if not (monitor and (v is None or k == "device"))}})
    except (UserError, TypeError, KeyError) as err:
        raise CorruptFile(path, str(err).replace("--", "")) from None
    return settings


def scored_in(settings) -> str:
    """The precision a run's probes were scored in (its verdicts must clear that precision's noise)."""
    return settings.get("precision") or "float32"


def load_series(run_dir: Path):
    """(series, steps) of a run: probe curves plus the generation statistics."""
    rows = TrackingTable(run_dir / "tracking", run_id=identity.run_id(run_dir)).read()
    if not rows:
        raise UserError(f"{run_dir} has no tracking table (tracking/step_*.csv); is it a run directory?")
    try:
        series = series_from_table(rows)
    except ValueError as err:  # a chunk lost rows or prompts: the table does not add up
        raise CorruptFile(run_dir / "tracking", str(err).split(";")[0]) from None
    steps = steps_of(rows)
    paths = [run_dir / "generations" / f"step_{int(s):09d}.json" for s in steps]
    found = [(path, g) for path, g in ((path, _read_json(path, expect=list)) for path in paths) if g]
    # a run generates at its first and last evaluation, the two a verdict compares (older runs: at every one);
    # the generation series have a row for each evaluation that generated
    if found and found[0][0] == paths[0] and found[-1][0] == paths[-1]:
        paths, generations = [path for path, _ in found], [g for _, g in found]
        odd = next((path for path, g in zip(paths, generations) if len(g) != len(generations[0])), None)
        if odd is not None:
            raise CorruptFile(odd, f"holds another number of generations than {paths[0].name}")
        for key in ("distinct2", "rep4", "n_tokens", "distinct2_fixed", "rep4_fixed"):
            if key in ("distinct2", "rep4") or all(key in r for g in generations for r in g):
                series[f"gen/{key}"] = np.stack([_generation_stat(path, g, key)
                                                 for path, g in zip(paths, generations)])
        if all("text" in r for g in generations for r in g):
            series["gen/rep4_prefix"] = np.array([[prefix_repetition(str(r["text"])) for r in g]
                                                  for g in generations])
    _mask_unusable(series, _read_json(run_dir / "probes.json", [], expect=list), _prompt_order(rows))
    mass = [_read_json(run_dir / "mass" / f"step_{int(s):09d}.json", expect=list) for s in steps]
    if all(mass):
        order = {p: i for i, p in enumerate(_prompt_order(rows))}
        for key in ("tv_mean", "top_gain_mean"):
            table = np.full((len(steps), len(order)), np.nan)
            for i, records in enumerate(mass):
                for r in records:
                    table[i, order[str(r["prompt_id"])]] = r[key]
            series[f"mass/{key[:-5]}"] = table
    return series, steps


def _mask_unusable(series, probe_set, prompts) -> None:
    """NaN where a probe was marked unusable (validate.data.probe_quality): the verdicts that read it leave its prompt
    out; the curves and summaries average over the rest."""
    column = {p: i for i, p in enumerate(prompts)}
    for record in probe_set:
        for probe in (record.get("unusable") or {}) if isinstance(record, dict) else ():
            j = column.get(str(record.get("prompt_id")))
            for key in [k for k in series if k.endswith(f"/{probe}")] if j is not None else ():
                series[key] = np.array(series[key], dtype=float)
                series[key][:, j] = np.nan


def _prompt_order(rows) -> list:
    """Prompt ids in the order of series_from_table's columns."""
    return sorted({str(r["prompt_id"]) for r in rows}, key=prompt_sort_key)


def _generation_stat(path, records, key) -> np.ndarray:
    try:
        values = np.array([float(r[key]) for r in records], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise CorruptFile(path, f"a generation record has no numeric {key!r}") from None
    return values


def run_regime(run_dir: Path, settings, info, series, steps) -> tuple:
    """(theory.regime.Regime, the first step's agreement) of a run, from its logs (validate.measure.regime)."""
    return measure_run(run_dir, settings, info, series, steps, TrackingTable(run_dir / "tracking").read())


def _figures(run_dir: Path, series, steps, algo: str) -> list:
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


# settings a control run must share with the run it controls: the same pairs, probes, seed and length
CONTROL_MATCH = ("model", "data", "seed", "n_train", "n_probe", "max_prompt_tokens", "max_response_tokens",
                 "steps", "batch_pairs", "eval_every", "gen_prompts", "gen_tokens")


def is_control_for(control_settings: dict, settings: dict) -> bool:
    """A control of the run's algorithm (theory.algorithms.controls: its counterfactual control, SFT) on the same
    pairs, probe prompts and seed, as long, evaluated at the same steps, from the same starting model (a run with
    a warm-up phase, extend, tracks its curves from the model it left: it has none)."""
    return control_settings.get("algo") in algorithms.controls(settings["algo"]) and all(
        control_settings.get(k) == settings.get(k) for k in CONTROL_MATCH)


def controls_among(settings: dict, candidates: dict) -> dict:
    """{control algorithm: run directory} of `settings`' controls among `candidates` ({dir: settings}), in the
    order the run is judged against them."""
    found = {}
    for d, cs in candidates.items():
        if is_control_for(cs, settings):
            found.setdefault(cs["algo"], d)
    return {name: found[name] for name in algorithms.controls(settings["algo"]) if name in found}


def _caveat(row, design_info) -> str:
    """Why a verdict's probes are also training targets (validate.data.design), or ''."""
    hits = overlapping(design_info, predictions.BY_ID[row["id"]].probes if row["id"] in predictions.BY_ID else ())
    n = (design_info or {}).get("n_probe_prompts")
    return ", ".join(f"{p} is a training target for {c} of {n} probe prompts" for p, c in hits.items())


def with_caveats(rows, design_info) -> list:
    """The rows, each with its caveat (a flag in every table row that reads a probe that is a training target)."""
    return [dict(r, caveat=caveat) if (caveat := _caveat(r, design_info)) else r for r in rows]


def _caveat_lines(flagged) -> list:
    """One line per verdict whose probes are also training targets, from rows with_caveats flagged."""
    return [f"- {r['id']}: {r['caveat']}" for r in flagged if r.get("caveat")]


def write_report(run_dir, control=None, controls=None, control_note=None) -> dict:
    """controls: {control algorithm: run directory} of this run's controls (validate.judge.report.controls_among): P09c,
    P10, P17, P17r, P18r, P05r and P06r are judged against each, the counterfactual control first; `control`
    alone: the SFT control's directory; control_note: why there is none (validate.judge.report_notes)."""
    run_dir = Path(run_dir)
    if controls is None:
        controls = {CONTROL: control} if control else {}
    settings = load_settings(run_dir)
    info = _read_json(run_dir / "run_info.json", {})
    identity.check_folder(run_dir, info)
    stopped = read_stopped(run_dir)
    algo = settings["algo"]
    regime, first_step = None, {}
    if stopped and not list((run_dir / "tracking").glob("step_*.csv")):
        series, steps, rows, figures = {}, np.array([], dtype=np.int64), _unevaluated_rows(algo), []
    else:
        series, steps = load_series(run_dir)
        with np.errstate(all="ignore"):  # a stopped run's last evaluation may hold non-finite log-probs
            regime, first_step = run_regime(run_dir, settings, info, series, steps)
            control_series = {name: load_series(Path(d))[0] for name, d in controls.items()}
            rows = predictions.evaluate_run(series, algo, level="llm", seed=settings["seed"],
                                            controls=control_series, regime=regime, precision=scored_in(settings))
        figures = _figures(run_dir, series, steps, algo)
    design_info = _read_json(run_dir / "design.json")
    rows = report_notes.mark_skipped(rows, (design_info or {}).get("skipped_probes"))
    if stopped:
        rows = _inconclusive(rows, stopped)
    flagged = with_caveats(rows, design_info)
    first_order = _read_json(run_dir / "first_order.json")
    if first_order:
        figures += [f for f in first_order.get("figures", []) if isinstance(f, str)]
    complete = bool(len(steps)) and int(steps[-1]) >= settings["steps"] and bool(info) and not stopped
    shown = provenance.public_settings(settings)
    # the command and fingerprints are those of the code that trained (run_info.json), not of a later rebuild
    made = {k: info[k] for k in ("reproduce", "reproduce_error") if k in info} if "reproduce" in info else \
        provenance.safely(provenance.run_command, settings, run_dir, first_order=bool(first_order))
    report = json_ready({
        "complete": complete, "stopped": stopped,
        "model": info.get("model", settings["model"]), "device": info.get("device", settings["device"]),
        "algo": algo, "data": shown["data"] or provenance.DEFAULT_DATA, "settings": shown,
        "seed": settings["seed"], **made, "run_id": identity.run_id(run_dir),
        # a run stopped or killed before run_info.json has the fingerprints it recorded when it started
        "fingerprints": info.get("fingerprints") or identity.read(run_dir).get("fingerprints"),
        # a report rebuilt later on another machine keeps the versions of the machine that trained
        "versions": info.get("versions") or provenance.versions(),
        "run": {k: v for k, v in info.items() if k not in ("fingerprints", "reproduce", "reproduce_error")},
        "steps": steps.tolist(),
        "first_order": first_order, "figures": figures,
        "controls": {name: str(d) for name, d in controls.items()}, "design": design_info,
        "control_note": None if controls else (control_note or "no control run was given with it"),
        "regime": None if regime is None else {**regime.as_dict(), "first_step": first_step},
        "unusable_probes": probe_quality.summary(_read_json(run_dir / "probes.json", [], expect=list)),
        "caveats": _caveat_lines(flagged), "predictions": flagged,
        "summary": {key: {"start": _finite_mean(series[key][0]), "end": _finite_mean(series[key][-1])}
                    for key in sorted(series) if key.startswith(("logps/", "entropy/chosen", "gen/"))},
    })
    atomic_write_json(run_dir / "report.json", report)
    atomic_write_text(run_dir / "report.md", markdown(report))
    return report


def _finite_mean(values):
    """The mean over the prompts that have a value (a generation too short for a statistic has none), or None."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else None


def fmt(x, digits=3):
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}g}"


def judged_label(r) -> str:
    role = {"primary": "; primary, Holm-corrected", "exploratory": ""}.get(r.get("role"), "")
    seeds = f"{len(r['seeds'])} seeds, " if r.get("seeds") else ""
    if r.get("basis"):
        return seeds + r["basis"] + role
    if r.get("control"):
        return f"{seeds}vs {algorithms.get(r['control']).label} control{role}"
    if r.get("needs_control"):
        return "no control: not judged"
    return (seeds + "this run" if seeds else "this run") + role


def prediction_table(rows, with_algo: bool = False) -> str:
    head = "| " + ("run | " if with_algo else "") + "id | prediction | judged | verdict | effect | 95% CI |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ci = r.get("ci") or [None, None]
        unit = f" {r['unit']}" if r.get("unit") else ""
        flag = "†" if r.get("caveat") else ""
        lines.append("| " + (f"{r['run']} | " if with_algo else "") +
                     f"{r['id']}{flag} | {r['claim']} | {judged_label(r)} | **{r['verdict']}** | {fmt(r['effect'])}{unit} | "
                     f"[{fmt(ci[0])}, {fmt(ci[1])}] |")
    if any(r.get("caveat") for r in rows):
        lines += ["", "† reads a probe that is also a training target: " + "; ".join(dict.fromkeys(
            f"{r['id']}: {r['caveat']}" for r in rows if r.get("caveat")))]
    return "\n".join(lines)


def _not_tested(rows) -> list:
    """[(reason, [ids])] of the rows judged "not tested", each reason once."""
    reasons = {}
    for r in rows:
        if r.get("not_tested"):
            reasons.setdefault(r["not_tested"].removeprefix("not tested: "), []).append(r["id"])
    return list(reasons.items())


def _regime_lines(regime) -> list:
    """report.md's account of the run's regime (theory.regime): was the force active, were the steps first-order."""
    if not regime:
        return []
    lines = ["## Regime", ""]
    first = regime.get("first_step") or {}
    th = regime["thresholds"]
    if first:
        source = (f" by the first-order check `{first['measured_by']}` (its k-step run took this run's first step: "
                  f"{first.get('why') or 'the same settings'})" if first.get("measured_by") else "")
        lines.append(f"First optimizer step, predicted to first order (a jvp along the real update){source}, against "
                     f"the tracked change over {first['n']} probe responses: relative error "
                     f"{first['relative_error']:.1%}, Pearson r {first['pearson_r']:.4f}: "
                     + ("first-order" if regime["first_order"] else
                        f"**not first-order** (> {th['first_order']:.0%}): claims that need first-order steps are "
                        "not tested") + ".")
    if regime.get("force"):
        cells = ", ".join(f"{s}: {f:.2f}" + (f" ({q:.0%} saturated)" if q else "")
                          for s, f, q in zip(regime["steps"], regime["force"], regime["saturated"]))
        lines.append(f"Mean share of the initial force left on the probe pairs (DPO: sigma(-u)/sigma(0); saturated: "
                     f"below {th['saturated']:.0%}), by step: {cells}. Claims about negative gradients are read at "
                     f"step {regime['active_until_step']}, the last evaluation with at least {th['active']:.0%}.")
    if regime.get("visits"):
        lines.append("Mean visits per probe pair before each evaluation: " + ", ".join(
            f"{s}: {v:.2g}" for s, v in zip(regime["steps"], regime["visits"])) + ".")
    lines += [f"Note: {n}." for n in regime.get("notes", [])]
    return lines + [""]


def _design_lines(report) -> list:
    d = report.get("design")
    if not d:
        return ["## Data design", "", "No design.json: this run was made before probe/target overlap was measured.", ""]
    overlap = {p: c["any"] for p, c in d["overlap"].items() if c["any"]}
    lines = ["## Data design", "",
             f"Probe texts that are also training targets ({d['n_probe_prompts']} probe prompts, "
             f"{d['n_train_pairs']} training pairs; y+ and y- of the probe's own pair excepted; "
             f"{', '.join(d['by_design'])} is a training target by design): " +
             (", ".join(f"{p} {c}" for p, c in sorted(overlap.items())) or "none") + ".", ""]
    if report.get("caveats"):
        lines += ["Verdicts whose probes are training targets (read them with that in mind):", "",
                  *report["caveats"], ""]
    if report.get("unusable_probes"):
        lines += ["Model-written probes left out of the verdicts that read them (validate.data.probe_quality): " + "; ".join(
            f"{probe} of {sum(c.values())} probe prompts (" + ", ".join(f"{n} {why}" for why, n in c.items()) + ")"
            for probe, c in report["unusable_probes"].items()) + ".", ""]
    return lines


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
             f"{run.get('n_train_pairs', '?')} training pairs, {run.get('n_probe_prompts', '?')} probe "
             f"prompts{report_notes.throughput(run)}.", "",
             *([] if not report.get("stopped") else [
                 f"**Stopped at step {report['stopped']['step']}:** {report['stopped']['reason']}. Every verdict "
                 "below is inconclusive: a diverged or collapsed model tests no prediction.", ""]),
             *([] if report.get("complete", True) or report.get("stopped") else [
                 f"**Incomplete run:** tracked to step {report['steps'][-1]} of {s['steps']}; the process stopped "
                 "before the end (verdicts below are over the steps it reached).", ""]),
             reproduce_line(report), "",
             "## Predictions", "",
             *report_notes.control_lines(report), report_notes.SIGN, "",
             prediction_table(report["predictions"]) if report["predictions"] else
             "(no run-level prediction of the catalogue concerns this algorithm)", "",
             *[f"Not tested ({', '.join(ids)}): {reason}." for reason, ids in _not_tested(report["predictions"])],
             "", *_regime_lines(report.get("regime")),
             *report_notes.skipped_lines(report.get("design")), *_design_lines(report)]
    fo = report.get("first_order")
    if fo:
        parts += ["## First-order (eNTK) check", "",
                  f"Pearson r {fmt(fo.get('pearson_r'), 4)}, error slope {fmt(fo.get('error_slope'))} "
                  f"(theory: 2) over eta {fo.get('etas')}", ""]
    curves = next((f for f in report.get("figures", []) if f.startswith("curves.")), "curves.png")
    parts += ["## Probe curves", "", f"![probe curves]({curves})", ""]
    return "\n".join(parts)
