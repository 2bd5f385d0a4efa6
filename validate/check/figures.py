"""Figures of `ldyn validate check --first-order`: the sweep, the k-step curves, the kernel's drift (P20's
views), the sweep over pairs, the token-level squeeze and one figure per channel of the DPO step."""
import numpy as np

from learning_dynamics.sim.common import style
# torch loads inside the functions that need them, so importing this module stays light (ldyn --help)


def draw_all(parts: dict, channels: dict, out) -> list:
    """Every figure of the check into `out`; the paths written (their suffix follows --format)."""
    from learning_dynamics.validate.measure import token_squeeze
    records, run = parts["records"], parts["run"]
    figures = [_plot_scatter(parts["steps"], parts["sweep_names"], out / "first_order_scatter.png"),
               _plot_sweep(parts["steps"], out / "first_order_slope.png"),
               _plot_token_squeeze(records, token_squeeze.summarise(records), out / "token_squeeze.png"),
               _plot_k_steps(run, out / "k_step_curves.png"),
               plot_kernel_views(run["P20"], out / "kernel_drift.png"),
               plot_pair_sweep(parts["pair_sweep"], out / "pair_sweep.png")]
    if records and records[0].get("channels"):
        figures += [plot_channel(records, name, channels, out / f"token_channel_{_slug(name)}.png")
                    for name in CHANNEL_FIGURES]
    return figures


KIND_COLORS = {"positive": "sft", "negative": "negative", "dpo": "dpo"}   # sim.common.style's colours for the pushes


def _style():
    return style


def _plot_scatter(steps, names, path):
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
    return style.save(fig, path)


def _plot_sweep(steps, path):
    """Relative error and Pearson r against eta for each step kind, up to where the prediction breaks."""
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
    return style.save(fig, path)


def _plot_k_steps(run, path):
    """Actual vs frozen-kernel predicted change after k AdamW steps, mean per probe type, and r per k."""
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
    return style.save(fig, path)


def _plot_token_squeeze(records, summary, path):
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
    return style.save(fig, path)


CHANNEL_FIGURES = ("hidden (body)", "hidden (input embedding)", "readout")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").replace("__", "_")


def plot_kernel_views(p20, path):
    """Each kernel view's cosine with step 0 (95% CI) and its norm ratio, over the k-step run's checkpoints."""
    style = _style()
    fig, (ax, ax_n) = style.figure(style.WIDTH, 2.8, ncols=2)
    views = p20.get("views") or {"A.K.G": {"steps": p20["steps"], "similarity": p20["similarity"],   # an older check
                                           "ci": [[np.nan, np.nan]] * len(p20["steps"]),
                                           "norm_ratio": p20["norm_ratio"]}}
    for name, view in views.items():
        steps, sim = np.asarray(view["steps"]), np.asarray(view["similarity"], dtype=float)
        ci = np.array([[np.nan if x is None else x for x in c] for c in view["ci"]], dtype=float)
        line, = ax.plot(steps, sim, "o-", ms=3, label=name)
        ax.fill_between(steps, ci[:, 0], ci[:, 1], color=line.get_color(), alpha=0.15, lw=0)
        ax_n.plot(steps, view["norm_ratio"], "o-", ms=3, color=line.get_color(), label=name)
    ax.set_xlabel("AdamW step")
    ax.set_ylabel("cosine with step 0")
    ax.set_title("kernel drift: K alone, A.K.G, A, G (band: 95% CI)")
    ax.legend(fontsize=6)
    ax_n.set_yscale("log")
    ax_n.set_xlabel("AdamW step")
    ax_n.set_ylabel("norm ratio to step 0")
    ax_n.set_title("size of each view")
    ax_n.legend(fontsize=6)
    return style.save(fig, path)


def plot_pair_sweep(ps, path):
    """Relative error against step size (the largest predicted probe change, nats) for every pair, one panel per
    step kind, with the median break."""
    style = _style()
    kinds = list(ps["summary"])
    fig, axes = style.figure(style.WIDTH, 2.6, ncols=len(kinds))
    fig.suptitle("each pair's relative error (dashed: 100%, where it breaks)")
    for ax, kind in zip(np.atleast_1d(axes), kinds):
        color = style.algorithm_color(KIND_COLORS[kind])
        for pair in ps["per_pair"]:
            rows = pair[kind]["per_eta"]
            ax.loglog([r["target_nats"] for r in rows], [r["relative_error"] for r in rows], "-", lw=0.8,
                      alpha=0.6, color=color)
        broke = ps["summary"][kind]["breaks_at"]["target_nats"]
        if broke["median"] is not None:
            ax.axvline(broke["median"], color="k", lw=0.8, ls=":", label=f"median break {broke['median']:.3g} nats")
            ax.legend()
        style.reference_line(ax, 1.0)
        ax.set_xlabel("step size (nats)")
        ax.set_ylabel("relative error")
        ax.set_title(f"{kind} step, {ps['n_pairs']} pairs")
    return style.save(fig, path)


def plot_channel(records, name, summary, path):
    """One channel's part of each position's first-order change of log pi(top token), against the whole change."""
    style = _style()
    fig, ax = style.figure(style.COLUMN * 1.4, 3.0)
    for kind, color in (("shared", style.BLUE), ("rejected_only", style.VERMILION)):
        exact = np.concatenate([r["channels"]["exact"]["top"][r["kind"] == kind] for r in records])
        part = np.concatenate([r["channels"]["channels"][name]["top"][r["kind"] == kind] for r in records])
        if exact.size:
            entry = summary["by_kind"][kind]["top"]
            ax.scatter(exact, part, s=5, alpha=0.6, color=color,
                       label=f"{kind} positions: {100 * entry['channels'][name]['share']:.0f}% of the mean change")
    lim = ax.get_xlim()
    ax.plot(lim, lim, color="0.5", lw=0.8, ls="--")
    ax.axhline(0, color="0.7", lw=0.6)
    ax.set_xlabel(r"first-order $\Delta\log\pi$(top token), all channels (nats)")
    ax.set_ylabel(f"{name}:\nthe channel's part (nats)")
    ax.set_title(f"DPO step, {name} channel (dashed: carries it all)")
    ax.legend(fontsize=6)
    return style.save(fig, path)
