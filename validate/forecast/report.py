"""Judging a forecast against the real steps, and writing it: table (CSV, markdown), figures, summary, filter file.

Each predictor (validate.forecast.steps.PREDICTORS) is judged against the measured change of log pi(y+) after a
real step on each pair alone: Spearman's rank correlation, the overlap of its top 10% (the pairs it predicts to
fall most) with the 10% whose y+ actually falls most (a random ranking's expectation is k/N; its 95% range is the
hypergeometric one), and, for a predictor whose sign flags pairs, the precision and recall of the *displacing*
flag and the share of the measured total fall the flagged pairs hold. CIs: percentile bootstrap over pairs
(theory.statistics.bootstrap_ci).
"""
import csv
import io
import math
from pathlib import Path

import numpy as np

from learning_dynamics.sim.common.io import atomic_write_json, atomic_write_text, json_ready
from learning_dynamics.theory.statistics import bootstrap_ci, precision_recall, spearman
from learning_dynamics.validate.forecast.steps import (FLAG_PREDICTOR, PREDICTORS, SGD_TARGET_NATS, column,
                                                      predictor)
from learning_dynamics.validate.measure.first_order import agreement
from learning_dynamics.validate.forecast import figures as forecast_figures
from learning_dynamics.validate.data.data import write_jsonl
from learning_dynamics.validate.provenance import describe
# scipy loads inside the functions that need them, so importing this module stays light (ldyn --help)

TOP_FRACTION = 0.1
N_BOOT = 2000
OPTIMIZERS = ("sgd", "adamw")
PROBES = ("chosen", "rejected", "ystar")


def top_k(n: int, fraction: float = TOP_FRACTION) -> int:
    return max(1, math.ceil(fraction * n))


def top_overlap(predicted, actual, fraction: float = TOP_FRACTION) -> float:
    """Share of the k pairs predicted to fall most that are among the k whose y+ actually falls most."""
    k = top_k(len(actual), fraction)
    return len(set(np.argsort(predicted, kind="stable")[:k]) & set(np.argsort(actual, kind="stable")[:k])) / k


def random_overlap(n: int, fraction: float = TOP_FRACTION) -> dict:
    """A random ranking's top-k overlap: mean k/N, 95% range of the hypergeometric count / k."""
    from scipy.stats import hypergeom
    k = top_k(n, fraction)
    counts = hypergeom(n, k, k).ppf([0.025, 0.975])
    return {"k": k, "mean": k / n, "ci": [float(counts[0]) / k, float(counts[1]) / k]}


def fall_share(flags, actual) -> float:
    """Share of the total fall sum(max(0, -actual)) that the flagged pairs hold."""
    fall = np.maximum(-np.asarray(actual, dtype=float), 0.0)
    total = fall.sum()
    return float(fall[np.asarray(flags, dtype=bool)].sum() / total) if total > 0 else float("nan")


def _precision(flags, falls) -> float:
    flags, falls = flags > 0.5, falls > 0.5
    return float((flags & falls).sum() / flags.sum()) if flags.any() else float("nan")


def _recall(flags, falls) -> float:
    return _precision(falls, flags)


def judge(pred, records, actual) -> dict:
    """One predictor against the measured changes `actual` of log pi(y+), one a pair."""
    import warnings
    from scipy.stats import DegenerateDataWarning
    with warnings.catch_warnings():   # resamples whose statistic never varies (no flagged pair fell): a flat CI
        warnings.simplefilter("ignore", DegenerateDataWarning)
        return _judge(pred, records, actual)


def _judge(pred, records, actual) -> dict:
    predicted, actual = pred.predicted_change(records), np.asarray(actual, dtype=float)
    rho, rho_ci = bootstrap_ci(spearman, [predicted, actual], n_boot=N_BOOT)
    overlap, overlap_ci = bootstrap_ci(top_overlap, [predicted, actual], n_boot=N_BOOT)
    out = {"predictor": pred.name, "label": pred.label, "optimizer": pred.optimizer, "spearman": rho,
           "spearman_ci": list(rho_ci), "top_overlap": overlap, "top_overlap_ci": list(overlap_ci)}
    flags = pred.displacing(records)
    if flags is not None:
        f, a = flags.astype(float), (actual < 0).astype(float)
        share, share_ci = bootstrap_ci(lambda x, y: fall_share(x > 0.5, y), [f, actual], n_boot=N_BOOT)
        out.update(precision_recall(flags, actual < 0), fall_share=share, fall_share_ci=list(share_ci),
                   precision=_precision(f, a), recall=_recall(f, a),
                   precision_ci=list(bootstrap_ci(_precision, [f, a], n_boot=N_BOOT)[1]),
                   recall_ci=list(bootstrap_ci(_recall, [f, a], n_boot=N_BOOT)[1]))
    return out


def verification(records, eta: float, lr: float) -> dict:
    """Every predictor against the real plain SGD step (eta) and the real first AdamW step (lr)."""
    out = {"sgd_eta": eta, "sgd_target_nats": SGD_TARGET_NATS, "adamw_lr": lr, "top_fraction": TOP_FRACTION,
           "random_top_overlap": random_overlap(len(records)), "by_optimizer": {}}
    for step in OPTIMIZERS:
        actual = column(records, f"actual_{step}_dlogp_chosen")
        scale = eta if step == "sgd" else 1.0
        accuracy = {k: agreement(scale * column(records, f"{step}_dlogp_{k}"),
                                 column(records, f"actual_{step}_dlogp_{k}")) for k in PROBES}
        out["by_optimizer"][step] = {"n_fell": int((actual < 0).sum()), "first_order": accuracy,
                                     "predictors": [judge(p, records, actual) for p in PREDICTORS]}
    return out


def across_training(step0, later, run: dict) -> dict:
    """Do the pairs flagged at step 0 hold most of the run's fall of y+? And how far the forecast itself moved.

    run: steps, lr, batch_pairs, train_log and source (None: trained by the forecast over its pairs; else the run
    folder whose checkpoint gave the later weights).
    """
    change = column(later, "logp_chosen") - column(step0, "logp_chosen")
    exact = predictor(FLAG_PREDICTOR)
    flags0, flags_later = exact.displacing(step0), exact.displacing(later)
    keep = ("logp_chosen", "logp_rejected", "coef_chosen", "sgd_dlogp_chosen", "sgd_dlogp_rejected", "ches")
    return {**run,
            "run_change_chosen": change.tolist(), "n_fell": int((change < 0).sum()),
            "total_fall": float(np.maximum(-change, 0).sum()), "mean_change": float(change.mean()),
            "random_top_overlap": random_overlap(len(change)),
            "predictors": [judge(p, step0, change) for p in PREDICTORS],
            "later": {"n_flagged": int(flags_later.sum()), "flag_agreement": float(np.mean(flags0 == flags_later)),
                      "spearman_with_step0": spearman(exact.predicted_change(step0), exact.predicted_change(later)),
                      "records": [{k: r[k] for k in keep} for r in later]}}


def summary_line(records, verified=None) -> str:
    """'k of N pairs are forecast to lower their chosen answer; ...' (the flags of FLAG_PREDICTOR)."""
    change = predictor(FLAG_PREDICTOR).predicted_change(records)
    flags, n = change < 0, len(change)
    line = f"{int(flags.sum())} of {n} pairs are forecast to lower their chosen answer"
    fall = np.maximum(-change, 0)
    if flags.any():
        top = min(top_k(n), int(flags.sum()))
        line += (f"; the {top} most displacing hold {np.sort(fall)[::-1][:top].sum() / fall.sum():.0%} of the "
                 "predicted total fall")
    if verified:
        sgd = verified["by_optimizer"]["sgd"]
        exact = next(j for j in sgd["predictors"] if j["predictor"] == FLAG_PREDICTOR)
        line += (f"; in the real SGD steps {sgd['n_fell']} chosen answers fell and the flagged pairs hold "
                 f"{percent_text(exact['fall_share'])} of that fall" if sgd["n_fell"] else
                 "; in the real SGD steps no chosen answer fell")
    return line


def percent_text(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.0f}%"


def num_text(x, digits=3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def _ci(values, pct=False) -> str:
    show = percent_text if pct else (lambda v: num_text(v, 2))
    return f"[{show(values[0])}, {show(values[1])}]"


# --------------------------------------------------------------------------- outputs

CSV_COLUMNS = ("rank", "index", "displacing", "prompt", "chosen", "rejected", "n_chosen", "n_rejected", "logp_chosen",
               "logp_rejected", "logp_ystar", "coef_chosen", "coef_rejected", "sgd_dlogp_chosen", "sgd_dlogp_rejected",
               "sgd_dlogp_ystar", "adamw_dlogp_chosen", "adamw_dlogp_rejected", "adamw_dlogp_ystar", "ches", "ches_ln",
               "residual_norm", "token_f1", "hidden_cosine", *(f"actual_{s}_dlogp_{k}" for s in OPTIMIZERS
                                                                   for k in PROBES))


def _text(value) -> str:
    """A prompt (a string or chat messages) or a response as one line of text."""
    if isinstance(value, list):
        value = " / ".join(f"{m['role']}: {m['content']}" for m in value)
    return " ".join(str(value).split())


def ranked(result) -> list:
    """The pairs, most displacing first (the flagging predictor's predicted change of y+, lowest first)."""
    pairs = result["pairs"]
    order = np.argsort(predictor(FLAG_PREDICTOR).predicted_change(pairs), kind="stable")
    rows = []
    for rank, i in enumerate(order, start=1):
        record, data = pairs[i], result["data_records"][i]
        rows.append({**record, "rank": rank, "displacing": bool(record[predictor(FLAG_PREDICTOR).column] < 0),
                     "prompt": _text(data["prompt"]), "chosen": _text(data["chosen"]),
                     "rejected": _text(data["rejected"])})
    return rows


def table_csv(rows) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[c for c in CSV_COLUMNS if c in rows[0]], extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def as_trl(record) -> dict:
    """A record as TRL writes it: a conversational prompt keeps its messages and gets assistant-message answers."""
    if isinstance(record["prompt"], list):
        out = {"prompt": record["prompt"], "chosen": [{"role": "assistant", "content": record["chosen"]}],
               "rejected": [{"role": "assistant", "content": record["rejected"]}]}
    else:
        out = {"prompt": record["prompt"], "chosen": record["chosen"], "rejected": record["rejected"]}
    if "source" in record:
        out["source"] = record["source"]
    return out


def write_outputs(result, out) -> list:
    """forecast.json, forecast.csv, forecast.md, the scatter figures and (options.filter) filtered.jsonl."""
    out = Path(out)
    rows = ranked(result)
    written = [out / "forecast.csv", out / "forecast.md", out / "forecast.json"]
    atomic_write_text(out / "forecast.csv", table_csv(rows))
    if result["options"]["filter"]:
        keep = predictor(FLAG_PREDICTOR).predicted_change(result["pairs"]) >= 0
        write_jsonl([as_trl(r) for r, k in zip(result["data_records"], keep) if k], out / "filtered.jsonl")
        written.append(out / "filtered.jsonl")
    result["figures"] = [p.name for p in forecast_figures.draw(result, out)]
    atomic_write_json(out / "forecast.json", json_ready({k: v for k, v in result.items() if k != "data_records"}))
    atomic_write_text(out / "forecast.md", markdown(result, rows))
    return written + [out / f for f in result["figures"]]


def markdown(result, rows) -> str:
    """forecast.md: the summary, how each predictor did, the run, and the most displacing pairs."""
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in result["seconds_by_part"].items())
    lines = [f"# Displacement forecast: {result['model']}, {result['algo']}, {result['n_pairs']} pairs "
             f"({result['device']})", "",
             f"Reproduce: `{result.get('reproduce') or result.get('reproduce_error')}`", "",
             describe(result["fingerprints"]), "", f"{result['seconds']:.0f} s in all ({parts}).", "",
             f"**{result['summary']}.**", "",
             "Each pair's forecast is the exact first-order change of log pi(y+), log pi(y-) and log pi(y*) from one "
             "step on that pair alone: the model's own eNTK through a jvp along the step (a plain SGD step, per unit "
             "learning rate; and the first AdamW step, whose update is about -lr sign(g)). A pair is *displacing* "
             "when its predicted change of log pi(y+) is negative (the flags, this summary and `--filter` use the "
             "SGD step's). CHES = `<h+, h-> - ||h+||^2` over the summed last hidden states (Razin et al., ICLR 2025) "
             "flags a pair when positive; `||G||` and the y+/y- similarities only rank. The proxies know neither "
             "the optimizer nor the step size. Spearman rho: of each predictor's forecast with the measured change "
             "of log pi(y+), a proxy's score turned around (higher CHES = predicted to fall harder), so that a "
             "positive rho is a right ranking for every predictor.", ""]
    if result.get("verification"):
        lines += _verification_lines(result["verification"])
    if result.get("across_training"):
        lines += _training_lines(result["across_training"], result["n_pairs"])
    lines += _pair_lines(rows, bool(result.get("verification")))
    lines += ["", "Figures: " + ", ".join(f"`{f}`" for f in result.get("figures", [])), ""]
    return "\n".join(lines)


def _judged_table(judged, baseline) -> list:
    lines = ["| predictor | Spearman rho | top-10% overlap | precision | recall | flagged | share of the fall |",
             "|---|---|---|---|---|---|---|"]
    for j in judged:
        flagged = f"{j['n_predicted']} of {j['n']}" if "n_predicted" in j else "ranks only"
        lines.append(f"| {j['label']} | {num_text(j['spearman'], 2)} {_ci(j['spearman_ci'])} | "
                     f"{percent_text(j['top_overlap'])} {_ci(j['top_overlap_ci'], True)} | " +
                     (f"{num_text(j['precision'], 2)} {_ci(j['precision_ci'])} | {num_text(j['recall'], 2)} "
                      f"{_ci(j['recall_ci'])} | {flagged} | {percent_text(j['fall_share'])} {_ci(j['fall_share_ci'], True)} |"
                      if "precision" in j else f"n/a | n/a | {flagged} | n/a |"))
    lines.append(f"| random ranking | 0 | {percent_text(baseline['mean'])} {_ci(baseline['ci'], True)} "
                 f"(k = {baseline['k']}) | | | | |")
    return lines


def _verification_lines(v) -> list:
    lines = ["## Verification: one real step per pair, from the same weights", "",
             f"Plain SGD step at eta = {v['sgd_eta']:.3g}: one eta for every pair, set so that the largest predicted "
             f"|change| of y+, y- or y* over all pairs is {v['sgd_target_nats']:g} nats (inside the first-order "
             f"regime that `ldyn validate check` measures); first AdamW step at lr {v['adamw_lr']:g}, fresh moments. "
             "Each step is the algorithm's own loss on the pair alone; the weights are restored after each. "
             "Precision/recall: of the *displacing* flag against the pairs whose y+ actually fell; share of the "
             "fall: of sum max(0, -actual change) over all pairs. 95% CIs: bootstrap over pairs.", ""]
    for step, title in (("sgd", "plain SGD step"), ("adamw", "first AdamW step")):
        s = v["by_optimizer"][step]
        accuracy = "; ".join(f"{k} r {num_text(a['pearson_r'], 4)}, relative error {percent_text(a['relative_error'])}"
                             for k, a in s["first_order"].items())
        lines += [f"### {title}: {s['n_fell']} chosen answers fell", "",
                  f"The exact prediction against the measured change ({accuracy}).", ""]
        lines += _judged_table(s["predictors"], v["random_top_overlap"]) + [""]
    return lines


def _training_lines(t, n) -> list:
    exact = next(j for j in t["predictors"] if j["predictor"] == FLAG_PREDICTOR)
    later = t["later"]
    trained = (f"{t['steps']} AdamW steps of {t['batch_pairs']} pairs at lr {t['lr']:g} over these {n} pairs "
               "(batches as `ldyn validate run` draws them)" if not t.get("source") else
               f"The run in `{t['source']}` ({t['steps']} steps of {t['batch_pairs']} pairs at lr {t['lr']:g}, on its "
               "own training pairs; its checkpoint gives the later weights)")
    return ["## Across training", "",
            f"{trained}. The chosen answer's log-prob changed by "
            f"{t['mean_change']:+.3g} nats on average; it fell for {t['n_fell']} of {n} pairs (total fall "
            f"{t['total_fall']:.3g} nats). The pairs flagged at step 0 ({exact['n_predicted']} of {n}) hold "
            f"**{percent_text(exact['fall_share'])}** {_ci(exact['fall_share_ci'], True)} of that fall; a random set of the "
            f"same size holds {percent_text(exact['n_predicted'] / n)} on average.", "",
            "Each predictor's step-0 forecast against the change of log pi(y+) over the whole run:", "",
            *_judged_table(t["predictors"], t["random_top_overlap"]), "",
            f"The forecast repeated after the run (the kernel and the loss coefficients have moved): "
            f"{later['n_flagged']} of {n} pairs flagged; the flags agree with step 0's for "
            f"{percent_text(later['flag_agreement'])} of pairs; Spearman rho of the two exact forecasts "
            f"{num_text(later['spearman_with_step0'], 2)}.", ""]


def _pair_lines(rows, verified, limit=20) -> list:
    head = "| rank | pair | prompt | chosen | d log pi(y+) SGD / eta | AdamW | CHES |" + (
        " actual SGD | actual AdamW |" if verified else "")
    lines = [f"## The pairs, most displacing first (top {min(limit, len(rows))} of {len(rows)}; all in "
             "forecast.csv)", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows[:limit]:
        lines.append(f"| {r['rank']} | {r['index']} | {_cell(r['prompt'], 50)} | {_cell(r['chosen'], 40)} | "
                     f"{r['sgd_dlogp_chosen']:.4g} | {num_text(r.get('adamw_dlogp_chosen'))} | {r['ches']:.4g} |" +
                     (f" {r['actual_sgd_dlogp_chosen']:.3g} | {r['actual_adamw_dlogp_chosen']:.3g} |"
                      if verified else ""))
    return lines


def _cell(text: str, width: int) -> str:
    """Text for a markdown table cell: cut to `width`, its pipes escaped."""
    text = text if len(text) <= width else text[:width - 1] + "…"
    return text.replace("|", "\\|")
