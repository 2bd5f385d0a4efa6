"""`ldyn validate check --first-order`: how far the first-order (AKG) picture carries on a real model.

Writes first_order.json (read by validate.report), report.md and figures into --out:

1. one plain SGD step on a training pair, swept over eta until the relative
   error passes 100%, for the y+ push, the y- push and the DPO step (their sum;
   validate.first_order): per eta Pearson r, relative error, sign agreement, and
   the error slope in the eta^2 regime;
2. the token-level squeeze after a DPO-shaped step (validate.token_squeeze),
   pooled over the whole vocabulary and over the top tokens, and the
   equal-shift test at shared-prefix positions;
3. AdamW's real update, k steps with a frozen kernel and the kernel's drift
   (P20) along a short training run (validate.trajectory).

Probes are built in float32; parts 1-2 run in float64 (--dtype float32 trades their small-eta floor for
half the time); part 3 in float32, as a CPU training run would.
"""
import time
from pathlib import Path

import numpy as np

from learning_dynamics.sim.io import atomic_write_json, atomic_write_text, json_ready
from learning_dynamics.validate.report import _fmt

# Sizes per preset: cpu reads what default does (the preset's 24 probe prompts), which fits 2 CPU cores in
# under 30 minutes because a prompt's 12 responses go through the body together (validate.forward's shared-
# prompt batches; validate/reports/smollm2-135m-instruct-cpu/first-order/COMMANDS.md has each part's time).
N_PROBE_PROMPTS = {"smoke": 2, "cpu": 24, "default": 24}   # prompts whose probes the jvp covers
SWEEP_PROMPTS = {"smoke": 2, "cpu": 8, "default": 8}       # of them, the prompts whose responses the sweep reads
N_SQUEEZE_PAIRS = {"smoke": 3, "cpu": 48, "default": 48}
SQUEEZE_NATS = 0.5                                 # token step: lowers L = lp(y-) - lp(y+) by this, to first order
# probe sequences per forward or jvp on a CPU (a prompt's responses stay together, so up to 12): smaller
# batches pad less and stay in cache (benchmarks/bench_check_cpu.py); on a GPU the preset's eval batch, at most
# 64 (forward AD's memory)
CPU_BATCH = 8


def sweep_probe_set(probes: list, sweep_prompts=None, preset: str = "default") -> list:
    """The probe prompts (each with all its probe types) the eta sweep reads: the first `sweep_prompts`."""
    from learning_dynamics.theory.errors import UserError
    n = SWEEP_PROMPTS[preset] if sweep_prompts is None else sweep_prompts
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"--sweep-prompts must be a positive integer, got {sweep_prompts!r}")
    return probes[:n]


def said_once(probe_set) -> tuple:
    """(sequences, names) of a probe set's responses, each once (no repeated sample), prompt-major."""
    from learning_dynamics.theory.probes import SAID_ONCE
    from learning_dynamics.validate.probes import probe_sequences
    flat = [s for s in probe_sequences(probe_set) if s[1] in SAID_ONCE]
    return [(p_ids, r_ids) for _, _, p_ids, r_ids in flat], [name for _, name, _, _ in flat]


def run_checks(settings, out, quiet: bool = False, progress=print, command=("validate", "check"),
               n_probe=None, squeeze_pairs=None, k_steps=None, report_name="report.md", dtype="float64",
               moving_probes=None, sweep_prompts=None) -> dict:
    """command: the ldyn command whose report holds this check (`run --first-order` embeds it in the run's).

    settings: validate.presets.Settings (or its flat dict); the set-up is `ldyn validate run`'s (validate.session).
    """
    import torch
    from learning_dynamics.validate import first_order, provenance, session, token_squeeze, trajectory
    from learning_dynamics.validate.presets import Settings
    from learning_dynamics.validate.probes import build_probe_set

    settings, out = Settings.of(settings), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = session.device(settings.device)
    preset = settings.preset
    n_probe = n_probe or N_PROBE_PROMPTS[preset]
    squeeze_pairs = squeeze_pairs or N_SQUEEZE_PAIRS[preset]
    k_steps = sorted(set(k_steps or trajectory.K_STEPS[preset]))
    moving_probes = trajectory.MOVING_PROBES if moving_probes is None else moving_probes
    sweep_prompts = len(sweep_probe_set(range(n_probe), sweep_prompts, preset))   # clamped to the probe prompts
    # the check's own sizes, by the names of the flags that set them (provenance writes them back)
    sizes = {"n_probe": n_probe, "sweep_prompts": sweep_prompts, "squeeze_pairs": squeeze_pairs,
             "k_steps": ",".join(map(str, k_steps)), "dtype": dtype, "moving_probes": moving_probes}
    started = time.perf_counter()
    seconds = {}

    def lap(name):
        seconds[name] = round(time.perf_counter() - sum(seconds.values()) - started, 1)

    # probes are built (sampled) in float32, at half the cost of float64; the checks then run in `dtype`
    loaded = session.load(settings, device, progress=progress, dtype=torch.float32)
    model, tokenizer, pad_id = loaded.model, loaded.tokenizer, loaded.pad_id
    # the runs' own split, so that the k-step run trains on the preset's training pairs whatever the check's
    # sizes; the token-level pairs are the first probe pairs of a split that sets that many aside
    examples = session.examples(settings, n_probe=max(n_probe, settings.n_probe), encoder=loaded.encoder)
    probe_examples = examples.probe
    squeeze_examples = (probe_examples if squeeze_pairs <= len(probe_examples)
                        else session.examples(settings, n_probe=squeeze_pairs,
                                              encoder=loaded.encoder).probe)[:squeeze_pairs]
    batch = CPU_BATCH if device.type == "cpu" else min(settings.eval_batch, 64)
    lap("load")
    with first_order.exact_math(model):
        probes = build_probe_set(model, tokenizer, loaded.encoder, probe_examples[:n_probe], examples.train,
                                 examples.test, settings, progress=progress, irrelevant=examples.irrelevant)
        model.to(getattr(torch, dtype))
        sequences, names = said_once(probes)
        sweep_set = sweep_probe_set(probes, sweep_prompts)
        sweep_sequences, sweep_names = said_once(sweep_set)
        pairs = loaded.tokenize(squeeze_examples)
        lap("probes")
        steps = first_order.check_pair_steps(model, pairs[0], sweep_sequences, sweep_names, pad_id, device, batch,
                                             progress=None if quiet else progress)
        progress("first order: r " + " / ".join(f"{steps[k]['pearson_r']:.4f}" for k in first_order.STEP_KINDS)
                 + ", slope " + " / ".join(f"{steps[k]['error_slope']:.2f}" for k in first_order.STEP_KINDS)
                 + f" ({' / '.join(first_order.STEP_KINDS)} step); factored and dense jvp differ by "
                 f"{steps['positive']['jvp_methods_max_rel_diff']:.1e}; {len(sweep_sequences)} of "
                 f"{len(sequences)} probe responses")
        lap("eta_sweep")
        partial = out / "first_order.partial.json"   # a crash later keeps the sweep; replaced by the full result
        atomic_write_json(partial, json_ready({"steps": steps, "seconds_by_part": seconds,
                                                     "sweep_probe_names": sweep_names}))
        records = [token_squeeze.check_pair(model, pair, SQUEEZE_NATS, pad_id, device) for pair in pairs]
        lap("token_squeeze")
        model.float()   # the training run in float32, as on a CPU
        run = trajectory.run_trajectory(model, loaded.tokenize(examples.train), sequences, names, settings,
                                        pad_id, device, batch, k_steps, progress=progress,
                                        moving_probes=moving_probes)
        lap("trajectory")
    squeeze = token_squeeze.summarise(records)
    figures = [_plot_scatter(steps, sweep_names, out / "first_order_scatter.png"),
               _plot_sweep(steps, out / "first_order_slope.png"),
               _plot_token_squeeze(records, squeeze, out / "token_squeeze.png"),
               _plot_k_steps(run, out / "k_step_curves.png"),
               _plot_kernel(run["P20"], out / "kernel_drift.png")]
    headline = [steps[k] for k in first_order.PUSHES]
    result = json_ready({
        "model": loaded.info.name, "device": (torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
        "dtype": dtype, "n_probe_prompts": n_probe, "n_probe_sequences": len(sequences),
        "n_sweep_prompts": len(sweep_set), "n_sweep_sequences": len(sweep_sequences),
        "n_squeeze_pairs": len(pairs), "seconds": time.perf_counter() - started, "seconds_by_part": seconds,
        # headline numbers: the mean over the positive and negative pushes, in the linear regime
        "pearson_r": float(np.mean([s["pearson_r"] for s in headline])),
        "error_slope": float(np.mean([s["error_slope"] for s in headline])),
        "etas": {k: v["etas"] for k, v in steps.items()},
        "steps": {k: {kk: vv for kk, vv in v.items() if kk not in ("predicted", "actual")} for k, v in steps.items()},
        "probe_names": names, "sweep_probe_names": sweep_names, "trajectory": run, "P20": run["P20"],
        "figures": [f.name for f in figures], "settings": provenance.public_settings(settings),
        "check_sizes": sizes,
        **(provenance.safely(provenance.check_command, dict(settings, **sizes), out)
           if command == ("validate", "check") else
           provenance.safely(provenance.run_command, settings, out, first_order=True)),
        "fingerprints": provenance.fingerprints(settings.data, settings.model),
        "versions": provenance.versions()})
    result["token_squeeze"] = json_ready(squeeze)
    atomic_write_json(out / "first_order.json", result)
    atomic_write_text(out / report_name, report_markdown(result))
    partial.unlink(missing_ok=True)
    return {"first_order": result, "token_squeeze": result["token_squeeze"]}


def _of_the_presets(r: dict) -> str:
    """Where the check reads fewer probe prompts than the preset's runs track (--n-probe), say so."""
    tracked = (r.get("settings") or {}).get("n_probe")
    if not tracked or tracked == r["n_probe_prompts"]:
        return ""
    return f" of the {tracked} the preset's runs track; `--n-probe {tracked}` reads them all"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.3g}%"


def report_markdown(r: dict) -> str:
    """report.md of a check: every table the JSON holds, in words a reader can scan."""
    figure = {Path(f).stem: f for f in r["figures"]}   # the suffix follows --format
    lines = [f"# How far the first-order picture carries: {r['model']} ({r['device']})", "",
             f"Reproduce: `{r.get('reproduce') or r.get('reproduce_error')}`", "",
             f"{r['n_probe_sequences']} probe responses ({r['n_probe_prompts']} probe prompts{_of_the_presets(r)}); "
             f"{r['seconds']:.0f} s in all ({', '.join(f'{k} {v:.0f} s' for k, v in r['seconds_by_part'].items())}).",
             "", f"## 1. One SGD step, swept over eta until it breaks ({r['dtype']})", "",
             f"Over the {r.get('n_sweep_sequences', r['n_probe_sequences'])} probe responses of the first "
             f"{r.get('n_sweep_prompts', r['n_probe_prompts'])} probe prompts (`--sweep-prompts`; the AdamW and "
             f"k-step parts read all {r['n_probe_sequences']}). The step is on the first probe prompt's training "
             "pair, so its chosen and rejected responses are among the probes. Step sizes in units of the largest "
             "predicted probe "
             "change (target nats); the sweep stops after the first eta whose relative error "
             "(mean |actual - predicted| / mean |actual|) passes 100%.", ""]
    for kind, s in r["steps"].items():
        broke = s.get("breaks_at")
        lines += [f"### {kind} step", "",
                  f"Error slope {_fmt(s['error_slope'])} (theory 2) over the {len(s['eta2_regime_etas'])} etas "
                  f"with relative error < 10%; " + (f"breaks (relative error {_pct(broke['relative_error'])}) at "
                                                    f"eta {broke['eta']:.3g} ({broke['target_nats']:g} nats)."
                                                    if broke else "does not break within the grid" +
                                                    _worst_r(s) + "."), "",
                  "| eta | target nats | Pearson r | relative error | sign agreement | mean abs change |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {e['eta']:.3g} | {e['target_nats']:g} | {_fmt(e['pearson_r'], 6)} | "
                  f"{_pct(e['relative_error'])} | {_fmt(e['sign_agreement'], 3)} | {_fmt(e['mean_abs_actual'], 3)} |"
                  for e in s["per_eta"]]
        lines.append("")
    shares = r["steps"]["dpo"]["push_shares"]
    lines += ["### Each push's share of the DPO step's predicted change", "",
              f"Mean share of the y- push |j-|/(|j+|+|j-|): {_fmt(shares['negative_share_mean'], 3)}; the y- push "
              f"dominates for {_pct(shares['negative_dominates'])} of probes; the two pushes agree in sign for "
              f"{_pct(shares['pushes_agree_in_sign'])}.", "",
              "| probe | y- push share | pushes agree in sign |", "|---|---|---|"]
    lines += [f"| {name} | {_fmt(v['negative_share'], 3)} | {_pct(v['same_sign'])} |"
              for name, v in shares["by_probe"].items()]
    t = r["trajectory"]
    lines += ["", f"## 2. Along a real AdamW run ({t['algo']}, lr {t['lr']}, {t['batch_pairs']} pairs a step, "
              f"{t['dtype']})", "",
              "Prediction = jvp along the optimizer's actual update Delta theta (not -grad L).", "",
              "| step | Pearson r | relative error | sign agreement | mean abs change | update norm |",
              "|---|---|---|---|---|---|"]
    for label, row in (("first step (0 -> 1)", t["adamw_first_step"]),
                       (f"mid-run step ({(t['adamw_mid_step'] or {}).get('step')} -> "
                        f"{(t['adamw_mid_step'] or {}).get('step', 0) + 1}, warm state)", t["adamw_mid_step"])):
        if row:
            lines.append(f"| {label} | {_fmt(row['pearson_r'], 4)} | {_pct(row['relative_error'])} | "
                         f"{_fmt(row['sign_agreement'], 3)} | {_fmt(row['mean_abs_actual'], 3)} | "
                         f"{_fmt(row['update_norm'], 3)} |")
    lines += ["", "### k steps with the frozen step-0 kernel", "",
              "Prediction for k steps = sum of the per-step jvps at theta_0 along each actual update "
              "= one jvp at theta_0 along theta_k - theta_0.", "",
              "| k | Pearson r | relative error | sign agreement | mean abs change |", "|---|---|---|---|---|"]
    lines += [f"| {row['k']} | {_fmt(row['pearson_r'], 4)} | {_pct(row['relative_error'])} | "
              f"{_fmt(row['sign_agreement'], 3)} | {_fmt(row['mean_abs_actual'], 3)} |" for row in t["k_step"]]
    lines += _by_probe_type_table(t)
    lines += _moving_kernel_table(t)
    p20 = r["P20"]
    lines += ["", f"![k-step curves]({figure['k_step_curves']})", "", "### Kernel drift (P20)", "",
              f"**{p20['verdict']}**: {p20['effect_unit']} = {_fmt(p20['effect'], 4)}, 95% CI "
              f"[{_fmt(p20['ci'][0], 4)}, {_fmt(p20['ci'][1], 4)}] (bootstrap over the {p20['n']} probe rows, "
              f"scipy.stats.bootstrap; threshold {p20['threshold']}). {p20['detail']}.", "",
              "| step | " + " | ".join(map(str, p20["steps"])) + " |", "|---" * (len(p20["steps"]) + 1) + "|",
              "| cosine with step 0 | " + " | ".join(_fmt(x, 4) for x in p20["similarity"]) + " |",
              "| norm ratio to step 0 | " + " | ".join(_fmt(x, 3) for x in p20["norm_ratio"]) + " |", "",
              f"![kernel drift]({figure['kernel_drift']})", "",
              f"## 3. Token level (one DPO-shaped step, {r['dtype']})", "",
              f"{r['n_squeeze_pairs']} pairs. Rising set: theory's threshold set against the tokens that rose, over "
              "the whole vocabulary and over the top tokens of each position.", "",
              "| positions | n | argmax rises | precision (all) | recall (all) | precision (top) | recall (top) | "
              "equal shift: median spread / rms |", "|---|---|---|---|---|---|---|---|"]
    for kind, s in r["token_squeeze"].items():
        if s["positions"]:
            lines.append(f"| {kind} | {s['positions']} | {_fmt(s['argmax_rises'], 3)} | {_fmt(s['precision'], 3)} | "
                         f"{_fmt(s['recall'], 3)} | {_fmt(s['top']['precision'], 3)} | {_fmt(s['top']['recall'], 3)} | "
                         f"{_fmt(s['equal_shift']['median_spread_over_rms'], 3)} |")
    lines += ["", "Equal shift (P08 on free logits): at shared-prefix positions every token other than the trained "
              "ones should move by the same log amount: spread / rms = std / sqrt(mean^2 + std^2) of their changes "
              "over the top tokens is 0 for one equal shift and 1 for no common shift; rejected-only positions are "
              "the control.", "", *[f"![{stem}]({f})" for stem, f in figure.items()
                                     if stem not in ("k_step_curves", "kernel_drift")], ""]
    return "\n".join(lines)


def _worst_r(step: dict) -> str:
    """For a step that never breaks the error rule: where its correlation went instead."""
    rows = [e for e in step["per_eta"] if e["pearson_r"] is not None and np.isfinite(e["pearson_r"])]
    if not rows:
        return ""
    worst = min(rows, key=lambda e: e["pearson_r"])
    return (f", although its Pearson r falls to {_fmt(worst['pearson_r'], 3)} at {worst['target_nats']:g} nats"
            if worst["pearson_r"] < 0.5 else "")


def by_probe_type(row: dict, names) -> dict:
    """One k-step row's agreement within each probe type: the pooled r mixes probes that are training
    targets (chosen, rejected: the probe prompts are training prompts) with probes no step trains on."""
    from learning_dynamics.validate.first_order import agreement
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
        lines.append(f"| {name} | " + " | ".join(f"{_fmt(tab[name]['pearson_r'], 3)} / "
                                               f"{_pct(tab[name]['relative_error'])}" for tab in tables)
                     + f" | {_fmt(tables[-1][name]['mean_abs_actual'], 3)} |")
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
        lines.append(f"| {row['k']} | {_fmt(m['frozen']['pearson_r'], 4)} | {_pct(m['frozen']['relative_error'])} | "
                     f"{_fmt(m['moving']['pearson_r'], 4)} | {_pct(m['linearisation_error'])} | "
                     f"{_pct(m['kernel_drift_error'])} | {_fmt(m['moving']['mean_abs_actual'], 3)} |")
    return lines


KIND_COLORS = {"positive": "sft", "negative": "negative", "dpo": "dpo"}   # sim.style's colours for the pushes


def _style():
    from learning_dynamics.sim import style
    return style


def _plot_scatter(steps, names, path):
    from learning_dynamics.sim.io import atomic_savefig
    style = _style()
    fig, axes = style.figure(style.WIDTH, 2.6, ncols=len(steps))
    for ax, (kind, s) in zip(np.atleast_1d(axes), steps.items()):
        pred, act = np.array(s["predicted"]), np.array(s["actual"])
        ax.scatter(pred, act, s=6, alpha=0.7, color=style.algorithm_color(KIND_COLORS[kind]))
        lim = [min(pred.min(), act.min()), max(pred.max(), act.max())]
        ax.plot(lim, lim, color="0.5", lw=0.8, ls="--")
        ax.set_xlabel(r"predicted $\Delta\log\pi$ ($-\eta AKG$, nats)")
        ax.set_ylabel(r"actual $\Delta\log\pi$ (nats)")
        ax.set_title(f"{kind} step, {s['target_nats']:g} nats: r = {s['pearson_r']:.4f}")
    fig.suptitle(f"first-order check: {len(names)} probe responses, one SGD step")
    return atomic_savefig(fig, path)


def _plot_sweep(steps, path):
    """Relative error and Pearson r against eta for each step kind, up to where the prediction breaks."""
    from learning_dynamics.sim.io import atomic_savefig
    style = _style()
    fig, (ax, ax_r) = style.figure(style.WIDTH, 2.8, ncols=2)
    for kind, s in steps.items():
        nats = [e["target_nats"] for e in s["per_eta"]]
        color = style.algorithm_color(KIND_COLORS[kind])
        ax.loglog(nats, [e["relative_error"] for e in s["per_eta"]], "o-", ms=3, color=color,
                  label=f"{kind} (slope {s['error_slope']:.2f} in the eta^2 regime)")
        ax_r.semilogx(nats, [e["pearson_r"] if e["pearson_r"] is not None else np.nan for e in s["per_eta"]],
                      "o-", ms=3, color=color, label=kind)
    style.reference_line(ax, 1.0)
    style.reference_line(ax, 0.1, ls=":")
    ax.set_xlabel("step size: largest predicted probe change (nats)")
    ax.set_ylabel("relative error of the prediction")
    ax.set_title("mean|actual - predicted| / mean|actual| (dashed 100%, dotted 10%)")
    ax.legend()
    ax_r.set_xlabel("step size: largest predicted probe change (nats)")
    ax_r.set_ylabel("Pearson r over probes")
    ax_r.set_title("correlation of predicted and actual changes")
    ax_r.legend()
    return atomic_savefig(fig, path)


def _plot_k_steps(run, path):
    """Actual vs frozen-kernel predicted change after k AdamW steps, mean per probe type, and r per k."""
    from learning_dynamics.sim.io import atomic_savefig
    style = _style()
    names = np.array(run["probe_names"])
    ks = [0] + [row["k"] for row in run["k_step"]]
    fig, (ax, ax_r) = style.figure(style.WIDTH, 3.2, ncols=2)
    for name in dict.fromkeys(names):
        pick = names == name
        color = style.probe_color(f"logps/{name}")
        ax.plot(ks, [0] + [np.mean(np.array(row["actual"])[pick]) for row in run["k_step"]], "o-", ms=3, color=color,
                label=style.probe_label(f"logps/{name}"))
        ax.plot(ks, [0] + [np.mean(np.array(row["predicted"])[pick]) for row in run["k_step"]], "x--", ms=3,
                color=color)
    ax.set_xlabel("AdamW steps k")
    ax.set_ylabel("change of log pi (mean over probe prompts)")
    ax.set_title("actual (solid) vs frozen step-0 kernel prediction (dashed)")
    ax.legend(ncol=2, fontsize=5)
    rows = run["k_step"]
    ax_r.plot([r["k"] for r in rows], [r["pearson_r"] if r["pearson_r"] is not None else np.nan for r in rows],
              "o-", ms=3, label="Pearson r")
    ax_r.plot([r["k"] for r in rows], [r["relative_error"] for r in rows], "s-", ms=3, label="relative error")
    moving = [r for r in rows if r.get("moving_kernel")]
    if moving:
        n = moving[0]["moving_kernel"]["probes"]
        ax_r.plot([r["k"] for r in moving], [r["moving_kernel"]["linearisation_error"] for r in moving], "^:", ms=3,
                  label=f"error, moving kernel ({n} probes)")
        ax_r.plot([r["k"] for r in moving], [r["moving_kernel"]["kernel_drift_error"] for r in moving], "v:", ms=3,
                  label=f"kernel-drift part ({n} probes)")
    ax_r.axhline(1.0, color="0.6", lw=0.8, ls="--")
    ax_r.set_xscale("log")
    ax_r.set_xlabel("AdamW steps k")
    ax_r.set_ylabel("agreement over probes")
    ax_r.set_title(f"k-step prediction ({run['algo']}, lr {run['lr']:g})")
    ax_r.legend()
    return atomic_savefig(fig, path)


def _plot_kernel(p20, path):
    from learning_dynamics.sim.io import atomic_savefig
    style = _style()
    fig, ax = style.figure(style.COLUMN, 2.6)
    ax.plot(p20["steps"], p20["similarity"], "o-", ms=3, label="cosine(K_t, K_0)")
    ax.plot(p20["steps"], p20["norm_ratio"], "s--", ms=3, label="||K_t|| / ||K_0||")
    ax.axhline(p20["threshold"], color="0.5", lw=0.8, ls=":", label=f"P20 threshold {p20['threshold']}")
    if np.all(np.isfinite(np.asarray(p20["ci"], dtype=float))):
        ax.errorbar([p20["steps"][-1]], [p20["effect"]], yerr=[[p20["effect"] - p20["ci"][0]],
                                                               [p20["ci"][1] - p20["effect"]]],
                    fmt="none", ecolor="k", capsize=4, label="95% CI (bootstrap over probes)")
    ax.set_xlabel("AdamW step")
    ax.set_ylabel("kernel similarity to step 0")
    ax.set_title(f"eNTK drift (P20: {p20['verdict']})")
    ax.legend()
    return atomic_savefig(fig, path)


def _plot_token_squeeze(records, summary, path):
    from learning_dynamics.sim.io import atomic_savefig
    style = _style()
    fig, ax = style.figure(style.COLUMN * 1.4, 2.6)
    for kind, color in (("shared", style.BLUE), ("rejected_only", style.VERMILION)):
        changes = np.concatenate([r["argmax_change"][r["kind"] == kind] for r in records])
        if changes.size:
            ax.hist(changes, bins=40, alpha=0.6, color=color,
                    label=f"{kind} positions (argmax rises at {np.mean(changes > 0):.0%})")
    ax.axvline(0, color="0.4", lw=0.8)
    ax.set_xlabel("change of log pi(argmax token other than y-'s) after one DPO-shaped step")
    ax.set_ylabel("positions")
    s = summary["rejected_only"]
    if s["positions"]:
        ax.set_title(f"$y^-$-only positions: threshold precision / recall\n{s['precision']:.2f} / "
                     f"{s['recall']:.2f} (vocabulary), {s['top']['precision']:.2f} / {s['top']['recall']:.2f} "
                     f"(top {s['top']['tokens_per_position']})")
    ax.legend()
    return atomic_savefig(fig, path)
