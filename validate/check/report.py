"""report.md of `ldyn validate check --first-order`: the tables of first_order.json, section by section.

The sections of the parts added for issue 24 (the sweep over pairs, P20's kernel views, the per-token
channels) are validate.check.report_parts'.
"""
from pathlib import Path

import numpy as np

from learning_dynamics.validate.check.report_parts import channel_lines, p20_lines, pair_sweep_lines, pct as _pct
from learning_dynamics.validate.judge.report import fmt
# torch loads inside the functions that need them, so importing this module stays light (ldyn --help)


def _of_the_presets(r: dict) -> str:
    """Where the check reads fewer probe prompts than the preset's runs track (--n-probe), say so."""
    tracked = (r.get("settings") or {}).get("n_probe")
    if not tracked or tracked == r["n_probe_prompts"]:
        return ""
    return f" of the {tracked} the preset's runs track; `--n-probe {tracked}` reads them all"


def _precision_lines(precision) -> list:
    """--precision of the check (older checks recorded none): where it applies and on what hardware."""
    if not precision:
        return []
    return [f"Precision: {precision['name']} (asked: {precision['requested']}; {precision['hardware']}), used for "
            f"{precision['used_for']}.", ""]


def report_markdown(r: dict) -> str:
    """report.md of a check: every table the JSON holds, in words a reader can scan."""
    figure = {Path(f).stem: f for f in r["figures"]}   # the suffix follows --format
    lines = [f"# How far the first-order picture carries: {r['model']} ({r['device']})", "",
             f"Reproduce: `{r.get('reproduce') or r.get('reproduce_error')}`", "",
             f"{r['n_probe_sequences']} probe responses ({r['n_probe_prompts']} probe prompts{_of_the_presets(r)}); "
             f"{r['seconds']:.0f} s in all ({', '.join(f'{k} {v:.0f} s' for k, v in r['seconds_by_part'].items())}).",
             ""] + _precision_lines(r.get("precision"))
    lines += _sweep_section(r)
    lines += _push_share_lines(r["steps"]["dpo"]["push_shares"])
    lines += pair_sweep_lines(r.get("pair_sweep"))
    lines += _adamw_section(r["trajectory"])
    lines += _by_probe_type_table(r["trajectory"]) + _moving_kernel_table(r["trajectory"])
    lines += ["", f"![k-step curves]({figure['k_step_curves']})", ""]
    lines += p20_lines(r["P20"]) + ["", f"![kernel drift]({figure['kernel_drift']})", ""]
    lines += _token_section(r)
    lines += channel_lines(r.get("token_channels"), r["dtype"])
    shown = ("k_step_curves", "kernel_drift")
    lines += ["", *[f"![{stem}]({f})" for stem, f in figure.items() if stem not in shown], ""]
    return "\n".join(lines)


def _sweep_section(r: dict) -> list:
    lines = [f"## 1. One SGD step, swept over eta until it breaks ({r['dtype']})", "",
             f"Over the {r.get('n_sweep_sequences', r['n_probe_sequences'])} probe responses of the first "
             f"{r.get('n_sweep_prompts', r['n_probe_prompts'])} probe prompts (`--sweep-prompts`; the AdamW and "
             f"k-step parts read all {r['n_probe_sequences']}). The step is on the first probe prompt's training "
             "pair, so its chosen and rejected responses are among the probes. Step sizes in units of the largest "
             "predicted probe change (target nats); the sweep stops after the first eta whose relative error "
             "(mean |actual - predicted| / mean |actual|) passes 100%.", ""]
    for kind, s in r["steps"].items():
        broke = s.get("breaks_at")
        lines += [f"### {kind} step", "",
                  f"Error slope {fmt(s['error_slope'])} (theory 2) over the {len(s['eta2_regime_etas'])} etas "
                  f"with relative error < 10%; " + (f"breaks (relative error {_pct(broke['relative_error'])}) at "
                                                    f"eta {broke['eta']:.3g} ({broke['target_nats']:g} nats)."
                                                    if broke else "does not break within the grid" +
                                                    _worst_r(s) + "."), "",
                  "| eta | target nats | Pearson r | relative error | sign agreement | mean abs change |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {e['eta']:.3g} | {e['target_nats']:g} | {fmt(e['pearson_r'], 6)} | "
                  f"{_pct(e['relative_error'])} | {fmt(e['sign_agreement'], 3)} | {fmt(e['mean_abs_actual'], 3)} |"
                  for e in s["per_eta"]]
        lines.append("")
    return lines


def _push_share_lines(shares: dict) -> list:
    lines = ["### Each push's share of the DPO step's predicted change", "",
             f"Mean share of the y- push |j-|/(|j+|+|j-|): {fmt(shares['negative_share_mean'], 3)}; the y- push "
             f"dominates for {_pct(shares['negative_dominates'])} of probes; the two pushes agree in sign for "
             f"{_pct(shares['pushes_agree_in_sign'])}.", "",
             "| probe | y- push share | pushes agree in sign |", "|---|---|---|"]
    return lines + [f"| {name} | {fmt(v['negative_share'], 3)} | {_pct(v['same_sign'])} |"
                    for name, v in shares["by_probe"].items()]


def _adamw_section(t: dict) -> list:
    lines = ["", f"## 2. Along a real AdamW run ({t['algo']}, lr {t['lr']}, {t['batch_pairs']} pairs a step, "
             f"{t['dtype']})", "",
             "Prediction = jvp along the optimizer's actual update Delta theta (not -grad L).", "",
             "| step | Pearson r | relative error | sign agreement | mean abs change | update norm |",
             "|---|---|---|---|---|---|"]
    for label, row in (("first step (0 -> 1)", t["adamw_first_step"]),
                       (f"mid-run step ({(t['adamw_mid_step'] or {}).get('step')} -> "
                        f"{(t['adamw_mid_step'] or {}).get('step', 0) + 1}, warm state)", t["adamw_mid_step"])):
        if row:
            lines.append(f"| {label} | {fmt(row['pearson_r'], 4)} | {_pct(row['relative_error'])} | "
                         f"{fmt(row['sign_agreement'], 3)} | {fmt(row['mean_abs_actual'], 3)} | "
                         f"{fmt(row['update_norm'], 3)} |")
    lines += ["", "### k steps with the frozen step-0 kernel", "",
              "Prediction for k steps = sum of the per-step jvps at theta_0 along each actual update "
              "= one jvp at theta_0 along theta_k - theta_0.", "",
              "| k | Pearson r | relative error | sign agreement | mean abs change |", "|---|---|---|---|---|"]
    return lines + [f"| {row['k']} | {fmt(row['pearson_r'], 4)} | {_pct(row['relative_error'])} | "
                    f"{fmt(row['sign_agreement'], 3)} | {fmt(row['mean_abs_actual'], 3)} |" for row in t["k_step"]]


def _token_section(r: dict) -> list:
    lines = [f"## 3. Token level (one DPO-shaped step, {r['dtype']})", "",
             f"{r['n_squeeze_pairs']} pairs. Rising set: theory's threshold set against the tokens that rose, over "
             "the whole vocabulary and over the top tokens of each position.", "",
             "| positions | n | argmax rises | precision (all) | recall (all) | precision (top) | recall (top) | "
             "equal shift: median spread / rms |", "|---|---|---|---|---|---|---|---|"]
    for kind, s in r["token_squeeze"].items():
        if s["positions"]:
            lines.append(f"| {kind} | {s['positions']} | {fmt(s['argmax_rises'], 3)} | {fmt(s['precision'], 3)} | "
                         f"{fmt(s['recall'], 3)} | {fmt(s['top']['precision'], 3)} | {fmt(s['top']['recall'], 3)} | "
                         f"{fmt(s['equal_shift']['median_spread_over_rms'], 3)} |")
    return lines + ["", "Equal shift (P08 on free logits): at shared-prefix positions every token other than the "
                    "trained ones should move by the same log amount: spread / rms = std / sqrt(mean^2 + std^2) of "
                    "their changes over the top tokens is 0 for one equal shift and 1 for no common shift; "
                    "rejected-only positions are the control.", ""]


def _worst_r(step: dict) -> str:
    """For a step that never breaks the error rule: where its correlation went instead."""
    rows = [e for e in step["per_eta"] if e["pearson_r"] is not None and np.isfinite(e["pearson_r"])]
    if not rows:
        return ""
    worst = min(rows, key=lambda e: e["pearson_r"])
    return (f", although its Pearson r falls to {fmt(worst['pearson_r'], 3)} at {worst['target_nats']:g} nats"
            if worst["pearson_r"] < 0.5 else "")


def by_probe_type(row: dict, names) -> dict:
    """One k-step row's agreement within each probe type: the pooled r mixes probes that are training
    targets (chosen, rejected: the probe prompts are training prompts) with probes no step trains on."""
    from learning_dynamics.validate.measure.first_order import agreement
    names = np.asarray(names)
    predicted, actual = np.asarray(row["predicted"]), np.asarray(row["actual"])
    return {name: agreement(predicted[names == name], actual[names == name]) for name in dict.fromkeys(names)}


def _by_probe_type_table(t: dict) -> list:
    rows = t["k_step"]
    lines = ["", "### k steps with the frozen kernel, by probe type", "",
             "Pearson r / relative error within each probe type (its probe prompts' responses); chosen and "
             "rejected are training targets of the run (the probe prompts are training prompts).", "",
             "| probe type | " + " | ".join(f"k = {row['k']}" for row in rows) + " | mean abs change at "
             f"k = {rows[-1]['k']} |", "|---" * (len(rows) + 2) + "|"]
    tables = [by_probe_type(row, t["probe_names"]) for row in rows]
    for name in tables[0]:
        lines.append(f"| {name} | " + " | ".join(f"{fmt(tab[name]['pearson_r'], 3)} / "
                                               f"{_pct(tab[name]['relative_error'])}" for tab in tables)
                     + f" | {fmt(tables[-1][name]['mean_abs_actual'], 3)} |")
    return lines


def _moving_kernel_table(t: dict) -> list:
    """Frozen vs moving kernel on the same probes: the frozen sum's error split into its two causes."""
    rows = [row for row in t["k_step"] if row.get("moving_kernel")]
    if not rows:
        return []
    n = rows[0]["moving_kernel"]["probes"]
    lines = ["", "### k steps with a moving kernel: linearisation error vs kernel drift", "",
             f"Over {n} probe responses (one of each probe type per prompt in turn; one jvp per step): the "
             "moving-kernel sum takes each step's jvp at its own parameters theta_t along its update. "
             "Linearisation error = mean|actual - moving| / mean|actual| (the steps' own second-order "
             "remainders); kernel drift = mean|moving - frozen| / mean|actual| (what the kernel's change between "
             "theta_0 and theta_t does to the prediction). At k = 1 the two sums are one jvp and drift is 0 "
             "up to float32 rounding (the two batch the probes differently).", "",
             "| k | r (frozen) | relative error (frozen) | r (moving) | relative error (moving) = linearisation | "
             "kernel drift | mean abs change |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        m = row["moving_kernel"]
        lines.append(f"| {row['k']} | {fmt(m['frozen']['pearson_r'], 4)} | {_pct(m['frozen']['relative_error'])} | "
                     f"{fmt(m['moving']['pearson_r'], 4)} | {_pct(m['linearisation_error'])} | "
                     f"{_pct(m['kernel_drift_error'])} | {fmt(m['moving']['mean_abs_actual'], 3)} |")
    return lines


