"""Probe curves in the paper's style: one panel per probe type, log-probability over training.

Shared by `ldyn sim lm` and validate's real-model runs; both pass the `series`
of sim.common.tracking.series_from_table (key -> [n_evals, n_prompts]). Each panel
shows the mean over prompts and a band of +-1 standard error of that mean, so
a reader sees both the direction and whether it stands out of the prompt noise.
Labels, colours and units come from sim.common.style.
"""
import re

import numpy as np

from learning_dynamics.sim.common import style

# Panel order follows the paper's probe taxonomy (paper-notes 4.3): the probe registry (theory.probes)
# through sim.common.style.PROBES, which adds each probe's colour.
PANELS = tuple((key, label) for key, (label, _color) in style.PROBES.items())
LABELS = dict(PANELS)

# the toy LM's position classes (sim.lm.POSITION_CLASSES), as panel titles
POSITION_LABELS = {"pos:shared": "shared prefix", "pos:diverge": "first difference",
                   "pos:chosen_after": "$y^+$ after it", "pos:rejected_after": "$y^-$ after it"}


def _mean_band(curve):
    curve = np.asarray(curve, dtype=np.float64)
    mean = np.nanmean(curve, axis=1)
    n = np.maximum(np.sum(np.isfinite(curve), axis=1), 1)
    sem = np.nanstd(curve, axis=1) / np.sqrt(n)
    return mean, mean - sem, mean + sem


def _steps(steps, n_evals):
    return np.arange(n_evals) if steps is None else np.asarray(steps)


TITLE_CHARS = 18   # a panel title longer than this (visible characters) wraps: narrow panels clip it
_WORD = re.compile(r"(?:\$[^$]*\$|[^\s$])+")   # a word; mathtext ($...$) is never split


def _visible(text: str) -> int:
    return len(re.sub(r"\$[^$]*\$", "xx", text))


def wrap_title(label: str, width: int = TITLE_CHARS) -> str:
    """`label` over lines of about `width` visible characters, breaking only at spaces outside mathtext."""
    lines = []
    for word in _WORD.findall(label):
        if lines and _visible(lines[-1] + " " + word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "\n".join(lines)


def panel_title(key: str) -> str:
    if key in style.PROBES:
        return wrap_title(style.probe_label(key))
    _, _, cls = key.partition("/")
    if cls in POSITION_LABELS:  # the y label says what is plotted; a longer title runs into the next panel
        return POSITION_LABELS[cls]
    return key


def _label_axes(ax, key):
    ax.set_title(panel_title(key))
    ax.set_xlabel("step")
    ax.set_ylabel(style.unit_label(key))


def plot_probe_curves(series, path, title, steps=None, keys=None):
    """One panel per tracked probe type (those of PANELS present in `series`), saved atomically."""
    keys = [k for k in (keys or [k for k, _ in PANELS]) if k in series]
    if not keys:
        raise ValueError("no probe curves to plot: series has none of the known keys")
    fig, axes = style.grid(len(keys))
    for ax, key in zip(axes, keys):
        x = _steps(steps, np.asarray(series[key]).shape[0])
        mean, lo, hi = _mean_band(series[key])
        color = style.probe_color(key)
        ax.plot(x, mean, color=color)
        ax.fill_between(x, lo, hi, color=color, alpha=0.25, lw=0)
        style.reference_line(ax, mean[0])
        _label_axes(ax, key)
    fig.suptitle(f"{title}\nmean over probe prompts; band: $\\pm$1 s.e.; dashed: value at step 0")
    return style.save(fig, path)


def plot_comparison(series_by_run, path, title, keys, steps_by_run=None, derived=None):
    """Several runs overlaid, one panel per key (probe log-prob, entropy, ...), one legend below.

    `derived(series, key)` supplies curves for keys that are not stored in a
    series (e.g. a per-token ratio of two stored keys). A key no run has is left out.
    """
    def curve_of(series, key):
        return series[key] if key in series else (derived(series, key) if derived else None)

    keys = [k for k in keys if any(curve_of(s, k) is not None for s in series_by_run.values())]
    if not keys:
        raise ValueError("no curves to compare: no run has any of the keys")
    fig, axes = style.grid(len(keys), max_cols=3 if len(keys) <= 6 else 4)
    for ax, key in zip(axes, keys):
        for run, series in series_by_run.items():
            curve = curve_of(series, key)
            if curve is None:
                continue
            x = _steps((steps_by_run or {}).get(run), np.asarray(curve).shape[0])
            mean, lo, hi = _mean_band(curve)
            color = style.algorithm_color(run)
            ax.plot(x, mean, color=color, label=style.algorithm_label(run))
            ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)
        _label_axes(ax, key)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels))
    fig.suptitle(f"{title}\nmean over probe prompts; band: $\\pm$1 s.e.")
    return style.save(fig, path)
