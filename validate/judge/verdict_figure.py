"""The verdict table as a picture: a forest plot of every prediction of a report.

One row per (prediction, run): the effect (signed so that positive is the
predicted direction) with its 95% CI, coloured by verdict, rows grouped under
their prediction, a zero line marked. Predictions measured in different units
get their own panel (nats of log-probability and a 4-gram fraction share no
scale), each panel's height follows its number of rows.
"""
import textwrap

import numpy as np

from learning_dynamics.sim.common import style

ROW_HEIGHT = 0.16     # inches per run row
HEADER_ROWS = 1.0     # a prediction's header takes one row
# characters of "id: claim" that fit one line of 6.5 pt bold beside the run labels at style.WIDTH
HEADER_CHARS = 80


def _unit(row) -> str:
    return row.get("unit") or "effect"


def _layout(rows):
    """{unit: [(prediction id, claim, [row, ...]), ...]} in the rows' first-seen order."""
    panels = {}
    for r in rows:
        groups = panels.setdefault(_unit(r), {})
        groups.setdefault(r["id"], (r["id"], r.get("claim", ""), []))[2].append(r)
    return {unit: list(groups.values()) for unit, groups in panels.items()}


def plot_verdicts(rows, path, title="Every prediction: effect and 95% CI per run"):
    """Forest plot of prediction rows (those of report.prediction_table: id, claim, algo, verdict,
    effect, ci, unit); saved atomically through sim.common.style. Returns the path written."""
    if not rows:
        raise ValueError("no predictions to plot")
    panels = _layout(rows)
    heights = [sum(len(g[2]) + HEADER_ROWS for g in groups) for groups in panels.values()]
    plt = style.pyplot()
    fig = plt.figure(figsize=(style.WIDTH, 0.55 * len(panels) + ROW_HEIGHT * sum(heights) + 0.5),
                     layout="constrained")
    axes = fig.subplots(len(panels), 1, height_ratios=heights, squeeze=False)[:, 0]
    seen = set()
    for ax, (unit, groups) in zip(axes, panels.items()):
        y, ticks, ticklabels = 0.0, [], []
        for number, (pid, claim, members) in enumerate(groups):
            header = y
            ax.text(0.0, header, style.math_text(textwrap.shorten(f"{pid}: {claim}", HEADER_CHARS)),
                    transform=ax.get_yaxis_transform(), ha="left", va="center", fontsize=6.5, fontweight="bold")
            if number % 2:
                ax.axhspan(header - 0.5, header + len(members) + 0.5, color="0.95", zorder=0, lw=0)
            for member in members:
                y += 1
                ticks.append(y)
                ticklabels.append(member.get("algo", ""))
                effect, ci = member.get("effect"), member.get("ci") or [None, None]
                verdict = member.get("verdict", "inconclusive")
                color = style.VERDICT_COLORS.get(verdict, style.GREY)
                if effect is None:
                    ax.text(0.5, y, "not tested" if verdict == "not tested" else "n/a",
                            transform=ax.get_yaxis_transform(), ha="center", va="center", fontsize=6,
                            color=style.GREY)
                    continue
                if ci[0] is not None and ci[1] is not None:
                    ax.plot([ci[0], ci[1]], [y, y], color=color, lw=1.4, solid_capstyle="butt")
                # the first point of each verdict names it in the legend
                ax.plot([effect], [y], "o", ms=3.5, color=color, label=verdict if verdict not in seen else None)
                seen.add(verdict)
            y += 1
        ax.axvline(0.0, color=style.BLACK, lw=0.7, zorder=1)
        ax.set_yticks(ticks, ticklabels)
        ax.set_ylim(y - 0.5, -0.7)
        ax.tick_params(axis="y", length=0)
        ax.set_ylabel("run")
        ax.set_xlabel(f"effect ({unit}); positive: the predicted direction")
        _keep_zero_in_view(ax)
    labelled = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            labelled.setdefault(label, handle)
    order = [v for v in style.VERDICT_COLORS if v in labelled]
    if order:
        fig.legend([labelled[v] for v in order], order, loc="outside lower center", ncols=len(order),
                   title="verdict (point: effect; bar: 95% CI over probe prompts)")
    fig.suptitle(title)
    return style.save(fig, path)


def _keep_zero_in_view(ax):
    """Keep zero inside the axis with room on both sides, so 'which side of zero' is always readable."""
    lo, hi = ax.get_xlim()
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    pad = 0.05 * (hi - lo or 1.0)
    ax.set_xlim(lo - pad, hi + pad)
