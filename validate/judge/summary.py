"""`ldyn validate report DIR...`: one summary over several run folders (summary.json, summary.md, verdicts.png).

Each run's report is rebuilt (validate.judge.report.write_report, judged against its SFT control when one of the
folders is one), then the two-run comparisons are added. A folder given twice, under any spelling
(`runs/dpo`, `./runs/dpo/`, an absolute path, a link), counts once; a run that did not reach its last step
is marked incomplete, and a stopped one stopped, in both summary files.
"""
from pathlib import Path

from learning_dynamics.sim.common.io import atomic_write_json, atomic_write_text, json_ready, read_json
import numpy as np

from learning_dynamics.theory import algorithms, predictions
from learning_dynamics.theory import regime as regimes
from learning_dynamics.theory.algorithms import CONTROL
from learning_dynamics.theory.errors import UserError
from learning_dynamics.validate.judge import pooling, report_notes
from learning_dynamics.validate import provenance
from learning_dynamics.validate.judge.report import (CONTROL_MATCH, with_caveats, fmt, controls_among, load_series,
                                               load_settings, prediction_table, scored_in, write_report)
from learning_dynamics.validate.judge.verdict_figure import plot_verdicts

# settings two runs must share to be compared (on-policy vs off-policy, extend vs DPO)
COMPARE_MATCH = ("model", "data", "seed", "n_train", "n_probe")


def unique_dirs(run_dirs) -> list:
    """The folders in the order given, each once: two spellings of one folder are one run."""
    seen, out = set(), []
    for d in map(Path, run_dirs):
        key = d.resolve()
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def _is_check(d: Path) -> bool:
    return not (d / "settings.json").exists() and (d / "first_order.json").exists()


def run_status(report: dict) -> str:
    """"complete", "stopped at step S: why", or "incomplete: tracked to step S of N" (a killed run)."""
    if report.get("stopped"):
        return f"stopped at step {report['stopped']['step']}: {report['stopped']['reason']}"
    if report.get("complete"):
        return "complete"
    last = report["steps"][-1] if report.get("steps") else None
    return f"incomplete: tracked to step {last} of {report['settings']['steps']}"


def merge(run_dirs, out) -> dict:
    """One report over several run directories: each run's verdicts (against each of its controls among them),
    every seed group's pooled verdicts (validate.judge.pooling), the two-run comparisons, and Holm's correction over
    the primary claims. Runs are keyed by directory, so two runs of one algorithm both count."""
    dirs = unique_dirs(run_dirs)
    checks = [dict(read_json(d / "first_order.json", expect=dict), algo=f"check ({d.name})")
              for d in dirs if _is_check(d)]
    settings_of = {}
    for d in dirs:
        if not _is_check(d):
            if not (d / "settings.json").exists():
                raise UserError(f"{d} has no settings.json; is it a run directory?")
            settings_of[str(d)] = load_settings(d)
    if not settings_of:
        raise UserError("no run directory among the arguments (each needs settings.json and tracking/)")
    names = _labels(list(settings_of))
    runs = {}
    for d, s in settings_of.items():
        controls = controls_among(s, settings_of)
        sft = {names[c]: cs for c, cs in settings_of.items() if c != d and cs.get("algo") == CONTROL}
        note = None if controls else report_notes.no_control_note(s, sft, CONTROL_MATCH)
        runs[d] = (write_report(d, controls=controls, control_note=note), controls)
    series = {d: load_series(Path(d))[0] for d in runs}
    prints = {names[d]: rep.get("fingerprints") or {} for d, (rep, _) in runs.items()}
    prints.update({d.name: read_json(d / "first_order.json", expect=dict).get("fingerprints") or {}
                   for d in dirs if _is_check(d)})
    rows = [dict(r, run=names[d], algo=rep["algo"]) for d, (rep, _) in runs.items() for r in rep["predictions"]]
    rows = _pooled(settings_of, runs, series, names) + rows + _comparisons(settings_of, names, runs, series)
    rows = pooling.correct_for_multiplicity(rows)
    first_order = checks + [dict(rep["first_order"], algo=names[d]) for d, (rep, _) in runs.items()
                            if rep.get("first_order")]
    merged = _summary(runs, names, rows, first_order, prints)
    out = Path(out)
    atomic_write_json(out / "summary.json", merged)
    figure = _verdict_figure([dict(r, algo=r["run"] + (f" ({r['basis']})" if r.get("basis") else ""))
                              for r in rows], out)
    atomic_write_text(out / "summary.md", _markdown(merged, rows, first_order, figure))
    return merged


def _comparisons(settings_of: dict, names: dict, runs: dict, series: dict) -> list:
    """The two-run predictions (scope "compare") for every pair of runs that share their pairs and probes, each
    run read inside its regime (theory.regime)."""
    rows = []
    for prediction in predictions.CATALOGUE:
        if prediction.scope != "compare":
            continue
        reference, other = prediction.applies_to
        for a, sa in settings_of.items():
            for b, sb in settings_of.items():
                if sa["algo"] != reference or sb["algo"] != other or any(sa.get(k) != sb.get(k)
                                                                          for k in COMPARE_MATCH):
                    continue
                regime_by_algo = {algo: regimes.Regime.from_dict(runs[d][0]["regime"])
                                  for algo, d in ((reference, a), (other, b)) if runs[d][0].get("regime")}
                for r in predictions.evaluate_comparison({reference: series[a], other: series[b]}, level="llm",
                                                         seed=sa["seed"], regime_by_algo=regime_by_algo,
                                                         precision=scored_in(sa)):
                    if r["id"] == prediction.id:
                        rows += with_caveats([dict(r, run=f"{names[a]} vs {names[b]}", algo=f"{reference} vs {other}")],
                                         runs[a][0].get("design"))
    return rows


def _summary(runs: dict, names: dict, rows: list, first_order: list, prints: dict) -> dict:
    devices = {rep["device"] for rep, _ in runs.values()}
    return json_ready({
        "runs": {names[d]: d for d in runs},
        "status": {names[d]: run_status(rep) for d, (rep, _) in runs.items()},
        "controls": {names[d]: {name: names[c] for name, c in cs.items()} for d, (_, cs) in runs.items() if cs},
        "predictions": rows, "first_order": first_order, "versions": provenance.versions(),
        "fingerprints": prints, "warning": _merge_warning(prints),
        "model": sorted({rep["model"] for rep, _ in runs.values()}),
        "device": sorted(devices - {"cuda"} if devices - {"cuda", "cpu"} else devices),
        "design": {names[d]: rep.get("design") for d, (rep, _) in runs.items()},
        "caveats": {names[d]: rep.get("caveats") for d, (rep, _) in runs.items() if rep.get("caveats")}})


def _markdown(merged: dict, rows: list, first_order: list, figure) -> str:
    lines = ["# Verdicts over all runs", "", f"Model: {', '.join(merged['model'])}; device: "
             f"{', '.join(merged['device'])}.", ""]
    unfinished = {run: status for run, status in merged["status"].items() if status != "complete"}
    for run, status in unfinished.items():
        lines.append(f"- **`{run}` is {'stopped' if status.startswith('stopped') else 'incomplete'}** "
                     f"({status}): its verdicts cover only the steps it reached.")
    for run, controls in merged["controls"].items():
        lines.append(f"- `{run}` is judged against " + ", then ".join(
            f"the {algorithms.get(name).label} control `{c}`" for name, c in controls.items()) +
            " (same pairs, probes and seed).")
    lines += ["", report_notes.SIGN, "", prediction_table(rows, with_algo=True), ""]
    if figure:
        lines += [f"![every verdict: effect and 95% CI per run]({figure.name})", ""]
    for run, caveats in merged["caveats"].items():
        lines += [f"Caveats for `{run}` (probes that are training targets):", *caveats, ""]
    for fo in first_order:
        lines += _first_order_lines(fo)
    return "\n".join(lines) + "\n"


def _first_order_lines(fo: dict) -> list:
    swept = fo.get("n_sweep_sequences", fo.get("n_probe_sequences"))   # older checks swept every probe
    lines = [f"First-order check, {fo['algo']}: Pearson r {fmt(fo.get('pearson_r'), 6)}, "
             f"error slope {fmt(fo.get('error_slope'))} (theory: 2), on {swept} probe responses."]
    squeeze = (fo.get("token_squeeze") or {}).get("rejected_only")
    if squeeze and squeeze.get("positions"):
        shared = fo["token_squeeze"]["shared"]
        lines.append(f"Token-level squeeze: at {squeeze['positions']} rejected-only positions the top "
                     f"token other than y-'s rises at {fmt(squeeze['argmax_rises'], 2)} of them (shared-prefix "
                     f"positions: {fmt(shared.get('argmax_rises'), 2)} of {shared.get('positions')}); theory's "
                     f"first-order rising set has precision {fmt(squeeze['precision'], 2)} and recall "
                     f"{fmt(squeeze['recall'], 2)} against the measured one.")
    return lines


def _merge_warning(prints: dict):
    differ = provenance.differing_fingerprints(prints)
    return f"merging runs made with {differ}" if differ else None


def _verdict_figure(rows, out: Path):
    """The forest plot of every verdict beside summary.md (None when no row has an effect)."""
    if not any(r.get("effect") is not None for r in rows):
        return None
    return plot_verdicts(rows, out / "verdicts.png")


def _pooled(settings_of, runs, series, names) -> list:
    """The verdicts of every seed group among the runs, over its seeds together (validate.judge.pooling)."""
    regime_of = {d: regimes.Regime.from_dict(rep["regime"]) for d, (rep, _) in runs.items() if rep.get("regime")}
    controls_of = {d: cs for d, (_, cs) in runs.items()}
    with np.errstate(all="ignore"):
        return [r for group in pooling.seed_groups(settings_of)
                for r in pooling.pooled_rows(group, settings_of, series, regime_of, controls_of, names)]


def _labels(dirs) -> dict:
    """A short unique name per run directory: its folder name, with parents added where two clash."""
    paths = {d: Path(d).resolve() for d in dirs}
    depth = 1
    while True:
        names = {d: "/".join(p.parts[-depth:]) for d, p in paths.items()}
        if len(set(names.values())) == len(names) or depth > 8:
            return names
        depth += 1
