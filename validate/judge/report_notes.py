"""What a report says beside its verdict table (validate.judge.report): how to read an effect's sign, which probe types
the data could not build (and so which verdicts are inconclusive), why a run has no SFT control, and the
training throughput only when it was measured."""
from learning_dynamics.theory import predictions
from learning_dynamics.theory.probes import BY_NAME
from learning_dynamics.theory import algorithms

SIGN = ("Every effect is signed so that a positive value is the direction the prediction states (a fall predicted: "
        "the fall, start minus end); a verdict holds when its 95% CI lies above 0, fails when it lies below 0, and "
        "is inconclusive otherwise.")


def mark_skipped(rows, skipped: dict) -> list:
    """Verdicts that read a probe type the data could not build are inconclusive, with that probe's reason."""
    if not skipped:
        return rows
    out = []
    for r in rows:
        prediction = predictions.BY_ID.get(r["id"])
        missing = [p for p in (prediction.probes if prediction else ()) if p in skipped]
        if missing:
            why = "; ".join(f"{p} not built: {skipped[p]}" for p in missing)
            r = dict(r, verdict="inconclusive", inconclusive_reason=why, detail=why)
        out.append(r)
    return out


def skipped_lines(design) -> list:
    """report.md's account of the probe set's format and tokenization, and the probe types left out."""
    design = design or {}
    lines = []
    if design.get("data_format") or design.get("tokenization"):
        lines += [f"Probe data: {design.get('data_format', 'preference')} rows; tokenization: "
                  f"{design.get('tokenization', 'ldyn own (chat template)')}.", ""]
    skipped = design.get("skipped_probes") or {}
    if skipped:
        lines += ["Probe types not built (the verdicts that read them are inconclusive):", ""]
        lines += [f"- {BY_NAME[p].description if p in BY_NAME else p}: {why}" for p, why in skipped.items()]
        lines.append("")
    return lines


def control_mismatch(control_settings: dict, settings: dict, match) -> str:
    """Why an SFT run is no control for a run: the first setting of `match` that differs, or None."""
    for key in match:
        if control_settings.get(key) != settings.get(key):
            return f"{key} {control_settings.get(key)!r} there, {settings.get(key)!r} here"
    return None


def no_control_note(settings: dict, candidates: dict, match) -> str:
    """Why a run got no SFT control among `candidates` ({name: settings} of the SFT runs given with it)."""
    if algorithms.get(settings["algo"]).warmup is not None:
        return "its curves start after its own SFT phase, so no SFT run from the initial model controls it"
    if not candidates:
        return "no SFT run on the same pairs was given with it"
    return "; ".join(f"`{name}` is no control for it ({control_mismatch(cs, settings, match) or 'another design'})"
                     for name, cs in candidates.items())


def control_lines(report: dict) -> list:
    """Which controls a run is judged against (its counterfactual control first, then SFT), or why it has none
    (only where a verdict needs one)."""
    controls = report.get("controls") or ({"sft": report["control"]} if report.get("control") else {})
    if controls:
        return ["Controls (same pairs, probes and seed), judged against in this order: " + "; ".join(
            f"`{d}` ({algorithms.get(name).label}" + (": the same step without the negative gradient, read at "
                                                      "equal steps)" if algorithms.get(name).control_of else ")")
            for name, d in controls.items()) + ".", ""]
    if not any(r.get("needs_control") for r in report.get("predictions", [])):
        return []
    return [f"No control ({report.get('control_note') or 'none given'}): claims that something else than a negative "
            "gradient could also cause are shown but not judged (`ldyn validate report RUN CONTROL` judges them "
            "against a control run on the same pairs, probes, seed and number of steps: the algorithm's pull-only "
            "counterpart, or SFT).", ""]


def throughput(run: dict) -> str:
    """The training throughput clause, or nothing when the run did not measure it (a monitored run)."""
    value = run.get("train_tokens_per_second")
    return f"; training throughput {value} tokens/s" if value is not None else ""
